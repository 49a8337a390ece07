"""Trident: hybrid retrieval (BM25 on Lucene, learned sparse, dense FAISS), fused and served.

The public Python API, in the style of Pyserini's searchers::

    from trident_search import Searcher
    with Searcher.open("indexes/demo") as s:
        hits = s.search("vitamin D and bone density", k=10, mode="hybrid")

Names are imported lazily, so ``import trident_search.encoders`` does not load Lucene or FAISS.
"""
from __future__ import annotations

from importlib import import_module
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trident_search.core.fusion import fuse, interpolate, rrf
    from trident_search.core.schemas import SearchRequest, SearchResponse
    from trident_search.core.searcher import Searcher
    from trident_search.errors import TridentError
    from trident_search.indexers.build import BuildConfig, build_index

try:
    __version__ = version("trident-search")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY = {
    "Searcher": "trident_search.core.searcher",
    "SearchRequest": "trident_search.core.schemas",
    "SearchResponse": "trident_search.core.schemas",
    "fuse": "trident_search.core.fusion",
    "rrf": "trident_search.core.fusion",
    "interpolate": "trident_search.core.fusion",
    "build_index": "trident_search.indexers.build",
    "BuildConfig": "trident_search.indexers.build",
    "TridentError": "trident_search.errors",
}
__all__ = [
    "BuildConfig", "SearchRequest", "SearchResponse", "Searcher", "TridentError", "__version__",
    "build_index", "fuse", "interpolate", "rrf",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trident_search' has no attribute {name!r}")
