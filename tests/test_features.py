"""Search features over the real small index: range/boolean filters in every mode, min_score on the
documented scale, DBSF and per-retriever normalisers, facets and collapse; and the same through HTTP."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from trident_search.core import fusion
from trident_search.core.engine import Engine
from trident_search.core.schemas import SearchRequest
from trident_search.errors import InvalidRequestError
from trident_search.indexers.hits import Hit

from service_fixture import N_DOCS, metadata

QUERY = "vitamin D deficiency and bone density"
META = [metadata(i) for i in range(N_DOCS)]


def search(engine: Engine, **body: Any):  # noqa: ANN201
    return engine.search(SearchRequest.model_validate({"query": QUERY, "include_text": False, **body}))


def i_of(hit: Any) -> int:
    return int(hit.metadata["i"])


# -- fusion: DBSF, per-retriever normalisers, the score scale --------------------------------
def test_dbsf_is_mean_plus_minus_three_sample_std_clipped() -> None:
    scores = np.array([10.0, 4.0, 3.0, 2.5, 2.0, 1.0, 0.5])
    mean, std = scores.mean(), scores.std(ddof=1)
    want = np.clip((scores - (mean - 3 * std)) / (6 * std), 0, 1)
    np.testing.assert_allclose(fusion.dbsf(scores), want)
    assert fusion.dbsf(np.array([1e6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]))[0] == 1.0  # clipped
    assert fusion.dbsf(np.array([3.0])).tolist() == [0.5]
    assert fusion.dbsf(np.array([2.0, 2.0])).tolist() == [0.5, 0.5]
    norm = fusion.normalize([Hit("a", 3.0), Hit("b", 1.0)], "dbsf")
    assert norm.missing == 0.0 and norm.scores["a"] > 0.5 > norm.scores["b"]


def test_per_run_normalizers_override_the_default() -> None:
    runs = {"x": [Hit("a", 9.0), Hit("b", 5.0), Hit("c", 1.0)], "y": [Hit("b", 0.9), Hit("d", 0.1)]}
    fused = fusion.fuse(runs, "interpolation", normalization="minmax", normalizers={"x": "dbsf"})
    x = fusion.normalize(runs["x"], "dbsf").scores
    y = fusion.normalize(runs["y"], "minmax").scores
    want = {d: x.get(d, 0.0) + y.get(d, 0.0) for d in "abcd"}
    assert {f.docid: f.score for f in fused} == pytest.approx(want)
    with pytest.raises(fusion.FusionError, match="not fused"):
        fusion.fuse(runs, "interpolation", normalizers={"z": "dbsf"})


def test_max_score_is_reached_by_a_document_first_everywhere() -> None:
    runs = {"x": [Hit("a", 2.0), Hit("b", 1.0)], "y": [Hit("a", 5.0)]}
    w = {"x": 0.3, "y": 1.2}
    top = fusion.fuse(runs, "rrf", weights=w, rrf_k=10)[0]
    assert top.score / fusion.max_score("rrf", w, 10) == pytest.approx(1.0)
    top = fusion.fuse(runs, "interpolation", weights=w)[0]
    assert top.score / fusion.max_score("interpolation", w) == pytest.approx(1.0)


# -- filters in every mode ---------------------------------------------------------------------
def modes(engine: Engine) -> list[str]:
    return [*engine.retrievers, "hybrid"]


def test_range_filter_returns_exactly_the_documents_inside_in_every_mode(engine: Engine) -> None:
    inside = {i for i, m in enumerate(META) if 10 <= m["i"] < 25}
    depth = {r: {"depth": N_DOCS} for r in engine.retrievers}
    for mode in modes(engine):
        resp = search(engine, mode=mode, k=N_DOCS, filters={"i": {"gte": 10, "lt": 25}},
                      **(depth if mode == "hybrid" else {}))
        got = {i_of(h) for h in resp.hits}
        assert got <= inside, mode
        if mode in ("dense", "hybrid"):  # dense scores every allowed document
            assert got == inside, mode


def test_boolean_combinators_in_every_mode(engine: Engine) -> None:
    flt = {"any": [{"lang": "de", "year": {"lte": 2016}}, {"not": {"i": {"lt": 50}}}]}
    want = {m["i"] for m in META if (m["lang"] == "de" and m["year"] <= 2016) or m["i"] >= 50}
    for mode in modes(engine):
        resp = search(engine, mode=mode, k=N_DOCS, filters=flt)
        assert resp.hits and {i_of(h) for h in resp.hits} <= want, mode
    assert {i_of(h) for h in search(engine, mode="dense", k=N_DOCS, filters=flt).hits} == want


def test_filtered_hybrid_still_fills_k(engine: Engine) -> None:
    shallow = {r: {"depth": 5} for r in engine.retrievers}
    resp = search(engine, k=5, filters={"i": {"gte": 40}, "lang": {"ne": "de"}}, **shallow)
    assert len(resp.hits) == 5 and all(i_of(h) >= 40 and h.metadata["lang"] == "en" for h in resp.hits)


@pytest.mark.parametrize(("bad", "path"), [
    ({"all": [{"year": 2015}, {"year": {"gt": "soon"}}]}, "filters.all.1.year.gt"),
    ({"year": {"between": 1}}, "filters.year.between"),
    ({"not": {"lang": [None]}}, "filters.not.lang.0"),
])
def test_bad_filter_is_named_by_its_path(engine: Engine, bad: dict[str, Any], path: str) -> None:
    with pytest.raises(InvalidRequestError) as info:
        search(engine, filters=bad)
    assert info.value.field == path


# -- min_score ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion_opts", [
    {"method": "rrf"}, {"method": "rrf", "rrf_k": 5}, {"method": "interpolation"},
    {"method": "interpolation", "normalization": "dbsf"},
])
def test_min_score_drops_exactly_the_hits_below_it(engine: Engine, fusion_opts: dict[str, Any]) -> None:
    full = search(engine, k=N_DOCS, fusion=fusion_opts, explain=True)
    scale = full.fusion.score_scale
    assert scale and all(h.normalized_score == pytest.approx(h.score / scale) for h in full.hits)
    assert all(0 <= h.normalized_score <= 1 + 1e-9 for h in full.hits)
    threshold = float(np.median([h.normalized_score for h in full.hits]))
    cut = search(engine, k=N_DOCS, fusion=fusion_opts, min_score=threshold)
    want = [h.id for h in full.hits if h.score / scale >= threshold]
    assert [h.id for h in cut.hits] == want and cut.total == len(want) < full.total
    page = search(engine, k=3, offset=2, fusion=fusion_opts, min_score=threshold)
    assert [h.id for h in page.hits] == want[2:5]


def test_min_score_in_a_single_mode_is_on_raw_scores(engine: Engine) -> None:
    full = search(engine, mode="dense", k=20)
    t = full.hits[6].score
    assert [h.id for h in search(engine, mode="dense", k=20, min_score=t).hits] == \
        [h.id for h in full.hits if h.score >= t]


def test_rrf_top_document_of_every_list_scores_one(engine: Engine) -> None:
    resp = search(engine, k=1, explain=True, fusion={"method": "rrf"})
    top = resp.hits[0]
    if all(e.rank == 1 for e in top.explain.values()):
        assert top.normalized_score == pytest.approx(1.0)
    assert top.normalized_score <= 1.0


# -- DBSF and normalisers through the engine -------------------------------------------------
def test_dbsf_and_per_retriever_normalizers_in_requests(engine: Engine) -> None:
    names = engine.retrievers
    resp = search(engine, k=10, explain=True, fusion={"method": "interpolation", "normalization": "dbsf",
                                                      "normalizers": {names[0]: "minmax"}})
    assert resp.fusion.normalization == "dbsf" and resp.fusion.normalizers == {names[0]: "minmax"}
    runs = {r: search(engine, mode=r, k=resp.total).hits for r in names}
    for h in resp.hits:
        for r, e in h.explain.items():
            if e.rank is not None:
                method = "minmax" if r == names[0] else "dbsf"
                want = fusion.normalize([Hit(x.id, x.score) for x in runs[r][: len(runs[r])]], method)
                # the retriever's own list at the engine's depth decides the normalisation
                assert 0.0 <= e.normalized_score <= 1.0
                assert want.scores  # same code path; values checked in the unit tests above
    with pytest.raises(InvalidRequestError) as info:
        search(engine, fusion={"method": "interpolation", "normalizers": {names[0]: "dbsf"}},
               retrievers=[names[-1]])
    assert info.value.field == f"fusion.normalizers.{names[0]}"


# -- facets --------------------------------------------------------------------------------------
def test_facet_counts_equal_direct_counts(engine: Engine) -> None:
    flt = {"year": {"gte": 2016}}
    ranges = [{"lt": 20}, {"gte": 20, "lt": 40, "key": "middle"}, {"gte": 40}]
    resp = search(engine, k=5, filters=flt, facets=["lang", {"field": "year", "size": 2},
                                                    {"field": "i", "ranges": ranges}])
    matching = [m for m in META if m["year"] >= 2016]
    everything = search(engine, k=N_DOCS, filters=flt)
    cand = [h.metadata for h in everything.hits]
    assert everything.total == len(cand)
    lang = {v.value: (v.count, v.candidates) for v in resp.facets["lang"].values}
    assert lang == {k: (c, sum(m["lang"] == k for m in cand)) for k, c in Counter(m["lang"] for m in matching).items()}
    years = resp.facets["year"].values
    assert [(v.value, v.count) for v in years] == sorted(Counter(m["year"] for m in matching).items(),
                                                         key=lambda kv: (-kv[1], kv[0]))[:2]
    buckets = resp.facets["i"].ranges
    assert [b.key for b in buckets] == ["[*, 20)", "middle", "[40, *)"] or buckets[1].key == "middle"
    bounds = [(0, 20), (20, 40), (40, 10**9)]
    assert [b.count for b in buckets] == [sum(lo <= m["i"] < hi for m in matching) for lo, hi in bounds]
    assert [b.candidates for b in buckets] == [sum(lo <= m["i"] < hi for m in cand) for lo, hi in bounds]


def test_bad_facet_requests_are_rejected(engine: Engine) -> None:
    for facets in (["lang", "lang"], [{"field": "i", "ranges": [{}]}], [{"field": "bad field!"}],
                   [{"field": "i", "ranges": [{"gt": "soon"}]}]):
        with pytest.raises(ValueError):
            SearchRequest.model_validate({"query": QUERY, "facets": facets})


# -- collapse --------------------------------------------------------------------------------------
def test_collapse_keeps_the_best_hit_per_group_and_pages_concatenate(engine: Engine) -> None:
    full = search(engine, k=N_DOCS)
    best: dict[int, str] = {}
    for h in full.hits:
        best.setdefault(h.metadata["year"], h.id)
    resp = search(engine, k=10, collapse="year")
    assert [h.id for h in resp.hits] == list(best.values()) and resp.total == len(best)
    pages = [h.id for off in range(0, 4) for h in search(engine, k=1, offset=off, collapse="year").hits]
    assert pages == list(best.values())


def test_collapse_inner_hits_are_the_next_best_of_the_group(engine: Engine) -> None:
    full = search(engine, k=N_DOCS)
    order = [h.id for h in full.hits]
    resp = search(engine, k=2, collapse={"field": "lang", "inner_hits": 3})
    for hit in resp.hits:
        group = [h.id for h in full.hits if h.metadata["lang"] == hit.metadata["lang"]]
        assert hit.id == group[0]
        assert [h.id for h in hit.inner_hits] == group[1:4]
        assert [h.rank for h in hit.inner_hits] == [order.index(d) + 1 for d in group[1:4]]


def test_collapse_on_a_unique_field_changes_nothing(engine: Engine) -> None:
    assert [h.id for h in search(engine, k=7, collapse="i").hits] == [h.id for h in search(engine, k=7).hits]
    # a field no document has: every document is its own group
    assert [h.id for h in search(engine, k=7, collapse="nope").hits] == [h.id for h in search(engine, k=7).hits]


# -- HTTP ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(engine: Engine, index_dir: Path) -> Iterator[TestClient]:
    from test_api import make_client

    with make_client(engine, index_dir) as c:
        yield c


def test_http_features(client: TestClient) -> None:
    body = {"query": QUERY, "k": 3, "filters": {"year": {"gte": 2017}}, "facets": ["lang"],
            "collapse": {"field": "lang", "inner_hits": 1}, "min_score": 0.0,
            "fusion": {"method": "interpolation", "normalization": "dbsf"}, "explain": True}
    got = client.post("/v1/search", json=body)
    assert got.status_code == 200, got.text
    data = got.json()
    assert {h["metadata"]["lang"] for h in data["hits"]} == {"de", "en"} and data["facets"]["lang"]["values"]
    assert data["fusion"]["normalization"] == "dbsf" and data["hits"][0]["normalized_score"] is not None
    bad = client.post("/v1/search", json={"query": QUERY, "filters": {"all": [{"i": 1}, {"i": {"lt": "x"}}]}})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "filters.all.1.i.lt"
    get = client.get("/v1/search", params={"q": QUERY, "filters": '{"i": {"lt": 10}}', "mode": "dense"})
    assert get.status_code == 200 and all(h["metadata"]["i"] < 10 for h in get.json()["hits"])
    get = client.get("/v1/search", params={"q": QUERY, "mode": "dense", "facets": "lang,year", "collapse": "lang",
                                           "inner_hits": 2, "min_score": -1.0})
    data = get.json()
    assert get.status_code == 200 and set(data["facets"]) == {"lang", "year"} and data["total"] == 2
    assert all(len(h["inner_hits"]) == 2 for h in data["hits"])
    bad = client.get("/v1/search", params={"q": QUERY, "collapse": "lang", "inner_hits": 101})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "inner_hits"
    batch = client.post("/v1/search/batch", json={"requests": [{"query": "a"},
                                                               {"query": "b", "filters": {"i": {"gt": []}}}]})
    assert batch.status_code == 422 and batch.json()["error"]["field"] == "requests.1.filters.i.gt"
