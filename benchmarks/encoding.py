"""Encoder speed on scifact: document throughput (torch) and single-query latency, torch vs int8 ONNX.

    python benchmarks/encoding.py [--data data/demo/scifact-demo] [--docs N] [--queries N]
    python benchmarks/encoding.py --documents [--data DIR] [--device cpu|cuda] [--docs N] [--variants ...]

``--documents`` measures document encoding instead (`documents_main`): the raw torch fp32 anchor
(sentence-transformers' ``encode_document``, the pre-pipeline path), the default pipeline with its per-stage
times, other backends (``--variants``), and the exact-search nDCG@10 and top-10 overlap of each against the
anchor's encodings (queries encoded by torch fp32 for all, so only the documents differ). It needs no
pytrec_eval (nDCG@10 is computed here with trec_eval's definition), so it runs on a bare GPU machine.

For each default encoder (SPLADE-tiny, all-MiniLM-L6-v2) it encodes the corpus (the 500-doc scifact demo by
default) with torch (``--threads`` threads, batch 32) and times every test query one at a time on one thread
with both query backends, alternating torch and ONNX per query so machine load hits them alike. The torch
query path is the anchor: the table shows ONNX/torch latency ratios, and what int8 costs in quality: nDCG@10
of exact search over the encoded documents with either backend's query vectors, and the mean overlap of
their top-10 lists.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from itertools import islice
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trident_search.encoders import DenseEncoder, SparseEncoder, document_text
from trident_search.indexers.corpus import iter_corpus

if TYPE_CHECKING:
    from trident_search.eval.beir import Qrels

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
    from trident_search.eval.metrics import evaluate

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
    torch_enc = cls(device="cpu", threads=threads, backend="torch")
    start = time.perf_counter()
    doc_vectors = torch_enc.encode_documents(docs)
    docs_per_s = len(docs) / (time.perf_counter() - start)

    query_torch = cls(device="cpu", threads=1, backend="torch")
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
    args_list = sys.argv[1:] if argv is None else list(argv)
    if "--documents" in args_list:
        documents_main([a for a in args_list if a != "--documents"])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR folder (a scifact subset)")
    parser.add_argument("--docs", type=int, default=None, help="encode only the first N documents")
    parser.add_argument("--queries", type=int, default=100, help="test queries to time")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads for documents")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from trident_search.eval.beir import BeirDataset

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



# ---- document throughput ------------------------------------------------------------------------------


def _read_beir(root: Path, split: str) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    import json

    qrels: dict[str, dict[str, int]] = {}
    lines = (root / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]
    for line in lines:
        qid, did, rel = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(rel)
    queries = {}
    for line in (root / "queries.jsonl").read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            if row["_id"] in qrels:
                queries[row["_id"]] = row["text"]
    return queries, qrels


def ndcg_at_10(qrels: dict[str, dict[str, int]], qids: list[str], doc_ids: list[str], scores: np.ndarray) -> float:
    """trec_eval ndcg_cut_10 (gain = grade, log2 discount; ties by docid descending), mean over ``qids``."""
    total = 0.0
    for qid, row in zip(qids, scores, strict=True):
        top = np.argpartition(-row, min(100, len(row) - 1))[:100]
        ranked = sorted(((float(row[i]), doc_ids[i]) for i in top), reverse=True)[:10]
        judged = qrels.get(qid, {})
        dcg = sum(judged.get(d, 0) / np.log2(r + 2) for r, (_, d) in enumerate(ranked))
        ideal = sorted(judged.values(), reverse=True)[:10]
        idcg = sum(g / np.log2(r + 2) for r, g in enumerate(ideal))
        total += dcg / idcg if idcg > 0 else 0.0
    return total / max(len(qids), 1)


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    began = time.perf_counter()
    out = fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - began


def documents_bench(kind: str, model: str | None, texts: list[str], args: argparse.Namespace,
                    topics: tuple[list[str], list[str], dict[str, dict[str, int]], list[str]] | None) -> list[dict]:
    """Anchor, default pipeline and variants for one encoder; quality against the anchor when qrels are given."""
    cls = SparseEncoder if kind == "sparse" else DenseEncoder
    rows: list[dict[str, Any]] = []
    anchor_vectors = None
    reference = cls(model, device=args.device, backend="torch", threads=args.threads)
    scores_of = {}
    query_vectors = None
    if topics is not None:
        query_vectors = reference.encode_queries(topics[1])
    variants = [("anchor", None)] if args.anchor else []
    variants += [("default", {})] + [(v, _variant(v)) for v in args.variants.split(",") if v]
    for label, options in variants:
        if label == "anchor":
            encoder = reference
            reference._encode_torch(texts[:64], document=True)  # warm-up
            vectors, seconds = _timed(lambda t: reference._encode_torch(t, document=True), texts[: args.anchor_docs])
            backend = f"sentence-transformers torch-fp32 (batch {reference.batch_size})"
            stages: dict[str, float] = {}
            n = min(len(texts), args.anchor_docs)
        else:
            encoder = cls(model, device=args.device, threads=args.threads, **options)
            encoder.encode_documents(texts[:64])  # warm-up: first calls allocate, build kernels, spin up threads
            vectors, seconds = _timed(encoder.encode_documents, texts)
            backend, stages, n = encoder.document_backend, encoder.stage_times, len(texts)
        row = {"encoder": kind, "variant": label, "backend": backend, "docs": n, "seconds": round(seconds, 3),
               "docs_per_s": round(n / seconds, 1), "stages": stages}
        if topics is not None and n == len(texts):
            doc_ids, _, qrels, qids = topics
            product = query_vectors @ vectors.T
            scores = product.toarray() if hasattr(product, "toarray") else np.asarray(product)
            row["ndcg@10"] = round(ndcg_at_10(qrels, qids, doc_ids, scores), 4)
            scores_of[label] = scores
        rows.append(row)
        print(json.dumps(row), flush=True)
        if label == "anchor":
            anchor_vectors = vectors
        del encoder
    base = "anchor" if "anchor" in scores_of else None
    for row in rows:
        row["speedup_vs_anchor"] = round(row["docs_per_s"] / rows[0]["docs_per_s"], 2) if args.anchor else None
        if base and row["variant"] in scores_of:
            row["top10_overlap_vs_anchor"] = round(_top_overlap(scores_of[base], scores_of[row["variant"]]), 4)
    del anchor_vectors
    return rows


def _variant(spec: str) -> dict[str, Any]:
    """``backend[:precision[:token_budget]]``, e.g. ``torch:fp32``, ``torch:bf16``, ``onnx::4096``."""
    parts = spec.split(":")
    out: dict[str, Any] = {"backend": parts[0]}
    if len(parts) > 1 and parts[1]:
        out["precision"] = parts[1]
    if len(parts) > 2 and parts[2]:
        out["token_budget"] = int(parts[2])
    return out


def documents_main(argv: list[str]) -> None:
    import json as _json

    parser = argparse.ArgumentParser(description="document encoding throughput and quality")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="BEIR folder (corpus, queries, qrels)")
    parser.add_argument("--docs", type=int, default=None, help="only the first N documents")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="encoder threads [default: every allowed core]")
    parser.add_argument("--encoders", default="sparse,dense")
    parser.add_argument("--sparse-model")
    parser.add_argument("--dense-model")
    parser.add_argument("--anchor", action=argparse.BooleanOptionalAction, default=True,
                        help="time the raw sentence-transformers torch fp32 path (the anchor)")
    parser.add_argument("--anchor-docs", type=int, default=10**9, help="documents for the anchor (a prefix)")
    parser.add_argument("--variants", default="", help="comma list of backend[:precision[:token_budget]]")
    parser.add_argument("--quality", action="store_true", help="nDCG@10 of exact search (test split) per row")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    stream = list(islice(iter_corpus(args.data), args.docs))
    texts = [document_text(doc.title, doc.text) for doc in stream]
    topics = None
    if args.quality:
        queries, qrels = _read_beir(args.data, "test")
        topics = ([d.id for d in stream], list(queries.values()), qrels, list(queries))
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    machine = (f"{platform.node()}: {platform.processor() or platform.machine()}, {cores} usable cores, "
               f"torch {torch.__version__}" + (f", {torch.cuda.get_device_name()}" if args.device != "cpu" else ""))
    print(f"# {machine}; {len(texts)} docs from {args.data}; device {args.device}; "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    rows = []
    for kind in args.encoders.split(","):
        model = args.sparse_model if kind == "sparse" else args.dense_model
        rows += documents_bench(kind, model, texts, args, topics)
    print("\n| encoder | variant | backend | docs | docs/s | x anchor | nDCG@10 | top-10 overlap | stages (s) |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for r in rows:
        st = r["stages"]
        stages = ", ".join(f"{k} {st[k]:.2f}" for k in ("tokenize", "wait", "model", "output") if k in st)
        print(f"| {r['encoder']} | {r['variant']} | {r['backend']} | {r['docs']} | {r['docs_per_s']} | "
              f"{r['speedup_vs_anchor'] or ''} | {r.get('ndcg@10', '')} | {r.get('top10_overlap_vs_anchor', '')} | "
              f"{stages} |")
    if args.json:
        args.json.write_text(_json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
