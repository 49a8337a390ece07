"""Shared fixtures. Models load offline; the demo corpus is the real-data fixture."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from service_fixture import build_tiny_index, shared_engine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "data" / "demo" / "scifact-demo"


@pytest.fixture(scope="session")
def demo_dir() -> Path:
    """The shipped 500-document scifact subset (BEIR layout)."""
    return DEMO


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The small real index (with metadata) that the engine and API tests share."""
    root = tmp_path_factory.getbasetemp() / "service-index"
    root.mkdir(exist_ok=True)
    return build_tiny_index(root)


@pytest.fixture(scope="session")
def engine(index_dir: Path):  # noqa: ANN201 - trident_search.service.engine.Engine
    """One loaded engine over ``index_dir`` for the whole session."""
    return shared_engine(index_dir)
