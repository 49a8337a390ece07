"""Encoder speed on scifact: document throughput (torch) and single-query latency, torch vs int8 ONNX.

    python benchmarks/encoding.py [--data data/demo/scifact-demo] [--docs N] [--queries N]

For each default encoder (SPLADE-tiny, all-MiniLM-L6-v2) it encodes the corpus (the 500-doc scifact demo by
default) with torch (``--threads`` threads, batch 32) and times every test query one at a time on one thread
with both query backends, alternating torch and ONNX per query so machine load hits them alike. The torch
query path is the anchor: the table shows ONNX/torch latency ratios, and what int8 costs in quality: nDCG@10
of exact search over the encoded documents with either backend's query vectors, and the mean overlap of
their top-10 lists.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from trident_search.encoders import DenseEncoder, SparseEncoder, document_text
from trident_search.eval.beir import BeirDataset, Qrels
from trident_search.eval.metrics import evaluate
from trident_search.indexers.corpus import iter_corpus

log = logging.getLogger("benchmarks.encoding")

DEFAULT_DATA = Path(__file__).resolve().parents[1] / "data" / "demo" / "scifact-demo"
TOP = 10


def _scores(queries: Any, docs: Any) -> np.ndarray:
    product = queries @ docs.T
    return product.toarray() if hasattr(product, "toarray") else np.asarray(product)


def _top_overlap(a: np.ndarray, b: np.ndarray) -> float:
    """Mean share of torch's top-10 documents that ONNX also ranks in its top 10."""
    top_a = np.argsort(-a, axis=1, kind="stable")[:, :TOP]
    top_b = np.argsort(-b, axis=1, kind="stable")[:, :TOP]
    return float(np.mean([len(set(x) & set(y)) / TOP for x, y in zip(top_a, top_b)]))


def _ndcg_at_10(qrels: Qrels, qids: list[str], doc_ids: list[str], scores: np.ndarray) -> float:
    run = {}
    for qid, row in zip(qids, scores):
        top = np.argsort(-row, kind="stable")[:100]
        run[qid] = {doc_ids[i]: float(row[i]) for i in top}
    return evaluate(qrels, run, ("ndcg@10",))["ndcg@10"]


def bench(
    kind: str, corpus: tuple[list[str], list[str]], topics: tuple[Qrels, dict[str, str]], threads: int
) -> dict[str, Any]:
    doc_ids, docs = corpus
    qrels, query_map = topics
    qids, queries = list(query_map), list(query_map.values())
    cls = SparseEncoder if kind == "sparse" else DenseEncoder
    torch_enc = cls(device="cpu", threads=threads)
    start = time.perf_counter()
    doc_vectors = torch_enc.encode_documents(docs)
    docs_per_s = len(docs) / (time.perf_counter() - start)

    query_torch = cls(device="cpu", threads=1)
    query_onnx = cls(device="cpu", threads=1, backend="onnx")
    for encoder in (query_torch, query_onnx):
        encoder.encode_queries(queries[:3])  # warm-up: first calls allocate
    times: dict[str, list[float]] = {"torch": [], "onnx": []}
    for query in queries:
        for name, encoder in (("torch", query_torch), ("onnx", query_onnx)):
            start = time.perf_counter()
            encoder.encode_queries([query])
            times[name].append(time.perf_counter() - start)
    exact = _scores(query_torch.encode_queries(queries), doc_vectors)
    fast = _scores(query_onnx.encode_queries(queries), doc_vectors)
    row: dict[str, Any] = {"encoder": f"{kind} {torch_enc.name}", "docs_per_s": docs_per_s}
    for name, values in times.items():
        row[f"{name}_p50"] = statistics.median(values) * 1e3
        row[f"{name}_p95"] = float(np.percentile(values, 95)) * 1e3
    row["ratio"] = row["onnx_p50"] / row["torch_p50"]
    row["overlap"] = _top_overlap(exact, fast)
    row["ndcg_torch"] = _ndcg_at_10(qrels, qids, doc_ids, exact)
    row["ndcg_onnx"] = _ndcg_at_10(qrels, qids, doc_ids, fast)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR folder (a scifact subset)")
    parser.add_argument("--docs", type=int, default=None, help="encode only the first N documents")
    parser.add_argument("--queries", type=int, default=100, help="test queries to time")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for documents")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    data = BeirDataset.open(args.data)
    stream = list(islice(iter_corpus(data.root), args.docs))
    corpus = ([doc.id for doc in stream], [document_text(doc.title, doc.text) for doc in stream])
    queries = dict(islice(data.queries("test").items(), args.queries))
    qrels = {qid: judged for qid, judged in data.qrels("test").items() if qid in queries}
    rows = [bench(kind, corpus, (qrels, queries), args.threads) for kind in ("sparse", "dense")]

    out = sys.stdout
    out.write(
        f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}; {data.name}: {len(stream)} docs, {len(queries)} test queries, "
        f"documents on {args.threads} torch threads, queries on 1 thread\n\n"
    )
    out.write(
        "| encoder | docs/s (torch) | query p50 torch ms | query p50 onnx ms | onnx/torch p50 "
        "| p95 torch ms | p95 onnx ms | nDCG@10 torch | nDCG@10 onnx | top-10 overlap |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n"
    )
    for r in rows:
        out.write(
            f"| {r['encoder']} | {r['docs_per_s']:.1f} | {r['torch_p50']:.2f} | {r['onnx_p50']:.2f} "
            f"| {r['ratio']:.3f} | {r['torch_p95']:.2f} | {r['onnx_p95']:.2f} | {r['ndcg_torch']:.4f} "
            f"| {r['ndcg_onnx']:.4f} | {r['overlap']:.3f} |\n"
        )


if __name__ == "__main__":
    main()
