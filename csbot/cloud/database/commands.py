"""``db.command`` (``_``) and ``db.RegExp``: WeChat's SDK commands as Python objects.

They exist only to be serialised into the wire format (``{"$gt": 18}``, ``{"$inc": {"n": 1}}``)
exactly as WeChat's SDK does it, so a query written in a handler means the same as the one a
mini program sends. Python names: ``in_``, ``and_``, ``or_``, ``not_`` (keywords) and
snake_case (``elem_match``, ``pull_all``, ``add_to_set``); the camelCase names work too.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from csbot.cloud.database.errors import QueryError


class QueryCommand:
    """A query condition (``_.gt(18)``), chainable: ``_.gt(18).and_(_.lt(60))``."""

    def __init__(self, wire: dict[str, Any]) -> None:
        self.wire = wire

    def to_wire(self) -> dict[str, Any]:
        return self.wire

    def _logic(self, op: str, others: tuple[Any, ...]) -> "QueryCommand":
        items = list(others[0]) if len(others) == 1 and isinstance(others[0], list) else list(others)
        return QueryCommand({op: [self.wire] + [serialize_condition(o) for o in items]})

    def and_(self, *others: Any) -> "QueryCommand":
        return self._logic("$and", others)

    def or_(self, *others: Any) -> "QueryCommand":
        return self._logic("$or", others)

    def __repr__(self) -> str:
        return f"QueryCommand({self.wire!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QueryCommand) and other.wire == self.wire

    __hash__ = None  # type: ignore[assignment]


class UpdateCommand:
    """An update operation on one field (``_.inc(1)``), placed where the field is in ``data``."""

    def __init__(self, operator: str, arg: Any) -> None:
        self.operator = operator
        self.arg = arg

    def __repr__(self) -> str:
        return f"UpdateCommand({self.operator!r}, {self.arg!r})"


class RegExp:
    """``db.RegExp(regexp, options)``: ``{"$regex": ..., "$options": ...}`` on the wire."""

    def __init__(self, regexp: str, options: str = "") -> None:
        self.regexp = regexp
        self.options = options

    def to_wire(self) -> dict[str, Any]:
        wire: dict[str, Any] = {"$regex": self.regexp}
        if self.options:
            wire["$options"] = self.options
        return wire


class ServerDate:
    """``db.serverDate(offset=ms)``: the server's clock when the request is handled (plus
    ``offset`` milliseconds); ``{"$date": {"offset": ms}}`` on the wire, as WeChat's SDK sends it."""

    def __init__(self, offset: float = 0) -> None:
        self.offset = offset

    def to_wire(self) -> dict[str, Any]:
        return {"$date": {"offset": self.offset}}

    def __repr__(self) -> str:
        return f"ServerDate(offset={self.offset!r})"


def date_wire(value: datetime) -> dict[str, Any]:
    """A ``datetime`` as a date value (``{"$date": epoch ms}``); a naive one is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return {"$date": round(value.timestamp() * 1000, 3)}


def _varargs(values: tuple[Any, ...]) -> list[Any]:
    return list(values[0]) if len(values) == 1 and isinstance(values[0], (list, tuple)) else list(values)


class Command:
    """``db.command``. Query: eq neq lt lte gt gte in_ nin and_ or_ not_ nor exists size all
    elem_match mod. Update: set remove inc mul min max rename push pop shift unshift pull
    pull_all add_to_set."""

    # -- query
    def eq(self, value: Any) -> QueryCommand:
        return QueryCommand({"$eq": serialize_value(value)})

    def neq(self, value: Any) -> QueryCommand:
        return QueryCommand({"$ne": serialize_value(value)})

    def lt(self, value: Any) -> QueryCommand:
        return QueryCommand({"$lt": serialize_value(value)})

    def lte(self, value: Any) -> QueryCommand:
        return QueryCommand({"$lte": serialize_value(value)})

    def gt(self, value: Any) -> QueryCommand:
        return QueryCommand({"$gt": serialize_value(value)})

    def gte(self, value: Any) -> QueryCommand:
        return QueryCommand({"$gte": serialize_value(value)})

    def in_(self, values: list[Any]) -> QueryCommand:
        return QueryCommand({"$in": [serialize_value(v) for v in values]})

    def nin(self, values: list[Any]) -> QueryCommand:
        return QueryCommand({"$nin": [serialize_value(v) for v in values]})

    def and_(self, *conditions: Any) -> QueryCommand:
        return QueryCommand({"$and": [serialize_condition(c) for c in _varargs(conditions)]})

    def or_(self, *conditions: Any) -> QueryCommand:
        return QueryCommand({"$or": [serialize_condition(c) for c in _varargs(conditions)]})

    def nor(self, *conditions: Any) -> QueryCommand:
        return QueryCommand({"$nor": [serialize_condition(c) for c in _varargs(conditions)]})

    def not_(self, condition: Any) -> QueryCommand:
        return QueryCommand({"$not": serialize_condition(condition)})

    def exists(self, flag: bool = True) -> QueryCommand:
        return QueryCommand({"$exists": flag})

    def size(self, n: int) -> QueryCommand:
        return QueryCommand({"$size": n})

    def all(self, values: list[Any]) -> QueryCommand:
        return QueryCommand({"$all": [serialize_value(v) for v in values]})

    def elem_match(self, condition: Any) -> QueryCommand:
        return QueryCommand({"$elemMatch": serialize_condition(condition)})

    def mod(self, divisor: Any, remainder: int | None = None) -> QueryCommand:
        if remainder is None and isinstance(divisor, (list, tuple)):
            return QueryCommand({"$mod": list(divisor)})
        return QueryCommand({"$mod": [divisor, remainder]})

    # -- update
    def set(self, value: Any) -> UpdateCommand:
        return UpdateCommand("$set", serialize_value(value))

    def remove(self) -> UpdateCommand:
        return UpdateCommand("$unset", "")

    def inc(self, n: Any) -> UpdateCommand:
        return UpdateCommand("$inc", n)

    def mul(self, n: Any) -> UpdateCommand:
        return UpdateCommand("$mul", n)

    def min(self, value: Any) -> UpdateCommand:
        return UpdateCommand("$min", serialize_value(value))

    def max(self, value: Any) -> UpdateCommand:
        return UpdateCommand("$max", serialize_value(value))

    def rename(self, new_path: str) -> UpdateCommand:
        return UpdateCommand("$rename", new_path)

    def push(self, values: Any) -> UpdateCommand:
        if isinstance(values, dict) and "each" in values:
            wire = {"$each": serialize_value(values["each"])}
            for key in ("position", "sort", "slice"):
                if key in values:
                    wire[f"${key}"] = values[key]
            return UpdateCommand("$push", wire)
        return UpdateCommand("$push", {"$each": serialize_value(values if isinstance(values, list) else [values])})

    def pop(self) -> UpdateCommand:
        return UpdateCommand("$pop", 1)

    def shift(self) -> UpdateCommand:
        return UpdateCommand("$pop", -1)

    def unshift(self, values: Any) -> UpdateCommand:
        return UpdateCommand("$push", {"$each": serialize_value(values if isinstance(values, list) else [values]),
                                       "$position": 0})

    def pull(self, condition: Any) -> UpdateCommand:
        return UpdateCommand("$pull", serialize_condition(condition))

    def pull_all(self, values: list[Any]) -> UpdateCommand:
        return UpdateCommand("$pullAll", serialize_value(values))

    def add_to_set(self, value: Any) -> UpdateCommand:
        if isinstance(value, dict) and "each" in value:
            return UpdateCommand("$addToSet", {"$each": serialize_value(value["each"])})
        return UpdateCommand("$addToSet", serialize_value(value))

    # the SDK's camelCase spellings
    elemMatch = elem_match  # noqa: N815
    pullAll = pull_all  # noqa: N815
    addToSet = add_to_set  # noqa: N815


def serialize_value(value: Any) -> Any:
    """A plain value (lists and objects may not contain commands)."""
    if isinstance(value, (QueryCommand, UpdateCommand)):
        raise QueryError(f"{value!r} cannot be used as a plain value")
    if isinstance(value, (RegExp, ServerDate)):
        return value.to_wire()
    if isinstance(value, datetime):
        return date_wire(value)
    if isinstance(value, dict):
        return {k: serialize_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [serialize_value(v) for v in value]
    return value


def serialize_condition(cond: Any) -> Any:
    """A ``where`` argument, or one item of a logic command, into wire format."""
    if isinstance(cond, (QueryCommand, RegExp, ServerDate)):
        return cond.to_wire()
    if isinstance(cond, datetime):
        return date_wire(cond)
    if isinstance(cond, UpdateCommand):
        raise QueryError(f"{cond!r} is an update command; it cannot be used in a query")
    if isinstance(cond, dict):
        return {k: serialize_condition(v) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):  # a value, or the conditions of a logic operator
        return [serialize_condition(v) for v in cond]
    return cond


def serialize_update(data: Any) -> dict[str, Any]:
    """Update data into wire format: plain values become ``$set`` of their dotted path (nested
    plain objects are flattened), commands their operator (``{"$inc": {"a.b": 1}}``)."""
    if not isinstance(data, dict):
        raise QueryError("data: an update needs an object")
    out: dict[str, dict[str, Any]] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, UpdateCommand):
            out.setdefault(value.operator, {})[prefix] = value.arg
        elif isinstance(value, QueryCommand):
            raise QueryError(f"data.{prefix}: {value!r} is a query command; use an update command")
        elif isinstance(value, dict) and value and not any(str(k).startswith("$") for k in value):
            for key, item in value.items():
                walk(f"{prefix}.{key}", item)
        else:
            out.setdefault("$set", {})[prefix] = serialize_value(value)

    for key, value in data.items():
        if isinstance(key, str) and key.startswith("$"):  # already wire format
            out.setdefault(key, {}).update(value if isinstance(value, dict) else {})
            if not isinstance(value, dict):
                raise QueryError(f"data.{key}: needs an object of field paths")
        else:
            walk(key, value)
    return out
