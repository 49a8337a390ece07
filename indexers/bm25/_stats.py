"""Global BM25 statistics: what makes the shards of one index score as the single-node index does.

BM25 scores a document from its own term frequencies and length, and from three statistics of the
whole collection: each query term's document frequency (IDF), the document count and the total term
count (average length). A shard's Lucene knows them only for the shard. So each shard exports its
own (:meth:`BM25Index.local_stats`: one *part*, a byte string), the parts of every shard make one
:class:`GlobalStats`, and every shard's searcher is handed it (:meth:`BM25Index.set_global_stats`).
Each searcher sums the parts, keeping only the terms it holds, and answers Lucene's
``termStatistics``/``collectionStatistics`` hooks from the sums (Java: ``java/GlobalStatsSearcher.java``),
so the float inputs to Lucene's BM25 formula, and hence the scores, are the single-node ones.

Combining parts is pure Python (framing, no parsing), so a router that holds no JVM can do it. The
statistics describe the shards at the moment they were exported: when a shard changes (documents
added or removed, a shard added), export and set them again.

Part format (big-endian, ``DataOutputStream``): ``int`` magic ``TBM1``, ``int`` number of fields,
then per scored field (those with norms), sorted by name: ``UTF`` name, ``long`` maxDoc, docCount,
sumTotalTermFreq, sumDocFreq, and when docCount > 0 ``long`` number of terms, then per term in
Lucene's order ``int`` length, the term's bytes, ``long`` docFreq, ``long`` totalTermFreq.
"""
from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass

MAGIC = b"TBM1"


@dataclass(frozen=True, slots=True)
class GlobalStats:
    """The statistics of every shard of one index (one exported part per shard), picklable."""

    parts: tuple[bytes, ...]

    def __post_init__(self) -> None:
        if not self.parts:
            raise ValueError("global statistics need the part of at least one shard")
        for part in self.parts:
            if not isinstance(part, bytes) or not part.startswith(MAGIC):
                raise ValueError("every part must be the bytes of BM25Index.local_stats()")

    @classmethod
    def of(cls, parts: Iterable[bytes]) -> GlobalStats:
        """From the parts of every shard (:meth:`BM25Index.local_stats`), in any order."""
        return cls(tuple(bytes(p) for p in parts))

    @property
    def n_parts(self) -> int:
        return len(self.parts)

    @property
    def fingerprint(self) -> str:
        """A short hash of the parts (order-independent): equal statistics, equal fingerprint."""
        digest = hashlib.blake2b(digest_size=8)
        for part in sorted(hashlib.blake2b(p, digest_size=16).digest() for p in self.parts):
            digest.update(part)
        return digest.hexdigest()

    def packed(self) -> bytes:
        """What the Java searcher reads: ``int`` n, then n times (``int`` length, part)."""
        return b"".join([struct.pack(">i", len(self.parts)),
                         *(struct.pack(">i", len(p)) + p for p in self.parts)])
