"""The one result record every retriever returns, so fusion can treat them alike."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Hit:
    """A scored document, identified by its external (corpus ``_id``) id."""

    docid: str
    score: float
