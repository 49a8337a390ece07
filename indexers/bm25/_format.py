"""What the BM25 build writes and the search side reads: field modes, the params file, its version."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trident_search.errors import IndexLoadError

FIELDS = ("flat", "multifield")
PARAMS_FILE = "trident-bm25.json"
FORMAT_VERSION = 1
COLLECTIONS = {"flat": "BeirFlatCollection", "multifield": "BeirMultifieldCollection"}
INDEX_OPTIONS = ["-storePositions", "-storeDocvectors"]


def read_params(root: Path) -> dict[str, Any]:
    """The params file of the index at ``root``, checked (IndexLoadError when missing or unreadable)."""
    path = root / PARAMS_FILE
    if not path.is_file():
        raise IndexLoadError(
            f"{root} is not a BM25 index built by Trident ({PARAMS_FILE} is missing); rebuild it"
        )
    try:
        params = json.loads(path.read_text(encoding="utf-8"))
        if params["format"] != FORMAT_VERSION or params["fields"] not in FIELDS:
            raise ValueError(f"format {params['format']!r}, fields {params['fields']!r}")
        params["documents"] = int(params["documents"])
    except (ValueError, KeyError, TypeError) as exc:
        raise IndexLoadError(f"{path} is unreadable ({exc}); rebuild the index") from None
    return params
