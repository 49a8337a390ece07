"""Rebuild the shipped demo corpus: a real ~500-document subset of BEIR scifact.

It keeps every relevant document of the first 100 test queries and the first 60 train queries
(so those queries stay fully judged inside the subset), then fills up to 500 documents with a
seeded random sample of the rest. Run: python data/demo/make_subset.py ../shared/data/beir/scifact
"""
from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

TARGET_DOCS = 500
N_TEST, N_TRAIN = 100, 60


def read_qrels(path: Path) -> dict[str, list[str]]:
    qrels: dict[str, list[str]] = {}
    with path.open() as fh:
        for row in csv.DictReader(fh, delimiter="\t"):
            qrels.setdefault(row["query-id"], []).append(row["corpus-id"])
    return qrels


def main(src: Path, dst: Path) -> None:
    corpus = [json.loads(line) for line in (src / "corpus.jsonl").open()]
    qrels = {split: read_qrels(src / "qrels" / f"{split}.tsv") for split in ("test", "train")}
    chosen = {"test": list(qrels["test"])[:N_TEST], "train": list(qrels["train"])[:N_TRAIN]}
    keep = {d for split, qids in chosen.items() for q in qids for d in qrels[split][q]}
    rest = [d["_id"] for d in corpus if d["_id"] not in keep]
    keep |= set(random.Random(13).sample(rest, TARGET_DOCS - len(keep)))

    (dst / "qrels").mkdir(parents=True, exist_ok=True)
    with (dst / "corpus.jsonl").open("w") as out:
        for doc in corpus:
            if doc["_id"] in keep:
                out.write(json.dumps(doc) + "\n")
    wanted = {q for qids in chosen.values() for q in qids}
    with (dst / "queries.jsonl").open("w") as out:
        for line in (src / "queries.jsonl").open():
            if json.loads(line)["_id"] in wanted:
                out.write(line)
    for split, qids in chosen.items():
        with (dst / "qrels" / f"{split}.tsv").open("w") as out:
            out.write("query-id\tcorpus-id\tscore\n")
            for q in qids:
                for d in qrels[split][q]:
                    out.write(f"{q}\t{d}\t1\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).parent / "scifact-demo")
