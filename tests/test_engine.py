"""The engine over a real small index: composition, filters, pagination, explain, fusion defaults."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from trident_search.core import fusion
from trident_search.core.engine import Engine
from trident_search.core.schemas import SearchRequest
from trident_search.core.tuned import TunedFusion
from trident_search.errors import IndexLoadError, InvalidRequestError, NotFoundError

from service_fixture import metadata

QUERY = "vitamin D deficiency and bone density"


def ids(resp) -> list[str]:
    return [h.id for h in resp.hits]


# -- loading ---------------------------------------------------------------------------------
def test_load_missing_folder_names_it(tmp_path: Path) -> None:
    with pytest.raises(IndexLoadError, match="no index at .*does not exist"):
        Engine.load(tmp_path / "nope")


def test_load_without_manifest_says_how_to_build(tmp_path: Path) -> None:
    with pytest.raises(IndexLoadError, match="trident index build"):
        Engine.load(tmp_path)


def _copy_manifest_only(index_dir: Path, dest: Path, **changes: object) -> Path:
    dest.mkdir()
    data = json.loads((index_dir / "manifest.json").read_text())
    data.update(changes)
    (dest / "manifest.json").write_text(json.dumps(data))
    return dest


def test_load_rejects_other_format_version(index_dir: Path, tmp_path: Path) -> None:
    bad = _copy_manifest_only(index_dir, tmp_path / "v99", format_version=99)
    with pytest.raises(IndexLoadError, match="format version 99"):
        Engine.load(bad)


def test_load_rejects_missing_and_damaged_files(index_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(IndexLoadError, match="is incomplete: .* is missing; rebuild it"):
        Engine.load(_copy_manifest_only(index_dir, tmp_path / "empty"))
    damaged = tmp_path / "damaged"
    shutil.copytree(index_dir, damaged)
    with (damaged / "docs.sqlite").open("ab") as fh:
        fh.write(b"\0" * 10)
    with pytest.raises(IndexLoadError, match="damaged: docs.sqlite has size"):
        Engine.load(damaged)


# -- composition -----------------------------------------------------------------------------
def test_single_modes_return_the_retrievers_own_ranking(engine: Engine) -> None:
    resp = engine.search(SearchRequest(query=QUERY, mode="bm25", k=10))
    direct = engine.backend.parts["bm25"].index.search(QUERY, 10)
    assert ids(resp) == [h.docid for h in direct]
    assert [h.score for h in resp.hits] == pytest.approx([h.score for h in direct])
    assert resp.fusion is None and resp.retrievers == ["bm25"]

    resp = engine.search(SearchRequest(query=QUERY, mode="dense", k=5))
    index = engine.backend
    d_ids, d_scores = index.parts["dense"].index.search(index.encoders["dense"].encode(QUERY), 5)
    assert ids(resp) == index.external_ids[d_ids[0]].tolist()
    assert [h.score for h in resp.hits] == pytest.approx(d_scores[0].tolist(), abs=1e-6)


def test_hybrid_is_the_fusion_of_the_retrievers_lists(engine: Engine) -> None:
    names = engine.retrievers
    req = SearchRequest(query=QUERY, k=10, fusion={"method": "rrf", "rrf_k": 60})
    resp = engine.search(req)
    runs = engine.runs(QUERY, 100, names)
    expected = fusion.rrf(runs, k=60)
    assert ids(resp) == [h.docid for h in expected[:10]]
    assert [h.score for h in resp.hits] == pytest.approx([h.score for h in expected[:10]])
    assert resp.fusion.method == "rrf" and resp.fusion.source == "request"
    assert resp.total == len(expected)
    for stage in ("bm25", "encode_dense", "dense", "fusion", "fetch", "total"):
        assert stage in resp.timings_ms


def test_zero_weight_removes_a_retriever(engine: Engine) -> None:
    hybrid = engine.search(SearchRequest(query=QUERY, k=5, retrievers=["bm25", "dense"],
                                         dense={"weight": 0.0}, fusion={"method": "rrf"}))
    bm25 = engine.search(SearchRequest(query=QUERY, k=5, mode="bm25"))
    assert ids(hybrid) == ids(bm25)


def test_interpolation_explain_adds_up(engine: Engine) -> None:
    resp = engine.search(SearchRequest(query=QUERY, k=8, explain=True, bm25={"weight": 0.3},
                                       dense={"weight": 0.7},
                                       fusion={"method": "interpolation", "normalization": "minmax"}))
    assert resp.fusion.weights["bm25"] == 0.3 and resp.fusion.normalization == "minmax"
    for hit in resp.hits:
        parts = hit.explain
        assert set(parts) == set(engine.retrievers)
        assert sum(p.weighted_score for p in parts.values()) == pytest.approx(hit.score)
        for name, p in parts.items():
            assert 0.0 <= p.normalized_score <= 1.0
            assert p.weighted_score == pytest.approx(resp.fusion.weights[name] * p.normalized_score)
            if p.rank is None:  # absent from that retriever's list: min-max floor
                assert p.raw_score is None and p.normalized_score == 0.0
    top = resp.hits[0].explain["bm25"]
    if top.rank == 1:
        assert top.normalized_score == pytest.approx(1.0)


def test_rrf_explain_is_reciprocal_rank(engine: Engine) -> None:
    resp = engine.search(SearchRequest(query=QUERY, k=5, explain=True, fusion={"method": "rrf", "rrf_k": 10}))
    for hit in resp.hits:
        for p in hit.explain.values():
            expected = 0.0 if p.rank is None else 1 / (10 + p.rank)
            assert p.normalized_score == pytest.approx(expected)


# -- filters ---------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["bm25", "dense"])
def test_filtered_search_equals_full_ranking_restricted(engine: Engine, mode: str) -> None:
    # Filtering happens inside the retriever, not on its top k: the answer is the allowed
    # documents' part of the complete ranking.
    full = engine.search(SearchRequest(query=QUERY, mode=mode, k=60))
    allowed = [h.id for h in full.hits if h.metadata["lang"] == "de"][:10]
    resp = engine.search(SearchRequest(query=QUERY, mode=mode, k=10, filters={"lang": "de"}))
    assert ids(resp) == allowed


def test_filtered_hybrid_still_returns_k(engine: Engine) -> None:
    # 20 documents have lang "de"; each retriever goes only 10 deep, so a post-filter on the
    # unfiltered top 10s would come back short.
    depth = {r: {"depth": 10} for r in engine.retrievers}
    resp = engine.search(SearchRequest(query=QUERY, k=10, filters={"lang": "de"}, **depth))
    assert len(resp.hits) == 10
    assert all(h.metadata["lang"] == "de" for h in resp.hits)


def test_filter_in_list_and_conjunction(engine: Engine) -> None:
    resp = engine.search(SearchRequest(query=QUERY, k=50, filters={"lang": "de", "year": [2015, 2016]}))
    expected = {str(i) for i in range(60) if metadata(i)["lang"] == "de" and metadata(i)["year"] in (2015, 2016)}
    assert {str(h.metadata["i"]) for h in resp.hits} == expected
    assert resp.total == len(expected) == 10


def test_filter_matching_everything_equals_no_filter(engine: Engine) -> None:
    everything = engine.search(SearchRequest(query=QUERY, k=20, filters={"lang": ["de", "en"]}))
    assert ids(everything) == ids(engine.search(SearchRequest(query=QUERY, k=20)))


def test_filter_matching_nothing_and_bad_filter(engine: Engine) -> None:
    assert engine.search(SearchRequest(query=QUERY, filters={"lang": "fr"})).hits == []
    with pytest.raises(InvalidRequestError) as err:
        engine.search(SearchRequest(query=QUERY, filters={"bad field!": 1}))
    assert err.value.field == "filters"


# -- pagination ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["bm25", "hybrid"])
def test_pages_concatenate_to_one_large_request(engine: Engine, mode: str) -> None:
    full = engine.search(SearchRequest(query=QUERY, mode=mode, k=15))
    pages = [engine.search(SearchRequest(query=QUERY, mode=mode, k=5, offset=o)) for o in (0, 5, 10)]
    assert sum((ids(p) for p in pages), []) == ids(full)
    assert [h.rank for p in pages for h in p.hits] == list(range(1, len(full.hits) + 1))
    assert ids(engine.search(SearchRequest(query=QUERY, mode=mode, k=15))) == ids(full)


def test_offset_past_the_end_is_empty(engine: Engine) -> None:
    resp = engine.search(SearchRequest(query=QUERY, mode="bm25", k=10, offset=500))
    assert resp.hits == [] and resp.offset == 500


# -- defaults, errors, documents -------------------------------------------------------------
def test_manifest_fusion_defaults_are_used(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    tuned = {"method": "interpolation",
             "interpolation": {"weights": {"bm25": 0.2, "dense": 0.8}, "normalization": "zscore"},
             "rrf": {"weights": {"bm25": 2.0}, "rrf_k": 7}}
    monkeypatch.setattr(engine, "tuned", TunedFusion.model_validate(tuned))
    resp = engine.search(SearchRequest(query=QUERY, retrievers=["bm25", "dense"]))
    assert resp.fusion.source == "manifest"
    assert (resp.fusion.method, resp.fusion.normalization) == ("interpolation", "zscore")
    assert resp.fusion.weights == {"bm25": 0.2, "dense": 0.8}
    # A request naming the method takes that method's tuned parameters; its own weights win.
    rrf = engine.search(SearchRequest(query=QUERY, retrievers=["bm25", "dense"],
                                      fusion={"method": "rrf"}, dense={"weight": 0.5}))
    assert (rrf.fusion.rrf_k, rrf.fusion.weights) == (7.0, {"bm25": 2.0, "dense": 0.5})
    assert rrf.fusion.source == "manifest"  # tuned values shaped it, though the request named the method
    assert engine.info().default_fusion["method"] == "interpolation"


def test_untuned_default_is_equal_weight_rrf(engine: Engine) -> None:
    resp = engine.search(SearchRequest(query=QUERY))
    assert resp.fusion.source == "default" and resp.fusion.method == "rrf"
    assert resp.fusion.rrf_k == 60 and set(resp.fusion.weights.values()) == {1.0}


def test_unavailable_retriever_is_a_clear_error(engine: Engine) -> None:
    with pytest.raises(InvalidRequestError) as err:
        engine.search(SearchRequest(query=QUERY, mode="bm25", retrievers=["bm25"]))
    assert err.value.field == "retrievers"


def test_batch_equals_single(engine: Engine) -> None:
    reqs = [SearchRequest(query=q, mode=m, k=4) for q, m in
            [(QUERY, "hybrid"), ("cancer cells", "bm25"), ("stem cell therapy", "dense")]]
    batch = engine.search_batch(reqs)
    for req, got in zip(reqs, batch, strict=True):
        single = engine.search(req)
        assert ids(got) == ids(single)
        assert [h.score for h in got.hits] == pytest.approx([h.score for h in single.hits])


def test_documents_and_info(engine: Engine, index_dir: Path) -> None:
    first = json.loads((index_dir.parent / "corpus.jsonl").read_text().splitlines()[0])
    doc = engine.document(first["_id"])
    assert (doc.title, doc.text, doc.metadata) == (first["title"], first["text"], metadata(0))
    with pytest.raises(NotFoundError):
        engine.document("no-such-id")
    info = engine.info()
    assert info.doc_count == 60 and info.retrievers == engine.retrievers
    assert info.manifest["format_version"] == 1


def test_search_is_deterministic_under_concurrency(engine: Engine) -> None:
    from concurrent.futures import ThreadPoolExecutor

    req = SearchRequest(query=QUERY, k=10)
    expected = ids(engine.search(req))
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: ids(engine.search(req)), range(12)))
    assert all(r == expected for r in results)


def test_hits_are_unique_and_sorted(engine: Engine) -> None:
    resp = engine.search(SearchRequest(query="cell", k=50, fusion={"method": "interpolation"}))
    scores = np.array([h.score for h in resp.hits])
    assert len(set(ids(resp))) == len(resp.hits)
    assert np.all(np.diff(scores) <= 1e-12)
