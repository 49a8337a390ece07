"""Request and response models of the search API; the engine takes and returns the same models.

Structural rules (types, ranges that never change) live here so they show in the OpenAPI docs.
Limits that an operator configures (``max_k``, ``max_depth``, ...) are checked by
``trident_search.service.app.check_limits`` against ``Settings`` and answered with the same 422 envelope.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
)

Retriever = Literal["bm25", "sparse", "dense"]
RETRIEVERS: tuple[Retriever, ...] = ("bm25", "sparse", "dense")
Mode = Literal["bm25", "sparse", "dense", "hybrid"]
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


class RetrieverOptions(_Strict):
    """Per-retriever settings for one request.

    ``depth`` and ``weight`` apply to every retriever. The index knobs belong to one retriever each:
    sparse ``exact``, ``query_cut``, ``heap_factor``; dense ``ef_search``, ``nprobe``. Unset knobs
    take the index's own defaults; a knob sent to another retriever is a 422 naming it.
    """

    depth: int | None = Field(
        None, ge=1, description="Hits this retriever returns before fusion (default 100, at least offset + k)."
    )
    weight: FiniteFloat | None = Field(
        None, ge=0, le=1e6, description="Fusion weight; default from the index manifest (tuned), else 1.0."
    )
    exact: bool = Field(
        False, description="Sparse only: score every document exactly (brute force) instead of the "
        "approximate block-pruned search; the ground truth for its recall, and slower."
    )
    query_cut: StrictInt | None = Field(
        None, ge=1, le=4096, description="Sparse only: traverse the lists of just this many heaviest "
        "query terms (default from the index). Higher is more exact and slower."
    )
    heap_factor: FiniteFloat | None = Field(
        None, ge=0, le=1, description="Sparse only: skip a block whose upper bound is below "
        "heap_factor x the k-th best score so far (default from the index); 0 skips nothing, 1 the most."
    )
    ef_search: StrictInt | None = Field(
        None, ge=1, le=100_000, description="Dense HNSW only: candidates kept while walking the graph "
        "(default from the index). Higher is more exact and slower; other index types ignore it."
    )
    nprobe: StrictInt | None = Field(
        None, ge=1, le=65_536, description="Dense IVF only: inverted lists visited per query (default "
        "from the index). Higher is more exact and slower; other index types ignore it."
    )

    def tuning(self) -> dict[str, Any]:
        """The retriever's own search knobs that were set, as keyword arguments for its index."""
        return {name: getattr(self, name) for name in _TUNING if getattr(self, name) is not None}


# Which retriever each per-request knob belongs to; the others reject it.
_OWNER: dict[str, Retriever] = {
    "exact": "sparse", "query_cut": "sparse", "heap_factor": "sparse", "ef_search": "dense", "nprobe": "dense",
}
_TUNING = ("query_cut", "heap_factor", "ef_search", "nprobe")


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


class SearchRequest(_Strict):
    """One search. ``mode=hybrid`` fuses every retriever the index has, or those in ``retrievers``."""

    model_config = ConfigDict(
        extra="forbid",
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
    mode: Mode = "hybrid"
    retrievers: list[Retriever] | None = Field(
        None, min_length=1, description="Hybrid mode only: fuse just these retrievers."
    )
    k: int = Field(10, ge=1, description="Number of results to return.")
    offset: int = Field(0, ge=0, description="Results to skip, for pagination (stable: ties break by id).")
    bm25: RetrieverOptions | None = None
    sparse: RetrieverOptions | None = None
    dense: RetrieverOptions | None = None
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
    def _unique(cls, v: list[Retriever] | None) -> list[Retriever] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("retrievers must not repeat")
        return v

    @field_validator("bm25", "sparse", "dense")
    @classmethod
    def _knobs_fit_the_retriever(cls, v: RetrieverOptions | None, info: ValidationInfo) -> RetrieverOptions | None:
        """A knob sent to a retriever that has no such knob is an error, not silently ignored."""
        if v is None:
            return v
        for knob in sorted(v.model_fields_set & _OWNER.keys()):
            value = getattr(v, knob)
            if _OWNER[knob] != info.field_name and value is not None and value is not False:
                raise ValueError(
                    f"{info.field_name}.{knob} is not supported: {knob} applies to the {_OWNER[knob]} "
                    f"retriever only; move it to \"{_OWNER[knob]}\": {{\"{knob}\": ...}}"
                )
        return v

    def options(self, retriever: Retriever) -> RetrieverOptions:
        """This request's options for one retriever (empty when none were given)."""
        return getattr(self, retriever) or RetrieverOptions()


class BatchSearchRequest(_Strict):
    """Several searches in one call; each answer equals the one the single endpoint gives."""

    requests: list[SearchRequest] = Field(..., min_length=1)


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
    mode: Mode
    retrievers: list[Retriever]
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
    retrievers: list[Retriever]
    default_fusion: dict[str, Any]
    query_encoders: dict[str, str] = Field(description="Retriever -> encoder name and backend.")
    manifest: dict[str, Any]


class ErrorBody(BaseModel):
    status: int
    code: str
    message: str
    field: str | None = Field(None, description="Dotted path of the request field at fault, if one is.")
    details: list[dict[str, Any]] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    """The one envelope every 4xx/5xx answer uses."""

    error: ErrorBody
