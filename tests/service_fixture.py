"""One small real index, built once per test session and shared by the engine and API tests.

60 scifact abstracts from the shipped demo corpus, each given metadata (``year``, ``lang``, ``i``)
so filters can be tested on known counts: ``lang == "de"`` holds for every third document
(i % 3 == 0: 20 documents), ``year`` cycles 2015..2018 (15 documents each).
"""
from __future__ import annotations

import importlib.util
import itertools
import json
import threading
from pathlib import Path

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo" / "scifact-demo" / "corpus.jsonl"
N_DOCS = 60
_lock = threading.Lock()
_built: dict[Path, Path] = {}


def retrievers() -> tuple[str, ...]:
    """Every retriever whose package is present (the sparse index may land after the others)."""
    have_sparse = importlib.util.find_spec("trident_search.indexers.sparse") is not None
    return ("bm25", "sparse", "dense") if have_sparse else ("bm25", "dense")


def metadata(i: int) -> dict[str, object]:
    return {"year": 2015 + i % 4, "lang": "de" if i % 3 == 0 else "en", "i": i}


def build_tiny_index(root: Path) -> Path:
    """Write the corpus and build the index under ``root`` (once per process)."""
    from trident_search.indexers.build import BuildConfig, build_index

    with _lock:
        if root in _built:
            return _built[root]
        corpus = root / "corpus.jsonl"
        with DEMO.open() as src, corpus.open("w") as out:
            for i, line in enumerate(itertools.islice(src, N_DOCS)):
                doc = json.loads(line)
                doc["metadata"] = metadata(i)
                out.write(json.dumps(doc) + "\n")
        build_index(corpus, root / "index", BuildConfig(retrievers=retrievers(), device="cpu"))
        _built[root] = root / "index"
        return _built[root]


_engines: dict[Path, object] = {}


def shared_engine(index_dir: Path):  # noqa: ANN201 - returns trident_search.core.engine.Engine
    """One engine per index for the whole session (loading models and the JVM takes seconds)."""
    from trident_search.core.engine import Engine

    with _lock:
        if index_dir not in _engines:
            _engines[index_dir] = Engine.load(index_dir, threads=3)
        return _engines[index_dir]
