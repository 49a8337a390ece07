"""The server's life around the requests: hot index swap under load, graceful shutdown with a
request in flight, load shedding (429 + Retry-After), ``Allow`` on 405, the port check.

Two tiny bm25-only indexes (30 documents each, different ones) are built once and swapped at the
served path by renaming directories, as ``trident index build`` publishes."""
from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from trident_search.service.app import create_app
from trident_search.settings import Settings

from service_fixture import DEMO

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def two_indexes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Index A (documents 0-29) and index B (documents 0-59: every hit of A stays readable), bm25 only."""
    from trident_search import BuildConfig, build_index

    root = tmp_path_factory.mktemp("ops-indexes")
    out = []
    with DEMO.open() as src:
        lines = list(itertools.islice(src, 60))
    for name, chunk in (("a", lines[:30]), ("b", lines)):
        corpus = root / f"{name}.jsonl"
        corpus.write_text("".join(chunk))
        build_index(corpus, root / name, BuildConfig(retrievers=("bm25",), device="cpu"))
        out.append(root / name)
    return out[0], out[1]


def test_hot_swap_under_load_serves_the_new_index_with_no_errors(two_indexes: tuple[Path, Path],
                                                                  tmp_path: Path) -> None:
    a, b = two_indexes
    served = tmp_path / "served"
    # Copies, so the module's indexes stay where they are for the other tests.
    import shutil

    shutil.copytree(a, served)
    staged = tmp_path / "staged-b"
    shutil.copytree(b, staged)
    app = create_app(Settings(index=served, watch_s=0.2), load_in_background=False)
    statuses: list[int] = []
    stop = threading.Event()
    with TestClient(app) as c:
        assert c.get("/v1/index").json()["generation"] == 1

        def load() -> None:
            while not stop.is_set():
                r = c.post("/v1/search", json={"query": "cell protein expression", "mode": "bm25", "k": 5})
                statuses.append(r.status_code)
                if r.status_code == 200:
                    for hit in r.json()["hits"][:1]:  # a hit's document stays readable meanwhile
                        statuses.append(c.get(f"/v1/documents/{hit['id']}").status_code)

        workers = [threading.Thread(target=load) for _ in range(4)]
        for w in workers:
            w.start()
        time.sleep(0.5)
        # Publish B as a build does: move the old index aside, rename the new one in.
        os.rename(served, tmp_path / "old-a")
        os.rename(staged, served)
        published = time.monotonic()
        info: dict[str, Any] = {}
        while time.monotonic() - published < 10:
            info = c.get("/v1/index").json()
            if info["generation"] == 2:
                break
            time.sleep(0.05)
        swapped_after = time.monotonic() - published
        time.sleep(0.5)
        # A broken publication: the reload fails, generation 2 keeps serving.
        os.rename(served, tmp_path / "old-b")
        served.mkdir()
        (served / "manifest.json").write_text("{not json")
        time.sleep(1.0)
        r = c.post("/v1/admin/reload")
        assert r.status_code == 503 and "keeps serving" in r.json()["error"]["message"], r.text
        stop.set()
        for w in workers:
            w.join(timeout=30)
        assert info["generation"] == 2 and swapped_after < 10
        assert c.get("/v1/index").json()["generation"] == 2
        assert info["doc_count"] == 60
        assert c.get("/readyz").status_code == 200
    assert len(statuses) > 20
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


class GatedEngine:
    """Test double whose searches wait for ``release``."""

    retrievers = ["bm25"]

    def __init__(self) -> None:
        self.entered = threading.Semaphore(0)
        self.release = threading.Event()

    def search(self, request: Any) -> Any:
        self.entered.release()
        self.release.wait(timeout=30)
        raise RuntimeError("released")

    def close(self) -> None:
        pass


def test_over_the_admission_bound_answers_429_with_retry_after(tmp_path: Path) -> None:
    engine = GatedEngine()
    app = create_app(Settings(index=tmp_path, max_inflight=1, max_queue=1, watch_s=0),
                     loader=lambda s: engine, load_in_background=False)
    with TestClient(app, raise_server_exceptions=False) as c:
        send = lambda: c.post("/v1/search", json={"query": "a"})  # noqa: E731
        running = threading.Thread(target=send)
        running.start()
        assert engine.entered.acquire(timeout=30)
        queued = threading.Thread(target=send)
        queued.start()
        for _ in range(200):  # until the second one waits in the queue
            if app.state.admission.waiting == 1:
                break
            time.sleep(0.02)
        r = c.post("/v1/search", json={"query": "a"})
        assert r.status_code == 429 and r.json()["error"]["code"] == "overloaded"
        assert int(r.headers["Retry-After"]) >= 1
        assert c.get("/healthz").status_code == 200  # only searches are admitted
        engine.release.set()
        running.join(timeout=30)
        queued.join(timeout=30)
        assert app.state.admission.running == 0 and app.state.admission.waiting == 0


def test_405_names_the_allowed_methods_and_readyz_fails_while_draining(tmp_path: Path) -> None:
    app = create_app(Settings(index=tmp_path, watch_s=0), loader=lambda s: GatedEngine(),
                     load_in_background=False)
    with TestClient(app) as c:
        r = c.delete("/v1/search")
        assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"
        assert {m.strip() for m in r.headers["Allow"].split(",")} >= {"GET", "POST"}
        assert c.get("/v1/admin/reload").headers["Allow"] == "POST"
        assert c.get("/readyz").status_code == 200
        app.state.draining = True
        r = c.get("/readyz")
        assert r.status_code == 503 and "shutting down" in r.json()["error"]["message"]


# -- the real `trident serve` process --------------------------------------------------------------
SERVE = """
import sys, time
from trident_search.core.engine import Engine
search = Engine.search
def slow(self, request):
    if request.query.startswith("slow"):
        time.sleep(3)
    return search(self, request)
Engine.search = slow
from trident_search.service.cli import app
sys.argv = ["trident", *sys.argv[1:]]
app()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=[10.0])
def server(
    request: pytest.FixtureRequest, two_indexes: tuple[Path, Path]
) -> Iterator[tuple[subprocess.Popen[str], str]]:
    port = free_port()
    env = {**os.environ, "TRIDENT_DRAIN_S": str(request.param), "TRIDENT_WATCH_S": "0"}
    proc = subprocess.Popen([sys.executable, "-c", SERVE, "serve", "--index", str(two_indexes[0]),
                             "--port", str(port)], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.communicate()[0]
            time.sleep(0.2)
        else:
            pytest.fail("server not ready in 120 s")
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigterm_finishes_the_request_in_flight_and_exits_0(server: tuple[subprocess.Popen[str], str]) -> None:
    proc, url = server
    result: dict[str, Any] = {}

    def slow_search() -> None:
        try:
            result["response"] = httpx.post(f"{url}/v1/search", json={"query": "slow protein", "mode": "bm25"},
                                            timeout=30)
        except httpx.HTTPError as exc:
            result["error"] = exc

    t = threading.Thread(target=slow_search)
    t.start()
    time.sleep(1.0)  # the search is in flight (it takes 3 s)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    t.join(timeout=30)
    assert "error" not in result, result
    assert result["response"].status_code == 200 and result["response"].json()["hits"]
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert time.monotonic() - sent < 10 + 3, out
    for line in ("SIGTERM received: draining", "closing index generation 1", "index generation 1 closed",
                 "shutdown complete after SIGTERM; exit 0"):
        assert line in out, out


@pytest.mark.parametrize("server", [1.0], indirect=True)
def test_a_request_slower_than_the_drain_deadline_does_not_hold_the_exit(
        server: tuple[subprocess.Popen[str], str]) -> None:
    proc, url = server
    SLOW = "slow slow"  # 3 s, past the 1 s deadline

    def slow_search() -> None:
        try:
            httpx.post(f"{url}/v1/search", json={"query": SLOW, "mode": "bm25"}, timeout=30)
        except httpx.HTTPError:
            pass

    t = threading.Thread(target=slow_search, daemon=True)
    t.start()
    time.sleep(0.5)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out
    assert time.monotonic() - sent < 1.0 + 2.5, out  # before the search would have ended
    assert "still running on generation 1" in out, out


def test_serve_on_a_port_in_use_fails_at_once(two_indexes: tuple[Path, Path]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        cli = "from trident_search.service.cli import app; app()"
        proc = subprocess.run([sys.executable, "-c", cli, "serve", "--index",
                               str(two_indexes[0]), "--port", str(port)], capture_output=True, text=True,
                              timeout=60, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert time.monotonic() - start < 30
