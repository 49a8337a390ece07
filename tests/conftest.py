"""Shared fixtures. Models load offline; the demo corpus is the real-data fixture."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "data" / "demo" / "scifact-demo"


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The shipped 500-document scifact subset (BEIR layout)."""
    return DEMO
