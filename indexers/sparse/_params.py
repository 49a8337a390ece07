"""Build and search parameters of the learned-sparse index, validated once."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from trident_search.errors import TridentError


class SparseIndexError(TridentError, ValueError):
    """A sparse index that cannot be built, loaded or searched as asked."""


class SparseFormatError(SparseIndexError):
    """A saved sparse index whose files are missing or of another format version."""


@dataclass(frozen=True, slots=True)
class SparseParams:
    """Seismic parameters (Bruch et al., SIGIR 2024), names as in the paper and pyseismic-lsr.

    Build time:
      * ``n_postings``: average length of the kept (pruned) posting lists. A global weight threshold
        keeps ``n_postings x (number of non-empty lists)`` postings in total. 0 (the default) scales
        it with the corpus: see ``auto_n_postings``.
      * ``max_fraction``: no list keeps more than ``max_fraction x n_postings`` postings (its heaviest).
      * ``centroid_fraction``: each list is cut into about ``centroid_fraction x length`` blocks,
        clustered around random members of the list.
      * ``doc_cut``: a document is assigned to the centroid with the highest dot product over the
        document's ``doc_cut`` heaviest terms (cheap and good enough for clustering).
      * ``summary_energy``: a block summary (component-wise max of its documents) keeps its heaviest
        entries up to this fraction of its L1 mass, quantised to 8 bits with one scale per block.
      * ``max_summary``: a block summary keeps at most this many entries (its heaviest): bounds the
        summaries' size, which the energy cut alone lets grow with the documents' length. 36 keeps
        scifact's ``sparse/`` at 1.93x its forward index with approximate nDCG@10 0.004 below exact
        (64: 2.48x, -0.003; 32: 1.85x, -0.005).
      * ``knn``: neighbours stored per document for kNN refinement (0 = no graph).
      * ``seed``: centroid sampling is deterministic given the seed.
    Search time (defaults, overridable per call):
      * ``query_cut``: only the lists of the ``query_cut`` heaviest query terms are traversed.
      * ``heap_factor``: once the top-k heap is full, a block is skipped when its summary score is
        below ``heap_factor x`` the k-th best score (1.0 skips most, 0.0 skips nothing).
      * ``n_knn``: neighbours of each result that are scored after the main pass (needs ``knn``).
    """

    n_postings: int = 0
    max_fraction: float = 1.5
    centroid_fraction: float = 0.1
    summary_energy: float = 0.4
    doc_cut: int = 15
    max_summary: int = 36
    knn: int = 0
    seed: int = 0
    query_cut: int = 10
    heap_factor: float = 0.8
    n_knn: int = 0

    def __post_init__(self) -> None:
        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise SparseIndexError(f"SparseParams.{name}={getattr(self, name)!r}: must be {rule}")

        need(self.n_postings >= 0, "n_postings", ">= 0 (0 = scaled with the corpus)")
        need(math.isfinite(self.max_fraction) and self.max_fraction > 0, "max_fraction", "> 0")
        need(0 < self.centroid_fraction <= 1, "centroid_fraction", "in (0, 1]")
        need(0 < self.summary_energy <= 1, "summary_energy", "in (0, 1]")
        need(self.doc_cut >= 1, "doc_cut", ">= 1")
        need(1 <= self.max_summary <= 65535, "max_summary", "in [1, 65535]")
        need(self.knn >= 0, "knn", ">= 0")
        need(self.query_cut >= 1, "query_cut", ">= 1")
        need(math.isfinite(self.heap_factor) and self.heap_factor >= 0, "heap_factor", ">= 0")
        need(self.n_knn >= 0, "n_knn", ">= 0")

    def resolved(self, n_docs: int, nnz: int, n_lists: int) -> SparseParams:
        """These parameters with ``n_postings`` fixed for a corpus (unchanged unless it is 0)."""
        if self.n_postings > 0:
            return self
        return replace(self, n_postings=auto_n_postings(n_docs, nnz, n_lists))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SparseParams:
        """Rebuild from saved JSON, ignoring unknown keys so older readers fail only on versions."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


AUTO_POSTINGS_FRACTION = 0.25  # of the mean list length
AUTO_POSTINGS_MIN = 64
AUTO_POSTINGS_MAX = 4000  # Seismic's setting for MS MARCO (8.8M passages)


def auto_n_postings(n_docs: int, nnz: int, n_lists: int) -> int:
    """Default ``n_postings``: a fixed share of the mean posting-list length (the lists' total
    weight grows with the corpus, and so does the work a kept posting saves), within
    [AUTO_POSTINGS_MIN, AUTO_POSTINGS_MAX]. Large corpora land on Seismic's published setting."""
    mean_len = nnz / max(1, n_lists)
    return int(min(AUTO_POSTINGS_MAX, max(AUTO_POSTINGS_MIN, round(AUTO_POSTINGS_FRACTION * mean_len))))
