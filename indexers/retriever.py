"""The retriever contract, and the registry every other part of Trident reads its retrievers from.

A retriever is one class implementing :class:`Retriever`: it builds its part of an index directory
from the document stream (with checkpointed encodings), opens that part, encodes a query and
searches with an ``allowed`` mask and its own per-request options, always answering in one shape,
:class:`Results` (internal ids and scores, best first). The engine, the build job, the request schema,
the eval modes and the sharded build and servers all take their list of retrievers, and each
retriever's options, from :func:`registered`: adding a retriever is one class and one
:func:`register` call (or a ``trident.retrievers`` entry point), nothing else.

Internal ids are positions in the validated corpus stream; the docstore, every retriever and the
engine agree on them by construction (``docs/architecture.md``).
"""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeAlias

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from trident_search.errors import InvalidRequestError, TridentError

if TYPE_CHECKING:
    import scipy.sparse as sp

    from trident_search.indexers.corpus import Document
    from trident_search.indexers.manifest import Manifest

Chunk: TypeAlias = "np.ndarray | sp.csr_matrix"
"""One checkpoint's encodings: a dense ``(n, dim)`` array or an ``(n, vocab)`` CSR matrix, row i for
the i-th document of the checkpoint."""


class RetrieverOptions(BaseModel):
    """Per-request options every retriever takes; a retriever subclasses it to add its own knobs.

    The subclass's extra fields are the retriever's index knobs: they reach :meth:`Part.search` as
    ``options`` and are listed, with their bounds, in the OpenAPI schema and the GET parameters.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    depth: int | None = Field(
        None, ge=1, description="Hits this retriever returns before fusion (default 100, at least offset + k)."
    )
    weight: float | None = Field(
        None, ge=0, le=1e6, allow_inf_nan=False,
        description="Fusion weight; default from the index manifest (tuned), else 1.0.",
    )

    @classmethod
    def knob_names(cls) -> list[str]:
        """The retriever's own knobs: every field beyond ``depth`` and ``weight``."""
        return [n for n in cls.model_fields if n not in RetrieverOptions.model_fields]

    def knobs(self) -> dict[str, Any]:
        """The knobs this request set, as keyword arguments."""
        return {n: getattr(self, n) for n in self.knob_names() if getattr(self, n) is not None}


@dataclass(frozen=True, slots=True)
class Results:
    """One query's hits from one retriever: internal ids (int64) and scores (float32), best first.

    Ties are ordered by the retriever's own rule; the engine re-sorts by (score, external id) when it
    fuses. ``warning`` is shown to the user (for example "query cut to 512 terms").
    """

    ids: np.ndarray
    scores: np.ndarray
    warning: str | None = None

    def __post_init__(self) -> None:
        if self.ids.shape != self.scores.shape or self.ids.ndim != 1:
            raise ValueError(
                f"Results needs two 1-D arrays of one length, got {self.ids.shape} and {self.scores.shape}")

    @classmethod
    def empty(cls) -> Results:
        return cls(np.empty(0, np.int64), np.empty(0, np.float32))


class QueryEncoder(ABC):
    """Turns query text into what :meth:`Part.search` takes (a vector, a term list, the text itself).

    Built once per server from the manifest (:meth:`Retriever.query_encoder`); the sharded router
    encodes each query once and sends the encoding to every shard.
    """

    description: str = ""
    """Shown by ``GET /v1/index``: the model and backend."""

    @abstractmethod
    def encode(self, query: str) -> Any: ...

    def close(self) -> None:  # noqa: B027 - most encoders hold nothing to release
        """Release what the encoder holds."""


class IdentityQueryEncoder(QueryEncoder):
    """For retrievers that analyse text themselves (BM25)."""

    def __init__(self, description: str) -> None:
        self.description = description

    def encode(self, query: str) -> str:
        return query


class Part(ABC):
    """One retriever's opened part of an index directory. Thread-safe: searched from many threads."""

    @abstractmethod
    def search(self, query: Any, depth: int, *, allowed: np.ndarray | None,
               options: RetrieverOptions) -> Results:
        """The top ``depth`` documents among ``allowed`` (a bool mask over internal ids, None = all)."""

    def close(self) -> None:  # noqa: B027 - parts over mmapped arrays hold nothing to release
        """Release files, threads or JVM objects."""

    # -- live writes (optional; ``trident_search.core.live``) -----------------------------------
    # A part that takes writes overrides :meth:`add` (and, if it can, :meth:`delete`); the defaults
    # make an index with such a part refuse writes with a clear error. Internal ids of added
    # documents always follow the ones the part already holds (n, n + 1, ...), and a replaced
    # document is a delete of its old internal id plus an add. Deleted ids also reach every search
    # through ``allowed`` (the live mask), except for a part with ``applies_deletes``, which is
    # given ``allowed=None`` when no filter is set because it drops deleted documents itself.
    applies_deletes: ClassVar[bool] = False

    def add(self, internal_ids: np.ndarray, docs: Sequence[Document], encoded: Chunk | None) -> None:
        """Make ``docs`` searchable under ``internal_ids`` (``encoded``: one row per document from
        the retriever's :meth:`Retriever.document_encoder`, None for text-only retrievers)."""
        raise WritesUnsupportedError(f"the {type(self).__name__} part does not take writes; rebuild the index")

    def delete(self, internal_ids: np.ndarray, ext_ids: Sequence[str]) -> None:  # noqa: B027
        """Drop documents. The default does nothing: the live mask hides them from searches."""

    def refresh(self) -> None:  # noqa: B027
        """Make every write so far visible to searches (after :meth:`add`/:meth:`delete`)."""

    def commit(self, seq: int) -> None:  # noqa: B027
        """Persist the writes up to log sequence number ``seq`` in the part's own files, if it keeps
        them there (then :meth:`absorbed` returns ``seq`` after a restart)."""

    def absorbed(self) -> int:
        """The last log sequence number the part's files hold; the log is replayed after it on
        open (0: the part keeps writes in memory only and replays the whole log)."""
        return 0

    def merge(self, seq: int, *, live: np.ndarray | None, resolve: Callable[[Sequence[str]], np.ndarray],
              folder: Path, manifest: Manifest) -> Path | None:
        """Fold the writes up to ``seq`` into the part's structures. Either write a new generation
        into the new folder ``folder`` and return it (the caller publishes it atomically and then
        calls :meth:`open_generation`), or do it in place and return None. ``live`` is the live
        mask (None: nothing deleted); ``resolve`` maps external ids to current internal ids.
        The default commits."""
        self.commit(seq)
        return None

    def open_generation(self, folder: Path, seq: int) -> None:
        """Serve the generation :meth:`merge` wrote into ``folder`` (it holds the log up to ``seq``)."""
        raise WritesUnsupportedError(f"the {type(self).__name__} part has no generations")


class WritesUnsupportedError(InvalidRequestError):
    """A write sent to an index with a retriever (or a backend) that cannot take writes."""


@dataclass(frozen=True, slots=True)
class BuildContext:
    """What the build job hands a retriever. ``params`` are this retriever's build parameters."""

    params: dict[str, Any]
    device: str
    batch_size: int
    max_length: int
    threads: int | None
    n_docs: int


class DocumentEncoder(ABC):
    """Encodes documents for a retriever whose build needs a model; the build job checkpoints chunks."""

    @abstractmethod
    def encode(self, docs: Sequence[Document]) -> Chunk:
        """One chunk (see :data:`Chunk`) with one row per document, in order."""

    @abstractmethod
    def model_info(self) -> dict[str, Any]:
        """What the manifest records for the model: ``name``, ``revision`` and its shape facts."""


class Retriever(ABC):
    """A kind of retriever: how to build, open and query its part of an index directory.

    The part lives in ``<index>/<name>/``. Its build parameters and model info are recorded in the
    manifest under ``params[name]`` and ``models[name]``.
    """

    name: ClassVar[str]
    options: ClassVar[type[RetrieverOptions]] = RetrieverOptions
    description: ClassVar[str] = ""

    # -- build --------------------------------------------------------------------------------
    def check_params(self, params: dict[str, Any]) -> None:  # noqa: B027 - most retrievers take anything
        """Raise a :class:`~trident_search.errors.TridentError` naming a bad build parameter, before any work."""

    def document_encoder(self, ctx: BuildContext) -> DocumentEncoder | None:
        """The model that encodes documents before :meth:`write`, or None (text-only retrievers)."""
        return None

    @abstractmethod
    def write(self, out: Path, ctx: BuildContext, *, docs: Callable[[], Iterator[Document]],
              chunks: Callable[[], Iterator[Chunk]] | None) -> dict[str, Any]:
        """Write the part into the empty folder ``out`` and return the parameters to record.

        ``docs`` streams the corpus again on each call; ``chunks`` streams the checkpointed encodings
        (in corpus order) when :meth:`document_encoder` gave an encoder, else it is None.
        """

    # -- serve --------------------------------------------------------------------------------
    @abstractmethod
    def query_encoder(self, manifest: Manifest, *, backend: str) -> QueryEncoder:
        """The query encoder that matches the index (the model recorded in the manifest)."""

    @abstractmethod
    def open(self, path: Path, manifest: Manifest, *, external_ids: np.ndarray) -> Part:
        """Open the part at ``path``; ``external_ids[i]`` is internal id i's corpus ``_id``."""

    # -- live writes --------------------------------------------------------------------------
    writes_in_place: ClassVar[bool] = False
    """True when the part keeps live writes in its own files (they then differ from the manifest's)."""

    def live_encoder(self, manifest: Manifest, *, device: str = "cpu", threads: int | None = None,
                     batch_size: int = 32) -> DocumentEncoder | None:
        """The encoder for documents written to a served index: by default the build's
        :meth:`document_encoder` with the parameters the manifest recorded, so written documents
        are encoded exactly as the batch build encoded the corpus."""
        params = dict(manifest.params.get(self.name) or {})
        model = manifest.models.get(self.name) or {}
        if model.get("name"):  # the model the corpus was encoded with, not the default
            params["model"] = model["name"]
        if str(model.get("backend", "")).startswith("onnx"):
            params["backend"] = "onnx"
        ctx = BuildContext(
            params=params, device=device, batch_size=batch_size,
            max_length=int(manifest.params.get("max_length", 256)), threads=threads, n_docs=0,
        )
        return self.document_encoder(ctx)


# -- the registry --------------------------------------------------------------------------------
_BUILTIN = {
    "bm25": "trident_search.indexers.bm25.retriever:BM25Retriever",
    "sparse": "trident_search.indexers.sparse.retriever:SparseRetriever",
    "dense": "trident_search.indexers.dense.retriever:DenseRetriever",
}
_registry: dict[str, Retriever] = {}
_lock = threading.Lock()
_loaded = False


class RegistryError(TridentError, ValueError):
    """A retriever registered twice, under a bad name, or asked for but unknown."""


def _load(target: str) -> Retriever:
    module, _, attr = target.partition(":")
    cls = getattr(import_module(module), attr)
    return cls() if isinstance(cls, type) else cls


def _ensure_loaded() -> None:
    global _loaded
    with _lock:
        if _loaded:
            return
        for name, target in _BUILTIN.items():
            _registry.setdefault(name, _load(target))
        for ep in entry_points(group="trident.retrievers"):
            _registry.setdefault(ep.name, _load(ep.value))
        _loaded = True


def register(retriever: Retriever) -> Retriever:
    """Add a retriever (an instance) under ``retriever.name``; returns it, so it works as a decorator target."""
    _ensure_loaded()
    name = getattr(retriever, "name", "")
    if not name.isidentifier() or name in {"hybrid", "fusion", "query"}:
        raise RegistryError(f"retriever name {name!r} must be an identifier other than hybrid/fusion/query")
    with _lock:
        if name in _registry and _registry[name] is not retriever:
            raise RegistryError(f"a retriever named {name!r} is already registered")
        _registry[name] = retriever
    return retriever


def unregister(name: str) -> None:
    """Remove a registered retriever (tests register toys and remove them afterwards)."""
    _ensure_loaded()
    with _lock:
        _registry.pop(name, None)


def registered() -> dict[str, Retriever]:
    """Every registered retriever by name, built-ins first, in registration order."""
    _ensure_loaded()
    with _lock:
        return dict(_registry)


def get(name: str) -> Retriever:
    """One registered retriever; the error lists the known names."""
    found = registered().get(name)
    if found is None:
        raise RegistryError(f"unknown retriever {name!r}; known: {', '.join(registered())}")
    return found


def names() -> list[str]:
    return list(registered())
