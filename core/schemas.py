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
    ValidationInfo,
    create_model,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)

from trident_search.indexers.retriever import RetrieverOptions, get, registered

FusionMethod = Literal["rrf", "interpolation"]
Normalization = Literal["minmax", "zscore", "none"]

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
# Bounded to what SQLite stores, so a filter value can always be bound.
Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]
Scalar = StrictStr | StrictBool | Int64 | FiniteFloat
FilterValue = Scalar | Annotated[list[Scalar], Field(min_length=1, max_length=500)]


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
        None, description="Score normalisation for `interpolation`: minmax (default), zscore or none."
    )


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
    filters: dict[str, FilterValue] = Field(
        default_factory=dict,
        description="Metadata filters applied to every retriever before fusion: "
        '`{"field": value}` is equality, `{"field": [v1, v2]}` means one of.',
    )
    explain: bool = Field(False, description="Add each retriever's raw score, rank and normalised score.")
    include_text: bool = Field(True, description="Return each hit's text (title and metadata always come).")

    @field_validator("query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query must contain a non-space character")
        return _valid_unicode(v)

    @field_validator("filters", mode="wrap")
    @classmethod
    def _filter_values(cls, v: Any, handler: ValidatorFunctionWrapHandler) -> dict[str, Any]:
        """One clear message instead of one per union member ("not a string", "not a bool", ...)."""
        try:
            filters = handler(v)
        except ValidationError as exc:
            where = ".".join(str(p) for p in exc.errors()[0]["loc"][:1])
            raise ValueError(
                f"filters must be an object mapping a metadata field to a string, number, boolean "
                f"or a non-empty list of them (at most 500); bad entry: {where or '(whole value)'}"
            ) from None
        for field, value in filters.items():
            _valid_unicode(field)
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    _valid_unicode(item)
        return filters

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
        "retrievers": (list[name_type] | None, Field(  # type: ignore[valid-type]
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


class SearchHit(BaseModel):
    id: str = Field(description="The corpus `_id`.")
    rank: int = Field(description="1-based position in the full result list (offset included).")
    score: float
    title: str
    text: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    explain: dict[str, RetrieverExplanation] | None = None


class FusionUsed(BaseModel):
    """The fusion settings actually applied, after defaults from the request, manifest and code."""

    method: FusionMethod
    weights: dict[str, float]
    rrf_k: float | None = None
    normalization: Normalization | None = None
    source: Literal["request", "manifest", "default"] = Field(
        description="Where the method came from: the request, tuned values in the manifest, or built-in."
    )


class SearchResponse(BaseModel):
    query: str
    mode: str
    retrievers: list[str]
    k: int
    offset: int
    total: int = Field(description="Candidates found before pagination (bounded by the depths).")
    hits: list[SearchHit]
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
