"""A sharded index directory: which shard owns a document, and the top-level manifest.

```
<index>/manifest.json      kind "sharded": shards, global doc count, corpus fingerprint, rule
<index>/shard-0000/        a complete single-node index directory (its own manifest.json)
<index>/shard-0001/
```

The assignment rule is a stable hash of the external id, so it needs no table, does not depend on
corpus order, and any process (builder, router, a user's script) computes the same owner.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from trident_search.indexers.manifest import MANIFEST, JsonManifest, ManifestError

SHARDED_KIND = "sharded"
SHARDED_FORMAT_VERSION = 1
ASSIGNMENT_RULE = "blake2b(utf-8 _id, digest_size=8) as big-endian uint64, mod n_shards"


def shard_of(doc_id: str, n_shards: int) -> int:
    """The shard that owns ``doc_id`` (see ``ASSIGNMENT_RULE``)."""
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % n_shards


def shard_name(i: int) -> str:
    return f"shard-{i:04d}"


def is_sharded(directory: str | Path) -> bool:
    """True when ``directory`` holds a sharded index (its manifest says kind "sharded")."""
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text()).get("kind") == SHARDED_KIND
    except (OSError, ValueError, AttributeError):
        return False


@dataclass(slots=True)
class ShardedManifest(JsonManifest):
    """The top-level ``manifest.json`` of a sharded index; each shard keeps its own full manifest."""

    created_at: str
    doc_count: int
    corpus: dict[str, Any]  # path, fingerprint (same definition as a single-node build), skipped
    n_shards: int
    assignment: dict[str, Any]  # rule + n_shards
    shards: list[dict[str, Any]]  # name, doc_count, fingerprint (of the shard's own records)
    params: dict[str, Any]
    stages: dict[str, dict[str, float]] = field(default_factory=dict)
    kind: str = SHARDED_KIND
    format_version: int = SHARDED_FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)  # unknown keys (e.g. tuned fusion), kept

    @classmethod
    def load(cls, directory: str | Path) -> ShardedManifest:
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise ManifestError(
                f"{path} not found: {directory} is not a complete sharded Trident index "
                "(build one with `trident index build --shards N --ray-address ...`)"
            )
        data = json.loads(path.read_text())
        if data.get("kind") != SHARDED_KIND:
            raise ManifestError(
                f"{directory} is a single-node index, not a sharded one; serve it without --ray-address"
            )
        if data.get("format_version") != SHARDED_FORMAT_VERSION:
            raise ManifestError(
                f"{path} has sharded format version {data.get('format_version')}; this Trident reads "
                f"version {SHARDED_FORMAT_VERSION}. Rebuild the index with this version."
            )
        known = {f.name for f in fields(cls)} - {"extra"}
        extra = {k: v for k, v in data.items() if k not in known}
        manifest = cls(**{k: v for k, v in data.items() if k in known}, extra=extra)
        missing = [s["name"] for s in manifest.shards if not (Path(directory) / s["name"] / MANIFEST).is_file()]
        if missing:
            raise ManifestError(f"{directory} lacks shard directories {missing}; rebuild the index")
        return manifest

    @property
    def retrievers(self) -> list[str]:
        return list(self.params["retrievers"])

    def shard_dirs(self, directory: str | Path) -> list[Path]:
        return [Path(directory) / s["name"] for s in self.shards]
