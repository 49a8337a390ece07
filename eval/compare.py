"""``trident eval compare A B``: two saved runs, query by query.

A and B are both TREC run files (scored against ``--qrels``), or both report folders written by
``trident eval beir`` (their ``report.json`` carries per-query scores; the TREC runs under ``runs/``
are scored instead when it does not, which needs ``--qrels``).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trident_search.errors import TridentError
from trident_search.eval.metrics import evaluate_per_query
from trident_search.eval.report import RunFileError, read_trec_run
from trident_search.eval.significance import PairedComparison, SignificanceError, paired

Qrels = dict[str, dict[str, int]]


class CompareError(TridentError, ValueError):
    """Inputs that cannot be compared; the message says which and why."""


def read_qrels(path: Path, split: str = "test") -> Qrels:
    """Judgements from a BEIR folder (``qrels/<split>.tsv``), a BEIR ``.tsv`` (``query-id corpus-id
    score``, header optional) or a TREC qrels file (``qid 0 docid relevance``)."""
    from trident_search.eval.beir import BeirDataset, DatasetError

    path = Path(path)
    if path.is_dir():
        try:
            return BeirDataset.open(path).qrels(split)
        except DatasetError as exc:
            raise CompareError(str(exc)) from None
    if not path.is_file():
        raise CompareError(f"qrels {path} does not exist")
    qrels: Qrels = {}
    with path.open(newline="") as fh:
        for lineno, line in enumerate(fh, start=1):
            cols = line.split("\t") if "\t" in line else line.split()
            cols = [c.strip() for c in cols if c.strip()]
            if not cols or (lineno == 1 and cols[0] == "query-id"):
                continue
            if len(cols) == 4:  # TREC: qid iteration docid relevance
                qid, _, docid, rel = cols
            elif len(cols) == 3:  # BEIR: query-id corpus-id score
                qid, docid, rel = cols
            else:
                raise CompareError(f"{path}:{lineno}: expected 'qid 0 docid rel' or 'qid docid rel'")
            try:
                qrels.setdefault(qid, {})[docid] = int(rel)
            except ValueError:
                raise CompareError(f"{path}:{lineno}: relevance {rel!r} is not an integer") from None
    if not qrels:
        raise CompareError(f"{path} holds no judgements")
    return qrels


def _scores_of_run(path: Path, qrels: Qrels | None, metric: str, ignore: bool) -> dict[str, float]:
    if qrels is None:
        raise CompareError(f"{path} is a run file: pass --qrels to score it")
    try:
        run = read_trec_run(path)
    except (RunFileError, OSError) as exc:
        raise CompareError(str(exc)) from None
    try:
        return evaluate_per_query(qrels, run, (metric,), ignore_identical_ids=ignore)[metric]
    except ValueError as exc:
        raise CompareError(str(exc)) from None


def _report_modes(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / "report.json"
    if not path.is_file():
        raise CompareError(f"{folder} is not a report folder: {path.name} is missing")
    try:
        data = json.loads(path.read_text())
        return {m["mode"]: m for m in data["modes"]}
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CompareError(f"{path}: not a trident eval report ({exc})") from None


def _scores_in_report(folder: Path, mode: dict[str, Any], qrels: Qrels | None, metric: str,
                      ignore: bool) -> dict[str, float]:
    stored = (mode.get("per_query") or {}).get(metric)
    if stored is not None and qrels is None:
        return {q: float(v) for q, v in stored.items()}
    runs = sorted((folder / "runs").glob(f"{mode['mode']}.trec*"))
    if not runs:
        raise CompareError(f"{folder}: no per-query {metric} for {mode['mode']} and no run file to score")
    return _scores_of_run(runs[0], qrels, metric, ignore)


def compare_paths(
    a: Path, b: Path, *, qrels: Path | None = None, split: str = "test", modes: Sequence[str] = (),
    metric: str = "ndcg@10", ignore_identical_ids: bool = True,
) -> list[PairedComparison]:
    """B against A (A is the baseline): one comparison for two run files, one per mode for two reports.

    With ``qrels``, report folders are re-scored from their runs (so both sides use the same judgements).
    """
    a, b = Path(a), Path(b)
    for p in (a, b):
        if not p.exists():
            raise CompareError(f"{p} does not exist")
    judged = read_qrels(qrels, split) if qrels is not None else None
    try:
        if a.is_file() and b.is_file():
            if modes:
                raise CompareError("--mode applies to report folders, not run files")
            return [paired(_scores_of_run(b, judged, metric, ignore_identical_ids),
                           _scores_of_run(a, judged, metric, ignore_identical_ids),
                           mode=b.name, baseline=a.name, metric=metric)]
        if a.is_dir() and b.is_dir():
            left, right = _report_modes(a), _report_modes(b)
            common = [m for m in left if m in right]
            wanted = list(modes) or common
            missing = [m for m in wanted if m not in common]
            if missing or not wanted:
                raise CompareError(f"modes {missing or wanted} are not in both reports; both have: "
                                   f"{', '.join(common) or 'none'}")
            return [paired(_scores_in_report(b, right[m], judged, metric, ignore_identical_ids),
                           _scores_in_report(a, left[m], judged, metric, ignore_identical_ids),
                           mode=m, baseline=f"{a.name}/{m}", metric=metric)
                    for m in wanted]
    except SignificanceError as exc:
        raise CompareError(str(exc)) from None
    raise CompareError(f"compare two run files or two report folders, not {a} and {b}")
