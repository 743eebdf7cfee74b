"""Update commands: WeChat's ``update`` data (wire format) parsed and applied in Python.

A plain value means ``$set`` of its dotted path (nested plain objects are flattened, so
``{"style": {"color": "red"}}`` changes only ``style.color``); ``_.set({...})`` (``$set`` of
an object) replaces a sub-object. Operators: ``$set $unset $inc $mul $min $max $rename $push
($each $position $sort $slice) $pop $pull $pullAll $addToSet ($each)``. ``doc.set`` replaces
the whole document instead (see :func:`replacement`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from csbot.cloud.database.errors import QueryError
from csbot.cloud.database.matcher import test as test_cond
from csbot.cloud.database.matcher import lookup as _get  # one path walk, the matcher's
from csbot.cloud.database.matcher import matches
from csbot.cloud.database.query import Eq, _Budget, _parse_ops, _parse_query
from csbot.cloud.database.values import (
    SYSTEM_FIELDS, check_key, equal, is_index, kind, normalize, sort_key, split_path,
)

OPERATORS = ("$set", "$unset", "$inc", "$mul", "$min", "$max", "$rename", "$push", "$pop", "$pull",
             "$pullAll", "$addToSet")


@dataclass(frozen=True)
class Op:
    name: str
    path: tuple[str, ...]
    arg: Any


@dataclass(frozen=True)
class Update:
    ops: tuple[Op, ...]

    def touches(self) -> set[str]:
        """Top-level fields the update writes (for the ``_id``/``_openid`` checks)."""
        out = set()
        for op in self.ops:
            out.add(op.path[0])
            if op.name == "$rename":
                out.add(op.arg[0])
        return out


def parse_update(wire: Any) -> Update:
    if not isinstance(wire, dict) or not wire:
        raise QueryError("data: an update needs a non-empty object")
    ops: list[Op] = []
    for key, value in wire.items():
        if not isinstance(key, str):
            raise QueryError("data: keys must be strings")
        if key.startswith("$"):
            if key not in OPERATORS:
                raise QueryError(f"data: unknown update operator {key!r}")
            if not isinstance(value, dict) or not value:
                raise QueryError(f"data.{key}: needs an object of field paths")
            for path, arg in value.items():
                ops.append(_parse_op(key, split_path(path, where=f"data.{key}"), arg))
        else:
            _flatten_set(split_path(key, where="data"), value, ops, f"data.{key}")
    seen: dict[tuple[str, ...], str] = {}
    for op in ops:
        paths = [op.path] + ([op.arg[1]] if op.name == "$rename" else [])
        for path in paths:
            for other in seen:
                if path[:len(other)] == other or other[:len(path)] == path:
                    raise QueryError(f"data: {'.'.join(path)} is changed twice in one update "
                                     f"({seen[other]} and {op.name})")
            seen[path] = op.name
    for op in ops:
        if "_id" in (op.path[0], op.arg[1][0] if op.name == "$rename" else None):
            raise QueryError("data: _id cannot be changed")
    return Update(tuple(ops))


def _flatten_set(path: tuple[str, ...], value: Any, ops: list[Op], where: str) -> None:
    if isinstance(value, dict) and value:
        dollar = [k for k in value if isinstance(k, str) and k.startswith("$")]
        if dollar:
            raise QueryError(f"{where}: operators go at the top level of update data "
                             f"(e.g. {{\"$inc\": {{\"{'.'.join(path)}\": 1}}}}), not under a field")
        for key, item in value.items():
            check_key(key, where=where)
            _flatten_set(path + (key,), item, ops, f"{where}.{key}")
        return
    ops.append(Op("$set", path, normalize(value, where=where, data=True)))


def _parse_op(name: str, path: tuple[str, ...], arg: Any) -> Op:
    where = f"data.{name}.{'.'.join(path)}"
    if name == "$set":
        return Op(name, path, normalize(arg, where=where, data=True))
    if name == "$unset":
        return Op(name, path, None)
    if name in ("$inc", "$mul"):
        if kind(arg) != "number":
            raise QueryError(f"{where}: needs a number")
        return Op(name, path, normalize(arg, where=where))
    if name in ("$min", "$max"):
        return Op(name, path, normalize(arg, where=where, data=True))
    if name == "$rename":
        if not isinstance(arg, str):
            raise QueryError(f"{where}: needs the new field path as a string")
        new = split_path(arg, where=where)
        for part in new:
            check_key(part, where=where)
        return Op(name, path, (arg, new))
    if name in ("$push", "$addToSet"):
        if isinstance(arg, dict) and "$each" in arg:
            allowed = {"$each", "$position", "$sort", "$slice"} if name == "$push" else {"$each"}
            extra = set(arg) - allowed
            if extra:
                raise QueryError(f"{where}: unknown modifier(s) {', '.join(sorted(extra))}")
            if not isinstance(arg["$each"], list):
                raise QueryError(f"{where}.$each: needs an array")
            mods = {"each": normalize(arg["$each"], where=where, data=True)}
            for mod in ("$position", "$slice"):
                if mod in arg:
                    if isinstance(arg[mod], bool) or not isinstance(arg[mod], int):
                        raise QueryError(f"{where}.{mod}: needs an integer")
                    mods[mod[1:]] = arg[mod]
            if "$sort" in arg:
                if arg["$sort"] not in (1, -1) or isinstance(arg["$sort"], bool):
                    raise QueryError(f"{where}.$sort: needs 1 or -1")
                mods["sort"] = arg["$sort"]
            return Op(name, path, mods)
        return Op(name, path, {"each": [normalize(arg, where=where, data=True)]})
    if name == "$pop":
        if arg not in (1, -1) or isinstance(arg, bool):
            raise QueryError(f"{where}: needs 1 (last) or -1 (first)")
        return Op(name, path, arg)
    if name == "$pull":
        if isinstance(arg, dict) and arg:
            if all(isinstance(k, str) and k.startswith("$") for k in arg):
                return Op(name, path, ("cond", _parse_ops(arg, where, _Budget(), 0)))
            return Op(name, path, ("query", _parse_query(arg, where, _Budget(), 0)))
        return Op(name, path, ("value", normalize(arg, where=where)))
    if name == "$pullAll":
        if not isinstance(arg, list):
            raise QueryError(f"{where}: needs an array")
        return Op(name, path, normalize(arg, where=where))
    raise QueryError(f"data: unknown update operator {name!r}")


def replacement(data: Any) -> dict[str, Any]:
    """The new body of ``doc.set(data)``: a plain document, no operators, no ``_id`` change."""
    if not isinstance(data, dict):
        raise QueryError("data: set needs an object")
    for key in data:
        if isinstance(key, str) and key.startswith("$"):
            raise QueryError(f"data: set replaces the whole document; {key!r} is not allowed "
                             f"(use update for operators)")
    return normalize(data, where="data", data=True)


# ----------------------------------------------------------------------------- applying


def apply(update: Update, doc: dict[str, Any]) -> dict[str, Any]:
    """A new document with the update applied (``doc`` is not changed)."""
    doc = copy.deepcopy(doc)
    for op in update.ops:
        _apply(op, doc)
    return doc


def _apply(op: Op, doc: dict[str, Any]) -> None:
    where = f"{op.name} {'.'.join(op.path)}"
    if op.name == "$set":
        _set(doc, op.path, copy.deepcopy(op.arg), where)
        return
    if op.name == "$unset":
        _unset(doc, op.path)
        return
    if op.name == "$rename":
        found, value = _get(doc, op.path)
        if found:
            _unset(doc, op.path)
            _set(doc, op.arg[1], value, where)
        return
    found, current = _get(doc, op.path)
    if op.name in ("$inc", "$mul"):
        if not found:
            _set(doc, op.path, op.arg if op.name == "$inc" else 0, where)
            return
        if kind(current) != "number":
            raise QueryError(f"{where}: the field holds {kind(current)}, not a number")
        result = current + op.arg if op.name == "$inc" else current * op.arg
        _set(doc, op.path, normalize(result, where=where), where)
        return
    if op.name in ("$min", "$max"):
        if not found:
            _set(doc, op.path, op.arg, where)
            return
        a, b = sort_key(op.arg), sort_key(current)
        if (op.name == "$min" and a < b) or (op.name == "$max" and a > b):
            _set(doc, op.path, op.arg, where)
        return
    # array operators
    if found and not isinstance(current, list):
        raise QueryError(f"{where}: the field holds {kind(current)}, not an array")
    array: list[Any] = list(current) if found else []
    if op.name == "$push":
        items = copy.deepcopy(op.arg["each"])
        position = op.arg.get("position")
        if position is None:
            array.extend(items)
        else:
            if position < 0:
                position = max(len(array) + position, 0)
            array[position:position] = items
        if "sort" in op.arg:
            array.sort(key=sort_key, reverse=op.arg["sort"] == -1)
        if "slice" in op.arg:
            n = op.arg["slice"]
            array = array[:n] if n >= 0 else array[n:]
    elif op.name == "$addToSet":
        for item in op.arg["each"]:
            if not any(equal(item, x) for x in array):
                array.append(copy.deepcopy(item))
    elif op.name == "$pop":
        if not found:
            return
        if array:
            array.pop(-1 if op.arg == 1 else 0)
    elif op.name == "$pull":
        if not found:
            return
        mode, arg = op.arg
        if mode == "value":
            array = [x for x in array if not equal(x, arg)]
        elif mode == "cond":
            array = [x for x in array if not test_cond(arg, [x])]
        else:
            array = [x for x in array if not (isinstance(x, dict) and matches(arg, x))]
    elif op.name == "$pullAll":
        if not found:
            return
        array = [x for x in array if not any(equal(x, v) for v in op.arg)]
    _set(doc, op.path, array, where)


def _set(doc: Any, path: tuple[str, ...], value: Any, where: str) -> None:
    target = doc
    for i, key in enumerate(path):
        last = i == len(path) - 1
        if isinstance(target, dict):
            if last:
                check_key(key, where=where)
                target[key] = value
                return
            if key not in target or target[key] is None:
                check_key(key, where=where)
                target[key] = {}
            target = target[key]
        elif isinstance(target, list) and is_index(key):
            index = int(key)
            if index > len(target) + 10000:
                raise QueryError(f"{where}: index {index} is far beyond the array's end")
            while len(target) <= index:
                target.append(None)
            if last:
                target[index] = value
                return
            if target[index] is None:
                target[index] = {}
            target = target[index]
        else:
            raise QueryError(f"{where}: cannot create field {key!r} inside a {kind(target)}")


def _unset(doc: Any, path: tuple[str, ...]) -> None:
    found, parent = _get(doc, path[:-1])
    if not found:
        return
    key = path[-1]
    if isinstance(parent, dict):
        parent.pop(key, None)
    elif isinstance(parent, list) and is_index(key) and int(key) < len(parent):
        parent[int(key)] = None  # MongoDB keeps the array's length


__all__ = ["Update", "Op", "parse_update", "apply", "replacement", "SYSTEM_FIELDS", "Eq"]
