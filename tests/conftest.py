"""Shared fixtures. Models load offline; the demo corpus is the real-data fixture.

Every test keeps its state in pytest's temporary folders: the ONNX export cache of the session
goes there too (not ``~/.cache/trident``), and the Ray test cluster makes its own temp dir.
"""
from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from service_fixture import build_tiny_index, shared_engine

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent
DEMO = REPO / "data" / "demo" / "scifact-demo"


def require(module: str) -> ModuleType:
    """``pytest.importorskip`` for the dev extras, except that in CI (``CI`` set) a missing one fails.

    The cross-checks against ranx, Schemathesis, pyseismic-lsr and Ray must never pass by
    silently skipping on a CI machine whose install lost the extra.
    """
    if os.environ.get("CI", "").lower() in ("", "0", "false", "no"):
        return pytest.importorskip(module)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        pytest.fail(f"CI is set and {module!r} (a dev extra) is missing: pip install -e '.[dev]' ({exc})",
                    pytrace=False)


@pytest.fixture(scope="session", autouse=True)
def _private_caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The session's ONNX exports go to its own temp folder, never the user's cache."""
    saved = os.environ.get("TRIDENT_CACHE")
    os.environ["TRIDENT_CACHE"] = str(tmp_path_factory.mktemp("trident-cache"))
    yield
    if saved is None:
        os.environ.pop("TRIDENT_CACHE", None)
    else:
        os.environ["TRIDENT_CACHE"] = saved


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
def engine(index_dir: Path):  # noqa: ANN201 - trident_search.core.engine.Engine
    """One loaded engine over ``index_dir`` for the whole session."""
    return shared_engine(index_dir)
