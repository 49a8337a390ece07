"""Does approximate learned-sparse search keep the quality of exact search? (scifact test, SPLADE-tiny)

Encodes scifact once with the default sparse encoder (cached under cache/sparse/), builds a
`SparseIndex` with the given (default) parameters, and scores exact and approximate search with
pytrec_eval through `trident_search.eval.metrics`. The acceptance bound: approximate nDCG@10 within 0.005 of exact
with the default parameters (exact, measured when DESIGN.md was written: 0.644).

    python benchmarks/sparse_scifact.py                       # defaults
    python benchmarks/sparse_scifact.py --query-cut 5 --heap-factor 0.9
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sparse_data import DATASETS, encode_beir, load_encoded  # noqa: E402

from trident_search.eval.beir import BeirDataset  # noqa: E402
from trident_search.eval.metrics import evaluate  # noqa: E402
from trident_search.indexers.sparse import SparseIndex, SparseParams  # noqa: E402

log = logging.getLogger("sparse_scifact")
METRICS = ("ndcg@10", "recall@100")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATASETS["scifact"][0])
    ap.add_argument("--split", default="test")
    ap.add_argument("--query-cut", type=int)
    ap.add_argument("--heap-factor", type=float)
    ap.add_argument("--params", type=json.loads, default={}, help='SparseParams fields as JSON, e.g. \'{"n_postings": 500}\'')
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    ds = BeirDataset.open(args.data)
    qfiles = DATASETS["scifact"][1]
    try:
        docs, qsets = load_encoded("scifact", qfiles)
    except FileNotFoundError:
        encode_beir(args.data, "scifact", qfiles)  # ~3 min on 2 CPU cores, once
        docs, qsets = load_encoded("scifact", qfiles)
    with open(ds.corpus, encoding="utf-8") as f:
        doc_ids = np.array([str(json.loads(line)["_id"]) for line in f if line.strip()])
    with open(ds.root / "queries.jsonl", encoding="utf-8") as f:
        all_qids = [str(json.loads(line)["_id"]) for line in f if line.strip()]
    qrels = ds.qrels(args.split)
    rows = [i for i, qid in enumerate(all_qids) if qid in qrels]
    queries = qsets["queries"][rows]
    qids = [all_qids[i] for i in rows]

    params = SparseParams(**args.params)
    t0 = time.perf_counter()
    index = SparseIndex.build(docs, params)
    build_s = time.perf_counter() - t0
    stats = index.stats()
    log.info("built %s in %.1fs: %s", index.params, build_s, stats)
    with tempfile.TemporaryDirectory() as tmp:
        index.save(tmp)
        disk = sum(f.stat().st_size for f in Path(tmp).iterdir())
    raw_csr = docs.nnz * 8 + (docs.shape[0] + 1) * 8  # float32 weights + int32 ids + int64 row pointers

    results = {}
    for name, exact in (("exact", True), ("approximate", False)):
        t0 = time.perf_counter()
        ids, scores = index.batch_search(queries, 100, exact=exact, query_cut=args.query_cut,
                                         heap_factor=args.heap_factor, threads=1)
        us = (time.perf_counter() - t0) / len(qids) * 1e6
        run = {qid: {doc_ids[d]: float(s) for d, s in zip(ids[i], scores[i]) if d >= 0} for i, qid in enumerate(qids)}
        results[name] = (evaluate(qrels, run, METRICS), us)
    (ex, ex_us), (ap_, ap_us) = results["exact"], results["approximate"]
    qc = args.query_cut or params.query_cut
    hf = args.heap_factor if args.heap_factor is not None else params.heap_factor
    lines = [
        f"scifact {args.split}: {len(qids)} queries, {docs.shape[0]} docs; query_cut={qc}, heap_factor={hf}, "
        f"build params {index.params.to_dict()}; built in {build_s:.1f}s",
        f"`sparse/` on disk {disk / 1e6:.2f} MB = {disk / stats['forward_bytes']:.2f}x the forward index "
        f"({stats['forward_bytes'] / 1e6:.2f} MB) = {disk / raw_csr:.2f}x the raw float32 CSR ({raw_csr / 1e6:.2f} MB); "
        f"{stats['postings']:,} postings, {stats['blocks']:,} blocks, {stats['summary_entries']:,} summary entries",
        "",
        "| search | nDCG@10 | R@100 | µs/query (1 thread, k=100) |", "|---|---|---|---|",
        f"| exact | {ex['ndcg@10']:.4f} | {ex['recall@100']:.4f} | {ex_us:.0f} |",
        f"| approximate | {ap_['ndcg@10']:.4f} | {ap_['recall@100']:.4f} | {ap_us:.0f} |",
        f"| difference | {ap_['ndcg@10'] - ex['ndcg@10']:+.4f} | {ap_['recall@100'] - ex['recall@100']:+.4f} | |",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
