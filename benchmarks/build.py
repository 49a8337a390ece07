"""Time the index build per stage, its overhead over the raw encoders, and dense quality/speed.

    python benchmarks/build.py --corpus ../shared/data/beir/scifact [--device cpu] [--raw-docs 512]
    python benchmarks/build.py --corpus ../shared/data/wordnet --queries ../shared/data/wordnet/queries.jsonl --hnsw

1. Builds the full index (``build_index``, all retrievers unless ``--retrievers``) and prints each
   stage's documents, seconds and docs/s, plus the share of each encode stage spent outside the
   model (parsing, sorting, checkpoint writes) -- measured inside the same run.
2. Anchor: the raw encoder (one ``encode_documents`` call over the first ``--raw-docs`` texts) next
   to the pipeline's encode stage on the same documents (a build of that slice); ratio = overhead.
3. With qrels (a BEIR folder): nDCG@10 / Recall@100 of the dense Flat index through pytrec_eval
   (``trident_search.eval.metrics``), next to the MTEB value for all-MiniLM-L6-v2 on scifact (0.6451).
4. ``--hnsw``: HNSW32 built from the same vectors, recall@10 against Flat (the anchor) and
   single-query throughput on one thread, for several efSearch values.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import tempfile
import time
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np

from trident_search.indexers.build import BuildConfig, build_index
from trident_search.indexers.corpus import corpus_file, iter_corpus
from trident_search.indexers.dense import DenseIndex, faiss_threads
from trident_search.indexers.docstore import DocStore
from trident_search.indexers.manifest import Manifest
from trident_search.indexers.progress import Progress
from trident_search.indexers.retriever import registered

log = logging.getLogger("benchmarks.build")
MTEB_SCIFACT_NDCG10 = 0.6451


def stage_table(stages: dict[str, dict[str, float]]) -> list[str]:
    rows = ["| stage | docs | seconds | docs/s | outside the model |", "|---|---:|---:|---:|---:|"]
    for name, s in stages.items():
        outside = ""
        if s.get("model_seconds"):
            outside = f"{(s['seconds'] - s['model_seconds']) / s['seconds']:.1%}"
        rows.append(f"| {name} | {s['docs']:.0f} | {s['seconds']:.1f} | {s['docs_per_s']:.1f} | {outside} |")
    total = sum(s["seconds"] for s in stages.values())
    rows.append(f"| **total** | | {total:.1f} | | |")
    return rows


def raw_vs_pipeline(corpus: Path, config: BuildConfig, n: int, work: Path) -> list[dict[str, Any]]:
    """Raw encoder throughput on the first n documents vs the build's encode stage on the same ones."""
    docs = list(islice(iter_corpus(corpus), n))
    slice_file = work / "slice.jsonl"
    slice_file.write_text(
        "".join(json.dumps({"_id": d.id, "title": d.title, "text": d.text}) + "\n" for d in docs)
    )
    texts = docs
    results = []
    for kind in (k for k in ("sparse", "dense") if k in config.retrievers):
        encoder = registered()[kind].document_encoder(config.context(kind, len(docs)))
        assert encoder is not None
        encoder.encode(docs[:8])  # warm-up
        began = time.perf_counter()
        encoder.encode(docs)
        raw = len(texts) / (time.perf_counter() - began)
        del encoder
        cfg = BuildConfig(**{**config.to_dict(), "retrievers": (kind,)})
        manifest = build_index(slice_file, work / f"slice-{kind}", cfg)
        stage = manifest.stages[f"{kind} encode"]
        pipe = stage["docs_per_s"]
        results.append(
            {"encoder": kind, "docs": len(texts), "raw_docs_per_s": round(raw, 1), "pipeline_docs_per_s": pipe,
             "overhead": round(raw / pipe - 1, 4)}
        )
    return results


def dense_quality(dataset: Path, index_dir: Path, config: BuildConfig, split: str) -> dict[str, float]:
    from trident_search.eval.beir import BeirDataset
    from trident_search.eval.metrics import evaluate

    data = BeirDataset.open(dataset)
    queries = data.queries(split)
    qids = list(queries)
    encoder = registered()["dense"].query_encoder(Manifest.load(index_dir), backend="torch")
    vectors = np.concatenate([encoder.encode(queries[q]) for q in qids])
    index = DenseIndex.load(index_dir / "dense")
    ids, scores = index.search(vectors, 100)
    ext = DocStore.open(index_dir / "docs.sqlite").external_ids()
    run = {q: {ext[i]: float(s) for i, s in zip(row_i, row_s) if i >= 0} for q, row_i, row_s in zip(qids, ids, scores)}
    metrics = evaluate(data.qrels(split), run, ("ndcg@10", "recall@100"))
    return {"queries": len(qids), **{k: round(v, 4) for k, v in metrics.items()}}


def hnsw_vs_flat(index_dir: Path, queries_file: Path, config: BuildConfig, efs: list[int]) -> list[dict[str, Any]]:
    flat = DenseIndex.load(index_dir / "dense")
    texts = [json.loads(line)["text"] for line in queries_file.read_text().splitlines() if line.strip()]
    encoder = registered()["dense"].query_encoder(Manifest.load(index_dir), backend="torch")
    q = np.concatenate([encoder.encode(t) for t in texts])
    vectors = flat.index.reconstruct_n(0, len(flat))
    began = time.perf_counter()
    hnsw = DenseIndex.build([vectors], flat.dim, "HNSW32", threads=1)
    build_s = time.perf_counter() - began
    truth, _ = flat.search(q, 10)
    rows = []

    def one_by_one(index: DenseIndex, **kw: Any) -> tuple[np.ndarray, float]:
        out = np.empty((len(q), 10), dtype=np.int64)
        with faiss_threads(1):
            began = time.perf_counter()
            for i in range(len(q)):
                out[i] = index.search(q[i : i + 1], 10, **kw)[0][0]
            return out, len(q) / (time.perf_counter() - began)

    _, flat_qps = one_by_one(flat)
    rows.append({"index": "Flat (anchor)", "ef_search": "", "recall@10": 1.0, "qps": round(flat_qps), "speedup": 1.0})
    for ef in efs:
        got, qps = one_by_one(hnsw, ef_search=ef)
        recall = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)]))
        rows.append({"index": "HNSW32", "ef_search": ef, "recall@10": round(recall, 4), "qps": round(qps),
                     "speedup": round(qps / flat_qps, 1)})
    rows.append({"hnsw_build_seconds_1_thread": round(build_s, 1), "docs": len(flat), "queries": len(q)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--corpus", type=Path, required=True, help="BEIR folder or corpus.jsonl[.gz]")
    parser.add_argument("--out", type=Path, help="index directory [default: a temporary one]")
    parser.add_argument("--retrievers", default="bm25,sparse,dense")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--sparse-model")
    parser.add_argument("--dense-model")
    parser.add_argument("--raw-docs", type=int, default=512, help="documents for the raw-encoder anchor (0: skip)")
    parser.add_argument("--split", default="test", help="qrels split for dense nDCG (BEIR folders)")
    parser.add_argument("--queries", type=Path, help="queries.jsonl for --hnsw [default: the dataset's]")
    parser.add_argument("--hnsw", action="store_true", help="compare HNSW32 with Flat")
    parser.add_argument("--ef", default="16,32,64,128,256")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    models = {"sparse": args.sparse_model, "dense": args.dense_model}
    config = BuildConfig(
        retrievers=tuple(args.retrievers.split(",")), device=args.device, batch_size=args.batch_size,
        params={k: {"model": m} for k, m in models.items() if m},
    )
    results: dict[str, Any] = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}",
                               "corpus": str(args.corpus), "config": config.to_dict()}
    with tempfile.TemporaryDirectory(prefix="bench-build-") as tmp:
        out = args.out or Path(tmp) / "index"
        began = time.perf_counter()
        manifest = build_index(args.corpus, out, config, progress=Progress(tty=False, log_every_s=30))
        results["wall_seconds"] = round(time.perf_counter() - began, 1)
        results["docs"] = manifest.doc_count
        results["stages"] = manifest.stages
        results["models"] = manifest.models
        results["dense_factory"] = manifest.params.get("dense", {}).get("factory")
        print(f"\n## build of {args.corpus} ({manifest.doc_count} docs, device {args.device}), "
              f"wall {results['wall_seconds']} s")
        print("\n".join(stage_table(manifest.stages)))
        if args.raw_docs:
            results["raw_vs_pipeline"] = raw_vs_pipeline(corpus_file(args.corpus), config, args.raw_docs, Path(tmp))
            print("\n| encoder | docs | raw encoder docs/s (anchor) | pipeline docs/s | overhead |")
            print("|---|---:|---:|---:|---:|")
            for r in results["raw_vs_pipeline"]:
                print(f"| {r['encoder']} | {r['docs']} | {r['raw_docs_per_s']} | {r['pipeline_docs_per_s']} | "
                      f"{r['overhead']:+.1%} |")
        if "dense" in config.retrievers and args.corpus.is_dir() and (args.corpus / "qrels").is_dir():
            results["dense_quality"] = q = dense_quality(args.corpus, out, config, args.split)
            print(f"\ndense Flat on {args.split}: nDCG@10 {q['ndcg@10']:.4f} (MTEB anchor "
                  f"{MTEB_SCIFACT_NDCG10}, diff {q['ndcg@10'] - MTEB_SCIFACT_NDCG10:+.4f}), "
                  f"Recall@100 {q['recall@100']:.4f}, {q['queries']} queries")
        if args.hnsw:
            queries = args.queries or (args.corpus / "queries.jsonl")
            rows = hnsw_vs_flat(out, queries, config, [int(e) for e in args.ef.split(",")])
            info = rows.pop()
            results["hnsw_vs_flat"], results["hnsw_build"] = rows, info
            print("\n| index | efSearch | recall@10 vs Flat | QPS (1 thread, 1 query) | speedup |")
            print("|---|---:|---:|---:|---:|")
            for r in rows:
                print(f"| {r['index']} | {r['ef_search']} | {r['recall@10']:.4f} | {r['qps']} | {r['speedup']}x |")
            print(f"HNSW32 build on 1 thread: {info['hnsw_build_seconds_1_thread']} s for {info['docs']} docs; "
                  f"{info['queries']} queries")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
