"""Load test of the HTTP service: QPS and latency percentiles per mode and concurrency.

    python benchmarks/load.py --index indexes/scifact            # starts its own server
    python benchmarks/load.py --url http://127.0.0.1:8000        # or measures a running one

A bounded async httpx generator (127.0.0.1 only): for each mode and concurrency it sends a fixed
number of POST /v1/search requests from ``c`` workers, each waiting for its answer before sending
the next (closed loop), cycling through the BEIR queries of the index's corpus. It prints, per
cell, QPS, client-side p50/p95/p99, the server's own p50 (``timings_ms.total``), the error count,
and the p50 as a ratio to the anchor measured in the same run: BM25 (Lucene) alone at c=1.
A per-stage breakdown of the server timings for c=1 follows.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

import httpx
import numpy as np

log = logging.getLogger("load")
LOCAL_HOSTS = {"127.0.0.1", "localhost"}
ANCHOR = ("bm25", 1)


@dataclass
class Cell:
    """One (mode, concurrency) measurement."""

    mode: str
    concurrency: int
    latencies_ms: list[float] = field(default_factory=list)
    server_ms: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    errors: int = 0
    wall_s: float = 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies_ms, q)) if self.latencies_ms else float("nan")

    @property
    def qps(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0


def load_queries(path: Path, limit: int | None = None) -> list[str]:
    queries = []
    with path.open() as fh:
        for line in fh:
            if line.strip():
                queries.append(json.loads(line)["text"])
    return queries[:limit] if limit else queries


def default_queries(index: Path) -> Path:
    """queries.jsonl next to the corpus the index was built from (BEIR layout)."""
    manifest = json.loads((index / "manifest.json").read_text())
    corpus = Path(manifest["corpus"]["path"])
    candidate = corpus.parent / "queries.jsonl"
    if not candidate.is_file():
        raise SystemExit(f"no queries.jsonl next to {corpus}; pass --queries")
    return candidate


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(index: Path, port: int, extra_env: dict[str, str]) -> subprocess.Popen[bytes]:
    """uvicorn with the app factory in a child process (access log off: it would be measured too)."""
    env = {**os.environ, "TRIDENT_INDEX": str(index), "HF_HUB_OFFLINE": "1", **extra_env}
    cmd = [sys.executable, "-m", "uvicorn", "trident_search.service.app:create_app", "--factory", "--host", "127.0.0.1",
           "--port", str(port), "--no-access-log", "--log-level", "warning"]
    return subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parent.parent)


async def wait_ready(client: httpx.AsyncClient, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"server exited with code {proc.returncode}")
        try:
            r = await client.get("/readyz")
            if r.status_code == 200:
                return
            if r.status_code == 503 and "still loading" not in r.text:
                raise SystemExit(f"server not ready: {r.json()['error']['message']}")
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit(f"server not ready after {timeout:.0f} s")


async def run_cell(client: httpx.AsyncClient, mode: str, c: int, queries: list[str], n: int, k: int) -> Cell:
    """``n`` requests from ``c`` closed-loop workers; request i uses query i mod len(queries)."""
    cell = Cell(mode, c)
    counter = iter(range(n))

    async def worker() -> None:
        for i in counter:
            body = {"query": queries[i % len(queries)], "mode": mode, "k": k, "include_text": False}
            start = time.perf_counter()
            try:
                r = await client.post("/v1/search", json=body)
                ok = r.status_code == 200
            except httpx.HTTPError as exc:
                log.warning("request failed: %s", exc)
                ok = False
            elapsed = (time.perf_counter() - start) * 1e3
            if not ok:
                cell.errors += 1
                continue
            cell.latencies_ms.append(elapsed)
            timings = r.json()["timings_ms"]
            cell.server_ms.append(timings["total"])
            for stage, ms in timings.items():
                cell.stages.setdefault(stage, []).append(ms)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(c)))
    cell.wall_s = time.perf_counter() - start
    return cell


def report(cells: list[Cell], args: argparse.Namespace, url: str) -> str:
    anchor = next((c for c in cells if (c.mode, c.concurrency) == ANCHOR), None)
    anchor_p50 = anchor.pct(50) if anchor else float("nan")
    lines = [
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        f"server: {url}; {args.requests} requests per cell after {args.warmup} warm-up; k={args.k}",
        "",
        "| mode | c | requests | QPS | p50 ms | p95 ms | p99 ms | server p50 ms | errors | p50 / bm25 c=1 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        server = statistics.median(c.server_ms) if c.server_ms else float("nan")
        lines.append(
            f"| {c.mode} | {c.concurrency} | {len(c.latencies_ms) + c.errors} | {c.qps:.1f} | {c.pct(50):.1f} | "
            f"{c.pct(95):.1f} | {c.pct(99):.1f} | {server:.1f} | {c.errors} | {c.pct(50) / anchor_p50:.2f} |"
        )
    stage_order = ["filter", "encode_sparse", "encode_dense", "bm25", "sparse", "dense", "fusion", "fetch", "total"]
    lines += ["", "Server stage p50 (ms) at c=1:", "",
              "| mode | " + " | ".join(stage_order) + " |", "|---|" + "---|" * len(stage_order)]
    for c in cells:
        if c.concurrency != 1:
            continue
        vals = [f"{statistics.median(c.stages[s]):.2f}" if s in c.stages else "-" for s in stage_order]
        lines.append(f"| {c.mode} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


async def main_async(args: argparse.Namespace) -> int:
    proc = None
    if args.url:
        url = args.url.rstrip("/")
        if urlparse(url).hostname not in LOCAL_HOSTS:
            raise SystemExit("this load generator only targets 127.0.0.1 / localhost")
    else:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args.index, port, {})
    queries_path = args.queries or (default_queries(args.index) if args.index else None)
    if queries_path is None:
        raise SystemExit("pass --queries (a BEIR queries.jsonl) when using --url")
    queries = load_queries(Path(queries_path), args.max_queries)
    limits = httpx.Limits(max_connections=max(args.concurrency), max_keepalive_connections=max(args.concurrency))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=60.0, limits=limits) as client:
            await wait_ready(client, proc, args.ready_timeout)
            info = (await client.get("/v1/index")).json()
            modes = [m for m in args.modes if m == "hybrid" or m in info["retrievers"]]
            log.info("index %s: %d docs, retrievers %s; %d queries", info["path"], info["doc_count"],
                     info["retrievers"], len(queries))
            for mode in modes:  # warm-up: JIT, ONNX sessions, page cache
                await run_cell(client, mode, 1, queries[::-1], args.warmup, args.k)
            cells = []
            for c in args.concurrency:
                for mode in modes:
                    cell = await run_cell(client, mode, c, queries, args.requests, args.k)
                    log.info("%s c=%d: p50 %.1f ms, %.1f QPS, %d errors", mode, c, cell.pct(50), cell.qps, cell.errors)
                    cells.append(cell)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    text = report(cells, args, url)
    print(text)  # noqa: T201 - the table is this command's output
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 1 if any(c.errors for c in cells) else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--index", type=Path, help="Index directory: start a server on a free local port.")
    target.add_argument("--url", help="A running server on 127.0.0.1.")
    p.add_argument("--queries", type=Path, help="BEIR queries.jsonl (default: next to the index's corpus).")
    p.add_argument("--max-queries", type=int, default=None)
    p.add_argument("--modes", type=lambda s: s.split(","), default=["bm25", "sparse", "dense", "hybrid"])
    p.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=300, help="Requests per (mode, concurrency) cell.")
    p.add_argument("--warmup", type=int, default=50, help="Untimed requests per mode before measuring.")
    p.add_argument("-k", "--k", type=int, default=10)
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--out", type=Path, help="Also write the tables here.")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
