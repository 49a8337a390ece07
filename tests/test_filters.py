"""The filter language over a docstore: operators, combinators, dates, lists, nested fields, facets,
bad filters naming their path, and the engine/API applying them in every mode."""
from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trident_search.indexers.corpus import Document
from trident_search.indexers.docstore import DocStore
from trident_search.indexers.filters import FilterError, iso_date, parse

N = 200


def _meta(i: int) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "year": 2010 + i % 10, "score": i / 10, "lang": ["en", "de", "fr"][i % 3], "ok": i % 4 == 0,
        "date": f"20{10 + i % 10:02d}-0{1 + i % 9}-15", "tags": [f"t{i % 5}", f"t{i % 7}"],
        "src": {"name": f"s{i % 2}"},
    }
    if i % 11 == 0:
        del meta["year"]
    if i % 13 == 0:
        meta["lang"] = None
    return meta


def _has(meta: dict[str, Any], field: str) -> list[Any]:
    """Reference: a document's values for a field (lists spread, nested objects by dotted name)."""
    value: Any = meta
    for part in field.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if value is None:
        return []
    return [v for v in value if v is not None] if isinstance(value, list) else [value]


def _same_type(a: Any, b: Any) -> bool:
    return isinstance(a, bool) == isinstance(b, bool) and isinstance(a, str) == isinstance(b, str)


def _ref(meta: dict[str, Any], flt: dict[str, Any]) -> bool:
    """A direct Python evaluation of the filter language, to compare masks against."""
    for key, cond in flt.items():
        if key == "all":
            ok = all(_ref(meta, f) for f in cond)
        elif key == "any":
            ok = any(_ref(meta, f) for f in cond)
        elif key == "not":
            ok = not _ref(meta, cond)
        else:
            values = _has(meta, key)
            ops = cond if isinstance(cond, dict) else ({"in": cond} if isinstance(cond, list) else {"eq": cond})
            ok = all(_op(values, op, v) for op, v in ops.items())
        if not ok:
            return False
    return True


def _op(values: list[Any], op: str, arg: Any) -> bool:
    eq = lambda v, a: _same_type(v, a) and v == a  # noqa: E731
    if op == "eq":
        return any(eq(v, arg) for v in values)
    if op == "ne":
        return not any(eq(v, arg) for v in values)
    if op == "in":
        return any(eq(v, a) for v in values for a in arg)
    if op == "nin":
        return not any(eq(v, a) for v in values for a in arg)
    if op == "exists":
        return bool(values) == arg
    cmp = {"gt": lambda x, y: x > y, "gte": lambda x, y: x >= y, "lt": lambda x, y: x < y,
           "lte": lambda x, y: x <= y}[op]
    if isinstance(arg, str):
        b = iso_date(arg)
        return any(cmp(iso_date(v), b) for v in values if isinstance(v, str) and iso_date(v) is not None)
    return any(cmp(v, arg) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> DocStore:
    path = tmp_path_factory.mktemp("filters") / "docs.sqlite"
    with DocStore.create(path) as s:
        s.add(Document(f"d{i}", f"t{i}", "x", _meta(i)) for i in range(N))
    return DocStore.open(path)


CASES: list[dict[str, Any]] = [
    {"year": 2012},
    {"year": [2012, 2015], "lang": "en"},
    {"year": {"gte": 2013, "lt": 2016}},
    {"year": {"gt": 2013, "lte": 2016}, "ok": True},
    {"score": {"gt": 3.5, "lt": 10}},
    {"year": {"ne": 2012}},
    {"year": {"nin": [2012, 2013]}},
    {"year": {"exists": False}},
    {"lang": {"exists": True}},
    {"lang": {"in": ["de", "fr"]}},
    {"tags": "t3"},
    {"tags": {"in": ["t1", "t6"]}, "year": {"lt": 2014}},
    {"src.name": "s1"},
    {"date": {"gte": "2014-01-01", "lt": "2016-06-01T00:00:00Z"}},
    {"any": [{"year": 2010}, {"lang": "fr", "ok": True}]},
    {"all": [{"year": {"gte": 2012}}, {"not": {"lang": "en"}}]},
    {"not": {"any": [{"tags": "t0"}, {"year": {"exists": False}}]}},
    {"ok": 1},  # a number never equals a boolean
    {"year": "2012"},  # nor a string
    {},
]


@pytest.mark.parametrize("flt", CASES, ids=[str(c) for c in CASES])
def test_mask_equals_direct_evaluation(store: DocStore, flt: dict[str, Any]) -> None:
    want = np.array([_ref(_meta(i), flt) for i in range(N)])
    np.testing.assert_array_equal(store.matching(flt), want)


def test_some_cases_are_selective_and_some_broad(store: DocStore) -> None:
    counts = [int(store.matching(c).sum()) for c in CASES]
    assert min(counts) == 0 and max(counts) == N and len(set(counts)) > 10


def test_iso_dates() -> None:
    assert iso_date("2020-01-31") == datetime(2020, 1, 31, tzinfo=UTC).timestamp()
    assert iso_date("2020-01-31T01:00:00+01:00") == iso_date("2020-01-31")
    assert iso_date("2020-13-01") is None and iso_date("soon") is None and iso_date("2020") is None


@pytest.mark.parametrize(
    ("bad", "path"),
    [
        ({"year": {"gt": "soon"}}, "filters.year.gt"),
        ({"year": {"gt": True}}, "filters.year.gt"),
        ({"year": {"between": [1, 2]}}, "filters.year.between"),
        ({"year": {}}, "filters.year"),
        ({"year": []}, "filters.year"),
        ({"year": [None]}, "filters.year.0"),
        ({"year": {"in": [1, {"a": 1}]}}, "filters.year.in.1"),
        ({"year": {"exists": 1}}, "filters.year.exists"),
        ({"all": [{"year": 1}, {"year": {"gt": "x"}}]}, "filters.all.1.year.gt"),
        ({"all": {"year": 1}}, "filters.all"),
        ({"any": []}, "filters.any"),
        ({"not": [1]}, "filters.not"),
        ({"not": {"any": [{"bad field!": 1}]}}, "filters.not.any.0"),
        ({"a'b": 1}, "filters"),
        ({"f": 2**70}, "filters.f"),
        ({"f": float("nan")}, "filters.f"),
    ],
)
def test_bad_filter_names_its_path(store: DocStore, bad: dict[str, Any], path: str) -> None:
    with pytest.raises(FilterError) as info:
        store.matching(bad)
    assert info.value.field == path, info.value.message
    assert path.split(".")[-1] in info.value.message or "field name" in info.value.message


def test_facet_counts_equal_direct_counts(store: DocStore) -> None:
    allowed = store.matching({"ok": False})
    values, ranges = store.facet("year", allowed, size=3, ranges=[{"lt": 2013}, {"gte": 2013, "lt": 2020}])
    direct: dict[int, int] = {}
    for i in range(N):
        if allowed[i] and "year" in _meta(i):
            direct[_meta(i)["year"]] = direct.get(_meta(i)["year"], 0) + 1
    best = sorted(direct.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    assert values == best
    assert ranges == [sum(c for y, c in direct.items() if y < 2013), sum(c for y, c in direct.items() if y >= 2013)]
    tags, _ = store.facet("tags", None, size=100)
    assert dict(tags)["t0"] == sum("t0" in _meta(i)["tags"] for i in range(N))
    assert store.field_values([0, 11, 5], "year") == [None, None, 2015]


def test_preload_loads_the_fields_of_the_first_documents(tmp_path: Path) -> None:
    path = tmp_path / "docs.sqlite"
    with DocStore.create(path) as s:
        s.add(Document(f"d{i}", "t", "x", _meta(i)) for i in range(30))
    store = DocStore.open(path)
    assert set(store.columns.preload()) == {"year", "score", "lang", "ok", "date", "tags", "src.name"}
    assert set(store.columns._columns) == {"year", "score", "lang", "ok", "date", "tags", "src.name"}


def test_selective_filter_on_100k_documents_costs_milliseconds(tmp_path: Path) -> None:
    """The number in benchmarks/RESULTS.md ("Filters on 100k documents") comes from this test."""
    path = tmp_path / "docs.sqlite"
    n = 100_000
    with DocStore.create(path) as s:
        s.add(Document(f"d{i}", "t", "x", {"year": 1950 + i % 70, "cat": f"c{i % 1000}", "price": i * 0.37})
              for i in range(n))
    store = DocStore.open(path)
    start = time.perf_counter()
    store.matching({"cat": "c0"})
    store.matching({"price": {"gte": 0}})
    load_s = time.perf_counter() - start
    flt = {"all": [{"cat": {"in": ["c7", "c8"]}}, {"price": {"gte": 1000, "lt": 20000}}],
           "not": {"year": 1999}}
    timings = []
    for _ in range(20):
        start = time.perf_counter()
        mask = store.columns.mask(parse(flt))
        timings.append(time.perf_counter() - start)
    ms = 1e3 * float(np.median(timings))
    ids = np.arange(n)
    want = np.isin(ids % 1000, [7, 8]) & (ids * 0.37 >= 1000) & (ids * 0.37 < 20000) & (1950 + ids % 70 != 1999)
    np.testing.assert_array_equal(mask, want)
    print(f"100k docs: first use of two fields {load_s * 1e3:.0f} ms; filter median {ms:.2f} ms")  # noqa: T201
    assert ms < 50
