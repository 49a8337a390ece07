"""Ray scale-out benchmark: sharded build throughput, query latency and fan-out overhead; BM25 quality.

    python benchmarks/shards.py speed   [--corpus DIR] [--shards 1,2,4] [--retrievers bm25] [--limit N]
    python benchmarks/shards.py quality [--dataset DIR] [--shards 1,2,4,8]

``speed`` builds the corpus single-node in-process (the anchor) and sharded on a private local Ray
for each shard count, then times the same queries (sequential, k=10) against the in-process
single-node engine (anchor) and the sharded router. Ratios are against the anchors measured in the
same run. ``quality`` checks that sharded BM25 equals single-node BM25: nDCG@10 / Recall@100 of
BM25-only sharded indexes of a BEIR dataset (global statistics, ``cluster/bm25_stats.py``) against
the single-node index, with the largest score difference and overlap over each query's top 10.

Everything runs on one machine: all "nodes" share its CPUs, so sharding cannot speed anything up
here; the numbers show Ray's fixed costs and the router's overhead per query.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

log = logging.getLogger("benchmarks.shards")
WORDNET = Path("/work/shared/data/wordnet")
SCIFACT = Path("/work/shared/data/beir/scifact")


def _subset(corpus: Path, limit: int | None, tmp: Path) -> Path:
    from trident_search.indexers.corpus import corpus_file

    source = corpus_file(corpus)
    if limit is None:
        return source
    out = tmp / "corpus.jsonl"
    with source.open() as src, out.open("w") as dst:
        dst.writelines(islice(src, limit))
    return out


def _latencies(search: Callable[[str], object], queries: list[str], warmup: int = 20) -> np.ndarray:
    for q in queries[:warmup]:
        search(q)
    out = []
    for q in queries:
        t0 = time.perf_counter()
        search(q)
        out.append((time.perf_counter() - t0) * 1e3)
    return np.array(out)


def speed(args: argparse.Namespace) -> None:
    from trident_search.cluster.build import build_sharded
    from trident_search.cluster.runtime import connect
    from trident_search.cluster.serving import connect_sharded
    from trident_search.core.engine import Engine
    from trident_search.core.schemas import SearchRequest
    from trident_search.indexers.build import BuildConfig, build_index

    retrievers = tuple(args.retrievers.split(","))
    mode = retrievers[0] if len(retrievers) == 1 else "hybrid"
    config = BuildConfig(retrievers=retrievers, params={"bm25": {"threads": 2}})
    tmp = Path(tempfile.mkdtemp(prefix="tr-shards-"))
    try:
        corpus = _subset(args.corpus, args.limit, tmp)
        rows = [json.loads(line) for line in (args.corpus / "queries.jsonl").read_text().splitlines()]
        queries = [r["text"] for r in rows[: args.queries]]

        def request(q: str) -> SearchRequest:
            return SearchRequest(query=q, mode=mode, k=10, include_text=False)

        t0 = time.perf_counter()
        manifest = build_index(corpus, tmp / "single", config)
        single_build = time.perf_counter() - t0
        n_docs = manifest.doc_count
        engine = Engine.load(tmp / "single", threads=2)
        anchor = _latencies(lambda q: engine.search(request(q)), queries)
        engine.close()

        connect("local", num_cpus=args.cpus)
        rows_out = []
        for n in args.shards:
            t0 = time.perf_counter()
            sm = build_sharded(corpus, tmp / f"sharded-{n}", config, shards=n, address="local",
                               encode_workers=args.encode_workers)
            build_s = time.perf_counter() - t0
            sharded = connect_sharded(tmp / f"sharded-{n}", address="local", deadline_s=10.0, threads=2)
            lat = _latencies(lambda q, e=sharded: e.search(request(q)), queries)
            partial = sum(sharded.search(request(q)).partial for q in queries[:20])
            sharded.close()
            rows_out.append((n, build_s, sm.stages, lat, partial))

        print(f"\ncorpus {corpus} ({n_docs} docs), retrievers {','.join(retrievers)}, mode {mode}, "
              f"{len(queries)} queries sequential, k=10, {os.cpu_count()} CPUs shared by every node")
        print(f"{'setup':<26}{'build s':>9}{'docs/s':>9}{'x anchor':>9}{'p50 ms':>9}{'p99 ms':>9}"
              f"{'p50 x':>8}{'fan-out p50 ms':>16}")
        a50, a99 = np.percentile(anchor, 50), np.percentile(anchor, 99)
        print(f"{'single-node (anchor)':<26}{single_build:>9.1f}{n_docs / single_build:>9.0f}{1.0:>9.2f}"
              f"{a50:>9.2f}{a99:>9.2f}{1.0:>8.2f}{'-':>16}")
        for n, build_s, stages, lat, partial in rows_out:
            p50, p99 = np.percentile(lat, 50), np.percentile(lat, 99)
            print(f"{f'{n} shard(s) on Ray':<26}{build_s:>9.1f}{n_docs / build_s:>9.0f}"
                  f"{(n_docs / build_s) / (n_docs / single_build):>9.2f}{p50:>9.2f}{p99:>9.2f}"
                  f"{p50 / a50:>8.2f}{p50 - a50:>16.2f}")
            print("    stages: " + ", ".join(f"{k} {v['seconds']:.1f}s" for k, v in stages.items())
                  + (f"; {partial} partial answers" if partial else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def quality(args: argparse.Namespace) -> None:
    from trident_search.cluster.build import build_sharded
    from trident_search.cluster.runtime import connect
    from trident_search.cluster.serving import connect_sharded
    from trident_search.core.engine import Engine
    from trident_search.core.schemas import SearchRequest
    from trident_search.eval.beir import BeirDataset
    from trident_search.eval.metrics import evaluate
    from trident_search.indexers.build import BuildConfig, build_index

    data = BeirDataset.open(args.dataset)
    queries = data.queries("test")
    qrels = data.qrels("test")
    config = BuildConfig(retrievers=("bm25",), params={"bm25": {"threads": 2}})
    tmp = Path(tempfile.mkdtemp(prefix="tr-bm25q-"))

    def run(engine: Engine) -> dict[str, dict[str, float]]:
        out = {}
        for qid, text in queries.items():
            response = engine.search(SearchRequest(query=text, mode="bm25", k=100, include_text=False))
            out[qid] = {h.id: h.score for h in response.hits}
        return out

    try:
        build_index(data.corpus, tmp / "single", config)
        single = Engine.load(tmp / "single")
        base_run = run(single)
        single.close()
        results = [("single-node", evaluate(qrels, base_run), 1.0, 0.0, 0)]
        connect("local", num_cpus=args.cpus)
        for n in args.shards:
            build_sharded(data.corpus, tmp / f"s{n}", config, shards=n, address="local")
            engine = connect_sharded(tmp / f"s{n}", address="local", deadline_s=30.0)
            sharded_run = run(engine)
            engine.close()
            diffs = [abs(sharded_run[q].get(d, float("nan")) - base_run[q][d]) for q in queries
                     for d in _top(base_run[q], 10)]
            max_diff = float(np.nanmax(diffs)) if diffs else 0.0
            missing = sum(d not in sharded_run[q] for q in queries for d in _top(base_run[q], 10))
            overlap = np.mean([
                len(set(_top(sharded_run[q], 10)) & set(_top(base_run[q], 10))) / max(1, len(_top(base_run[q], 10)))
                for q in queries
            ])
            results.append((f"{n} shards", evaluate(qrels, sharded_run), float(overlap), max_diff, missing))
        print(f"\nBM25 (k1=0.9, b=0.4, flat) on {args.dataset} test ({len(queries)} queries): sharded "
              "(global statistics, served through connect_sharded) vs single-node")
        print(f"{'index':<14}{'nDCG@10':>9}{'x anchor':>9}{'R@100':>8}{'top-10 overlap':>16}"
              f"{'max |score diff| top-10':>25}{'top-10 missing':>16}")
        a = results[0][1]["ndcg@10"]
        for name, m, overlap, max_diff, missing in results:
            print(f"{name:<14}{m['ndcg@10']:>9.4f}{m['ndcg@10'] / a:>9.4f}{m['recall@100']:>8.4f}{overlap:>16.3f}"
                  f"{max_diff:>25.2e}{missing:>16d}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _top(run: dict[str, float], k: int) -> list[str]:
    return [d for d, _ in sorted(run.items(), key=lambda kv: (-kv[1], kv[0]))[:k]]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    shards = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    p = sub.add_parser("speed")
    p.add_argument("--corpus", type=Path, default=WORDNET)
    p.add_argument("--shards", type=shards, default=[1, 2, 4])
    p.add_argument("--retrievers", default="bm25")
    p.add_argument("--limit", type=int, default=None, help="Use only the first N documents.")
    p.add_argument("--queries", type=int, default=300)
    p.add_argument("--encode-workers", type=int, default=2)
    p.add_argument("--cpus", type=int, default=4, help="CPUs Ray may schedule (fractional actors).")
    q = sub.add_parser("quality")
    q.add_argument("--dataset", type=Path, default=SCIFACT)
    q.add_argument("--shards", type=shards, default=[2, 4, 8])
    q.add_argument("--cpus", type=int, default=4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    speed(args) if args.command == "speed" else quality(args)


if __name__ == "__main__":
    main()
