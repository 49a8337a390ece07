"""Request and response models of the search API; the engine takes and returns the same models.

Structural rules (types, ranges that never change) live here so they show in the OpenAPI docs.
Limits that an operator configures (``max_k``, ``max_depth``, ...) are checked by
``trident_search.service.app.check_limits`` against ``Settings`` and answered with the same 422 envelope.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from trident_search.indexers.retriever import RetrieverOptions, get, registered

FusionMethod = Literal["rrf", "interpolation"]
Normalization = Literal["minmax", "zscore", "none", "dbsf"]

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
# Bounded to what SQLite stores, so a filter value can always be bound.
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
Scalar = StrictStr | StrictBool | Int64 | FiniteFloat
FIELD_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$"
FILTERS_DOC = (
    "Metadata filters applied inside every retriever before its top-k (so k hits come back when k "
    'match). `{"field": value}` is equality, `{"field": [v1, v2]}` one of; per-field operators '
    '`{"year": {"gte": 2015, "lt": 2019}}` (eq, ne, gt, gte, lt, lte, in, nin, exists; ranges take a '
    'number or an ISO 8601 date); combinators `{"all": [...]}`, `{"any": [...]}`, `{"not": {...}}`. '
    "A list-valued field matches when any element does; nested keys are `outer.inner`; ne, nin and "
    "exists=false also match documents without the field. A bad filter is a 422 whose `field` is "
    "the path inside it, e.g. `filters.all.1.year.gt`."
)


def _valid_unicode(text: str) -> str:
    """JSON allows lone surrogates (``"\\ud800"``); no tokenizer, Lucene or SQLite can take them."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("contains a lone surrogate (invalid Unicode); send valid UTF-8 text") from None
    return text


class _Strict(BaseModel):
    """Unknown fields are errors, so a typo (``"wieght"``) is reported instead of ignored."""

    model_config = ConfigDict(extra="forbid")


class FusionOptions(_Strict):
    """How the retrievers' lists are combined in hybrid mode; unset fields take the index defaults."""

    method: FusionMethod | None = Field(
        None, description="`rrf` (reciprocal rank fusion) or `interpolation` (weighted normalised scores)."
    )
    rrf_k: FiniteFloat | None = Field(
        None, ge=0, le=1e6, description="RRF smoothing constant (60 in the paper); not the result count."
    )
    normalization: Normalization | None = Field(
        None, description="Score normalisation for `interpolation`: minmax (default), zscore, none or "
        "dbsf (mean +- 3 std onto [0, 1], clipped, as Qdrant's distribution-based score fusion)."
    )
    normalizers: dict[str, Normalization] | None = Field(
        None, description="Interpolation: a normaliser per retriever, overriding `normalization` for the "
        'retrievers named, e.g. `{"bm25": "dbsf", "dense": "minmax"}`.',
    )


class FacetRange(_Strict):
    """One bucket of a range facet; bounds are numbers or ISO 8601 dates, at least one is given."""

    key: str | None = Field(None, description="A label for the bucket (default: the bounds).")
    gt: FiniteFloat | StrictStr | None = None
    gte: FiniteFloat | StrictStr | None = None
    lt: FiniteFloat | StrictStr | None = None
    lte: FiniteFloat | StrictStr | None = None

    def bounds(self) -> dict[str, Any]:
        return {op: v for op in ("gt", "gte", "lt", "lte") if (v := getattr(self, op)) is not None}

    @field_validator("key")
    @classmethod
    def _key_text(cls, v: str | None) -> str | None:
        return None if v is None else _valid_unicode(v)

    @model_validator(mode="after")
    def _check(self) -> FacetRange:
        from trident_search.indexers.filters import iso_date

        if not self.bounds():
            raise ValueError("a range needs at least one of gt, gte, lt, lte")
        for op, v in self.bounds().items():
            if isinstance(v, str) and iso_date(v) is None:
                raise ValueError(f"{op} needs a number or an ISO 8601 date, got {v!r}")
        return self


class FacetRequest(_Strict):
    """Counts per value of one metadata field (or per range, with ``ranges``)."""

    field: str = Field(..., pattern=FIELD_PATTERN, description="A metadata field (nested: `outer.inner`).")
    size: int = Field(10, ge=1, le=1000, description="How many values to return (most frequent first).")
    ranges: list[FacetRange] | None = Field(
        None, min_length=1, max_length=100, description="Count documents per range instead of per value.")


class CollapseOptions(_Strict):
    """Keep the best hit per value of a field, after fusion."""

    field: str = Field(..., pattern=FIELD_PATTERN, description="The metadata field to group by.")
    inner_hits: int = Field(0, ge=0, le=100, description="Also return the next best hits of each group.")


class SearchRequestBase(_Strict):
    """The fields every search has. The model the API uses, :func:`search_request_model`, adds one
    options field per registered retriever (``{"dense": {"weight": 0.7, "depth": 200}}``)."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "examples": [
                {"query": "vitamin D and bone density", "mode": "hybrid", "k": 5},
                {
                    "query": "statins reduce heart attacks",
                    "k": 10,
                    "offset": 10,
                    "fusion": {"method": "interpolation", "normalization": "minmax"},
                    "dense": {"weight": 0.7, "depth": 200},
                    "filters": {"year": [2019, 2020]},
                    "explain": True,
                },
            ]
        },
    )

    query: str = Field(..., min_length=1, description="Free-text query.")
    mode: str = Field("hybrid", description="One retriever's name, or `hybrid` to fuse several.")
    retrievers: list[str] | None = Field(
        None, min_length=1, description="Hybrid mode only: fuse just these retrievers."
    )
    k: int = Field(10, ge=1, description="Number of results to return.")
    offset: int = Field(0, ge=0, description="Results to skip, for pagination (stable: ties break by id).")
    fusion: FusionOptions = Field(default_factory=FusionOptions)
    filters: dict[str, Any] = Field(default_factory=dict, description=FILTERS_DOC, examples=[
        {"lang": "en", "year": {"gte": 2015, "lt": 2019}},
        {"any": [{"tags": "covid"}, {"not": {"published": {"lt": "2020-01-01"}}}]},
    ])
    min_score: FiniteFloat | None = Field(
        None, description="Drop hits whose final score is below this. Hybrid: on the [0, 1] scale of "
        "`normalized_score` (RRF: score / its maximum for the weights in use; interpolation: score / "
        "sum of weights, in [0, 1] for minmax and dbsf). Single-retriever modes: the raw score.",
    )
    facets: list[StrictStr | FacetRequest] | None = Field(
        None, min_length=1, max_length=20,
        description="Fields to count values of (a name, or `{field, size, ranges}`): `count` is over "
        "every document matching `filters`, `candidates` over the fused candidate list (the hits "
        "`total` counts before collapsing).", examples=[["lang", {"field": "year", "ranges": [
            {"lt": 2016}, {"gte": 2016}]}]],
    )
    collapse: CollapseOptions | None = Field(
        None, description='Best hit per value of a field after fusion: `"parent_id"` or '
        '`{"field": "parent_id", "inner_hits": 2}`. Pages and `total` count groups.',
    )
    explain: bool = Field(False, description="Add each retriever's raw score, rank and normalised score.")
    include_text: bool = Field(True, description="Return each hit's text (title and metadata always come).")

    @field_validator("query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query must contain a non-space character")
        return _valid_unicode(v)

    @field_validator("filters", mode="before")
    @classmethod
    def _filters_object(cls, v: Any) -> Any:
        """The structure is checked by the engine, which names the path of a bad part."""
        if not isinstance(v, dict):
            raise ValueError("filters must be an object (see the filter language in the docs)")
        return v

    @field_validator("facets", mode="before")
    @classmethod
    def _facet_names(cls, v: Any) -> Any:
        if isinstance(v, list):
            v = [{"field": f} if isinstance(f, str) else f for f in v]
            names = [f.get("field") for f in v if isinstance(f, dict)]
            if len(set(names)) != len(names):
                raise ValueError("facets must not repeat a field")
        return v

    @field_validator("collapse", mode="before")
    @classmethod
    def _collapse_name(cls, v: Any) -> Any:
        return {"field": v} if isinstance(v, str) else v

    @field_validator("retrievers")
    @classmethod
    def _unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("retrievers must not repeat")
        return v

    def options(self, retriever: str) -> RetrieverOptions:
        """This request's options for one retriever (the retriever's defaults when none were given)."""
        given = getattr(self, retriever, None)
        return given if given is not None else get(retriever).options()


def _knobs_fit_the_retriever(value: Any, info: ValidationInfo) -> Any:
    """A knob sent to a retriever that lacks it is named, with the retriever that has it."""
    if isinstance(value, dict):
        specs = registered()
        own = specs[info.field_name].options.model_fields  # type: ignore[index]
        for knob in value:
            owner = next((o for o, r in specs.items() if knob in r.options.model_fields), None)
            if knob not in own and owner is not None:
                raise ValueError(
                    f"{info.field_name}.{knob} is not supported: {knob} applies to the {owner} retriever "
                    f'only; move it to "{owner}": {{"{knob}": ...}}'
                )
    return value


@lru_cache(maxsize=8)
def _request_model(specs: tuple[tuple[str, type[RetrieverOptions]], ...]) -> type[SearchRequestBase]:
    names = tuple(n for n, _ in specs)
    mode = Literal[(*names, "hybrid")]  # type: ignore[valid-type]
    name_type = Literal[names]  # type: ignore[valid-type]
    fields: dict[str, Any] = {
        "mode": (mode, Field("hybrid", description="One retriever, or `hybrid` to fuse several.")),
        "retrievers": (list[name_type] | None, Field(
            None, min_length=1, description="Hybrid mode only: fuse just these retrievers.")),
    }
    for name, options in specs:
        fields[name] = (options | None, Field(None, description=f"Options for the {name} retriever."))
    validators = {"_knobs": field_validator(*names, mode="before")(_knobs_fit_the_retriever)}
    return create_model("SearchRequest", __base__=SearchRequestBase, __module__=__name__,
                        __validators__=validators, **fields)


def search_request_model() -> type[SearchRequestBase]:
    """The request model for the retrievers registered now (rebuilt when the registry changes)."""
    return _request_model(tuple((n, r.options) for n, r in registered().items()))


def batch_request_model() -> type[BaseModel]:
    request = search_request_model()
    return create_model(
        "BatchSearchRequest", __base__=_Strict, __module__=__name__,
        requests=(list[request], Field(..., min_length=1)),  # type: ignore[valid-type]
    )


def __getattr__(name: str) -> Any:
    """``SearchRequest`` / ``BatchSearchRequest`` are built from the registry on first use."""
    if name == "SearchRequest":
        return search_request_model()
    if name == "BatchSearchRequest":
        return batch_request_model()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class RetrieverExplanation(BaseModel):
    """What one retriever contributed to a hit; ``rank`` and ``raw_score`` are null when it missed it."""

    rank: int | None
    raw_score: float | None
    normalized_score: float = Field(description="Min-max/z-score value (interpolation) or 1/(rrf_k+rank) (RRF).")
    weighted_score: float = Field(description="weight x normalized_score: this retriever's part of `score`.")


class FacetValue(BaseModel):
    value: str | bool | int | float
    count: int = Field(description="Documents matching the filters that have this value.")
    candidates: int = Field(description="Of the fused candidates, how many have this value.")


class FacetBucket(BaseModel):
    key: str
    gt: float | str | None = None
    gte: float | str | None = None
    lt: float | str | None = None
    lte: float | str | None = None
    count: int = Field(description="Documents matching the filters with a value in the range.")
    candidates: int = Field(description="Of the fused candidates, how many have a value in the range.")


class FacetResult(BaseModel):
    values: list[FacetValue] = Field(default_factory=list, description="Most frequent values (by count).")
    ranges: list[FacetBucket] | None = None


class SearchHit(BaseModel):
    id: str = Field(description="The corpus `_id`.")
    rank: int = Field(description="1-based position in the full result list (offset included).")
    score: float
    normalized_score: float | None = Field(
        None, description="Hybrid: `score` on the [0, 1] scale `min_score` uses (score / fusion.score_scale).")
    title: str
    text: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    explain: dict[str, RetrieverExplanation] | None = None
    inner_hits: list[SearchHit] | None = Field(
        None, description="With collapse: the next best hits of this hit's group (their `rank` is "
        "their position in the uncollapsed fused list).")


class FusionUsed(BaseModel):
    """The fusion settings actually applied, after defaults from the request, manifest and code."""

    method: FusionMethod
    weights: dict[str, float]
    rrf_k: float | None = None
    normalization: Normalization | None = None
    normalizers: dict[str, Normalization] | None = None
    score_scale: float | None = Field(
        None, description="The fused score's maximum for these weights; normalized_score = score / score_scale.")
    source: Literal["request", "manifest", "default"] = Field(
        description="Where the method came from: the request, tuned values in the manifest, or built-in."
    )


class SearchResponse(BaseModel):
    query: str
    mode: str
    retrievers: list[str]
    k: int
    offset: int
    total: int = Field(description="Candidates found before pagination (bounded by the depths), after "
                       "min_score; with collapse, the number of groups.")
    hits: list[SearchHit]
    facets: dict[str, FacetResult] | None = None
    fusion: FusionUsed | None = Field(None, description="Null in single-retriever modes.")
    timings_ms: dict[str, float] = Field(
        description="Per stage: filter, encode_sparse, encode_dense, bm25, sparse, dense, fusion, "
        "fetch, total. Retrievers run concurrently, so total is less than the sum."
    )
    warnings: list[str] = Field(default_factory=list)
    partial: bool = Field(
        False, description="Sharded indexes only: true when some shards did not answer in time; the "
        "hits then come from the other shards."
    )
    missing_shards: list[str] = Field(default_factory=list, description="The shards that did not answer.")


class BatchSearchResponse(BaseModel):
    results: list[SearchResponse]
    timings_ms: dict[str, float]


class DocumentResponse(BaseModel):
    id: str
    title: str
    text: str
    metadata: dict[str, Any]


class IndexInfo(BaseModel):
    path: str
    doc_count: int
    retrievers: list[str]
    default_fusion: dict[str, Any]
    query_encoders: dict[str, str] = Field(description="Retriever -> encoder name and backend.")
    manifest: dict[str, Any]
    generation: int = Field(0, description="Index generation served: 1 at start, +1 per hot swap.")
