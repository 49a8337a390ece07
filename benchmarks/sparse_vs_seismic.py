"""Trident's learned-sparse index against pyseismic-lsr 0.5.4 (the Seismic authors' Rust code).

Same vectors, same build parameters, one query at a time, one thread, both processes pinned to the
same core. pyseismic-lsr is published for CPython 3.11 only, so it runs in a worker process (this
file with ``--worker``, which imports numpy and seismic only) under ``--seismic-python``; the two
systems are interleaved per setting: for every (query_cut, heap_factor) of the grid, our sweep over
all queries, then the worker's, repeated ``--repeats`` times (statistics are medians over repeats).
Each side times its own queries with the same loop around its public search call (ours:
``SparseIndex.search(csr_row)``; pyseismic: ``SeismicIndexRaw.search(int32 ids, float32 weights)``).

Reported per query set: recall@10 (ties with the exact k-th score count) and mean / p99 latency of
every setting, then each system's best-latency frontier with the latency interpolated at recall@10
0.90, 0.95, 0.99 and the ratio ours / pyseismic; exact mode (ours, term-at-a-time) against a scipy
sparse product; batch queries/s at 1, 2 and 16 threads; index bytes of both.

    python benchmarks/sparse_vs_seismic.py --dataset wordnet            # cached SPLADE vectors
    taskset -c 3 python benchmarks/sparse_vs_seismic.py --core 3 --seismic-python /opt/py311/bin/python3.11
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 10
TARGETS = (0.90, 0.95, 0.99)
QUERY_CUTS = (2, 3, 4, 6, 8, 12, 16, 24)
HEAP_FACTORS = (0.6, 0.8, 0.9, 1.0)


# ---------------------------------------------------------------------------------------- worker (3.11)
def worker() -> None:
    """pyseismic side: JSON commands on stdin, one JSON reply line each on stdout."""
    import seismic

    # replies go to the original stdout; pyseismic's own prints (Rust println) go to stderr
    reply_out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    index = None
    comps: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for line in sys.stdin:
        cmd = json.loads(line)
        reply: dict = {"ok": True}
        if cmd["cmd"] == "build":
            t0 = time.perf_counter()
            index = seismic.SeismicIndexRaw.build(cmd["bin"], **cmd["params"])
            reply["build_s"] = time.perf_counter() - t0
            index.save(cmd["save"])
            reply["bytes"] = sum(f.stat().st_size for f in Path(cmd["save"]).parent.glob(Path(cmd["save"]).name + "*"))
        elif cmd["cmd"] == "queries":
            z = np.load(cmd["path"])
            ptr, idx, dat = z["indptr"], z["indices"].astype(np.int32), z["data"].astype(np.float32)
            comps = [np.ascontiguousarray(idx[ptr[i]:ptr[i + 1]]) for i in range(ptr.size - 1)]
            vals = [np.ascontiguousarray(dat[ptr[i]:ptr[i + 1]]) for i in range(ptr.size - 1)]
        elif cmd["cmd"] == "pin":
            os.sched_setaffinity(0, {int(cmd["core"])})
        elif cmd["cmd"] == "run":
            qc, hf = int(cmd["qc"]), float(cmd["hf"])
            n = len(comps)
            wall = np.empty(n, dtype=np.int64)
            ids = np.full((n, K), -1, dtype=np.int64)
            for i in range(n):
                t0 = time.perf_counter_ns()
                res = index.search(comps[i], vals[i], K, qc, hf, 0, True)
                wall[i] = time.perf_counter_ns() - t0
                for j, (_, d) in enumerate(res[:K]):
                    ids[i, j] = d
            np.savez(cmd["out"], ids=ids, wall=wall)
        elif cmd["cmd"] == "quit":
            break
        reply_out.write(json.dumps(reply) + "\n")
        reply_out.flush()


class Seismic:
    """The worker process, driven over pipes."""

    def __init__(self, python: str, tmp: Path, build_threads: int) -> None:
        env = dict(os.environ, RAYON_NUM_THREADS=str(build_threads))
        self.p = subprocess.Popen([python, str(Path(__file__).resolve()), "--worker"], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env)
        self.tmp = tmp

    def call(self, **cmd) -> dict:
        self.p.stdin.write(json.dumps(cmd) + "\n")
        self.p.stdin.flush()
        line = self.p.stdout.readline()
        if not line:
            raise RuntimeError("pyseismic worker died")
        return json.loads(line)

    def close(self) -> None:
        self.p.stdin.close()
        self.p.wait(timeout=30)


def _write_seismic_bin(path: Path, m) -> None:  # noqa: ANN001
    """Seismic's inner binary format: n (u32), then per vector len (u32), ids (u32), values (f32)."""
    with open(path, "wb") as f:
        f.write(struct.pack("<I", m.shape[0]))
        for i in range(m.shape[0]):
            a, z = m.indptr[i], m.indptr[i + 1]
            f.write(struct.pack("<I", z - a))
            f.write(m.indices[a:z].astype("<u4").tobytes())
            f.write(m.data[a:z].astype("<f4").tobytes())


# ---------------------------------------------------------------------------------------- measures
def _stats(lat_ns: np.ndarray) -> dict[str, float]:
    us = np.asarray(lat_ns) / 1e3
    return {"mean": float(us.mean()), "p50": float(np.percentile(us, 50)), "p99": float(np.percentile(us, 99))}


def recall(ids: np.ndarray, true_scores: np.ndarray, kth: np.ndarray, n_true: np.ndarray) -> float:
    """recall@10 with ties: a hit counts when its exact score reaches the exact k-th score."""
    r = []
    for i in range(ids.shape[0]):
        if n_true[i] == 0:
            continue
        f = ids[i][ids[i] >= 0]
        good = int(np.count_nonzero(true_scores[i][f] >= kth[i] * (1 - 1e-6))) if f.size else 0
        r.append(min(good, n_true[i]) / n_true[i])
    return float(np.mean(r)) if r else 1.0


def at_recall(points: list[tuple[float, float, float]], target: float) -> tuple[float, float] | None:
    """(mean, p99) latency at `target` recall, interpolated linearly along the best-latency frontier
    of (recall, mean, p99) points; None when no point reaches the target."""
    front = []
    for r, m, p in sorted(points, key=lambda x: (x[1], -x[0])):
        if not front or r > front[-1][0]:
            front.append((r, m, p))
    for i, (r, m, p) in enumerate(front):
        if r >= target:
            if i == 0:
                return m, p
            r0, m0, p0 = front[i - 1]
            w = (target - r0) / (r - r0)
            return m0 + w * (m - m0), p0 + w * (p - p0)
    return None


def time_ours(index, rows: list, qc: int, hf: float) -> tuple[np.ndarray, np.ndarray]:  # noqa: ANN001
    n = len(rows)
    wall = np.empty(n, dtype=np.int64)
    ids = np.full((n, K), -1, dtype=np.int64)
    for i, q in enumerate(rows):
        t0 = time.perf_counter_ns()
        found, _ = index.search(q, K, query_cut=qc, heap_factor=hf)
        wall[i] = time.perf_counter_ns() - t0
        ids[i, : found.size] = found
    return ids, wall


# ---------------------------------------------------------------------------------------- one dataset
def run_dataset(name: str, docs, query_sets: dict, params, args, grid: list[tuple[int, float]]) -> dict:  # noqa: ANN001
    import scipy.sparse as sp

    from trident_search.indexers.sparse import SparseIndex

    docs = docs.astype(np.float32).tocsr()
    docs.sum_duplicates()
    print(f"[{name}] {docs.shape[0]} docs, {docs.nnz / docs.shape[0]:.1f} nnz/doc", flush=True)
    all_cores = os.sched_getaffinity(0)
    t0 = time.perf_counter()
    ours = SparseIndex.build(docs, params, threads=2)
    ours_build = time.perf_counter() - t0
    params = ours.params  # n_postings resolved
    res = {"dataset": name, "n_docs": docs.shape[0], "nnz_per_doc": docs.nnz / docs.shape[0],
           "params": params.to_dict(), "stats": ours.stats(), "queries": {}}
    with tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        ours.save(tmp / "ours")
        ours_bytes = sum(f.stat().st_size for f in (tmp / "ours").iterdir())
        theirs = None
        if args.seismic_python:
            _write_seismic_bin(tmp / "docs.bin", docs)
            theirs = Seismic(args.seismic_python, tmp, 2)
            b = theirs.call(cmd="build", bin=str(tmp / "docs.bin"), save=str(tmp / "seismic"), params=dict(
                n_postings=params.n_postings, centroid_fraction=params.centroid_fraction,
                summary_energy=params.summary_energy, max_fraction=params.max_fraction, doc_cut=params.doc_cut, nknn=0))
            res["build_s"] = {"ours": ours_build, "pyseismic": b["build_s"]}
            res["bytes"] = {"ours": ours_bytes, "pyseismic": b["bytes"]}
        else:
            res["build_s"] = {"ours": ours_build}
            res["bytes"] = {"ours": ours_bytes}
        print(f"[{name}] built: {res['build_s']} bytes {res['bytes']}", flush=True)
        docs_t = docs.T.tocsr()
        for qname, queries in query_sets.items():
            queries = queries.astype(np.float32).tocsr()
            queries.sum_duplicates()
            queries = queries[np.diff(queries.indptr) > 0]
            nq = queries.shape[0]
            rows = [queries[i] for i in range(nq)]
            qpath = tmp / f"{qname}.npz"
            np.savez(qpath, indptr=queries.indptr, indices=queries.indices, data=queries.data)
            true_scores = np.asarray((queries @ docs_t).todense(), dtype=np.float32)
            srt = -np.sort(-true_scores, axis=1)[:, :K]
            n_true = (srt > 0).sum(axis=1)
            kth = np.where(n_true == K, srt[:, K - 1], 0.0)
            # exact: scipy sparse product + top-k, against our exact mode (term-at-a-time)
            os.sched_setaffinity(0, {args.core}) if args.core is not None else None
            lat_scipy, lat_exact = [], []
            ours.search(rows[0], K, exact=True)  # builds the full lists once (not timed)
            for q in rows:
                t0 = time.perf_counter_ns()
                s = (q @ docs_t).toarray().ravel()
                top = np.argpartition(-s, K)[:K]
                top = top[np.argsort(-s[top])]
                lat_scipy.append(time.perf_counter_ns() - t0)
                t0 = time.perf_counter_ns()
                ours.search(q, K, exact=True)
                lat_exact.append(time.perf_counter_ns() - t0)
            ex_ids, _ = ours.batch_search(queries, K, exact=True, threads=1)
            qres = {"n": nq, "nnz_per_query": queries.nnz / nq, "exact_scipy": _stats(lat_scipy),
                    "exact_ours": _stats(lat_exact), "exact_recall": recall(ex_ids, true_scores, kth, n_true),
                    "sweep": []}
            time_ours(ours, rows[:20], 5, 0.9)  # warm-up (numba dispatch, caches); not timed
            if theirs:
                theirs.call(cmd="queries", path=str(qpath))
                if args.core is not None:
                    theirs.call(cmd="pin", core=args.core)
            for qc, hf in grid:
                reps: dict[str, list] = {"ours": [], "pyseismic": []}
                for _ in range(args.repeats):
                    ids, wall = time_ours(ours, rows, qc, hf)
                    reps["ours"].append((recall(ids, true_scores, kth, n_true), _stats(wall)))
                    if theirs:
                        out = tmp / "seismic_run.npz"
                        theirs.call(cmd="run", qc=qc, hf=hf, out=str(out))
                        z = np.load(out)
                        reps["pyseismic"].append((recall(z["ids"], true_scores, kth, n_true), _stats(z["wall"])))
                row = {"query_cut": qc, "heap_factor": hf}
                for sysname, rs in reps.items():
                    if rs:
                        row[sysname] = {"recall": rs[0][0], **{s: float(np.median([r[1][s] for r in rs]))
                                                               for s in ("mean", "p50", "p99")}}
                qres["sweep"].append(row)
                print(f"[{name}/{qname}] qc={qc} hf={hf} ours r={row['ours']['recall']:.3f} "
                      f"{row['ours']['mean']:.0f}us" + (f" | pyseismic r={row['pyseismic']['recall']:.3f} "
                                                        f"{row['pyseismic']['mean']:.0f}us" if theirs else ""), flush=True)
            # batch throughput, unpinned: the setting of our frontier nearest above recall 0.95
            os.sched_setaffinity(0, all_cores)
            ok = [r for r in qres["sweep"] if r["ours"]["recall"] >= 0.95] or qres["sweep"]
            best = min(ok, key=lambda r: r["ours"]["mean"])
            qps = {}
            for th in args.threads:
                if th > len(all_cores):
                    continue
                big = sp.vstack([queries] * max(1, 2000 // nq)).tocsr()
                ours.batch_search(big[:50], K, query_cut=best["query_cut"], heap_factor=best["heap_factor"], threads=th)
                t0 = time.perf_counter()
                ours.batch_search(big, K, query_cut=best["query_cut"], heap_factor=best["heap_factor"], threads=th)
                qa = big.shape[0] / (time.perf_counter() - t0)
                t0 = time.perf_counter()
                ours.batch_search(big, K, exact=True, threads=th)
                qe = big.shape[0] / (time.perf_counter() - t0)
                qps[th] = {"approximate": qa, "exact": qe}
            qres["batch_qps"] = {"setting": [best["query_cut"], best["heap_factor"]], "threads": qps}
            print(f"[{name}/{qname}] batch q/s {qps}", flush=True)
            res["queries"][qname] = qres
        if theirs:
            theirs.close()
    return res


# ---------------------------------------------------------------------------------------- report
def report(results: list[dict]) -> str:
    out = []
    for res in results:
        b, s = res["build_s"], res["bytes"]
        st = res["stats"]
        p = res["params"]
        out.append(f"\n### {res['dataset']}: {res['n_docs']:,} docs, {res['nnz_per_doc']:.0f} nnz/doc\n")
        out.append(f"Build parameters (both): n_postings={p['n_postings']}, max_fraction={p['max_fraction']}, "
                   f"centroid_fraction={p['centroid_fraction']}, summary_energy={p['summary_energy']}, "
                   f"doc_cut={p['doc_cut']} (ours also max_summary={p['max_summary']})\n")
        has = "pyseismic" in s
        out.append("| | ours | pyseismic | ours / pyseismic |\n|---|---|---|---|")
        if has:
            out.append(f"| build time (s, 2 threads) | {b['ours']:.1f} | {b['pyseismic']:.1f} | {b['ours'] / b['pyseismic']:.2f} |")
            out.append(f"| index bytes on disk (MB) | {s['ours'] / 1e6:.1f} | {s['pyseismic'] / 1e6:.1f} | "
                       f"{s['ours'] / s['pyseismic']:.2f} |")
        else:
            out.append(f"| build time (s, 2 threads) | {b['ours']:.1f} | | |")
            out.append(f"| index bytes on disk (MB) | {s['ours'] / 1e6:.1f} | | |")
        out.append(f"| ours: bytes / forward index bytes | {s['ours'] / st['forward_bytes']:.2f} | | |")
        for qname, q in res["queries"].items():
            ex, eo = q["exact_scipy"], q["exact_ours"]
            out.append(f"\n**{res['dataset']} / {qname}** ({q['n']} queries, {q['nnz_per_query']:.0f} nnz/query). "
                       f"Exact top-10: scipy product {ex['mean']:.0f} µs mean (p99 {ex['p99']:.0f}), ours exact mode "
                       f"{eo['mean']:.0f} µs (p99 {eo['p99']:.0f}): **{eo['mean'] / ex['mean']:.2f}x** scipy's time; "
                       f"its recall@10 {q['exact_recall']:.4f}.\n")
            out.append("| recall@10 | ours mean µs (p99) | pyseismic mean µs (p99) | **ours / pyseismic mean** (p99) "
                       "| scipy exact / ours |")
            out.append("|---|---|---|---|---|")
            for t in TARGETS:
                po = at_recall([(r["ours"]["recall"], r["ours"]["mean"], r["ours"]["p99"]) for r in q["sweep"]], t)
                pt = (at_recall([(r["pyseismic"]["recall"], r["pyseismic"]["mean"], r["pyseismic"]["p99"])
                                 for r in q["sweep"]], t) if has else None)
                c = [f"{t:.2f}", f"{po[0]:.0f} ({po[1]:.0f})" if po else "not reached",
                     f"{pt[0]:.0f} ({pt[1]:.0f})" if pt else ("not reached" if has else "")]
                c.append(f"**{po[0] / pt[0]:.2f}** ({po[1] / pt[1]:.2f})" if po and pt else "")
                c.append(f"{ex['mean'] / po[0]:.1f}x" if po else "")
                out.append("| " + " | ".join(c) + " |")
            bq = q.get("batch_qps")
            if bq:
                cells = ", ".join(f"{th} threads: {v['approximate']:,.0f} approximate / {v['exact']:,.0f} exact"
                                  for th, v in bq["threads"].items())
                out.append(f"\nBatch queries/s (query_cut={bq['setting'][0]}, heap_factor={bq['setting'][1]}): {cells}.")
            out.append("\n<details><summary>full sweep</summary>\n")
            out.append("| query_cut | heap_factor | ours recall | pyseismic recall | ours mean µs | pyseismic mean µs |")
            out.append("|---|---|---|---|---|---|")
            for r in q["sweep"]:
                o, t = r["ours"], r.get("pyseismic")
                out.append(f"| {r['query_cut']} | {r['heap_factor']} | {o['recall']:.3f} | "
                           f"{t['recall'] if t else float('nan'):.3f} | {o['mean']:.0f} | {t['mean'] if t else float('nan'):.0f} |")
            out.append("\n</details>")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--dataset", choices=("synthetic", "wordnet", "scifact", "all"), default="all")
    ap.add_argument("--queries", type=int, default=1000, help="queries per query set (first n)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--core", type=int, help="pin both processes to this core while timing")
    ap.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2, 16])
    ap.add_argument("--seismic-python", help="a Python 3.11 with pyseismic-lsr 0.5.4 (default: this one, if it has it)")
    ap.add_argument("--json", type=Path, help="also write the raw results here")
    ap.add_argument("--quick", action="store_true", help="a small grid, for development")
    args = ap.parse_args(argv)
    if args.worker:
        return worker()
    import platform

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _sparse_data import DATASETS, load_encoded, synthetic_splade

    from trident_search.indexers.sparse import SparseParams

    if args.seismic_python is None:
        try:
            import seismic  # noqa: F401

            args.seismic_python = sys.executable
        except ImportError:
            print("pyseismic-lsr not importable here and no --seismic-python: timing ours only", flush=True)
    grid = [(qc, hf) for qc in QUERY_CUTS for hf in HEAP_FACTORS]
    if args.quick:
        grid = [(3, 0.9), (6, 0.8), (12, 0.7)]
    results = []
    if args.dataset in ("wordnet", "all"):
        docs, qsets = load_encoded("wordnet", DATASETS["wordnet"][1])
        results.append(run_dataset("wordnet", docs, {k: v[: args.queries] for k, v in qsets.items()},
                                   SparseParams(), args, grid))
    if args.dataset in ("scifact", "all"):
        docs, qsets = load_encoded("scifact", DATASETS["scifact"][1])
        results.append(run_dataset("scifact", docs, {k: v[: min(args.queries, 300)] for k, v in qsets.items()},
                                   SparseParams(), args, grid))
    if args.dataset in ("synthetic", "all"):
        docs, queries = synthetic_splade(n_queries=min(args.queries, 500))
        results.append(run_dataset("synthetic", docs, {"queries": queries}, SparseParams(), args, grid))
    header = (f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
              f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; pinned to core {args.core}; command: "
              f"`python benchmarks/sparse_vs_seismic.py {' '.join(argv if argv is not None else sys.argv[1:])}`")
    text = header + "\n" + report(results)
    sys.stdout.write(text + "\n")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
