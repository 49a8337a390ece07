"""``trident index add`` and ``trident index delete``: live writes to an index no server holds.

They live in the service layer (they drive ``core.live``, which ``indexers`` may not import) and are
registered on the ``trident index`` group by ``service/cli.py``. An index open in another process
(a server) is refused with a clear error: the lock of ``core.local`` lets one writer at a time hold it.
"""
from __future__ import annotations

import itertools
import time
from pathlib import Path

import typer

INDEX = typer.Option(..., "--index", help="Index directory (no server may be serving it).")
BATCH = typer.Option(256, "--batch-size", min=1, help="Documents per durable write.")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code=2)


def _check_free(index: Path) -> None:
    """Fail fast (before loading any model) when another process holds the index."""
    import fcntl
    import os

    from trident_search.core.local import LOCK_FILE

    try:
        fd = os.open(index / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        return  # read-only or missing: opening the index says what is wrong
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        _fail(f"another process (a server?) has {index} open; stop it, or write through its REST API "
              "(PUT/POST/DELETE /v1/documents)")
    finally:
        os.close(fd)


def add(
    corpus: Path = typer.Argument(..., help="JSONL documents (corpus lines: _id, title, text, metadata)."),
    index: Path = INDEX,
    batch_size: int = BATCH,
) -> None:
    """Upsert the documents of a JSONL file into an index (new ids are added, known ids replaced)."""
    from trident_search.core.local import LocalIndex
    from trident_search.errors import TridentError
    from trident_search.indexers.corpus import iter_corpus

    _check_free(index)
    start, done = time.perf_counter(), 0
    try:
        opened = LocalIndex.open(index)
        try:
            writer = opened.writer()
            docs = iter_corpus(corpus)
            while batch := list(itertools.islice(docs, batch_size)):
                writer.write(batch)
                done += len(batch)
        finally:
            opened.close()
    except TridentError as exc:
        _fail(f"{exc.message} ({done} documents written before it)" if done else exc.message)
    typer.echo(f"upserted {done} documents into {index} in {time.perf_counter() - start:.1f} s")


def delete(
    ids: Path = typer.Argument(..., help="Text file of document ids, one a line."),
    index: Path = INDEX,
) -> None:
    """Delete documents by id (every id must exist; the file is applied as one write)."""
    from trident_search.core.local import LocalIndex
    from trident_search.errors import TridentError

    wanted = [line.strip() for line in ids.read_text(encoding="utf-8").splitlines() if line.strip()]
    _check_free(index)
    try:
        opened = LocalIndex.open(index)
        try:
            opened.writer().write(deletes=wanted)
        finally:
            opened.close()
    except TridentError as exc:
        _fail(exc.message)
    typer.echo(f"deleted {len(wanted)} documents from {index}")


def register(group: typer.Typer) -> None:
    """Add the commands to ``trident index``."""
    group.command("add")(add)
    group.command("delete")(delete)
