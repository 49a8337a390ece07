"""How a document is turned into the one string the neural encoders read."""

from __future__ import annotations


def document_text(title: str | None, text: str | None) -> str:
    """Join title and body as BEIR does (``"title text"``), skipping empty or missing parts.

    This is the only place the join happens, so index build and evaluation encode identical strings.

    >>> document_text("Aspirin", "reduces fever.")
    'Aspirin reduces fever.'
    >>> document_text("", "  body only ")
    'body only'
    """
    parts = [part.strip() for part in (title, text) if part and part.strip()]
    return " ".join(parts)


def check_texts(texts: object) -> list[str]:
    """Validate an encoder input: a sequence of strings (a bare string is refused, not split into letters)."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("encoders take a list of strings; wrap a single text as [text]")
    try:
        items = list(texts)  # type: ignore[call-overload]
    except TypeError as exc:
        raise TypeError(f"encoders take a list of strings, got {type(texts).__name__}") from exc
    for position, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"encoder input {position} is {type(item).__name__}, expected str")
    return items
