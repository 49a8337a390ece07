"""Trident's learned-sparse index against pyseismic-lsr 0.5.4 (the Seismic authors' Rust code).

One command, one process, the same vectors and build parameters for both, one query at a time on
one thread. For every (query_cut, heap_factor) of a sweep it reports recall@10 against exact search
and mean / p50 / p99 latency; then the fastest setting of each system reaching recall@10 0.90, 0.95
and 0.99, with ratios ours / pyseismic and exact / ours; plus build time and index bytes.

Latency is per query, measured around the public search call of each library (ours:
``SparseIndex.search(csr_row)``; pyseismic: ``SeismicIndexRaw.search(int32 ids, float32 weights)``).
The machine is shared, so each sweep is repeated (``--repeats``) with the two systems interleaved,
and every statistic is the median over repeats. Both wall-clock and thread-CPU time are kept; the
tables show wall-clock, the JSON has both.

    python benchmarks/sparse_vs_seismic.py                       # synthetic 100k + WordNet
    python benchmarks/sparse_vs_seismic.py --dataset synthetic --queries 300 --repeats 1   # quick
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import struct
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("RAYON_NUM_THREADS", "2")  # pyseismic's build pool; must precede its import

import numpy as np
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _sparse_data import DATASETS, load_encoded, synthetic_splade  # noqa: E402

from trident_search.indexers.sparse import SparseIndex, SparseParams  # noqa: E402

log = logging.getLogger("sparse_vs_seismic")
K = 10
TARGETS = (0.90, 0.95, 0.99)
QUERY_CUTS = (3, 5, 8, 10, 15, 20, 30)
HEAP_FACTORS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


# ---------------------------------------------------------------------------------------- anchors
def _write_seismic_bin(path: Path, m: sp.csr_matrix) -> None:
    """Seismic's inner binary format: n (u32), then per vector len (u32), ids (u32), values (f32)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<I", m.shape[0]))
        for i in range(m.shape[0]):
            a, z = m.indptr[i], m.indptr[i + 1]
            f.write(struct.pack("<I", z - a))
            f.write(m.indices[a:z].astype("<u4").tobytes())
            f.write(m.data[a:z].astype("<f4").tobytes())


def build_seismic(docs: sp.csr_matrix, p: SparseParams, tmp: Path):  # noqa: ANN201
    import seismic

    binf = tmp / "docs.bin"
    _write_seismic_bin(binf, docs)
    t0 = time.perf_counter()
    index = seismic.SeismicIndexRaw.build(
        str(binf), n_postings=p.n_postings, centroid_fraction=p.centroid_fraction, summary_energy=p.summary_energy,
        max_fraction=p.max_fraction, doc_cut=p.doc_cut, nknn=0)
    build_s = time.perf_counter() - t0
    index.save(str(tmp / "seismic"))
    size = sum(f.stat().st_size for f in tmp.glob("seismic*"))
    return index, build_s, size


def exact_topk(docs_t: sp.csr_matrix, queries: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """scipy brute force, one query at a time: (top-k ids, k-th best score, per-query seconds)."""
    ids = np.full((queries.shape[0], K), -1, dtype=np.int64)
    kth = np.zeros(queries.shape[0], dtype=np.float32)
    lat = []
    for i in range(queries.shape[0]):
        t0 = time.perf_counter()
        s = (queries[i] @ docs_t).toarray().ravel()
        top = np.argpartition(-s, K)[:K]
        lat.append(time.perf_counter() - t0)
        top = top[np.argsort(-s[top], kind="stable")]
        top = top[s[top] > 0]
        ids[i, : top.size] = top
        kth[i] = s[top[-1]] if top.size == K else 0.0
    return ids, kth, lat


def recall(found: list[np.ndarray], true_scores: np.ndarray, kth: np.ndarray, n_true: np.ndarray) -> float:
    """recall@10 with ties: a hit counts when its exact score reaches the exact k-th score."""
    r = []
    for i, ids in enumerate(found):
        ids = ids[ids >= 0]
        if n_true[i] == 0:
            continue
        good = int(np.count_nonzero(true_scores[i][ids] >= kth[i] * (1 - 1e-6))) if ids.size else 0
        r.append(min(good, n_true[i]) / n_true[i])
    return float(np.mean(r)) if r else 1.0


def _stats(lat_ns: np.ndarray) -> dict[str, float]:
    us = lat_ns / 1e3
    return {"mean": float(us.mean()), "p50": float(np.percentile(us, 50)), "p99": float(np.percentile(us, 99))}


def time_ours(index: SparseIndex, rows: list[sp.csr_matrix], qc: int, hf: float):  # noqa: ANN201
    wall = np.empty(len(rows), dtype=np.int64)
    cpu = np.empty(len(rows), dtype=np.int64)
    out = []
    for i, q in enumerate(rows):
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        ids, _ = index.search(q, K, query_cut=qc, heap_factor=hf)
        wall[i] = time.perf_counter_ns() - t0
        cpu[i] = time.thread_time_ns() - c0
        out.append(ids)
    return out, wall, cpu


def time_seismic(index, comps: list[np.ndarray], vals: list[np.ndarray], qc: int, hf: float):  # noqa: ANN001, ANN201
    wall = np.empty(len(comps), dtype=np.int64)
    cpu = np.empty(len(comps), dtype=np.int64)
    out = []
    for i in range(len(comps)):
        c0 = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        res = index.search(comps[i], vals[i], K, qc, hf, 0, True)
        wall[i] = time.perf_counter_ns() - t0
        cpu[i] = time.thread_time_ns() - c0
        out.append(np.array([d for _, d in res], dtype=np.int64))
    return out, wall, cpu


# ---------------------------------------------------------------------------------------- one dataset
def run_dataset(name: str, docs: sp.csr_matrix, query_sets: dict[str, sp.csr_matrix], params: SparseParams,
                repeats: int, grid: list[tuple[int, float]]) -> dict:
    docs = docs.astype(np.float32).tocsr()
    docs.sum_duplicates()
    log.info("%s: %d docs, %.1f nnz/doc", name, docs.shape[0], docs.nnz / docs.shape[0])
    t0 = time.perf_counter()
    ours = SparseIndex.build(docs, params, threads=2)
    ours_build = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        ours.save(tmp / "ours")
        ours_bytes = sum(f.stat().st_size for f in (tmp / "ours").iterdir())
        theirs, theirs_build, theirs_bytes = build_seismic(docs, params, tmp)
    log.info("built: ours %.1fs %.0f MB, pyseismic %.1fs %.0f MB", ours_build, ours_bytes / 1e6,
             theirs_build, theirs_bytes / 1e6)
    docs_t = docs.T.tocsr()  # (vocab, docs) CSR: a query row times it is the fast sparse product
    result = {"dataset": name, "n_docs": docs.shape[0], "nnz_per_doc": docs.nnz / docs.shape[0],
              "params": params.to_dict(), "build_s": {"ours": ours_build, "pyseismic": theirs_build},
              "bytes": {"ours": ours_bytes, "pyseismic": theirs_bytes}, "stats": ours.stats(), "queries": {}}
    for qname, queries in query_sets.items():
        queries = queries.astype(np.float32).tocsr()
        queries.sum_duplicates()
        rows = [queries[i] for i in range(queries.shape[0])]
        comps = [r.indices.astype(np.int32) for r in rows]
        vals = [r.data.astype(np.float32) for r in rows]
        true_ids, kth, exact_lat = exact_topk(docs_t, queries)
        true_scores = (queries @ docs.T).toarray() if queries.shape[0] * docs.shape[0] <= 3e8 else None
        if true_scores is None:
            raise SystemExit("too many queries x docs for the dense ground-truth matrix; pass --queries")
        n_true = (true_ids >= 0).sum(axis=1)
        # our exact mode, timed on a slice (it is the slow ground truth)
        sub = rows[: min(100, len(rows))]
        t0 = time.perf_counter()
        for q in sub:
            ours.search(q, K, exact=True)
        ours_exact_us = (time.perf_counter() - t0) / len(sub) * 1e6
        sweep = []
        for qc, hf in grid:
            reps = {"ours": [], "pyseismic": []}
            for _ in range(repeats):
                for sysname in ("ours", "pyseismic"):
                    if sysname == "ours":
                        found, wall, cpu = time_ours(ours, rows, qc, hf)
                    else:
                        found, wall, cpu = time_seismic(theirs, comps, vals, qc, hf)
                    reps[sysname].append((recall(found, true_scores, kth, n_true), _stats(wall), _stats(cpu)))
            row = {"query_cut": qc, "heap_factor": hf}
            for sysname, rs in reps.items():
                row[sysname] = {
                    "recall": rs[0][0],
                    "wall": {s: float(np.median([r[1][s] for r in rs])) for s in ("mean", "p50", "p99")},
                    "cpu": {s: float(np.median([r[2][s] for r in rs])) for s in ("mean", "p50", "p99")},
                }
            sweep.append(row)
            log.info("%s/%s qc=%d hf=%.2f ours r=%.3f %.0fus | pyseismic r=%.3f %.0fus", name, qname, qc, hf,
                     row["ours"]["recall"], row["ours"]["wall"]["mean"], row["pyseismic"]["recall"],
                     row["pyseismic"]["wall"]["mean"])
        result["queries"][qname] = {"n": len(rows), "nnz_per_query": queries.nnz / max(1, len(rows)),
                                    "exact_scipy": _stats(np.array(exact_lat) * 1e9),
                                    "exact_ours_mean_us": ours_exact_us, "sweep": sweep}
    return result


# ---------------------------------------------------------------------------------------- report
def _fastest(sweep: list[dict], sysname: str, target: float) -> dict | None:
    ok = [r for r in sweep if r[sysname]["recall"] >= target]
    return min(ok, key=lambda r: r[sysname]["wall"]["mean"]) if ok else None


def report(results: list[dict]) -> str:
    out = []
    for res in results:
        b, s = res["build_s"], res["bytes"]
        out.append(f"\n### {res['dataset']}: {res['n_docs']:,} docs, {res['nnz_per_doc']:.0f} nnz/doc\n")
        p = res["params"]
        out.append(f"Build parameters (both): n_postings={p['n_postings']}, max_fraction={p['max_fraction']}, "
                   f"centroid_fraction={p['centroid_fraction']}, summary_energy={p['summary_energy']}, "
                   f"doc_cut={p['doc_cut']}\n")
        out.append("| | ours | pyseismic | ours / pyseismic |\n|---|---|---|---|")
        out.append(f"| build time (s, 2 threads) | {b['ours']:.1f} | {b['pyseismic']:.1f} | {b['ours'] / b['pyseismic']:.2f} |")
        out.append(f"| index bytes (MB) | {s['ours'] / 1e6:.1f} | {s['pyseismic'] / 1e6:.1f} | "
                   f"{s['ours'] / s['pyseismic']:.2f} |")
        for qname, q in res["queries"].items():
            ex = q["exact_scipy"]
            out.append(f"\n**{res['dataset']} / {qname}** ({q['n']} queries, {q['nnz_per_query']:.0f} nnz/query). "
                       f"Exact: scipy {ex['mean']:.0f} µs mean, ours (exact mode) {q['exact_ours_mean_us']:.0f} µs.\n")
            out.append("| recall@10 target | ours: setting | recall | mean µs | p50 | p99 | pyseismic: setting | recall "
                       "| mean µs | p50 | p99 | ours / pyseismic (mean) | scipy exact / ours |")
            out.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
            for t in TARGETS:
                cells = [f"{t:.2f}"]
                fo, ft = _fastest(q["sweep"], "ours", t), _fastest(q["sweep"], "pyseismic", t)
                for r, sysname in ((fo, "ours"), (ft, "pyseismic")):
                    if r is None:
                        cells += ["not reached", "", "", "", ""]
                    else:
                        w = r[sysname]["wall"]
                        cells += [f"qc={r['query_cut']} hf={r['heap_factor']}", f"{r[sysname]['recall']:.3f}",
                                  f"{w['mean']:.0f}", f"{w['p50']:.0f}", f"{w['p99']:.0f}"]
                if fo and ft:
                    cells.append(f"**{fo['ours']['wall']['mean'] / ft['pyseismic']['wall']['mean']:.2f}**")
                else:
                    cells.append("")
                cells.append(f"{ex['mean'] / fo['ours']['wall']['mean']:.0f}x" if fo else "")
                out.append("| " + " | ".join(cells) + " |")
            out.append("\n<details><summary>full sweep (same parameters for both)</summary>\n")
            out.append("| query_cut | heap_factor | ours recall | pyseismic recall | ours mean µs | pyseismic mean µs "
                       "| ratio | ours CPU µs | pyseismic CPU µs |")
            out.append("|---|---|---|---|---|---|---|---|---|")
            for r in q["sweep"]:
                o, t = r["ours"], r["pyseismic"]
                out.append(f"| {r['query_cut']} | {r['heap_factor']} | {o['recall']:.3f} | {t['recall']:.3f} | "
                           f"{o['wall']['mean']:.0f} | {t['wall']['mean']:.0f} | "
                           f"{o['wall']['mean'] / t['wall']['mean']:.2f} | {o['cpu']['mean']:.0f} | {t['cpu']['mean']:.0f} |")
            out.append("\n</details>")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=("synthetic", "wordnet", "all"), default="all")
    ap.add_argument("--queries", type=int, default=1000, help="queries per query set (first n)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--quick", action="store_true", help="a small grid, for development")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    grid = [(qc, hf) for qc in QUERY_CUTS for hf in HEAP_FACTORS]
    if args.quick:
        grid = [(5, 0.9), (10, 0.8), (15, 0.7)]
    results = []
    if args.dataset in ("synthetic", "all"):
        docs, queries = synthetic_splade(n_queries=args.queries)
        results.append(run_dataset("synthetic", docs, {"queries": queries}, SYNTHETIC_PARAMS, args.repeats, grid))
    if args.dataset in ("wordnet", "all"):
        docs, qsets = load_encoded("wordnet", DATASETS["wordnet"][1])
        qsets = {k: v[: args.queries] for k, v in qsets.items()}
        results.append(run_dataset("wordnet", docs, qsets, WORDNET_PARAMS, args.repeats, grid))
    header = (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: "
              f"`python benchmarks/sparse_vs_seismic.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    text = header + "\n" + report(results)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")


SYNTHETIC_PARAMS = replace(SparseParams(), n_postings=1000)
WORDNET_PARAMS = replace(SparseParams(), n_postings=1000)

if __name__ == "__main__":
    main()
