"""The ``trident`` console command.

Subcommand groups of lower layers are imported directly (``index`` from indexers, ``serve`` /
``search`` from service). Groups of higher layers (``eval``, ``ray``) register themselves through
the ``trident.commands`` entry-point group, so this package never imports them and the dependency
direction encoders <- indexers <- service <- eval holds. Command modules import heavy libraries
(torch, Lucene) inside their functions, so ``trident --help`` stays fast.
"""
from __future__ import annotations

import logging
from importlib.metadata import entry_points, version

import typer

from trident_search.indexers.cli import index_app
from trident_search.service.commands import search, serve
from trident_search.service.index_writes import register as register_index_writes

app = typer.Typer(
    name="trident",
    help="Trident: hybrid retrieval (BM25 + learned sparse + dense) search server.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"trident {version('trident-search')}")
        raise typer.Exit()


@app.callback()
def main(
    version_: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Build indexes, serve them, search them and evaluate them."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


register_index_writes(index_app)  # trident index add / delete (service/index_writes.py)
app.add_typer(index_app, name="index", help="Build and inspect index directories.")
app.command("serve")(serve)
app.command("search")(search)
for _ep in entry_points(group="trident.commands"):
    app.add_typer(_ep.load(), name=_ep.name)
