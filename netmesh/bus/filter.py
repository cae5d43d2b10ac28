"""The poll filter language: exact equality on JSON fields, combined with and/or/not.

Grammar (a filter is a JSON object, given as a dict or as its JSON text)::

    filter := {"path": PATH, "value": VALUE}             equality (the reference's shorthand)
            | {"$eq": {"path": PATH, "value": VALUE}}    the same, spelled out
            | {"$and": [filter, ...]}                     all hold (empty list: true)
            | {"$or":  [filter, ...]}                     one holds (empty list: false)
            | {"$not": filter}
    PATH   := "field" | "field.sub.0.name"               dots descend; a digit segment
                                                          indexes a JSON array

Rules (from the reference, ``mesh_spec.md`` §6.4, made precise here):

- the payload is parsed as JSON; a payload that is not JSON matches no equality;
- a path that does not resolve (missing key, index out of range, descending into a
  scalar) does not match; ``{"$not": ...}`` of it does;
- equality is JSON equality: numbers compare by value (``1`` equals ``1.0``), ``true``
  is not ``1``, ``null`` equals only ``null``, arrays and objects compare element-wise;
- filters run after the fetch, on the bus side: a filtered page may hold fewer events
  than ``limit`` while ``has_more`` is True.

Pure: no IO. :func:`compile_filter` raises :class:`FilterError` naming the bad part.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from netmesh.errors import FilterError

Predicate = Callable[[Any], bool]
_MISSING = object()


def json_equal(a: Any, b: Any) -> bool:
    """JSON equality: as ``==`` but a bool equals only a bool (``True != 1``)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def resolve(doc: Any, path: tuple[str, ...]) -> Any:
    """The value at ``path`` in ``doc``, or a private sentinel when it does not resolve."""
    for part in path:
        if isinstance(doc, dict):
            doc = doc.get(part, _MISSING)
            if doc is _MISSING:
                return _MISSING
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            return _MISSING
    return doc


def _split(path: Any) -> tuple[str, ...]:
    if not isinstance(path, str) or not path or "" in path.split("."):
        raise FilterError(f"a filter path is a non-empty dotted string, got {path!r}")
    return tuple(path.split("."))


def _equality(spec: dict[str, Any]) -> Predicate:
    if set(spec) != {"path", "value"}:
        raise FilterError(f"an equality is {{'path': ..., 'value': ...}}, got keys {sorted(spec)}")
    path, value = _split(spec["path"]), spec["value"]

    def eq(doc: Any) -> bool:
        found = resolve(doc, path)
        return found is not _MISSING and json_equal(found, value)

    return eq


def _compile(spec: Any) -> Predicate:
    if not isinstance(spec, dict):
        raise FilterError(f"a filter is a JSON object, got {type(spec).__name__}: {spec!r}")
    if "path" in spec or "value" in spec:
        return _equality(spec)
    if len(spec) != 1:
        raise FilterError(f"an operator object has exactly one key, got {sorted(spec)}")
    ((op, arg),) = spec.items()
    if op == "$eq":
        if not isinstance(arg, dict):
            raise FilterError(f"$eq takes {{'path': ..., 'value': ...}}, got {arg!r}")
        return _equality(arg)
    if op in ("$and", "$or"):
        if not isinstance(arg, list):
            raise FilterError(f"{op} takes a list of filters, got {arg!r}")
        parts = [_compile(a) for a in arg]
        if op == "$and":
            return lambda doc: all(p(doc) for p in parts)
        return lambda doc: any(p(doc) for p in parts)
    if op == "$not":
        inner = _compile(arg)
        return lambda doc: not inner(doc)
    raise FilterError(f"unknown filter operator {op!r} (known: $eq $and $or $not)")


def compile_filter(spec: dict[str, Any] | str) -> Callable[[bytes], bool]:
    """Compile a filter (dict, or its JSON text) into a predicate over raw payloads."""
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except ValueError as exc:
            raise FilterError(f"filter text is not JSON: {exc}") from exc
    pred = _compile(spec)

    def match(raw: bytes) -> bool:
        try:
            doc = json.loads(raw)
        except ValueError:  # not JSON (or not UTF-8): the document is "nothing"
            doc = _MISSING
        return pred(doc)

    return match
