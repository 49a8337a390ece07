"""Building a BM25 index: Anserini's ``IndexCollection`` over the corpus, in a child JVM.

* **Same collection classes as the regressions.** We stream the corpus into JSONL shards and run
  Anserini's ``IndexCollection`` with ``BeirFlatCollection`` ("flat": title and text joined into
  ``contents``) or ``BeirMultifieldCollection`` ("multifield": ``title`` and ``contents`` = text as
  separate fields), the default English analyzer (Porter stemmer, Lucene stop words), positions and
  document vectors. So scores match Anserini's published BEIR runs instead of approximating them.
* **A child JVM.** A build can take the heap it needs and can never take the calling process down
  with it. One input file per thread lets ``threads`` indexing threads work at once.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from trident_search.errors import TridentError
from trident_search.indexers import jvm
from trident_search.indexers.bm25._format import COLLECTIONS, FIELDS, FORMAT_VERSION, INDEX_OPTIONS, PARAMS_FILE
from trident_search.indexers.corpus import Document

log = logging.getLogger(__name__)

_SHARD_BLOCK = 1000  # documents written to one input file before moving to the next


class IndexBuildError(TridentError, RuntimeError):
    """The Lucene indexer failed or indexed fewer documents than it was given."""


def build(
    docs: Iterable[Document], out_dir: str | Path, *, fields: str = "flat", threads: int = 2
) -> None:
    """Index ``docs`` into the empty or new folder ``out_dir``.

    ``fields="flat"`` indexes ``title + "\\n" + text`` as one field; ``"multifield"`` indexes
    title and text separately (a document without text gets its title as text, because Anserini
    would drop a document with an empty ``contents``). Memory stays bounded: documents stream to
    temporary shards beside ``out_dir``, which are deleted afterwards.
    """
    if fields not in FIELDS:
        raise ValueError(f"fields must be one of {FIELDS}, got {fields!r}")
    if not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise IndexBuildError(f"{out} already exists and is not an empty folder; pick a new path")
    existed = out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=".bm25-shards-", dir=out.parent) as tmp:
            shards = Path(tmp, "input")
            shards.mkdir()
            count = _write_shards(docs, shards, threads, multifield=fields == "multifield")
            if count == 0:
                raise IndexBuildError("no documents to index; the corpus is empty")
            counters = _run_indexer(shards, out, fields, threads, Path(tmp, "indexer.log"))
        if counters.get("indexed") != count:
            raise IndexBuildError(
                f"Lucene indexed {counters.get('indexed')} of {count} documents "
                f"(counters: {counters})"
            )
    except BaseException:  # leave no half-written index behind (out was new or empty)
        shutil.rmtree(out, ignore_errors=True)
        if existed:
            out.mkdir()
        raise
    params = {
        "format": FORMAT_VERSION,
        "fields": fields,
        "documents": count,
        "collection": COLLECTIONS[fields],
        "index_options": INDEX_OPTIONS,
        "anserini": jvm.fatjar().name,
    }
    (out / PARAMS_FILE).write_text(json.dumps(params, indent=2) + "\n", encoding="utf-8")
    log.info("BM25 %s index of %d documents written to %s", fields, count, out)


def _write_shards(docs: Iterable[Document], folder: Path, n: int, *, multifield: bool) -> int:
    """Write docs as BEIR JSONL, in blocks spread over ``n`` shard files; return the count."""
    files: list[IO[str]] = [
        (folder / f"part-{i:05d}.jsonl").open("w", encoding="utf-8") for i in range(n)
    ]
    count = 0
    try:
        for count, doc in enumerate(docs, start=1):
            text = doc.text if doc.text.strip() or not multifield else doc.title
            record = {"_id": doc.id, "title": doc.title, "text": text}
            files[((count - 1) // _SHARD_BLOCK) % n].write(
                json.dumps(record, ensure_ascii=False) + "\n"
            )
    finally:
        for fh in files:
            fh.close()
    return count


def _run_indexer(shards: Path, out: Path, fields: str, threads: int, log_path: Path) -> dict[str, int]:
    """Run Anserini's IndexCollection in a child JVM; return its final counters."""
    heap = jvm.heap_size()
    cmd = [
        str(jvm.java_home() / "bin" / "java"),
        f"-Xmx{heap}",
        "-Dfile.encoding=UTF-8",
        "-cp",
        str(jvm.fatjar()),
        "io.anserini.index.IndexCollection",
        "-collection", COLLECTIONS[fields],
        "-generator", "DefaultLuceneDocumentGenerator",
        "-input", str(shards),
        "-index", str(out),
        "-threads", str(threads),
        "-memoryBuffer", str(max(16, _heap_mb(heap) // 4)),
        *INDEX_OPTIONS,
        *(["-fields", "title"] if fields == "multifield" else []),
    ]  # fmt: skip
    log.info("running %s", " ".join(cmd))
    with log_path.open("w+", encoding="utf-8", errors="replace") as out_log:
        proc = subprocess.run(cmd, stdout=out_log, stderr=subprocess.STDOUT, env=jvm.java_env())
        out_log.seek(0)
        output = out_log.read()
    if proc.returncode != 0:
        tail = "\n".join(output.splitlines()[-20:])
        raise IndexBuildError(f"Anserini IndexCollection exited with {proc.returncode}:\n{tail}")
    counter = re.compile(r"^.*?\b(indexed|empty|skipped|errors|unindexable):\s+([\d,]+)\s*$", re.M)
    return {name: int(value.replace(",", "")) for name, value in counter.findall(output)}


def _heap_mb(heap: str) -> int:
    scale = {"k": 1 / 1024, "m": 1, "g": 1024}.get(heap[-1].lower(), 1 / (1024 * 1024))
    digits = heap if heap[-1].isdigit() else heap[:-1]
    return int(int(digits) * scale)
