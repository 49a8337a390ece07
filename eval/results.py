"""What one evaluation produced: per-mode metrics, latencies and runs, plus where they came from.

Kept apart from the engine-driving code so reports and tests can build these without loading an
index or a model.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from importlib.resources import files
from typing import Any

import numpy as np

Run = dict[str, dict[str, float]]


@dataclass(slots=True)
class ModeResult:
    """One retrieval mode on one split; ``run`` holds the ranked hits (qid -> docid -> score)."""

    mode: str
    metrics: dict[str, float]
    latency_ms: dict[str, float]
    run: Run = field(repr=False)
    settings: dict[str, Any] = field(default_factory=dict)
    per_query: dict[str, dict[str, float]] = field(default_factory=dict, repr=False)  # metric -> qid -> value
    vs_baseline: dict[str, Any] | None = None  # significance.PairedComparison.to_json(); None: the baseline

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "metrics": self.metrics,
            "latency_ms": self.latency_ms,
            "settings": self.settings,
            "p_value": self.vs_baseline["p_value"] if self.vs_baseline else None,
            "vs_baseline": self.vs_baseline,
            "per_query": self.per_query,
        }


@dataclass(slots=True)
class EvalResult:
    """A full evaluation: every mode, the tuning outcome, the index and the reference rows."""

    dataset: str
    split: str
    index: str
    queries: int
    modes: list[ModeResult]
    build_stages: dict[str, float] = field(default_factory=dict)  # from the index manifest
    tuning: dict[str, Any] | None = None
    references: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)  # command, machine, date, timings
    baseline: str | None = None  # the mode every other mode is tested against

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["modes"] = [m.to_json() for m in self.modes]
        return data


def latency_summary(seconds: list[float] | np.ndarray) -> dict[str, float]:
    """p50 / p99 / mean per-query latency in milliseconds."""
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {"p50": 0.0, "p99": 0.0, "mean": 0.0}
    return {
        "p50": float(np.percentile(ms, 50)),
        "p99": float(np.percentile(ms, 99)),
        "mean": float(ms.mean()),
    }


def load_references(dataset: str, split: str) -> list[dict[str, Any]]:
    """Published rows for a dataset/split from ``eval/references.json`` (each with its source)."""
    data = json.loads(files("trident_search.eval").joinpath("references.json").read_text())
    return [r for r in data["rows"] if r["dataset"] == dataset and r["split"] == split]
