"""Stream and validate a BEIR-style corpus without loading it whole.

Accepts a BEIR folder (``corpus.jsonl`` inside), a ``.jsonl`` file or a ``.jsonl.gz`` file. Every
record must be a UTF-8 line holding a JSON object with a string ``_id``, optional string ``title`` /
``text`` and an optional ``metadata`` object. A document whose title and text are both empty is
valid (real collections have them, and they may be judged): it is indexed and counted in
``CorpusReport.empty``. Errors name the file and line so a user can fix the corpus; with
``skip_invalid`` the bad records are counted and skipped instead. A damaged ``.gz`` stream cannot be
read past the damage, so it is an error even with ``skip_invalid``.
"""
from __future__ import annotations

import gzip
import hashlib
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

from trident_search.errors import TridentError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Document:
    """One corpus record, as every index and the docstore see it."""

    id: str
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


class CorpusError(TridentError, ValueError):
    """A corpus record that cannot be indexed; carries the file and 1-based line."""

    def __init__(self, path: Path, line: int, reason: str) -> None:
        super().__init__(f"{path}:{line}: {reason}")
        self.path = path
        self.line = line
        self.reason = reason


@dataclass(slots=True)
class CorpusReport:
    """What a pass over the corpus saw: counts, skipped records and a content fingerprint."""

    valid: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)
    empty: int = 0  # valid documents with an empty title and text (indexed; counted for one warning)
    empty_examples: list[str] = field(default_factory=list)  # their ids, the first few
    _digest: Any = field(default_factory=hashlib.sha256)

    @property
    def fingerprint(self) -> str:
        """sha256 over the valid records' canonical JSON, in corpus order."""
        return self._digest.hexdigest()


def corpus_file(path: str | Path) -> Path:
    """Resolve a BEIR folder or a JSONL(.gz) file to the file to read."""
    p = Path(path)
    if p.is_dir():
        for name in ("corpus.jsonl", "corpus.jsonl.gz"):
            if (p / name).is_file():
                return p / name
        raise FileNotFoundError(f"{p} is a folder but holds no corpus.jsonl or corpus.jsonl.gz")
    if not p.is_file():
        raise FileNotFoundError(f"corpus not found: {p}")
    return p


def _open(path: Path) -> IO[bytes]:
    """Lines are read as bytes and decoded one by one, so a bad byte is reported with its line."""
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return path.open("rb")


def _decode(raw: bytes, lineno: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = raw[exc.start : exc.start + 1].hex()
        raise ValueError(f"invalid UTF-8 (byte 0x{bad} at byte {exc.start + 1} of the line)") from None
    if lineno == 1 and text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte-order mark
    return text


def _check_unicode(name: str, value: str) -> None:
    """JSON escapes can spell lone surrogates, which no UTF-8 writer (SQLite, Lucene) accepts."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"'{name}' holds an invalid Unicode escape (lone surrogate U+{ord(value[exc.start]):04X})"
        ) from None


def _parse(raw: str) -> Document:
    """Turn one JSON line into a Document, or raise ValueError saying what is wrong."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"expected a JSON object, got {type(obj).__name__}")
    if "_id" not in obj:
        raise ValueError("missing '_id'")
    doc_id = obj["_id"]
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)  # BEIR ids are sometimes written as numbers
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise ValueError(f"'_id' must be a non-empty string, got {obj['_id']!r}")
    title = obj.get("title") or ""
    text = obj.get("text") or ""
    for name, value in (("title", title), ("text", text)):
        if not isinstance(value, str):
            raise ValueError(f"'{name}' must be a string, got {type(value).__name__}")
    metadata = obj.get("metadata") or {}
    if not isinstance(metadata, dict):
        raise ValueError(f"'metadata' must be an object, got {type(metadata).__name__}")
    for name, value in (("_id", doc_id), ("title", title), ("text", text)):
        _check_unicode(name, value)
    _check_unicode("metadata", json.dumps(metadata, ensure_ascii=False))
    return Document(doc_id, title, text, metadata)


def is_empty(doc: Document) -> bool:
    """No title and no text (whitespace only): valid, indexed, found only by id or filters."""
    return not (doc.title.strip() or doc.text.strip())


def iter_corpus(
    path: str | Path, *, skip_invalid: bool = False, report: CorpusReport | None = None
) -> Iterator[Document]:
    """Yield valid documents in file order; raise CorpusError on the first bad one.

    Duplicate ids are errors too (the second occurrence is the bad record), which needs one set of
    ids in memory: a few dozen bytes per document.
    """
    file = corpus_file(path)
    report = report if report is not None else CorpusReport()
    seen: set[str] = set()
    with _open(file) as fh:
        for lineno, raw in _lines(fh, file):
            if not raw.strip():
                continue
            try:
                doc = _parse(_decode(raw, lineno))
                if doc.id in seen:
                    raise ValueError(f"duplicate _id {doc.id!r}")
            except ValueError as exc:
                if not skip_invalid:
                    raise CorpusError(file, lineno, str(exc)) from None
                report.skipped += 1
                if len(report.errors) < 20:
                    report.errors.append(f"{file}:{lineno}: {exc}")
                log.warning("skipping %s:%d: %s", file, lineno, exc)
                continue
            seen.add(doc.id)
            report.valid += 1
            if is_empty(doc):
                report.empty += 1
                if len(report.empty_examples) < 5:
                    report.empty_examples.append(doc.id)
            report._digest.update(
                json.dumps([doc.id, doc.title, doc.text, doc.metadata], sort_keys=True).encode()
            )
            yield doc


def _lines(fh: IO[bytes], file: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered lines; a damaged gzip stream is a CorpusError at the line where reading stopped."""
    lineno = 0
    it = iter(fh)
    while True:
        try:
            raw = next(it)
        except StopIteration:
            return
        except (OSError, EOFError, zlib.error) as exc:
            if isinstance(exc, OSError) and not isinstance(exc, gzip.BadGzipFile) and exc.errno is not None:
                raise  # a real I/O error (permission, device), not a damaged stream
            raise CorpusError(file, lineno + 1, f"unreadable compressed data ({exc}); the file is damaged "
                              "or truncated, and cannot be read past this point") from None
        lineno += 1
        yield lineno, raw
