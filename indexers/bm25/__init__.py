"""BM25 over a Lucene index built and searched through Anserini (see ``_index`` for why it is built so)."""
from trident_search.indexers.bm25._index import (
    FIELDS,
    MAX_QUERY_TERMS,
    PARAMS_FILE,
    BM25Index,
    IndexBuildError,
    IndexLoadError,
    PreparedQuery,
)

__all__ = ["FIELDS", "MAX_QUERY_TERMS", "PARAMS_FILE", "BM25Index", "IndexBuildError", "IndexLoadError", "PreparedQuery"]
