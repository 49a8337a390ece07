"""``manifest.json``: what an index directory holds and how it was made.

Written last by the build, so its presence marks a complete index. It records the format version,
the corpus fingerprint and document count, the encoder names and revisions, every build parameter,
per-stage timings and the size and sha256 of every file, so ``verify`` can tell a damaged or
hand-edited index from a good one. Keys this module does not know (e.g. fusion weights tuned later
by ``eval``) are kept on load and written back unchanged.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from trident_search.errors import IndexLoadError
from trident_search.indexers.checkpoint import write_atomic

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


class ManifestError(IndexLoadError, ValueError):
    """A missing, unreadable, incompatible or mismatching manifest."""


class JsonManifest:
    """JSON round-trip shared by single-node and sharded manifests: known fields plus kept ``extra`` keys."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)  # type: ignore[call-overload]
        data.update(data.pop("extra"))
        return dict(data)

    def write(self, directory: str | Path) -> None:
        """Write ``manifest.json`` atomically (temp file + rename), so a reader never sees half of it."""
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
        write_atomic(Path(directory) / MANIFEST, text.encode())


@dataclass(slots=True)
class Manifest(JsonManifest):
    """The contents of ``manifest.json`` (see the module docstring)."""

    created_at: str
    doc_count: int
    corpus: dict[str, Any]  # path, fingerprint (sha256 of the valid records), skipped
    retrievers: list[str]
    models: dict[str, dict[str, Any]]  # retriever -> {name, revision, dim | vocab_size}
    params: dict[str, Any]  # every build parameter
    files: dict[str, dict[str, Any]]  # relative path -> {size, sha256}
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> docs, seconds, docs_per_s
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)


    @classmethod
    def load(cls, directory: str | Path) -> Manifest:
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise ManifestError(
                f"{path} not found: {directory} is not a complete Trident index "
                "(build one with `trident index build`)"
            )
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{path} is not valid JSON: {exc}") from None
        if data.get("kind") == "sharded":  # written by cluster/ (the Ray scale-out)
            raise ManifestError(
                f"{directory} is a sharded index: serve it with `trident serve --index {directory} "
                "--ray-address ...`, or open one of its shard-NNNN directories"
            )
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ManifestError(
                f"{path} has format version {version}; this Trident reads version {FORMAT_VERSION}. "
                "Rebuild the index with this version."
            )
        known = {f.name for f in fields(cls)} - {"extra"}
        missing = known - data.keys() - {"stages"}
        if missing:
            raise ManifestError(f"{path} lacks {sorted(missing)}; rebuild the index")
        extra = {k: v for k, v in data.items() if k not in known}
        return cls(**{k: v for k, v in data.items() if k in known}, extra=extra)

    def verify(self, directory: str | Path) -> list[str]:
        """Problems found by re-hashing every listed file (empty when the index is intact)."""
        root = Path(directory)
        problems = []
        for rel, meta in sorted(self.files.items()):
            path = root / rel
            if not path.is_file():
                problems.append(f"{rel}: missing")
            elif path.stat().st_size != meta["size"]:
                problems.append(f"{rel}: size {path.stat().st_size} != {meta['size']}")
            elif sha256_file(path) != meta["sha256"]:
                problems.append(f"{rel}: checksum mismatch")
        return problems


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_table(root: Path, parts: list[str]) -> dict[str, dict[str, Any]]:
    """Size and sha256 of every file under the given top-level entries of ``root``."""
    table: dict[str, dict[str, Any]] = {}
    for part in parts:
        top = root / part
        paths = [top] if top.is_file() else sorted(p for p in top.rglob("*") if p.is_file())
        for p in paths:
            table[p.relative_to(root).as_posix()] = {"size": p.stat().st_size, "sha256": sha256_file(p)}
    return table
