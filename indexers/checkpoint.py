"""Crash-safe files for the build: atomic writes and numbered encoding shards.

A file is written under a temporary name, flushed to disk and renamed into place, so after a
``kill -9`` a shard either exists whole or not at all. Shards are numbered from 0 and each covers
``shard_size`` consecutive documents, so the complete shards tell a resumed build where to start.
"""
from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp

_SHARD = re.compile(r"^(\d{6})\.(npy|npz)$")


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see either the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a full disk must not be kept full by a half-written file
        raise
    fsync_dir(path.parent)


class ShardStore:
    """Numbered encoding shards in one folder, one retriever's: dense arrays as ``.npy``, sparse
    (CSR) matrices as ``.npz``. The format follows the block written, so any retriever's
    :data:`~trident_search.indexers.retriever.Chunk` type can be checkpointed."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)

    def _existing(self) -> dict[int, Path]:
        return {int(m.group(1)): p for p in self.dir.iterdir() if (m := _SHARD.match(p.name))}

    def complete(self) -> int:
        """How many shards, numbered 0.., exist without a gap (later ones are ignored)."""
        have = self._existing()
        n = 0
        while n in have:
            n += 1
        return n

    def path(self, i: int) -> Path:
        """Shard ``i``'s file (whichever format it was written in)."""
        found = self._existing().get(i)
        if found is None:
            raise FileNotFoundError(f"no checkpoint shard {i} in {self.dir}")
        return found

    def nbytes(self) -> int:
        """Bytes the complete shards take on disk."""
        return sum(p.stat().st_size for p in self._existing().values())

    def write(self, i: int, block: np.ndarray | sp.spmatrix) -> None:
        buf = io.BytesIO()
        if not sp.issparse(block):
            np.save(buf, np.ascontiguousarray(block, dtype=np.float32))
            suffix = "npy"
        else:
            suffix = "npz"
            csr = sp.csr_matrix(block)
            np.savez(
                buf,
                data=csr.data.astype(np.float32),
                indices=csr.indices.astype(np.int32),
                indptr=csr.indptr.astype(np.int64),
                shape=np.array(csr.shape, dtype=np.int64),
            )
        for other in ("npy", "npz"):  # a shard rewritten in the other format must not be read twice
            if other != suffix:
                (self.dir / f"{i:06d}.{other}").unlink(missing_ok=True)
        write_atomic(self.dir / f"{i:06d}.{suffix}", buf.getvalue())

    def read(self, i: int, path: Path | None = None) -> np.ndarray | sp.csr_matrix:
        path = path or self.path(i)
        if path.suffix == ".npy":
            return np.load(path)
        with np.load(path) as z:
            return sp.csr_matrix(
                (z["data"], z["indices"], z["indptr"]), shape=tuple(int(x) for x in z["shape"])
            )

    def __iter__(self) -> Iterator[np.ndarray | sp.csr_matrix]:
        have = self._existing()
        for i in range(self.complete()):
            yield self.read(i, have[i])
