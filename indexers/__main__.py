"""``python -m trident_search.indexers build ...``: the ``trident index`` commands without the service package."""
from __future__ import annotations

import logging

from trident_search.indexers.cli import index_app

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    index_app(prog_name="trident index")
