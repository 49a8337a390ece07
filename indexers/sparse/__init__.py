"""Learned-sparse retrieval: a Seismic-like inverted index with block summaries (DESIGN.md section 3)."""
from ._index import FORMAT_VERSION, SparseIndex
from ._params import SparseFormatError, SparseIndexError, SparseParams

__all__ = ["FORMAT_VERSION", "SparseFormatError", "SparseIndex", "SparseIndexError", "SparseParams"]
