"""Metadata filters: a MongoDB-style ``where`` document, checked and compiled to parameterised SQL.

The grammar (what users of Chroma, Qdrant or MongoDB write)::

    {"year": {"$gte": 2020}, "lang": "en"}                 # fields side by side: all must hold
    {"$or": [{"lang": "en"}, {"lang": "de"}]}              # $and / $or / $nor over lists of filters
    {"tags": {"$in": ["covid", "flu"]}, "draft": {"$ne": True}, "doi": {"$exists": True}}

Operators on a field: ``$eq`` (also a bare value), ``$ne``, ``$gt``, ``$gte``, ``$lt``, ``$lte``, ``$in``,
``$nin``, ``$exists``. Field names are metadata keys; ``a.b`` reaches into nested objects. Semantics
follow MongoDB's: a comparison matches values of the same kind only (numbers with numbers, strings with
strings, booleans only by ``$eq`` / ``$ne`` / ``$in`` / ``$nin``); a field holding a list matches when any
element does; ``$ne`` / ``$nin`` also match documents without the field; ``{"f": None}`` matches a JSON
null or a missing field.

:func:`compile_filter` checks the whole document first (``ValueError`` naming the bad operator, field or
value; nothing runs) and returns a tree whose leaves are SQL statements with bound parameters over the
store's ``fields`` table (``retriever.index.documents``): values and field names never enter the SQL
text. The store evaluates leaves and combines their row sets with numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["Leaf", "Node", "compile_filter", "scalar_kind", "FIELD_OPERATORS", "LOGICAL_OPERATORS"]

FIELD_OPERATORS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin", "$exists")
LOGICAL_OPERATORS = ("$and", "$or", "$nor")
_CMP = {"$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
MAX_IN_VALUES = 10_000  # values of one $in / $nin list
MAX_DEPTH = 32  # nesting of $and / $or / $nor


@dataclass(frozen=True)
class Leaf:
    """Rows of the ``fields`` table that satisfy one condition: ``SELECT DISTINCT row ... WHERE sql``."""

    sql: str
    params: tuple

    @property
    def key(self) -> tuple:  # cache key of its row set
        return (self.sql, self.params)


@dataclass(frozen=True)
class Node:
    """``op`` in {"and", "or", "not", "all"} over children (``all``: every row, no children)."""

    op: str
    children: tuple = ()


ALL = Node("all")


def scalar_kind(value) -> tuple[str, object] | None:
    """(type tag, value as stored) of a JSON scalar in the store's ``fields`` table, None for anything else.

    The one rule for stored metadata (``retriever.index.documents``) and filter values alike, so that
    a comparison only ever meets values of its own kind: ``bool`` (stored 0/1), ``num`` (int or float;
    ints beyond int64 as float), ``text``, ``null``.
    """
    if isinstance(value, bool):
        return "bool", int(value)
    if isinstance(value, int):
        return "num", value if -(1 << 63) <= value < (1 << 63) else float(value)
    if isinstance(value, float):
        return "num", value
    if isinstance(value, str):
        return "text", value
    if value is None:
        return "null", None
    return None


def _kind(value, where: str):
    """:func:`scalar_kind` of a filter value; ValueError for a non-finite number or a non-scalar."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"where: {where}: {value!r} is not a finite number")
    kind = scalar_kind(value)
    if kind is None:
        raise ValueError(f"where: {where}: {value!r} ({type(value).__name__}) is not a string, number, boolean or null")
    return kind


def _check_field(name) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"where: field names must be non-empty strings, got {name!r}")
    if name.startswith("$"):
        raise ValueError(f"where: unknown operator {name!r} at the top level; use one of {', '.join(LOGICAL_OPERATORS)} "
                         f"or a field name")
    if any(not part for part in name.split(".")):
        raise ValueError(f"where: field {name!r} has an empty path segment")
    return name


def _eq(field: str, value, where: str) -> Node | Leaf:
    kind, v = _kind(value, where)
    if kind == "null":  # MongoDB: null or missing
        return Node("or", (Leaf("key = ? AND type = 'null'", (field,)), Node("not", (_exists(field),))))
    return Leaf("key = ? AND type = ? AND value = ?", (field, kind, v))


def _exists(field: str) -> Leaf:
    return Leaf("key = ?", (field,))


def _field(field: str, cond, depth: int) -> Node | Leaf:
    if not isinstance(cond, dict):
        if isinstance(cond, (list, tuple)):
            raise ValueError(f"where: field {field!r}: a list is not a value to compare with; use {{'$in': [...]}}")
        return _eq(field, cond, f"field {field!r}")
    if not cond:
        raise ValueError(f"where: field {field!r}: empty condition {{}}")
    if not all(isinstance(k, str) and k.startswith("$") for k in cond):
        raise ValueError(f"where: field {field!r}: {cond!r} mixes operators and plain keys; compare nested "
                         f"fields with a dotted path such as '{field}.name'")
    parts = []
    for op, value in cond.items():
        where = f"field {field!r} {op}"
        if op == "$eq":
            parts.append(_eq(field, value, where))
        elif op == "$ne":
            parts.append(Node("not", (_eq(field, value, where),)))
        elif op in _CMP:
            kind, v = _kind(value, where)
            if kind not in ("num", "text"):
                raise ValueError(f"where: {where}: compares numbers or strings, got {value!r}")
            parts.append(Leaf(f"key = ? AND type = ? AND value {_CMP[op]} ?", (field, kind, v)))
        elif op in ("$in", "$nin"):
            if not isinstance(value, (list, tuple)):
                raise ValueError(f"where: {where}: needs a list of values, got {value!r}")
            if len(value) > MAX_IN_VALUES:
                raise ValueError(f"where: {where}: {len(value)} values, at most {MAX_IN_VALUES}")
            any_of = Node("or", tuple(_eq(field, x, f"{where}[{i}]") for i, x in enumerate(value)))
            parts.append(any_of if op == "$in" else Node("not", (any_of,)))
        elif op == "$exists":
            if not isinstance(value, bool):
                raise ValueError(f"where: {where}: needs true or false, got {value!r}")
            parts.append(_exists(field) if value else Node("not", (_exists(field),)))
        else:
            raise ValueError(f"where: field {field!r}: unknown operator {op!r}; supported: {', '.join(FIELD_OPERATORS)}")
    return parts[0] if len(parts) == 1 else Node("and", tuple(parts))


def _filter(doc, depth: int) -> Node | Leaf:
    if depth > MAX_DEPTH:
        raise ValueError(f"where: nested deeper than {MAX_DEPTH} levels")
    if not isinstance(doc, dict):
        raise ValueError(f"where: a filter is a JSON object, got {type(doc).__name__} {doc!r}")
    parts = []
    for key, value in doc.items():
        if isinstance(key, str) and key in LOGICAL_OPERATORS:
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"where: {key} needs a non-empty list of filters, got {value!r}")
            subs = tuple(_filter(x, depth + 1) for x in value)
            node = Node("and" if key == "$and" else "or", subs)
            parts.append(Node("not", (node,)) if key == "$nor" else node)
        else:
            parts.append(_field(_check_field(key), value, depth))
    if not parts:
        return ALL
    return parts[0] if len(parts) == 1 else Node("and", tuple(parts))


def compile_filter(where) -> Node | Leaf:
    """Check a ``where`` document and compile it (see the module docstring); ``ValueError`` names the problem."""
    return _filter(where, 0)
