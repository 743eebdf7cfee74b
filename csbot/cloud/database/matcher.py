"""The reference matcher: THE specification of what a query matches.

The SQLite and PostgreSQL compilers are tested against this module with generated documents
and queries (tests/cloud/database/test_property.py); where they disagree, this file is right.

Semantics (MongoDB's, as WeChat's database follows them):
- A path is followed through objects; when it meets an array and the next component is a
  field name, it continues into every object element of that array (``places.area`` reaches
  the ``area`` of each place). A numeric component indexes an array (``numbers.1``) or names
  an object key. The values reached are the field's *candidates*; none means "missing".
- A candidate satisfies a value condition when it, or (if it is an array) one of its
  elements, does: ``tags: "x"`` means "tags is x or contains x"; ``numbers: [1, 2]`` means
  "equal to that array (or contains it as an element)".
- Comparisons are type-strict: a number only compares with numbers, a string with strings
  (by code point), a boolean with booleans. ``true`` never equals ``1``.
- ``eq null`` also matches a missing field; ``neq``, ``nin``, ``not`` and ``nor`` are negations
  and so match documents where the field is missing.
- ``size`` and ``elem_match`` look at array candidates only, ``exists`` at whether any
  candidate exists (an explicit null exists), ``all`` requires each value (``all []`` never
  matches), ``mod`` truncates numbers to integers and keeps the dividend's sign (like C),
  ``regex`` looks at strings only.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Iterator

from csbot.cloud.database.query import (
    All, And, Cmp, Cond, CondAnd, CondNor, CondOr, ElemMatch, Eq, Exists, Field, In, MatchAll,
    Mod, Ne, Nin, Nor, Not, Or, Query, Regex, Size, regex_flags,
)
from csbot.cloud.database.values import equal, is_index, kind, same_kind_comparable


def matches(query: Query, doc: Any) -> bool:
    """Whether the document satisfies the query."""
    if isinstance(query, MatchAll):
        return True
    if isinstance(query, And):
        return all(matches(q, doc) for q in query.items)
    if isinstance(query, Or):
        return any(matches(q, doc) for q in query.items)
    if isinstance(query, Nor):
        return not any(matches(q, doc) for q in query.items)
    if isinstance(query, Field):
        return test(query.cond, list(candidates(doc, query.path)))
    raise TypeError(f"not a query node: {query!r}")


def candidates(value: Any, path: tuple[str, ...]) -> Iterator[Any]:
    """The values found at ``path``, following arrays of objects."""
    if not path:
        yield value
        return
    key, rest = path[0], path[1:]
    if isinstance(value, dict):
        if key in value:
            yield from candidates(value[key], rest)
    elif isinstance(value, list):
        if is_index(key):
            index = int(key)
            if index < len(value):
                yield from candidates(value[index], rest)
        else:
            for element in value:
                if isinstance(element, dict) and key in element:
                    yield from candidates(element[key], rest)


def lookup(value: Any, path: tuple[str, ...]) -> tuple[bool, Any]:
    """The single value at ``path`` (no array traversal), as ``(found, value)``: for sorting."""
    for key in path:
        if isinstance(value, dict) and key in value:
            value = value[key]
        elif isinstance(value, list) and is_index(key) and int(key) < len(value):
            value = value[int(key)]
        else:
            return False, None
    return True, value


def _expand(xs: list[Any]) -> Iterator[Any]:
    """Each candidate and, for arrays, each of its elements."""
    for x in xs:
        yield x
        if isinstance(x, list):
            yield from x


def test(cond: Cond, xs: list[Any]) -> bool:
    """Whether the candidates ``xs`` of a field satisfy the condition."""
    if isinstance(cond, Eq):
        if cond.value is None and not xs:
            return True
        return any(equal(x, cond.value) for x in _expand(xs))
    if isinstance(cond, Ne):
        return not test(Eq(cond.value), xs)
    if isinstance(cond, Cmp):
        return any(same_kind_comparable(x, cond.value) and _compare(cond.op, x, cond.value)
                   for x in _expand(xs))
    if isinstance(cond, In):
        return any(test(Eq(v), xs) for v in cond.values)
    if isinstance(cond, Nin):
        return not test(In(cond.values), xs)
    if isinstance(cond, Exists):
        return bool(xs) == cond.flag
    if isinstance(cond, Size):
        return any(isinstance(x, list) and len(x) == cond.n for x in xs)
    if isinstance(cond, All):
        return bool(cond.values) and all(test(Eq(v), xs) for v in cond.values)
    if isinstance(cond, ElemMatch):
        return any(isinstance(x, list) and any(_elem_matches(cond, e) for e in x) for x in xs)
    if isinstance(cond, Mod):
        return any(kind(x) == "number" and c_remainder(int(x), cond.divisor) == cond.remainder
                   for x in _expand(xs))
    if isinstance(cond, Regex):
        rx = _compiled(cond.pattern, cond.options)
        return any(isinstance(x, str) and rx.search(x) is not None for x in _expand(xs))
    if isinstance(cond, Not):
        return not test(cond.cond, xs)
    if isinstance(cond, CondAnd):
        return all(test(c, xs) for c in cond.items)
    if isinstance(cond, CondOr):
        return any(test(c, xs) for c in cond.items)
    if isinstance(cond, CondNor):
        return not any(test(c, xs) for c in cond.items)
    raise TypeError(f"not a condition: {cond!r}")


def _elem_matches(cond: ElemMatch, element: Any) -> bool:
    if cond.query is not None:
        return isinstance(element, dict) and matches(cond.query, element)
    assert cond.cond is not None
    return test(cond.cond, [element])


def _compare(op: str, a: Any, b: Any) -> bool:
    if op == "gt":
        return a > b
    if op == "gte":
        return a >= b
    if op == "lt":
        return a < b
    return a <= b


def c_remainder(a: int, d: int) -> int:
    """``a % d`` with the sign of the dividend, as C, SQLite and PostgreSQL compute it."""
    r = abs(a) % abs(d)
    return -r if a < 0 else r


@lru_cache(maxsize=256)
def _compiled(pattern: str, options: str) -> re.Pattern[str]:
    return re.compile(pattern, regex_flags(options))


def regexp_sql_function(pattern: str, options: str, value: Any) -> int | None:
    """``csbot_regexp(pattern, options, value)`` registered on SQLite connections."""
    if not isinstance(value, str):
        return None
    return 1 if _compiled(pattern, options).search(value) else 0
