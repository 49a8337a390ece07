"""Dense retrieval: L2-normalised embeddings in a FAISS inner-product index (Flat, HNSW or IVF)."""
from trident_search.indexers.dense._index import (
    DenseIndex,
    DenseIndexError,
    DenseParams,
    default_factory,
    faiss_threads,
)

__all__ = ["DenseIndex", "DenseIndexError", "DenseParams", "default_factory", "faiss_threads"]
