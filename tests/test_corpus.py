"""The corpus reader: streaming, formats, and validation errors that name file and line."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from trident_search.indexers.corpus import CorpusError, CorpusReport, iter_corpus


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_demo_corpus_streams_in_order(demo_dir: Path) -> None:
    report = CorpusReport()
    docs = list(iter_corpus(demo_dir, report=report))
    assert len(docs) == report.valid == 500
    first = json.loads((demo_dir / "corpus.jsonl").open().readline())
    assert (docs[0].id, docs[0].title) == (first["_id"], first["title"])
    assert len(report.fingerprint) == 64


def test_gzip_and_plain_give_same_documents_and_fingerprint(tmp_path: Path) -> None:
    lines = [json.dumps({"_id": str(i), "title": f"t{i}", "text": "body é"}) for i in range(5)]
    plain = write(tmp_path / "c.jsonl", lines)
    gz = tmp_path / "c.jsonl.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.write(plain.read_text(encoding="utf-8"))
    r1, r2 = CorpusReport(), CorpusReport()
    assert list(iter_corpus(plain, report=r1)) == list(iter_corpus(gz, report=r2))
    assert r1.fingerprint == r2.fingerprint


def test_numeric_ids_and_metadata(tmp_path: Path) -> None:
    f = write(tmp_path / "c.jsonl", ['{"_id": 7, "text": "x", "metadata": {"year": 2020}}'])
    (doc,) = iter_corpus(f)
    assert doc.id == "7" and doc.metadata == {"year": 2020} and doc.title == ""


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("{not json", "invalid JSON"),
        ('{"title": "a", "text": "b"}', "missing '_id'"),
        ('{"_id": "1", "title": 3, "text": "b"}', "'title' must be a string"),
        ('{"_id": ["1"], "text": "b"}', "'_id' must be a non-empty string"),
        ('{"_id": "1", "text": "b", "metadata": [1]}', "'metadata' must be an object"),
        ("[1, 2]", "expected a JSON object"),
    ],
)
def test_invalid_record_names_file_and_line(tmp_path: Path, line: str, reason: str) -> None:
    f = write(tmp_path / "c.jsonl", ['{"_id": "0", "text": "ok"}', line])
    with pytest.raises(CorpusError) as err:
        list(iter_corpus(f))
    assert err.value.line == 2 and err.value.path == f
    assert reason in str(err.value) and f"{f}:2:" in str(err.value)


def test_duplicate_id_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path / "c.jsonl", ['{"_id": "a", "text": "x"}', '{"_id": "a", "text": "y"}'])
    with pytest.raises(CorpusError, match="duplicate _id 'a'"):
        list(iter_corpus(f))


def test_skip_invalid_counts_and_keeps_the_rest(tmp_path: Path) -> None:
    f = write(
        tmp_path / "c.jsonl",
        ['{"_id": "a", "text": "x"}', "{oops", "", '{"_id": "a", "text": "dup"}', '{"_id": "b", "text": "y"}'],
    )
    report = CorpusReport()
    ids = [d.id for d in iter_corpus(f, skip_invalid=True, report=report)]
    assert ids == ["a", "b"]
    assert (report.valid, report.skipped) == (2, 2)
    assert report.errors[0].startswith(f"{f}:2:")


def test_missing_path_and_folder_without_corpus(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="corpus not found"):
        list(iter_corpus(tmp_path / "nope.jsonl"))
    with pytest.raises(FileNotFoundError, match="no corpus.jsonl"):
        list(iter_corpus(tmp_path))


def test_empty_document_is_valid_and_counted(tmp_path: Path) -> None:
    f = write(tmp_path / "c.jsonl", ['{"_id": "a", "text": "x"}', '{"_id": "e", "title": " ", "text": ""}',
                                     '{"_id": "n", "title": null}'])
    report = CorpusReport()
    docs = list(iter_corpus(f, report=report))
    assert [d.id for d in docs] == ["a", "e", "n"] and docs[1].title == " " and docs[2].text == ""
    assert (report.valid, report.empty, report.skipped, report.empty_examples) == (3, 2, 0, ["e", "n"])


def test_invalid_utf8_names_file_line_and_byte(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    f.write_bytes(b'{"_id": "a", "text": "ok"}\n{"_id": "b", "text": "caf\xe9"}\n{"_id": "c", "text": "y"}\n')
    with pytest.raises(CorpusError) as err:
        list(iter_corpus(f))
    assert err.value.line == 2 and "invalid UTF-8 (byte 0xe9 at byte 26 of the line)" in str(err.value)
    report = CorpusReport()
    assert [d.id for d in iter_corpus(f, skip_invalid=True, report=report)] == ["a", "c"]
    assert report.skipped == 1 and report.errors[0].startswith(f"{f}:2: invalid UTF-8")


def test_invalid_utf8_in_gzip_is_reported_by_line(tmp_path: Path) -> None:
    gz = tmp_path / "c.jsonl.gz"
    with gzip.open(gz, "wb") as fh:
        fh.write(b'{"_id": "a", "text": "ok"}\n\n{"_id": "b", "text": "\xff"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl\.gz:3: invalid UTF-8 \(byte 0xff"):
        list(iter_corpus(gz))


def test_lone_surrogate_escape_is_an_error(tmp_path: Path) -> None:
    f = write(tmp_path / "c.jsonl", ['{"_id": "a", "text": "ok"}', '{"_id": "b", "text": "x \\udc00 y"}',
                                     '{"_id": "c", "text": "ok", "metadata": {"k": "\\ud800"}}'])
    report = CorpusReport()
    assert [d.id for d in iter_corpus(f, skip_invalid=True, report=report)] == ["a"]
    assert "'text' holds an invalid Unicode escape (lone surrogate U+DC00)" in report.errors[0]
    assert report.errors[1].startswith(f"{f}:3: 'metadata'")


def test_byte_order_mark_and_crlf_are_accepted(tmp_path: Path) -> None:
    f = tmp_path / "c.jsonl"
    f.write_bytes(b'\xef\xbb\xbf{"_id": "a", "text": "x"}\r\n{"_id": "b", "text": "y"}\r\n')
    assert [d.id for d in iter_corpus(f)] == ["a", "b"]


def test_truncated_gzip_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    gz = tmp_path / "c.jsonl.gz"
    lines = "".join(json.dumps({"_id": str(i), "text": f"document {i} " * 20}) + "\n" for i in range(200))
    with gzip.open(gz, "wt", encoding="utf-8") as fh:
        fh.write(lines)
    data = gz.read_bytes()
    gz.write_bytes(data[: len(data) // 2])
    for skip in (False, True):
        with pytest.raises(CorpusError, match="damaged or truncated"):
            list(iter_corpus(gz, skip_invalid=skip))
