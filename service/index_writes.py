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


def add(
    corpus: Path = typer.Argument(..., help="JSONL documents (corpus lines: _id, title, text, metadata)."),
    index: Path = INDEX,
    batch_size: int = BATCH,
) -> None:
    """Upsert the documents of a JSONL file into an index (new ids are added, known ids replaced)."""
    from trident_search.core.local import LocalIndex
    from trident_search.errors import TridentError
    from trident_search.indexers.corpus import iter_corpus

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
