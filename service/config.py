"""Server settings, read from ``TRIDENT_*`` environment variables (or a ``.env`` file).

``trident serve`` sets the same variables from its flags before starting uvicorn, so worker
processes started by ``--workers`` read identical settings.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Everything the app needs; limits are enforced on every request with a 4xx naming the field."""

    model_config = SettingsConfigDict(env_prefix="TRIDENT_", env_file=".env", extra="ignore")

    index: Path = Field(Path("indexes/demo"), description="Index directory to serve.")
    api_key: SecretStr | None = Field(
        None, description="When set, /v1/* requires this value in the API-key header."
    )
    api_key_header: str = "X-API-Key"
    max_k: int = Field(100, ge=1, le=10_000)
    max_offset: int = Field(1_000, ge=0, le=100_000)
    max_depth: int = Field(1_000, ge=1, le=10_000)
    max_query_chars: int = Field(2_000, ge=1)
    max_batch: int = Field(64, ge=1)
    max_body_bytes: int = Field(1_000_000, ge=1_024)
    default_depth: int = Field(100, ge=1)
    search_threads: int = Field(
        3, ge=1, le=64, description="Retrievers of one query run concurrently on this many threads."
    )
    query_backend: Literal["onnx", "torch"] = Field(
        "onnx", description="Query encoder backend; int8 ONNX Runtime is the fast path."
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("api_key")
    @classmethod
    def _no_blank_key(cls, v: SecretStr | None) -> SecretStr | None:
        """An empty TRIDENT_API_KEY means 'no auth', not 'the empty string is the key'."""
        if v is not None and not v.get_secret_value().strip():
            return None
        return v

    @field_validator("default_depth")
    @classmethod
    def _depth_within_limit(cls, v: int, info) -> int:  # type: ignore[no-untyped-def]
        max_depth = info.data.get("max_depth")
        if max_depth is not None and v > max_depth:
            raise ValueError(f"default_depth {v} exceeds max_depth {max_depth}")
        return v
