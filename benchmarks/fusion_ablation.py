"""Which retriever limits hybrid quality? Tune fusion on train for every subset of retrievers, score on test.

Each retriever's depth-100 lists are retrieved once per query through ``Engine.retrieve``; fusion
and tuning are ``trident_search.eval.tuning`` (the same ``trident_search.core.fusion`` code the
server runs). Weights are tuned on the train split only; test is scored once per subset with the train-chosen settings.

    python benchmarks/fusion_ablation.py --dataset ../shared/data/beir/scifact --index indexes/scifact
"""
from __future__ import annotations

import argparse
import itertools
import logging

from trident_search.core.engine import Engine
from trident_search.core.fusion import fuse
from trident_search.eval.beir import BeirDataset
from trident_search.eval.metrics import evaluate
from trident_search.eval.run import retrieve_lists
from trident_search.eval.tuning import grid, tune


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--index", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ds = BeirDataset.open(args.dataset)
    engine = Engine.load(args.index)
    try:
        train = retrieve_lists(engine, ds.queries("train"))
        test = retrieve_lists(engine, ds.queries("test"))
    finally:
        engine.close()
    qrels_train, qrels_test = ds.qrels("train"), ds.qrels("test")
    rows = []
    for n in (1, 2, 3):
        for subset in itertools.combinations(train, n):
            tr = {r: train[r] for r in subset}
            result = tune(tr, qrels_train, split="train", points=grid(list(subset)))
            method = max(result.best_score, key=result.best_score.__getitem__)
            best = result.best[method]
            run = {}
            for qid in qrels_test:
                fused = fuse({r: test[r].get(qid, []) for r in subset}, best.method,
                             weights=best.weights, rrf_k=best.rrf_k,
                             normalization=best.normalization)
                run[qid] = {f.docid: f.score for f in fused[:100]}
            m = evaluate(qrels_test, run)
            rows.append(("+".join(subset), best.label(), result.best_score[method], m["ndcg@10"],
                         m["recall@100"]))
    print("| retrievers | chosen on train | train nDCG@10 | test nDCG@10 | test R@100 |")
    print("|---|---|---:|---:|---:|")
    for name, label, tr_score, ndcg, rec in rows:
        print(f"| {name} | `{label}` | {tr_score:.4f} | {ndcg:.4f} | {rec:.4f} |")


if __name__ == "__main__":
    main()
