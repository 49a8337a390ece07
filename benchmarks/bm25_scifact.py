"""Reproduce Anserini's BM25 BEIR scifact numbers with our own index and eval, and time batch search.

    python benchmarks/bm25_scifact.py [--data ../shared/data/beir/scifact] [--threads 2]

For "flat" and "multifield" it builds a BM25Index from the streamed corpus, runs the test queries at
1000 hits (Anserini's ``-hits 1000``), scores them with ``trident_search.eval.metrics`` (pytrec_eval, BEIR's
``ignore_identical_ids`` = Anserini's ``-removeQuery``) and prints them next to the published
regression values. Throughput is batch search at k=100 next to the anchor, measured alternately in
the same run: Anserini's ``SimpleSearcher.batch_search`` (the Java call Pyserini's ``LuceneSearcher``
makes) over the same index, returning raw Java hits. Its rankings must equal ours.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

from trident_search.eval.beir import BeirDataset
from trident_search.eval.metrics import evaluate
from trident_search.indexers import jvm
from trident_search.indexers.bm25 import BM25Index
from trident_search.indexers.corpus import iter_corpus

log = logging.getLogger("bm25_scifact")

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "beir" / "scifact"
# Anserini 1.7.1 regressions beir-v1.0.0-scifact.{flat,multifield}.yaml (bm25, -hits 1000)
PUBLISHED = {
    "flat": {"ndcg@10": 0.6789, "recall@100": 0.9253, "recall@1000": 0.9767},
    "multifield": {"ndcg@10": 0.6647, "recall@100": 0.9076, "recall@1000": 0.9800},
}
METRICS = ("ndcg@10", "recall@100", "recall@1000")
MULTIFIELD_WEIGHTS = {"contents": 1.0, "title": 1.0}


def _median_seconds(fns: list, repeats: int) -> list[float]:
    """Median seconds of each function, run in turn so machine load hits them alike.

    One untimed call of each first: the JIT needs it.
    """
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, bucket in zip(fns, times):
            start = time.perf_counter()
            fn()
            bucket.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def run_mode(data: BeirDataset, work: Path, fields: str, threads: int, repeats: int) -> dict:
    queries = data.queries("test")
    qids, texts = list(queries), list(queries.values())
    start = time.perf_counter()
    BM25Index.build(iter_corpus(data.root), work / fields, fields=fields, threads=threads)
    build_s = time.perf_counter() - start
    out: dict = {"fields": fields, "build_s": build_s, "queries": len(qids)}
    with BM25Index.load(work / fields) as index:
        out["docs"] = index.num_docs
        results = index.batch_search(texts, qids, k=1000, threads=threads)
        run = {qid: {h.docid: h.score for h in hits} for qid, hits in results.items()}
        out["metrics"] = evaluate(data.qrels("test"), run, METRICS)

        # The anchor: the Java searcher Pyserini's LuceneSearcher wraps, called as Pyserini calls it
        # (raw Java hit arrays, no conversion), on the same index.
        anserini = jvm.autoclass("io.anserini.search.SimpleSearcher")(str(work / fields))
        anserini.set_bm25(0.9, 0.4)
        jfields = jvm.autoclass("java.util.HashMap")()
        for name, weight in MULTIFIELD_WEIGHTS.items():
            jfields.put(name, jvm.autoclass("java.lang.Float")(weight))
        jtexts, jqids = jvm.autoclass("java.util.ArrayList")(), jvm.autoclass("java.util.ArrayList")()
        for qid, text in zip(qids, texts):
            jtexts.add(text)
            jqids.add(qid)

        def anchor(k: int) -> dict:
            if fields == "multifield":
                found = anserini.batch_search_fields(jtexts, jqids, k, threads, jfields)
            else:
                found = anserini.batch_search(jtexts, jqids, k, threads)
            return {e.getKey(): e.getValue() for e in found.entrySet().toArray()}

        reference = anchor(1000)
        out["same_rankings"] = sum(
            [h.docid for h in reference[q]] == [h.docid for h in results[q]] for q in qids
        )
        ours_s, anchor_s, single_s = _median_seconds(
            [
                lambda: index.batch_search(texts, qids, k=100, threads=threads),
                lambda: anchor(100),
                lambda: [index.search(t, 100) for t in texts],
            ],
            repeats,
        )
        n = len(qids)
        out["ours_qps"], out["anchor_qps"], out["single_qps"] = n / ours_s, n / anchor_s, n / single_s
        anserini.close()
    return out


def report(rows: list[dict], threads: int) -> str:
    lines = [
        "| fields | nDCG@10 | Anserini | diff | R@100 | Anserini | diff | R@1000 | Anserini | same ranking as anchor |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, p = r["metrics"], PUBLISHED[r["fields"]]
        cells = []
        for name in METRICS:
            cells += [f"{m[name]:.4f}", f"{p[name]:.4f}"]
            if name != "recall@1000":
                cells.append(f"{m[name] - p[name]:+.4f}")
        lines.append(
            f"| {r['fields']} | " + " | ".join(cells) + f" | {r['same_rankings']}/{r['queries']} queries |"
        )
    lines += [
        "",
        f"| fields | build (s) | ours: batch k=100, {threads} threads (q/s) | anchor: Anserini batch (q/s) "
        "| ratio | single-query loop k=100 (q/s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['fields']} | {r['build_s']:.1f} ({r['docs'] / r['build_s']:.0f} docs/s) | "
            f"{r['ours_qps']:.0f} | {r['anchor_qps']:.0f} | {r['ours_qps'] / r['anchor_qps']:.2f} | "
            f"{r['single_qps']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR scifact folder")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="timed passes (median is reported)")
    parser.add_argument(
        "--work", type=Path, help="a new folder to keep the indexes in (default: a temp folder)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    data = BeirDataset.open(args.data)
    with tempfile.TemporaryDirectory(prefix="bm25-scifact-") as tmp:
        work = args.work or Path(tmp)
        rows = [run_mode(data, work, f, args.threads, args.repeats) for f in PUBLISHED]
    print(report(rows, args.threads))  # noqa: T201  (the benchmark's output)


if __name__ == "__main__":
    main()
