"""Read a standard BEIR folder: corpus.jsonl (streamed), queries.jsonl and qrels/<split>.tsv."""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from trident_search.errors import TridentError
from trident_search.indexers.corpus import corpus_file

Qrels = dict[str, dict[str, int]]


class DatasetError(TridentError, ValueError):
    """A BEIR folder that is missing a file or holds a malformed one."""


@dataclass(frozen=True, slots=True)
class BeirDataset:
    """Paths of one BEIR dataset; queries and qrels are small and read on demand."""

    root: Path

    @classmethod
    def open(cls, root: str | Path) -> BeirDataset:
        path = Path(root)
        if not path.is_dir():
            raise DatasetError(f"{path} is not a folder; pass a BEIR dataset folder")
        for need in ("queries.jsonl", "qrels"):
            if not (path / need).exists():
                raise DatasetError(f"{path} is not a BEIR folder: {need} is missing")
        try:
            corpus_file(path)
        except FileNotFoundError as exc:
            raise DatasetError(str(exc)) from None
        return cls(path)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def corpus(self) -> Path:
        return corpus_file(self.root)

    def splits(self) -> list[str]:
        return sorted(p.stem for p in (self.root / "qrels").glob("*.tsv"))

    def qrels(self, split: str) -> Qrels:
        """Relevance judgements of one split, as pytrec_eval wants them."""
        path = self.root / "qrels" / f"{split}.tsv"
        if not path.is_file():
            raise DatasetError(f"no qrels for split {split!r} ({path}); have: {self.splits()}")
        qrels: Qrels = {}
        with path.open(newline="") as fh:
            reader = csv.reader(fh, delimiter="\t")
            for lineno, row in enumerate(reader, start=1):
                if lineno == 1 and row and row[0] == "query-id":
                    continue
                if len(row) != 3:
                    raise DatasetError(f"{path}:{lineno}: expected 3 tab-separated columns, got {len(row)}")
                try:
                    score = int(row[2])
                except ValueError:
                    raise DatasetError(f"{path}:{lineno}: relevance {row[2]!r} is not an integer") from None
                qrels.setdefault(row[0], {})[row[1]] = score
        return qrels

    def queries(self, split: str | None = None) -> dict[str, str]:
        """Query id -> text; with a split, only the queries judged in it (as BEIR does)."""
        wanted = set(self.qrels(split)) if split else None
        path = self.root / "queries.jsonl"
        queries: dict[str, str] = {}
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                    qid, text = str(obj["_id"]), obj["text"]
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise DatasetError(f"{path}:{lineno}: bad query record ({exc})") from None
                if not isinstance(text, str):
                    raise DatasetError(f"{path}:{lineno}: query text must be a string")
                if wanted is None or qid in wanted:
                    queries[qid] = text
        if wanted is not None and (missing := wanted - queries.keys()):
            raise DatasetError(f"{len(missing)} judged queries of split {split!r} are not in {path}")
        return queries
