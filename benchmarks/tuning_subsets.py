"""Can ``--tune-on`` hurt? Tune on random 30-query subsets of train, score the served default on test.

For each of ``--subsets`` random subsets of ``--size`` train queries (seeded 0, 1, ...), this runs what
``trident eval beir --tune-on train`` decides (:func:`trident_search.eval.safe_tuning.decide`: grid
search, adopted only when the gain survives k-fold cross-validation on the subset) and, for contrast,
naive tuning (the grid winner always adopted, as ``--tune-on`` did before). Each resulting served
default is scored on the whole test split against the untuned default (RRF k=60, equal weights), with
the paired randomisation test of ``eval.significance``. The claim to check: the gated default loses to
the untuned one on test in at most a small, stated fraction of the subsets (losses that are
significant at p < 0.05 are counted separately).

Each retriever's depth-100 lists are retrieved once per query (``eval.run.retrieve_lists``); fusion is
``trident_search.core.fusion``, the server's code, so every number is what the server would answer.

    python benchmarks/tuning_subsets.py --dataset ../shared/data/beir/scifact --index indexes/scifact \\
        --subsets 20 --size 30 --out reports/tuning_subsets.json
"""
from __future__ import annotations

import argparse
import json
import logging
import random
import time
from pathlib import Path

from trident_search.core.engine import Engine
from trident_search.eval.beir import BeirDataset
from trident_search.eval.run import retrieve_lists
from trident_search.eval.safe_tuning import decide, per_query, served_settings, settings_of
from trident_search.eval.significance import paired


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", required=True, help="A BEIR folder with train and test qrels.")
    parser.add_argument("--index", required=True, help="An index of the dataset's corpus.")
    parser.add_argument("--subsets", type=int, default=20)
    parser.add_argument("--size", type=int, default=30, help="Train queries per subset.")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--tune-split", default="train")
    parser.add_argument("--test-split", default="test")
    parser.add_argument("--out", type=Path, help="Write every row as JSON here.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ds = BeirDataset.open(args.dataset)
    started = time.perf_counter()
    engine = Engine.load(args.index)
    try:
        train = retrieve_lists(engine, ds.queries(args.tune_split))
        test = retrieve_lists(engine, ds.queries(args.test_split))
    finally:
        engine.close()
    qrels_train, qrels_test = ds.qrels(args.tune_split), ds.qrels(args.test_split)
    names = list(train)
    untuned = settings_of(None, names)
    base = per_query(test, qrels_test, untuned)
    base_mean = sum(base.values()) / len(base)
    print(f"untuned default {untuned.label()}: test nDCG@10 {base_mean:.4f} ({len(base)} queries); "
          f"retrieval {time.perf_counter() - started:.0f} s")
    judged = sorted(q for q in qrels_train if any(q in r for r in train.values()))
    rows = []
    print("| subset | gated: adopted | gated test | gated - untuned | p | naive winner | naive test | "
          "naive - untuned | p |")
    print("|---:|---|---:|---:|---:|---|---:|---:|---:|")
    for seed in range(args.subsets):
        subset = random.Random(seed).sample(judged, min(args.size, len(judged)))
        qrels = {q: qrels_train[q] for q in subset}
        decision = decide(train, qrels, split=args.tune_split, folds=args.folds)
        gated_settings = settings_of(decision.served(), names)
        naive_settings = served_settings(decision.result)
        gated = paired(per_query(test, qrels_test, gated_settings), base, mode="gated", baseline="untuned")
        naive = paired(per_query(test, qrels_test, naive_settings), base, mode="naive", baseline="untuned")
        rows.append({"seed": seed, "adopted": decision.adopted, "reason": decision.reason,
                     "gated": {"settings": gated_settings.label(), **gated.to_json()},
                     "naive": {"settings": naive_settings.label(), **naive.to_json()}})
        print(f"| {seed} | {decision.adopted} | {gated.mean:.4f} | {gated.delta:+.4f} | {gated.p_value:.3g} | "
              f"`{naive_settings.label()}` | {naive.mean:.4f} | {naive.delta:+.4f} | {naive.p_value:.3g} |",
              flush=True)
    n = len(rows)

    def count(kind: str, significant: bool = False) -> int:
        return sum(r[kind]["delta"] < -1e-9 and (not significant or r[kind]["p_value"] < 0.05) for r in rows)

    summary = {
        "subsets": n, "size": args.size, "folds": args.folds, "untuned": untuned.label(),
        "untuned_test_ndcg@10": base_mean, "adopted": sum(r["adopted"] for r in rows),
        "gated_losses": count("gated"), "gated_significant_losses": count("gated", True),
        "naive_losses": count("naive"), "naive_significant_losses": count("naive", True),
        "seconds": round(time.perf_counter() - started, 1),
    }
    print(f"\ngated tuning: adopted in {summary['adopted']}/{n}; below untuned on test in "
          f"{summary['gated_losses']}/{n} ({summary['gated_significant_losses']} significantly)")
    print(f"naive tuning: below untuned on test in {summary['naive_losses']}/{n} "
          f"({summary['naive_significant_losses']} significantly)")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
