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
- Dates (``{"$date": ms}``: ``new Date``, ``db.serverDate()``) equal equal dates, compare only
  with dates and sort after booleans (MongoDB's order).

``$regex`` is matched with the ``regex`` package (``re``'s syntax and semantics) because it
takes a timeout and releases the GIL: a hostile pattern (``(a|aa)+$``) against a long value
backtracks exponentially, and Python's ``re`` can be neither interrupted nor bounded. A search
gets ``REGEX_VALUE_SECONDS`` per value and, in SQLite (where it runs inside the database
thread for every candidate row), ``REGEX_STATEMENT_SECONDS`` per statement; past either the
query fails with :class:`RegexTooSlow` (400), never hangs the server.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from functools import lru_cache
from typing import Any, Iterator

import regex as _regex

from csbot.cloud.database.errors import RegexTooSlow
from csbot.cloud.database.query import (
    All, And, Cmp, Cond, CondAnd, CondNor, CondOr, ElemMatch, Eq, Exists, Field, In, MatchAll,
    Mod, Ne, Nin, Nor, Not, Or, Query, Regex, Size, regex_flags,
)
from csbot.cloud.database.values import comparable_value, equal, is_index, kind, same_kind_comparable


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
        return any(same_kind_comparable(x, cond.value)
                   and _compare(cond.op, comparable_value(x), comparable_value(cond.value)) for x in _expand(xs))
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
        return any(isinstance(x, str) and regex_search(cond.pattern, cond.options, x) for x in _expand(xs))
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


#: time one ``$regex`` search may take on one value, and all of one SQLite statement's searches
REGEX_VALUE_SECONDS = 0.1
REGEX_STATEMENT_SECONDS = 2.0
_STATEMENTS_TRACKED = 256


@lru_cache(maxsize=256)
def _compiled(pattern: str, options: str) -> Any:
    # re.* flag values are the regex package's too (VERSION0: re's semantics)
    return _regex.compile(pattern, regex_flags(options))


def regex_search(pattern: str, options: str, value: str, timeout: float = REGEX_VALUE_SECONDS) -> bool:
    """Whether ``pattern`` occurs in ``value``; :class:`RegexTooSlow` past ``timeout`` seconds."""
    try:
        return _compiled(pattern, options).search(value, timeout=timeout) is not None
    except TimeoutError:
        raise RegexTooSlow() from None


class _StatementBudgets:
    """Seconds of regex search spent per SQLite statement (keyed by the statement's id)."""

    def __init__(self) -> None:
        self._spent: OrderedDict[str, float] = OrderedDict()
        self._lock = threading.Lock()

    def left(self, statement: str) -> float:
        with self._lock:
            return REGEX_STATEMENT_SECONDS - self._spent.get(statement, 0.0)

    def spend(self, statement: str, seconds: float) -> None:
        with self._lock:
            self._spent[statement] = self._spent.get(statement, 0.0) + seconds
            self._spent.move_to_end(statement)
            while len(self._spent) > _STATEMENTS_TRACKED:
                self._spent.popitem(last=False)


_BUDGETS = _StatementBudgets()


def regexp_sql_function(pattern: str, options: str, value: Any, statement: str | None = None) -> int | None:
    """``csbot_regexp(pattern, options, value[, statement])`` registered on SQLite connections.

    An exception here reaches the caller as SQLite's "user-defined function raised exception"
    (the only function csbot registers); the store turns that into :class:`RegexTooSlow`."""
    if not isinstance(value, str):
        return None
    if statement is None:
        return 1 if regex_search(pattern, options, value) else 0
    left = _BUDGETS.left(statement)
    if left <= 0:
        raise RegexTooSlow()
    start = time.perf_counter()
    try:
        return 1 if regex_search(pattern, options, value, min(REGEX_VALUE_SECONDS, left)) else 0
    finally:
        _BUDGETS.spend(statement, time.perf_counter() - start)
