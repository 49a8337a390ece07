"""The retriever contract, proven: a fourth retriever defined only here (exact TF-IDF cosine) is
built by the build job, served by the REST API with fusion and explain, and validated by the request
schema and GET parameters, with no change anywhere outside this file."""
from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
from fastapi.testclient import TestClient
from pydantic import Field

from trident_search.indexers import retriever as registry
from trident_search.indexers.corpus import Document
from trident_search.indexers.manifest import Manifest
from trident_search.indexers.retriever import (
    BuildContext,
    Part,
    QueryEncoder,
    Results,
    Retriever,
    RetrieverOptions,
)

DEMO = Path(__file__).resolve().parent.parent / "data" / "demo" / "scifact-demo" / "corpus.jsonl"
TOKEN = re.compile(r"[a-z0-9]+")


def tokens(text: str) -> list[str]:
    return TOKEN.findall(text.lower())


class TfIdfOptions(RetrieverOptions):
    min_term_len: int | None = Field(None, ge=1, le=20, description="Ignore query terms shorter than this.")


class TfIdfEncoder(QueryEncoder):
    def __init__(self, vocab: dict[str, int], idf: np.ndarray) -> None:
        self.vocab, self.idf = vocab, idf
        self.description = "toy TF-IDF"

    def encode(self, query: str) -> list[str]:
        return tokens(query)


class TfIdfPart(Part):
    def __init__(self, path: Path) -> None:
        self.matrix = sp.load_npz(path / "tfidf.npz").tocsc()
        meta = json.loads((path / "vocab.json").read_text())
        self.vocab, self.idf = meta["vocab"], np.asarray(meta["idf"])

    def search(self, query: Any, depth: int, *, allowed: np.ndarray | None, options: RetrieverOptions) -> Results:
        shortest = getattr(options, "min_term_len", None) or 1
        q = np.zeros(len(self.vocab))
        for t in query:
            if len(t) >= shortest and t in self.vocab:
                q[self.vocab[t]] += self.idf[self.vocab[t]]
        if not q.any():
            return Results.empty()
        scores = self.matrix @ (q / np.linalg.norm(q))
        candidates = np.flatnonzero(scores > 0)
        if allowed is not None:
            candidates = candidates[allowed[candidates]]
        order = candidates[np.lexsort((candidates, -scores[candidates]))][:depth]
        return Results(order.astype(np.int64), scores[order].astype(np.float32))


class TfIdfRetriever(Retriever):
    name = "tfidf"
    options = TfIdfOptions

    def write(self, out: Path, ctx: BuildContext, *, docs: Callable[[], Iterator[Document]],
              chunks: Callable[[], Iterator[Any]] | None) -> dict[str, Any]:
        bags = [tokens(f"{d.title} {d.text}") for d in docs()]
        vocab = {t: i for i, t in enumerate(sorted({t for bag in bags for t in bag}))}
        rows, cols, vals = [], [], []
        for r, bag in enumerate(bags):
            for t, n in zip(*np.unique([vocab[t] for t in bag], return_counts=True)) if bag else []:
                rows.append(r), cols.append(t), vals.append(float(n))
        tf = sp.csr_matrix((vals, (rows, cols)), shape=(len(bags), len(vocab)))
        df = np.bincount(tf.indices, minlength=len(vocab))
        idf = np.log((1 + len(bags)) / (1 + df)) + 1
        m = tf.multiply(idf).tocsr()
        norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1)).ravel())
        m = sp.csr_matrix(m.multiply(1 / np.maximum(norms, 1e-12)[:, None]))
        out.mkdir(parents=True, exist_ok=True)
        sp.save_npz(out / "tfidf.npz", m)
        (out / "vocab.json").write_text(json.dumps({"vocab": vocab, "idf": idf.tolist()}))
        return {"terms": len(vocab)}

    def query_encoder(self, manifest: Manifest, *, backend: str) -> QueryEncoder:
        return TfIdfEncoder({}, np.empty(0))

    def open(self, path: Path, manifest: Manifest, *, external_ids: np.ndarray) -> Part:
        return TfIdfPart(path)


@pytest.fixture(scope="module")
def toy_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from trident_search import build_index
    from trident_search.indexers.build import BuildConfig

    registry.register(TfIdfRetriever())
    try:
        root = tmp_path_factory.mktemp("toy")
        corpus = root / "corpus.jsonl"
        with DEMO.open() as src, corpus.open("w") as out:
            for i, line in enumerate(itertools.islice(src, 40)):
                doc = json.loads(line)
                doc["metadata"] = {"half": "a" if i < 20 else "b"}
                out.write(json.dumps(doc) + "\n")
        build_index(corpus, root / "index", BuildConfig(retrievers=("bm25", "tfidf"), device="cpu"))
        yield root / "index"
    finally:
        registry.unregister("tfidf")


@pytest.fixture(scope="module")
def client(toy_index: Path) -> Iterator[TestClient]:
    from trident_search.service.app import create_app
    from trident_search.settings import Settings

    with TestClient(create_app(Settings(index=toy_index), load_in_background=False)) as c:
        yield c


def test_toy_retriever_is_served_with_its_own_ranking(client: TestClient, toy_index: Path) -> None:
    query = "vitamin D deficiency and bone"
    body = client.post("/v1/search", json={"query": query, "mode": "tfidf", "k": 5}).json()
    part = TfIdfPart(toy_index / "tfidf")
    direct = part.search(tokens(query), 5, allowed=None, options=TfIdfOptions())
    ids = [line["_id"] for line in map(json.loads, toy_index.parent.joinpath("corpus.jsonl").open())]
    assert [h["id"] for h in body["hits"]] == [ids[i] for i in direct.ids]
    assert [h["score"] for h in body["hits"]] == pytest.approx(direct.scores.tolist(), rel=1e-6)


def test_toy_retriever_fuses_and_explains(client: TestClient) -> None:
    body = client.post("/v1/search", json={
        "query": "vitamin D deficiency and bone", "k": 5, "explain": True,
        "fusion": {"method": "rrf"}, "tfidf": {"weight": 2.0, "min_term_len": 3},
    }).json()
    assert body["retrievers"] == ["bm25", "tfidf"] and body["fusion"]["weights"] == {"bm25": 1.0, "tfidf": 2.0}
    for hit in body["hits"]:
        assert set(hit["explain"]) == {"bm25", "tfidf"}
        parts = [e["weighted_score"] for e in hit["explain"].values()]
        assert hit["score"] == pytest.approx(sum(parts))
    filtered = client.post("/v1/search", json={"query": "the patients cells", "mode": "tfidf", "k": 40,
                                               "filters": {"half": "b"}}).json()
    assert filtered["hits"] and all(h["metadata"]["half"] == "b" for h in filtered["hits"])


def test_toy_options_are_validated_and_in_the_get_parameters(client: TestClient) -> None:
    bad = client.post("/v1/search", json={"query": "bone", "tfidf": {"min_term_len": 0}})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "tfidf.min_term_len"
    elsewhere = client.post("/v1/search", json={"query": "bone", "bm25": {"min_term_len": 3}})
    assert elsewhere.status_code == 422 and "applies to the tfidf retriever" in elsewhere.json()["error"]["message"]
    got = client.get("/v1/search", params={"q": "bone density", "mode": "tfidf", "tfidf_min_term_len": 4})
    assert got.status_code == 200 and got.json()["mode"] == "tfidf"
    spec = client.get("/openapi.json").json()
    params = {p["name"] for p in spec["paths"]["/v1/search"]["get"]["parameters"]}
    assert {"tfidf_weight", "tfidf_depth", "tfidf_min_term_len"} <= params
    assert client.get("/v1/index").json()["retrievers"] == ["bm25", "tfidf"]
