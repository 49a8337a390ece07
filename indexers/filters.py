"""Metadata filters and facets over typed in-memory columns of the docstore's metadata.

The filter language (a JSON object, so it travels unchanged to shard servers)::

    {"lang": "en"}                                  equality
    {"year": [2019, 2020]}                          one of
    {"year": {"gte": 2015, "lt": 2019}}             per-field operators, all must hold:
        eq, ne, gt, gte, lt, lte, in, nin, exists   (ranges take a number or an ISO 8601 date)
    {"all": [f1, f2]}, {"any": [f1, f2]}, {"not": f}   combinators (any filter object inside)

The entries of one object must all hold (an implicit ``all``). ``all``, ``any`` and ``not`` are
reserved: a metadata field with one of those names cannot be filtered on. Field names are top-level
metadata keys; a nested object's keys are reached as ``outer.inner``. A list value matches when any
element matches (``{"tags": "x"}`` matches ``"tags": ["x", "y"]``). ``ne``, ``nin`` and
``exists: false`` also match documents that lack the field (they are ``not`` of ``eq``, ``in`` and
``exists: true``). Types do not mix: ``1`` does not equal ``true`` or ``"1"``. Range operators compare
numbers with numbers and ISO dates with ISO-date strings (a naive date or time is UTC).

**Storage.** Each field used by a filter or a facet is loaded once from SQLite into typed numpy
columns (one row per (document, value); kinds string / number / boolean, plus the epoch seconds of
every ISO-date string), so evaluating a filter is a few vectorised comparisons over those rows: a
selective filter on a 100k-document store costs about a millisecond once the field is loaded (see
``benchmarks/RESULTS.md``); loading costs seconds per 100k documents, so ``Engine.warm_up`` preloads
the fields of the first documents (:meth:`Columns.preload`). Columns belong to one
:class:`Columns` (one per docstore); a store that is written to must call :meth:`Columns.invalidate`
(``DocStore.filters_changed``).
"""
from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from trident_search.errors import InvalidRequestError

COMBINATORS = ("all", "any", "not")
OPERATORS = ("eq", "ne", "gt", "gte", "lt", "lte", "in", "nin", "exists")
RANGE_OPERATORS = ("gt", "gte", "lt", "lte")
FIELD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:-]*$")
MAX_VALUES = 500  # per in / nin list
MAX_NODES = 1000  # leaves and combinators in one filter
MAX_DEPTH = 32

STR, NUM, BOOL = 0, 1, 2
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?)?$")


class FilterError(InvalidRequestError):
    """A filter that cannot be applied; ``field`` is its path (``filters.all.1.year.gt``)."""


# -- parsing ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Leaf:
    field: str
    op: str
    value: Any


@dataclass(frozen=True, slots=True)
class Node:
    op: str  # "all" | "any" | "not"
    children: tuple[Any, ...]


def iso_date(value: str) -> float | None:
    """Epoch seconds of an ISO 8601 date or date-time (naive = UTC), or None if it is not one."""
    if not _DATE.match(value):
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def _scalar(value: Any) -> bool:
    if isinstance(value, bool) or isinstance(value, str):
        return True
    if isinstance(value, int):
        return -(2**63) <= value < 2**63
    return isinstance(value, float) and math.isfinite(value)


def _check_text(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise FilterError(f"{path} contains a lone surrogate (invalid Unicode)", field=path) from None


class _Parser:
    def __init__(self) -> None:
        self.nodes = 0

    def filter(self, obj: Any, path: str, depth: int = 0) -> Node:
        if not isinstance(obj, Mapping):
            raise FilterError(f"{path} must be an object (field -> condition, or all/any/not)", field=path)
        if depth > MAX_DEPTH:
            raise FilterError(f"{path} nests deeper than {MAX_DEPTH} levels", field=path)
        children: list[Any] = []
        for key, value in obj.items():
            self._count(path)
            if key in ("all", "any"):
                here = f"{path}.{key}"
                if not isinstance(value, list) or not value:
                    raise FilterError(f"{here} must be a non-empty list of filter objects", field=here)
                children.append(Node(key, tuple(self.filter(v, f"{here}.{i}", depth + 1)
                                                for i, v in enumerate(value))))
            elif key == "not":
                children.append(Node("not", (self.filter(value, f"{path}.not", depth + 1),)))
            else:
                children.extend(self.field(key, value, path))
        return Node("all", tuple(children))

    def _count(self, path: str) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise FilterError(f"the filter has more than {MAX_NODES} conditions", field=path)

    def field(self, name: Any, cond: Any, path: str) -> list[Leaf]:
        if not isinstance(name, str) or not FIELD.match(name):
            raise FilterError(
                f"bad metadata field name {name!r} in {path}: use letters, digits, '_', '.', ':' or '-' "
                f"(or the combinators all, any, not)", field=path)
        here = f"{path}.{name}"
        if isinstance(cond, Mapping):
            if not cond:
                raise FilterError(f"{here} lists no operators; use one of {', '.join(OPERATORS)}", field=here)
            return [self.operator(name, op, v, f"{here}.{op}") for op, v in cond.items()]
        if isinstance(cond, list):
            return [self.operator(name, "in", cond, here)]
        return [self.operator(name, "eq", cond, here)]

    def operator(self, name: str, op: Any, value: Any, here: str) -> Leaf:
        if op not in OPERATORS:
            raise FilterError(f"unknown operator {op!r} at {here}; use one of {', '.join(OPERATORS)}",
                              field=here)
        if op in ("eq", "ne"):
            self._value(value, here)
        elif op in ("in", "nin"):
            if not isinstance(value, list) or not value:
                raise FilterError(f"{here} lists no values; give a non-empty list of strings, numbers "
                                  "or booleans", field=here)
            if len(value) > MAX_VALUES:
                raise FilterError(f"{here} lists {len(value)} values; at most {MAX_VALUES}", field=here)
            for i, v in enumerate(value):
                self._value(v, f"{here}.{i}")
            value = tuple(value)
        elif op == "exists":
            if not isinstance(value, bool):
                raise FilterError(f"{here} must be true or false", field=here)
        else:  # a range bound
            if isinstance(value, str):
                _check_text(value, here)
                if iso_date(value) is None:
                    raise FilterError(f"{here} needs a number or an ISO 8601 date (2020-01-31, "
                                      f"2020-01-31T12:00:00Z), got {value!r}", field=here)
            elif isinstance(value, bool) or not _scalar(value):
                raise FilterError(f"{here} needs a number or an ISO 8601 date, got {value!r}", field=here)
        return Leaf(name, op, value)

    @staticmethod
    def _value(value: Any, here: str) -> None:
        if not _scalar(value):
            raise FilterError(f"{here}: filter values must be strings, numbers or booleans, "
                              f"got {json.dumps(value) if value is None else type(value).__name__}", field=here)
        if isinstance(value, str):
            _check_text(value, here)


def parse(filters: Mapping[str, Any], path: str = "filters") -> Node:
    """Validate a filter object; :class:`FilterError` names the path of the first problem."""
    return _Parser().filter(filters, path)


def canonical(filters: Mapping[str, Any]) -> str:
    """A cache key: equal filters (up to key order) give equal keys; ``1`` and ``true`` differ."""
    return json.dumps(filters, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def fields_of(node: Node | Leaf) -> set[str]:
    if isinstance(node, Leaf):
        return {node.field}
    return set().union(*(fields_of(c) for c in node.children)) if node.children else set()


# -- columns ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Column:
    """One field's values: one row per distinct (document, value), rows sorted by document."""

    docs: np.ndarray     # int64 internal id per row
    kind: np.ndarray     # uint8 STR / NUM / BOOL
    num: np.ndarray      # float64: numbers and booleans (0/1); NaN for strings
    date: np.ndarray     # float64: epoch seconds of ISO-date strings; NaN otherwise
    code: np.ndarray     # int32: index into ``strings`` for strings; -1 otherwise
    strings: list[str]
    string_code: dict[str, int]

    def rows_equal(self, value: Any) -> np.ndarray:
        if isinstance(value, bool):
            return (self.kind == BOOL) & (self.num == float(value))
        if isinstance(value, str):
            c = self.string_code.get(value)
            return self.code == c if c is not None else np.zeros(len(self.docs), dtype=bool)
        return (self.kind == NUM) & (self.num == float(value))

    def value(self, row: int) -> Any:
        k = int(self.kind[row])
        if k == STR:
            return self.strings[int(self.code[row])]
        v = float(self.num[row])
        if k == BOOL:
            return bool(v)
        return int(v) if v.is_integer() and abs(v) < 2**53 else v


def _flatten(meta: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in meta.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += _flatten(value, f"{name}.")
        elif isinstance(value, list):
            out += [(name, v) for v in value if v is not None and not isinstance(v, (list, Mapping))]
        elif value is not None:
            out.append((name, value))
    return out


def _kind(value: Any) -> int:
    if value is True or value is False:
        return BOOL
    if isinstance(value, str):
        return STR
    if isinstance(value, (int, float)) and math.isfinite(value):
        return NUM
    return -1


def _build_column(rows: Sequence[tuple[int, Any]]) -> Column:
    rows = [r for r in rows if _kind(r[1]) >= 0]
    docs = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    if docs.size > 1 and (np.diff(docs) <= 0).any():  # multi-valued or unordered: sort, drop repeats
        seen: set[tuple[int, int, Any]] = set()
        unique = []
        for doc, value in sorted(rows, key=lambda r: r[0]):
            key = (doc, _kind(value), value)
            if key not in seen:
                seen.add(key)
                unique.append((doc, value))
        rows = unique
        docs = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    values = [r[1] for r in rows]
    kind = np.fromiter((_kind(v) for v in values), dtype=np.uint8, count=len(values))
    strings: list[str] = []
    string_code: dict[str, int] = {}
    code = np.full(len(values), -1, dtype=np.int32)
    num = np.full(len(values), np.nan)
    is_str = kind == STR
    if is_str.any():
        idx = np.flatnonzero(is_str)
        code[idx] = [string_code.setdefault(values[i], len(string_code)) for i in idx.tolist()]
        strings = list(string_code)
    if (~is_str).any():
        idx = np.flatnonzero(~is_str)
        num[idx] = [float(values[i]) for i in idx.tolist()]
    dates = np.array([d if (d := iso_date(t)) is not None else np.nan for t in strings] + [np.nan])
    return Column(docs, kind, num, dates[code], code, strings, string_code)  # code -1 -> the NaN


class Columns:
    """Typed columns of the metadata fields in use, loaded from the ``docs`` table on first use."""

    def __init__(self, conn: Callable[[], sqlite3.Connection], size: Callable[[], int]) -> None:
        self._conn = conn
        self._size = size
        self._lock = threading.Lock()
        self._columns: dict[str, Column] = {}
        self._n: int | None = None

    def invalidate(self) -> None:
        """Forget every loaded column (call after any write to the docstore)."""
        with self._lock:
            self._columns.clear()
            self._n = None

    @property
    def n(self) -> int:
        """Mask length: one more than the largest internal id."""
        if self._n is None:
            row = self._conn().execute("SELECT coalesce(max(id) + 1, 0) FROM docs").fetchone()
            self._n = int(row[0])
        return self._n

    def column(self, field: str) -> Column:
        col = self._columns.get(field)
        if col is None:
            col = self._load(field)
            with self._lock:
                self._columns.setdefault(field, col)
        return col

    def preload(self, sample: int = 1000, max_fields: int = 32) -> list[str]:
        """Load the columns of the top-level scalar fields seen in the first ``sample`` documents
        (at most ``max_fields``), so the first filtered search does not pay for them; returns them."""
        fields: dict[str, None] = {}
        for (meta,) in self._conn().execute("SELECT metadata FROM docs ORDER BY id LIMIT ?", (sample,)):
            for name, _ in _flatten(json.loads(meta)):
                if FIELD.match(name):
                    fields.setdefault(name, None)
        names = list(fields)[:max_fields]
        for name in names:
            self.column(name)
        return names

    def _load(self, field: str) -> Column:
        top, _, rest = field.partition(".")
        rows: list[tuple[int, Any]] = []
        # The top-level key is found by SQLite; only documents that have it are parsed here.
        sql = ("SELECT id, json_extract(metadata, ?), json_type(metadata, ?) FROM docs "
               "WHERE json_type(metadata, ?) IS NOT NULL")
        key = f'$."{top}"'
        for doc, value, typ in self._conn().execute(sql, (key, key, key)):
            if typ in ("array", "object"):
                parsed = json.loads(value)
                for name, v in _flatten({top: parsed}):
                    if name == field:
                        rows.append((doc, v))
            elif not rest:
                rows.append((doc, _typed(value, typ)))
        # A literal dotted key ({"a.b": 1}) is the same field as a nested one ({"a": {"b": 1}}).
        if rest:
            key = f'$."{field}"'
            for doc, value, typ in self._conn().execute(sql, (key, key, key)):
                if typ == "array":
                    rows += [(doc, v) for _, v in _flatten({field: json.loads(value)})]
                elif typ != "object":
                    rows.append((doc, _typed(value, typ)))
        return _build_column(rows)

    # -- evaluation -----------------------------------------------------------------------------
    def mask(self, node: Node | Leaf) -> np.ndarray:
        """Bool mask over internal ids of the documents the parsed filter matches."""
        n = self.n
        if isinstance(node, Node):
            if node.op == "not":
                return ~self.mask(node.children[0])
            if not node.children:
                return np.ones(n, dtype=bool)
            masks = [self.mask(c) for c in node.children]
            out = masks[0]
            for m in masks[1:]:
                out = out & m if node.op == "all" else out | m
            return out
        return self._leaf(node, n)

    def _leaf(self, leaf: Leaf, n: int) -> np.ndarray:
        if leaf.op in ("ne", "nin") or (leaf.op == "exists" and not leaf.value):
            positive = {"ne": "eq", "nin": "in", "exists": "exists"}[leaf.op]
            return ~self._leaf(Leaf(leaf.field, positive, True if leaf.op == "exists" else leaf.value), n)
        col = self.column(leaf.field)
        if leaf.op == "eq":
            rows = col.rows_equal(leaf.value)
        elif leaf.op == "in":
            rows = np.zeros(len(col.docs), dtype=bool)
            for v in leaf.value:
                rows |= col.rows_equal(v)
        elif leaf.op == "exists":
            rows = np.ones(len(col.docs), dtype=bool)
        else:
            rows = range_rows(col, leaf.op, leaf.value)
        mask = np.zeros(n, dtype=bool)
        mask[col.docs[rows]] = True
        return mask


_COMPARE = {"gt": np.greater, "gte": np.greater_equal, "lt": np.less, "lte": np.less_equal}


def range_rows(col: Column, op: str, bound: Any) -> np.ndarray:
    """Rows whose value satisfies ``value <op> bound`` (numbers vs numbers, ISO dates vs dates)."""
    if isinstance(bound, str):
        date = iso_date(bound)
        if date is None:  # parse() lets only ISO dates through
            raise FilterError(f"{bound!r} is not an ISO 8601 date")
        values, b = col.date, date
    else:
        values, b = np.where(col.kind == NUM, col.num, np.nan), float(bound)
    with np.errstate(invalid="ignore"):
        return _COMPARE[op](values, b)  # NaN (another kind) compares False


def _typed(value: Any, typ: str) -> Any:
    if typ == "true":
        return True
    if typ == "false":
        return False
    return value  # text, integer, real; null rows are skipped by the WHERE clause


# -- facets -------------------------------------------------------------------------------------
def _allowed_rows(col: Column, allowed: np.ndarray | None) -> np.ndarray:
    """Rows of allowed documents (a document past the end of ``allowed`` is not allowed)."""
    if allowed is None:
        return np.ones(len(col.docs), dtype=bool)
    inside = col.docs < allowed.size
    rows = np.zeros(len(col.docs), dtype=bool)
    rows[inside] = allowed[col.docs[inside]]
    return rows


def value_counts(col: Column, allowed: np.ndarray | None, size: int) -> list[tuple[Any, int]]:
    """The ``size`` most frequent values among allowed documents: (value, documents), ties by value."""
    rows = _allowed_rows(col, allowed)
    if not rows.any():
        return []
    kinds = col.kind[rows]
    keys: list[tuple[Any, int]] = []
    strs = col.code[rows][kinds == STR]
    if strs.size:
        counts = np.bincount(strs, minlength=len(col.strings))
        keys += [(col.strings[i], int(counts[i])) for i in np.flatnonzero(counts)]
    for k in (NUM, BOOL):
        vals = col.num[rows][kinds == k]
        if vals.size:
            uniq, counts = np.unique(vals, return_counts=True)
            for v, c in zip(uniq.tolist(), counts.tolist(), strict=True):
                value: Any = bool(v) if k == BOOL else (int(v) if float(v).is_integer() and abs(v) < 2**53 else v)
                keys.append((value, int(c)))
    keys.sort(key=lambda kv: (-kv[1], _order(kv[0])))
    return keys[:size]


def _order(value: Any) -> tuple[int, Any]:
    if isinstance(value, bool):
        return (2, value)
    if isinstance(value, (int, float)):
        return (0, value)
    return (1, value)


def range_count(col: Column, bounds: Mapping[str, Any], allowed: np.ndarray | None) -> int:
    """Documents with a value inside every bound of ``bounds`` (``{"gte": 2015, "lt": 2018}``)."""
    rows = _allowed_rows(col, allowed)
    for op, b in bounds.items():
        rows &= range_rows(col, op, b)
    return int(np.unique(col.docs[rows]).size)
