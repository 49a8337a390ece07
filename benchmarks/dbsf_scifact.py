"""DBSF against RRF and min-max / z-score interpolation on BEIR scifact (test), untuned.

Fuses the per-retriever runs stored with the scifact report (``docs/reports/scifact/runs``, each
retriever's top 100 with its default options, exactly the lists a hybrid request fuses at the default
depth) with ``trident_search.core.fusion``, then cuts each list to its top ``d`` first to show how the
depth changes DBSF. Equal weights; nothing is tuned, so scoring on test is fair.

    python benchmarks/dbsf_scifact.py [BEIR scifact folder, default ../shared/data/beir/scifact]
"""
from __future__ import annotations

import csv
import gzip
import sys
from collections import defaultdict
from pathlib import Path

from trident_search.core import fusion
from trident_search.eval.metrics import evaluate
from trident_search.indexers.hits import Hit

REPO = Path(__file__).resolve().parent.parent
RUNS = REPO / "docs" / "reports" / "scifact" / "runs"
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else REPO.parent / "shared" / "data" / "beir" / "scifact"


def load(name: str) -> dict[str, list[Hit]]:
    runs: dict[str, list[tuple[int, Hit]]] = defaultdict(list)
    with gzip.open(RUNS / f"{name}.trec.gz", "rt") as fh:
        for line in fh:
            q, _, d, rank, s, _ = line.split()
            runs[q].append((int(rank), Hit(d, float(s))))
    return {q: [h for _, h in sorted(v, key=lambda t: t[0])] for q, v in runs.items()}


def main() -> None:
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    with (DATA / "qrels" / "test.tsv").open() as fh:
        rows = csv.reader(fh, delimiter="\t")
        next(rows)
        for q, d, s in rows:
            qrels[q][d] = int(s)
    full = {n: load(n) for n in ("bm25", "sparse", "dense")}

    def ndcg(names: tuple[str, ...], depth: int, method: str, **kw: object) -> float:
        run = {}
        for q in qrels:
            fused = fusion.fuse({n: full[n].get(q, [])[:depth] for n in names}, method, **kw)  # type: ignore[arg-type]
            run[q] = {f.docid: f.score for f in fused[:100]}
        return evaluate(qrels, run, ("ndcg@10",))["ndcg@10"]

    print("| retrievers | depth | rrf k=60 | minmax | zscore | dbsf | dbsf on bm25, minmax on the rest |")
    print("|---|---|---|---|---|---|---|")
    for names in (("bm25", "sparse", "dense"), ("bm25", "dense")):
        for depth in (10, 20, 50, 100):
            cells = [ndcg(names, depth, "rrf")] + [
                ndcg(names, depth, "interpolation", normalization=n) for n in ("minmax", "zscore", "dbsf")
            ] + [ndcg(names, depth, "interpolation", normalization="minmax", normalizers={"bm25": "dbsf"})]
            print(f"| {' + '.join(names)} | {depth} | " + " | ".join(f"{c:.4f}" for c in cells) + " |")


if __name__ == "__main__":
    main()
