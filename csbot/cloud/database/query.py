"""The query model: WeChat's wire format (MongoDB-style) parsed into a small typed tree.

Every entry point (``context.db``, ``/cloud/db``, ``/tcb``, the CLI) turns its input into the
wire format first, then :func:`parse_query` turns that into these nodes. The reference
matcher (``matcher.py``) and the SQL compilers (``sql.py``) read only these nodes.

Wire format, as WeChat's SDK sends it:
- ``{"a.b": 1}`` and ``{"a": {"b": 1}}`` are the same condition (nested plain objects are
  flattened into dotted paths); an exact sub-document is ``{"a": {"$eq": {"b": 1}}}``.
- operators: ``$eq $ne $gt $gte $lt $lte $in $nin $exists $size $all $elemMatch $mod $regex
  ($options) $not``; ``$and $or $nor`` at the top level and inside a field
  (``{"age": {"$or": [{"$lt": 10}, {"$gt": 60}]}}``, what ``_.lt(10).or(_.gt(60))`` sends).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import regex as _regex

from csbot.cloud.database.errors import QueryError
from csbot.cloud.database.values import DATE_KEY, is_date, normalize, split_path

Path = tuple[str, ...]


# ----------------------------------------------------------------------------- query nodes


class Query:
    """A condition on a whole document."""


@dataclass(frozen=True)
class MatchAll(Query):
    pass


@dataclass(frozen=True)
class And(Query):
    items: tuple[Query, ...]


@dataclass(frozen=True)
class Or(Query):
    items: tuple[Query, ...]


@dataclass(frozen=True)
class Nor(Query):
    items: tuple[Query, ...]


@dataclass(frozen=True)
class Field(Query):
    path: Path
    cond: "Cond"


# ----------------------------------------------------------------------------- field conditions


class Cond:
    """A condition on the values found at one path."""


@dataclass(frozen=True)
class Eq(Cond):
    value: Any


@dataclass(frozen=True)
class Ne(Cond):
    value: Any


@dataclass(frozen=True)
class Cmp(Cond):
    op: str  # lt lte gt gte
    value: Any


@dataclass(frozen=True)
class In(Cond):
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Nin(Cond):
    values: tuple[Any, ...]


@dataclass(frozen=True)
class Exists(Cond):
    flag: bool


@dataclass(frozen=True)
class Size(Cond):
    n: int


@dataclass(frozen=True)
class All(Cond):
    values: tuple[Any, ...]


@dataclass(frozen=True)
class ElemMatch(Cond):
    """One array element satisfies everything: a query on object elements, or a value condition."""

    query: Query | None = None
    cond: Cond | None = None


@dataclass(frozen=True)
class Mod(Cond):
    divisor: int
    remainder: int


@dataclass(frozen=True)
class Regex(Cond):
    pattern: str
    options: str = ""


@dataclass(frozen=True)
class Not(Cond):
    cond: Cond


@dataclass(frozen=True)
class CondAnd(Cond):
    items: tuple[Cond, ...]


@dataclass(frozen=True)
class CondOr(Cond):
    items: tuple[Cond, ...]


@dataclass(frozen=True)
class CondNor(Cond):
    items: tuple[Cond, ...]


# ----------------------------------------------------------------------------- parsing

_COMPARISONS = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}
#: WeChat's commands csbot refuses by name (README, "What the database does not do")
UNSUPPORTED_OPERATORS = {
    "$geoNear": "geo queries", "$geoWithin": "geo queries", "$geoIntersects": "geo queries",
    "$near": "geo queries", "$nearSphere": "geo queries", "$expr": "aggregation expressions",
    "$where": "JavaScript conditions", "$text": "full-text search", "$jsonSchema": "schema queries",
    "$type": "type queries", "$bitsAllSet": "bit queries", "$bitsAnySet": "bit queries",
    "$bitsAllClear": "bit queries", "$bitsAnyClear": "bit queries",
}
_LOGIC = ("$and", "$or", "$nor")
MAX_QUERY_NODES = 2000


class _Budget:
    def __init__(self) -> None:
        self.left = MAX_QUERY_NODES

    def spend(self) -> None:
        self.left -= 1
        if self.left < 0:
            raise QueryError(f"query has more than {MAX_QUERY_NODES} conditions")


def parse_query(wire: Any) -> Query:
    """Parse a ``where`` condition in wire format. ``None`` or ``{}`` matches everything."""
    if wire is None:
        return MatchAll()
    return _parse_query(wire, "where", _Budget(), 0)


def _parse_query(wire: Any, where: str, budget: _Budget, depth: int) -> Query:
    if depth > 32:
        raise QueryError(f"{where}: query nested too deeply")
    if not isinstance(wire, dict):
        raise QueryError(f"{where}: a query must be an object, got {_type_name(wire)}")
    items: list[Query] = []
    for key, value in wire.items():
        budget.spend()
        if not isinstance(key, str):
            raise QueryError(f"{where}: keys must be strings")
        if key in _LOGIC:
            if not isinstance(value, list) or not value:
                raise QueryError(f"{where}.{key}: needs a non-empty array of conditions")
            subs = tuple(_parse_query(v, f"{where}.{key}[{i}]", budget, depth + 1) for i, v in enumerate(value))
            items.append({"$and": And, "$or": Or, "$nor": Nor}[key](subs))
        elif key.startswith("$"):
            raise QueryError(f"{where}: unknown query operator {key!r}")
        else:
            path = split_path(key, where=where)
            items.extend(_parse_field(path, value, f"{where}.{key}", budget, depth))
    if not items:
        return MatchAll()
    return items[0] if len(items) == 1 else And(tuple(items))


def _parse_field(path: tuple[str, ...], value: Any, where: str, budget: _Budget, depth: int) -> list[Query]:
    if is_date_wire(value):  # {"$date": ...} is a value (new Date, db.serverDate()), not an operator
        return [Field(path, Eq(normalize(value, where=where)))]
    if isinstance(value, dict) and value:
        ops = [k for k in value if isinstance(k, str) and k.startswith("$")]
        if len(ops) == len(value):
            return [Field(path, _parse_ops(value, where, budget, depth + 1))]
        if ops:
            raise QueryError(f"{where}: mixes operators ({', '.join(ops)}) with field names; "
                             f"use {{\"$eq\": {{...}}}} for an exact sub-document")
        # a plain nested object: flattened into dotted paths, as the SDK does
        out: list[Query] = []
        for sub, subvalue in value.items():
            out.extend(_parse_field(path + split_path(sub, where=where), subvalue, f"{where}.{sub}", budget, depth + 1))
        return out
    return [Field(path, Eq(normalize(value, where=where)))]


def _parse_ops(ops: dict[str, Any], where: str, budget: _Budget, depth: int) -> Cond:
    if depth > 32:
        raise QueryError(f"{where}: condition nested too deeply")
    conds: list[Cond] = []
    regex_options = ops.get("$options")
    for op, arg in ops.items():
        budget.spend()
        w = f"{where}.{op}"
        if op == "$eq":
            conds.append(Eq(normalize(arg, where=w)))
        elif op == "$ne":
            conds.append(Ne(normalize(arg, where=w)))
        elif op in _COMPARISONS:
            arg = normalize(arg, where=w)
            if arg is None or isinstance(arg, list) or isinstance(arg, dict) and not is_date(arg):
                raise QueryError(f"{w}: compares with a number, a string, a boolean or a date, "
                                 f"got {_type_name(arg)}")
            conds.append(Cmp(_COMPARISONS[op], arg))
        elif op in ("$in", "$nin"):
            if not isinstance(arg, list):
                raise QueryError(f"{w}: needs an array, got {_type_name(arg)}")
            values = tuple(normalize(arg, where=w))
            conds.append(In(values) if op == "$in" else Nin(values))
        elif op == "$exists":
            if not isinstance(arg, bool):
                raise QueryError(f"{w}: needs true or false")
            conds.append(Exists(arg))
        elif op == "$size":
            if isinstance(arg, bool) or not isinstance(arg, int) or arg < 0:
                raise QueryError(f"{w}: needs a non-negative integer")
            conds.append(Size(arg))
        elif op == "$all":
            if not isinstance(arg, list):
                raise QueryError(f"{w}: needs an array")
            conds.append(All(tuple(normalize(arg, where=w))))
        elif op == "$elemMatch":
            if not isinstance(arg, dict) or not arg:
                raise QueryError(f"{w}: needs a non-empty object")
            if all(isinstance(k, str) and k.startswith("$") and k not in _LOGIC for k in arg):
                conds.append(ElemMatch(cond=_parse_ops(arg, w, budget, depth + 1)))
            else:
                conds.append(ElemMatch(query=_parse_query(arg, w, budget, depth + 1)))
        elif op == "$mod":
            if (not isinstance(arg, list) or len(arg) != 2
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in arg)):
                raise QueryError(f"{w}: needs [divisor, remainder] as integers")
            if arg[0] == 0:
                raise QueryError(f"{w}: the divisor must not be 0")
            conds.append(Mod(arg[0], arg[1]))
        elif op == "$regex":
            conds.append(make_regex(arg, regex_options, w))
        elif op == "$options":
            if "$regex" not in ops:
                raise QueryError(f"{w}: $options needs $regex")
        elif op == "$not":
            if isinstance(arg, dict) and arg and all(isinstance(k, str) and k.startswith("$") for k in arg):
                conds.append(Not(_parse_ops(arg, w, budget, depth + 1)))
            else:
                raise QueryError(f"{w}: needs an operator object such as {{\"$gt\": 1}}")
        elif op in _LOGIC:
            if not isinstance(arg, list) or not arg:
                raise QueryError(f"{w}: needs a non-empty array of conditions")
            subs = []
            for i, item in enumerate(arg):
                if isinstance(item, dict) and item and all(isinstance(k, str) and k.startswith("$") for k in item):
                    subs.append(_parse_ops(item, f"{w}[{i}]", budget, depth + 1))
                else:
                    subs.append(Eq(normalize(item, where=f"{w}[{i}]")))
            conds.append({"$and": CondAnd, "$or": CondOr, "$nor": CondNor}[op](tuple(subs)))
        elif op in UNSUPPORTED_OPERATORS:
            raise QueryError(f"{w}: {op} ({UNSUPPORTED_OPERATORS[op]}) is not supported by csbot's database")
        else:
            raise QueryError(f"{where}: unknown query operator {op!r}")
    return conds[0] if len(conds) == 1 else CondAnd(tuple(conds))


def is_date_wire(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and DATE_KEY in value


def make_regex(pattern: Any, options: Any, where: str) -> Regex:
    if not isinstance(pattern, str) or not pattern:
        raise QueryError(f"{where}: the pattern must be a non-empty string")
    if len(pattern) > 512:
        raise QueryError(f"{where}: the pattern is longer than 512 characters")
    options = options or ""
    if not isinstance(options, str) or set(options) - set("ims"):
        raise QueryError(f"{where}: options may only combine 'i', 'm' and 's'")
    try:
        re.compile(pattern)
        _regex.compile(pattern)  # what csbot matches with (matcher.py): re's syntax, bounded in time
    except (re.error, _regex.error) as exc:
        raise QueryError(f"{where}: not a valid regular expression: {exc}") from None
    return Regex(pattern, "".join(sorted(set(options))))


def regex_flags(options: str) -> int:
    flags = 0
    if "i" in options:
        flags |= re.IGNORECASE
    if "m" in options:
        flags |= re.MULTILINE
    if "s" in options:
        flags |= re.DOTALL
    return flags


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(value), type(value).__name__)


def pinned_fields(query: Query) -> list[dict[Path, tuple[Any, ...]]]:
    """What the query fixes, per alternative: ``{path: allowed values}`` for each branch of a
    top-level ``$or`` (one branch without ``$or``). Used by the security rules (query-subset
    semantics): only ``eq`` and ``in`` conditions at the top level pin a field; anything else
    narrows the result further and is ignored, which keeps the rule check conservative."""
    branches: list[dict[Path, tuple[Any, ...]]] = [{}]
    conjuncts = query.items if isinstance(query, And) else (query,)
    for item in conjuncts:
        if isinstance(item, Field):
            values = _pinned_values(item.cond)
            if values is not None:
                for b in branches:
                    b[item.path] = values if item.path not in b else tuple(
                        v for v in b[item.path] if v in values)
        elif isinstance(item, Or):
            new: list[dict[Path, tuple[Any, ...]]] = []
            for b in branches:
                for alt in item.items:
                    for sub in pinned_fields(alt):
                        merged = dict(b)
                        for path, values in sub.items():
                            merged[path] = values if path not in merged else tuple(
                                v for v in merged[path] if v in values)
                        new.append(merged)
            if len(new) > 64:
                raise QueryError("query has too many $or alternatives for the security rules (64 at most)")
            branches = new
        elif isinstance(item, And):
            sub = pinned_fields(item)
            if len(sub) == 1:
                for b in branches:
                    b.update(sub[0])
    return branches


def _pinned_values(cond: Cond) -> tuple[Any, ...] | None:
    if isinstance(cond, Eq) and not isinstance(cond.value, (list, dict)):
        return (cond.value,)
    if isinstance(cond, In) and cond.values and all(not isinstance(v, (list, dict)) for v in cond.values):
        return cond.values
    if isinstance(cond, CondAnd):
        for c in cond.items:
            values = _pinned_values(c)
            if values is not None:
                return values
    return None
