"""Live writes (issue 17): REST upsert/delete visible in every retriever, durable across kill -9,
and equivalent to a batch build of the resulting corpus.

The server tests run ``trident serve`` as a subprocess on a free port over a copy of the shared tiny
index (so the session's shared engine never sees a write).
"""
from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from service_fixture import DEMO, retrievers

PHRASE = "quokka zeppelin flotilla over marmalade glaciers"
MODES = [*retrievers(), "hybrid"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``trident serve`` in a child process, killable with SIGKILL."""

    def __init__(self, index: Path, log: Path) -> None:
        self.index, self.log = index, log
        self.port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 600) -> Server:
        trident = Path(sys.executable).with_name("trident")
        env = {**os.environ, "TRIDENT_WATCH_S": "0"}
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(trident), "serve", "--index", str(self.index), "--host", "127.0.0.1", "--port", str(self.port)],
                stdout=out, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise AssertionError(f"server not ready in {timeout} s: {self.log.read_text()[-3000:]}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=f"{self.url}/v1", timeout=120)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(30)


@pytest.fixture
def live_copy(index_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "index"
    shutil.copytree(index_dir, out)
    return out


@pytest.fixture
def server(live_copy: Path, tmp_path: Path) -> Iterator[Server]:
    srv = Server(live_copy, tmp_path / "server.log").start()
    yield srv
    srv.stop()


def _top(client: httpx.Client, mode: str, query: str = PHRASE, k: int = 3) -> list[str]:
    r = client.post("/search", json={"query": query, "mode": mode, "k": k, "include_text": False})
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["hits"]]


def test_put_is_top_hit_everywhere_and_delete_removes_it(server: Server) -> None:
    """Acceptance 1: PUT with refresh=wait_for -> top hit in every mode; DELETE -> gone everywhere."""
    with server.client() as c:
        r = c.put("/documents/live-1", params={"refresh": "wait_for"},
                  json={"title": "Quokka zeppelin", "text": PHRASE, "metadata": {"year": 2031, "lang": "xx"}})
        assert r.status_code == 200, r.text
        assert r.json()["created"] == 1
        for mode in MODES:
            assert _top(c, mode)[0] == "live-1", mode
        assert c.get("/documents/live-1").json()["title"] == "Quokka zeppelin"
        # filters see the written metadata; the other documents do not match
        r = c.post("/search", json={"query": PHRASE, "k": 5, "filters": {"year": 2031}})
        assert [h["id"] for h in r.json()["hits"]] == ["live-1"]
        # replace: the old text no longer matches, the new one does
        r = c.put("/documents/live-1", params={"refresh": "wait_for"},
                  json={"title": "Okapi", "text": "okapi tundra harmonica", "metadata": {}})
        assert r.json()["created"] == 0
        assert _top(c, "bm25", "okapi tundra harmonica")[0] == "live-1"
        assert "live-1" not in _top(c, "bm25", PHRASE, k=10)
        # delete
        r = c.delete("/documents/live-1", params={"refresh": "wait_for"})
        assert r.status_code == 200, r.text
        for mode in MODES:
            assert "live-1" not in _top(c, mode, "okapi tundra harmonica", k=10), mode
        assert c.get("/documents/live-1").status_code == 404
        assert c.delete("/documents/live-1").status_code == 404
        assert c.get("/index/live").json()["deleted_documents"] == 2  # the replaced and the deleted version


def test_bulk_with_a_bad_item_applies_nothing(server: Server) -> None:
    with server.client() as c:
        docs = [{"_id": "bulk-1", "title": "", "text": "harmonica okapi"},
                {"_id": "bulk-2", "text": 5}]
        r = c.post("/documents", json={"documents": docs})
        assert r.status_code == 422, r.text
        assert "documents[1]" in r.text
        assert c.get("/documents/bulk-1").status_code == 404
        docs[1]["text"] = "tundra"
        assert c.post("/documents", json={"documents": docs}).json()["upserted"] == 2
        assert c.get("/documents/bulk-2").json()["text"] == "tundra"
        # the CLI refuses an index a server holds
        corpus = server.log.parent / "add.jsonl"
        corpus.write_text(json.dumps({"_id": "cli-1", "text": "x"}) + "\n")
        cli = subprocess.run([str(Path(sys.executable).with_name("trident")), "index", "add", "--index",
                              str(server.index), str(corpus)], capture_output=True, text=True, timeout=300)
        assert cli.returncode == 2 and "another process" in cli.stderr, cli.stderr[-2000:]
        # deleting an existing document of the corpus works too
        first = json.loads(DEMO.open().readline())["_id"]
        assert c.delete(f"/documents/{first}").status_code == 200
        assert c.get(f"/documents/{first}").status_code == 404


def test_acknowledged_put_survives_kill_9(server: Server) -> None:
    """Acceptance 2: kill -9 right after an acknowledged PUT; after a restart the document is there."""
    with server.client() as c:
        assert c.put("/documents/durable-1", json={"title": "Durable", "text": PHRASE}).status_code == 200
        assert c.delete("/documents/" + json.loads(DEMO.open().readline())["_id"]).status_code == 200
    server.kill9()
    server.start()
    with server.client() as c:
        assert c.get("/documents/durable-1").json()["title"] == "Durable"
        for mode in MODES:
            assert _top(c, mode)[0] == "durable-1", mode
        assert c.get("/documents/" + json.loads(DEMO.open().readline())["_id"]).status_code == 404
    # and again after a clean stop (BM25 commits its Lucene index, the log replays only the rest)
    server.stop()
    server.start()
    with server.client() as c:
        assert _top(c, "bm25")[0] == "durable-1"
        assert c.get("/index/live").json()["committed_seq"] >= 2


# -- equivalence (acceptance 5) -------------------------------------------------------------------
def _corpus(lines: list[dict], path: Path) -> Path:
    with path.open("w") as out:
        for d in lines:
            out.write(json.dumps(d) + "\n")
    return path


def test_writes_then_merge_equal_a_batch_build(tmp_path: Path) -> None:
    """Acceptance 5: corpus A (30 docs) -> upserts, updates and deletes until corpus B -> merge.
    Then BM25 scores and rankings equal a batch build of B exactly, and so do dense (Flat) and exact
    sparse hits and scores.

    Both builds and the writes get the same encoding of each document (each encoded alone): the CPU
    SPLADE document encoder (int8 ONNX) gives a document different weights in different batches,
    which would be a difference between two batch builds as well, not one of the live index.
    """
    import scipy.sparse as sp

    from trident_search.core.engine import Engine
    from trident_search.core.schemas import search_request_model
    from trident_search.indexers.build import BuildConfig, Encoded, build_index
    from trident_search.indexers.corpus import Document
    from trident_search.indexers.retriever import BuildContext, get

    lines = [json.loads(line) for line in itertools.islice(DEMO.open(), 45)]
    for d in lines:
        d.setdefault("metadata", {})
    a, extra = lines[:30], lines[30:]
    deleted = {d["_id"] for d in a[::7]}
    updated = {d["_id"]: {**d, "text": d["text"][: len(d["text"]) // 2]} for d in a[3::9] if d["_id"] not in deleted}
    b = [updated.get(d["_id"], d) for d in a if d["_id"] not in deleted] + extra
    models = [n for n in retrievers() if n != "bm25"]
    ctx = BuildContext(params={}, device="cpu", batch_size=32, max_length=256, threads=None, n_docs=0)
    encoders = {n: get(n).document_encoder(ctx) for n in models}
    cache: dict[tuple[str, str], dict] = {}

    def doc(d: dict) -> Document:
        return Document(d["_id"], d.get("title", ""), d["text"], d.get("metadata", {}))

    def one(x: Document) -> dict:
        key = (x.id, x.text)
        if key not in cache:
            cache[key] = {n: encoders[n].encode([x]) for n in models}
        return cache[key]

    def stack(docs: list[Document], name: str):  # noqa: ANN202
        rows = [one(x)[name] for x in docs]
        return sp.vstack(rows, format="csr") if sp.issparse(rows[0]) else np.vstack(rows)

    def build(corpus: list[dict], out: Path) -> None:
        docs = [doc(d) for d in corpus]
        encoded = {n: Encoded(encoders[n].model_info(), lambda n=n: [stack(docs, n)]) for n in models}
        build_index(_corpus(corpus, out.with_suffix(".jsonl")), out, BuildConfig(retrievers=retrievers(), device="cpu"),
                    encoded=encoded)

    build(a, tmp_path / "live")
    build(b, tmp_path / "batch")
    live = Engine.load(tmp_path / "live", warm_up=False)
    writer = live.backend.writer()
    writer.encode = lambda docs: {n: stack(list(docs), n) for n in models} if docs else {}  # type: ignore[method-assign]
    writer.write([doc(d) for d in extra[:5]])
    writer.write(deletes=sorted(deleted))
    writer.write([doc(d) for d in updated.values()] + [doc(d) for d in extra[5:]])
    writer.merge()
    batch = Engine.load(tmp_path / "batch", warm_up=False)
    request = search_request_model()
    queries = [json.loads(line)["text"] for line in itertools.islice((DEMO.parent / "queries.jsonl").open(), 12)]
    queries += [d["text"][:80] for d in extra[:4]] + [d["text"][:80] for d in updated.values()]
    try:
        for q in queries:
            got = live.search(request(query=q, mode="bm25", k=10, include_text=False))
            want = batch.search(request(query=q, mode="bm25", k=10, include_text=False))
            assert [(h.id, h.score) for h in got.hits] == [(h.id, h.score) for h in want.hits], q
            for mode, options in (("dense", {}), ("sparse", {"exact": True})):
                if mode not in live.retrievers:
                    continue
                body = {"query": q, "mode": mode, "k": 10, "include_text": False}
                body.update({mode: options} if options else {})
                got = live.search(request.model_validate(body))
                want = batch.search(request.model_validate(body))
                np.testing.assert_allclose([h.score for h in got.hits], [h.score for h in want.hits],
                                           rtol=1e-5, atol=1e-6, err_msg=f"{mode}: {q}")
                assert [h.id for h in got.hits] == [h.id for h in want.hits], (mode, q)
        # the document endpoint and count reflect B
        assert live.info().doc_count == len(b)
        for d in b:
            assert live.document(d["_id"]).text == d["text"]
    finally:
        live.close()
        batch.close()


def test_merge_publishes_generations_and_reopens(live_copy: Path) -> None:
    """Acceptance 4: a merge folds the delta into new sparse/dense generations and expunges BM25
    deletions; writes after it stay in the log; a reopen serves the generation plus the rest."""
    from trident_search.core.engine import Engine
    from trident_search.core.schemas import search_request_model
    from trident_search.indexers.corpus import Document

    request = search_request_model()

    def top(engine: Engine, mode: str, query: str) -> list[str]:
        return [h.id for h in engine.search(request(query=query, mode=mode, k=3, include_text=False)).hits]

    engine = Engine.load(live_copy, warm_up=False)
    try:
        writer = engine.backend.writer()
        writer.write([Document("gen-1", "Quokka", PHRASE, {}),
                      Document("gen-2", "Okapi", "okapi tundra harmonica", {})])
        writer.write(deletes=["gen-2"])
        before = {m: top(engine, m, PHRASE) for m in MODES}
        result = writer.merge()
        assert set(result["parts"]) == set(engine.retrievers)
        stats = writer.stats()
        assert stats["delta"].get("sparse", 0) == 0 and stats["merges"] == 1
        assert {m: top(engine, m, PHRASE) for m in MODES} == before
        assert all(top(engine, m, PHRASE)[0] == "gen-1" for m in MODES)
        writer.write([Document("gen-3", "Harmonica", "okapi tundra harmonica", {})])
    finally:
        engine.close()
    engine = Engine.load(live_copy, warm_up=False)
    try:
        assert engine.backend.writer().stats()["generations"].get("sparse", "build").startswith("sparse.gen-")
        for mode in MODES:
            assert top(engine, mode, PHRASE)[0] == "gen-1", mode
            assert top(engine, mode, "okapi tundra harmonica")[0] == "gen-3", mode
            assert "gen-2" not in top(engine, mode, "okapi tundra harmonica"), mode
    finally:
        engine.close()


def test_build_through_the_service_swaps_in_hot(server: Server) -> None:
    """Acceptance 3: POST /v1/admin/builds (streamed JSONL) reports progress, completes, and the
    server then serves the new index with no failed search in between."""
    import threading

    lines = [json.loads(line) for line in itertools.islice(DEMO.open(), 70, 90)]
    lines.append({"_id": "built-1", "title": "Built", "text": PHRASE})
    body = "".join(json.dumps(d) + "\n" for d in lines)
    failures: list[str] = []
    stop = threading.Event()

    def searching() -> None:
        with server.client() as c:
            while not stop.is_set():
                r = c.post("/search", json={"query": PHRASE, "k": 3, "include_text": False})
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:200]}")

    t = threading.Thread(target=searching)
    t.start()
    try:
        with server.client() as c:
            r = c.post("/admin/builds", content=body, headers={"content-type": "application/x-ndjson"})
            assert r.status_code == 202, r.text
            job = r.json()["id"]
            seen_stages = set()
            deadline = time.monotonic() + 1200
            while time.monotonic() < deadline:
                status = c.get(f"/admin/builds/{job}").json()
                if status["stage"]:
                    seen_stages.add(status["stage"])
                if status["state"] not in ("queued", "running"):
                    break
                time.sleep(1)
            assert status["state"] == "succeeded", status
            assert status["generation"] == 2 and seen_stages, status
            assert c.get("/index").json()["doc_count"] == len(lines)
            assert _top(c, "bm25")[0] == "built-1"
            assert c.post("/admin/builds", json={"corpus": "/etc/passwd"}).status_code == 422
    finally:
        stop.set()
        t.join()
    assert not failures, failures[:3]


def test_writes_need_the_api_key_and_a_writable_backend(tmp_path: Path) -> None:
    """Writes sit under /v1: 401 without the configured key; a backend that cannot take writes
    (sharded serving, here a stand-in) is a 422 that says so, not a 500."""
    from fastapi.testclient import TestClient

    from trident_search.service.app import create_app
    from trident_search.settings import Settings

    class NoWrites:
        retrievers = ["bm25"]
        backend = object()

        def close(self) -> None:
            pass

    app = create_app(Settings(index=tmp_path, api_key="s3cret-key-123456"), loader=lambda s: NoWrites(),
                     load_in_background=False, watch=False)
    with TestClient(app) as c:
        assert c.put("/v1/documents/x", json={"text": "a"}).status_code == 401
        assert c.delete("/v1/documents/x").status_code == 401
        r = c.put("/v1/documents/x", json={"text": "a"}, headers={"X-API-Key": "s3cret-key-123456"})
        assert r.status_code == 422 and "cannot take writes" in r.text, r.text
        r = c.post("/v1/documents", json={"documents": [{"_id": "a", "text": 1}]},
                   headers={"X-API-Key": "s3cret-key-123456"})
        assert r.status_code == 422 and "documents[0]" in r.text, r.text
