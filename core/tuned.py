"""The tuned-fusion entry of an index manifest: written by ``trident eval beir --tune-on``, read by
the engine as its fusion defaults. One model, so writer and reader cannot drift apart."""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from trident_search.indexers.manifest import Manifest

MANIFEST_KEY = "fusion"


class MethodSettings(BaseModel):
    """Tuned values for one fusion method; unset values fall back to the built-in defaults."""

    model_config = ConfigDict(extra="allow")

    weights: dict[str, float] = Field(default_factory=dict)
    rrf_k: float | None = None
    normalization: str | None = None


class TunedFusion(BaseModel):
    """``{"method": "rrf", "rrf": {...}, "interpolation": {...}, "tuned_on": {...}}``."""

    model_config = ConfigDict(extra="allow")

    method: Literal["rrf", "interpolation"]
    rrf: MethodSettings | None = None
    interpolation: MethodSettings | None = None
    tuned_on: dict[str, Any] = Field(default_factory=dict)
    # The entry this one replaced ({}: the built-in default), so ``trident eval restore-fusion`` can put
    # it back; and the cross-validation evidence ``--tune-on`` adopted this entry on. Optional: entries
    # written before these fields existed read as before.
    previous: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None

    def for_method(self, method: str) -> MethodSettings:
        return getattr(self, method, None) or MethodSettings()

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> TunedFusion | None:
        """The manifest's entry, or None when it has none (or one this version cannot read)."""
        raw = manifest.extra.get(MANIFEST_KEY)
        if not isinstance(raw, dict):
            return None
        try:
            return cls.model_validate(raw)
        except ValidationError:
            return None

    def store(self, manifest: Manifest) -> None:
        manifest.extra[MANIFEST_KEY] = self.model_dump(exclude_none=True)
