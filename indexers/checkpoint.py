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
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


class ShardStore:
    """Numbered encoding shards in one folder: dense ``.npy`` or sparse CSR ``.npz``."""

    def __init__(self, directory: Path, kind: str) -> None:
        if kind not in ("dense", "sparse"):
            raise ValueError(f"shard kind must be 'dense' or 'sparse', got {kind!r}")
        self.dir = directory
        self.kind = kind
        self.suffix = "npy" if kind == "dense" else "npz"
        self.dir.mkdir(parents=True, exist_ok=True)

    def complete(self) -> int:
        """How many shards, numbered 0.., exist without a gap (later ones are ignored)."""
        have = {int(m.group(1)) for p in self.dir.iterdir() if (m := _SHARD.match(p.name))}
        n = 0
        while n in have:
            n += 1
        return n

    def path(self, i: int) -> Path:
        return self.dir / f"{i:06d}.{self.suffix}"

    def write(self, i: int, block: np.ndarray | sp.csr_matrix) -> None:
        buf = io.BytesIO()
        if self.kind == "dense":
            np.save(buf, np.ascontiguousarray(block, dtype=np.float32))
        else:
            csr = sp.csr_matrix(block)
            np.savez(
                buf,
                data=csr.data.astype(np.float32),
                indices=csr.indices.astype(np.int32),
                indptr=csr.indptr.astype(np.int64),
                shape=np.array(csr.shape, dtype=np.int64),
            )
        write_atomic(self.path(i), buf.getvalue())

    def read(self, i: int) -> np.ndarray | sp.csr_matrix:
        if self.kind == "dense":
            return np.load(self.path(i))
        with np.load(self.path(i)) as z:
            return sp.csr_matrix(
                (z["data"], z["indices"], z["indptr"]), shape=tuple(int(x) for x in z["shape"])
            )

    def __iter__(self) -> Iterator[np.ndarray | sp.csr_matrix]:
        for i in range(self.complete()):
            yield self.read(i)
