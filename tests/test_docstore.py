"""DocStore: id mapping, lookups, metadata filters, read-only and threaded use."""
from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import numpy as np
import pytest

from trident_search.indexers.corpus import Document
from trident_search.indexers.docstore import DocStore, DocStoreError, FilterError


def _docs(n: int = 30) -> list[Document]:
    return [
        Document(f"d{i}", f"title {i}", f"text {i}",
                 {"year": 2000 + i % 3, "lang": "en" if i % 2 else "de", "ok": i % 5 == 0})
        for i in range(n)
    ]


@pytest.fixture()
def store_path(tmp_path: Path) -> Path:
    path = tmp_path / "docs.sqlite"
    with DocStore.create(path) as store:
        assert store.add(_docs()) == 30
    return path


def test_ids_round_trip(store_path: Path) -> None:
    store = DocStore.open(store_path)
    assert len(store) == 30
    assert list(store.external_ids()[:3]) == ["d0", "d1", "d2"]
    np.testing.assert_array_equal(store.internal_ids(["d7", "missing", "d0"]), [7, -1, 0])
    got = store.get([4, 1])
    assert [d.id for d in got] == ["d4", "d1"] and got[0].internal_id == 4
    assert got[0].metadata == {"year": 2001, "lang": "de", "ok": False}
    assert store.get_by_external("d9").title == "title 9"
    assert store.get_by_external("nope") is None
    with pytest.raises(KeyError, match="99"):
        store.get([99])


def test_filters_equality_in_and_combined(store_path: Path) -> None:
    store = DocStore.open(store_path)
    years = np.array([2000 + i % 3 for i in range(30)])
    np.testing.assert_array_equal(store.matching({"year": 2001}), years == 2001)
    np.testing.assert_array_equal(store.matching({"year": [2000, 2002]}), years != 2001)
    combined = store.matching({"year": 2001, "lang": "en"})
    np.testing.assert_array_equal(combined, (years == 2001) & (np.arange(30) % 2 == 1))
    assert store.matching({"ok": True}).sum() == 6
    assert store.matching({"absent": "x"}).sum() == 0
    assert store.matching({}).all()


@pytest.mark.parametrize(
    "bad, message",
    [({"a'b": 1}, "field name"), ({"year": {"gt": "x"}}, "ISO 8601"), ({"year": []}, "no values"),
     ({"year": [None]}, "values")],
)
def test_bad_filters_raise_filter_error(store_path: Path, bad: dict, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        DocStore.open(store_path).matching(bad)


def test_readonly_store_rejects_writes_and_serves_threads(store_path: Path) -> None:
    store = DocStore.open(store_path)
    with pytest.raises(DocStoreError, match="read-only"):
        store.add(_docs(1))
    conn = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    results: list[list[str]] = []

    def lookup() -> None:
        results.append([d.id for d in store.get(range(0, 30, 7))])

    threads = [threading.Thread(target=lookup) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [["d0", "d7", "d14", "d21", "d28"]] * 4


def test_duplicate_ids_and_missing_files_are_errors(tmp_path: Path, store_path: Path) -> None:
    with pytest.raises(DocStoreError, match="duplicate"):
        DocStore.open(store_path, readonly=False).add(_docs(1))
    with pytest.raises(DocStoreError, match="not found"):
        DocStore.open(tmp_path / "nope.sqlite")
    with pytest.raises(DocStoreError, match="already exists"):
        DocStore.create(store_path)


def test_same_documents_give_the_same_file_bytes(tmp_path: Path) -> None:
    digests = set()
    for name in ("a.sqlite", "b.sqlite"):
        with DocStore.create(tmp_path / name) as store:
            store.add(_docs())
        digests.add(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
    assert len(digests) == 1
