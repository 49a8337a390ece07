"""BM25 over a Lucene index: built by Anserini (``_build``), searched by Lucene and ranked as Anserini
ranks (``_search``), with global statistics for the shards of a sharded index (``_stats``)."""
from trident_search.indexers.bm25._build import IndexBuildError
from trident_search.indexers.bm25._format import FIELDS, PARAMS_FILE
from trident_search.indexers.bm25._search import MAX_QUERY_TERMS, BM25Index, IndexLoadError, PreparedQuery
from trident_search.indexers.bm25._stats import GlobalStats

__all__ = [
    "FIELDS", "MAX_QUERY_TERMS", "PARAMS_FILE", "BM25Index", "GlobalStats", "IndexBuildError", "IndexLoadError",
    "PreparedQuery",
]
