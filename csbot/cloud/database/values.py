"""JSON values as the database stores them: validation, normalisation, strict equality, order.

Documents are JSON. csbot keeps them canonical (keys sorted, compact, integral floats as
integers) so SQLite can compare sub-documents by their text and PostgreSQL by ``jsonb =``,
and both agree with the reference matcher.
"""

from __future__ import annotations

import json
import math
import re
import time
from datetime import datetime
from typing import Any

from csbot.cloud.database.errors import QueryError

#: WeChat: letters, digits, underscore; at most 32 characters; not starting with '_' (system
#: fields ``_id`` and ``_openid`` excepted). Letters include CJK: ``\w`` is Unicode-aware.
FIELD_NAME = re.compile(r"^[^\W_]\w{0,31}$")
SYSTEM_FIELDS = ("_id", "_openid")
#: a path component in a query: a field name, a system field or an array index
PATH_COMPONENT = re.compile(r"^\w{1,64}$")
MAX_DEPTH = 32
MAX_PATH_COMPONENTS = 8
MAX_SAFE_INT = 2 ** 53

JSONValue = Any


def kind(value: Any) -> str:
    """The JSON type of a value: null, bool, number, string, array, object."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    raise QueryError(f"unsupported value of type {type(value).__name__}")


DATE_KEY = "$date"
#: dates WeChat can hold: ±100,000,000 days around 1970, as JavaScript's Date
MAX_DATE_MS = 8.64e15


def is_date(value: Any) -> bool:
    """A date as csbot keeps it: ``{"$date": <epoch milliseconds>}`` (MongoDB's extended JSON).

    Data can hold no other ``$`` key, so any stored object with ``$date`` is a date."""
    return (isinstance(value, dict) and len(value) == 1 and DATE_KEY in value
            and isinstance(value[DATE_KEY], (int, float)) and not isinstance(value[DATE_KEY], bool))


def _is_date_wire(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and DATE_KEY in value


def normalize_date(value: dict[str, Any], where: str) -> dict[str, Any]:
    """``{"$date": ms | "ISO 8601" | {"offset": ms}}`` → ``{"$date": ms}``.

    ``{"offset": ms}`` is ``db.serverDate({offset})``: the server's clock when the request is
    parsed, plus the offset."""
    arg = value[DATE_KEY]
    if isinstance(arg, dict) and set(arg) <= {"offset"}:
        offset = arg.get("offset", 0)
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset):
            raise QueryError(f"{where}: serverDate's offset must be a number of milliseconds")
        arg = time.time() * 1000 + offset
    elif isinstance(arg, str):
        try:
            parsed = datetime.fromisoformat(arg.replace("Z", "+00:00"))
        except ValueError:
            raise QueryError(f"{where}: $date {arg!r} is not an ISO 8601 date") from None
        if parsed.tzinfo is None:
            raise QueryError(f"{where}: $date {arg!r} needs a time zone (such as Z or +08:00)")
        arg = parsed.timestamp() * 1000
    if isinstance(arg, bool) or not isinstance(arg, (int, float)) or not math.isfinite(arg) \
            or abs(arg) > MAX_DATE_MS:
        raise QueryError(f"{where}: $date needs epoch milliseconds, an ISO 8601 string or "
                         f"{{\"offset\": ms}} (serverDate)")
    return {DATE_KEY: int(arg) if float(arg).is_integer() else round(arg, 3)}


def normalize(value: Any, *, where: str = "value", data: bool = False, depth: int = 0) -> Any:
    """Validate a JSON value and return its canonical form.

    ``data=True`` also applies the field-name rules to object keys (what gets stored); query
    operands only have to be valid JSON without ``$`` keys.
    """
    if depth > MAX_DEPTH:
        raise QueryError(f"{where}: nested deeper than {MAX_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise QueryError(f"{where}: numbers must be finite (no NaN or Infinity)")
        if value.is_integer() and abs(value) <= MAX_SAFE_INT:
            return int(value)
        return value
    if isinstance(value, str):
        if "\x00" in value:
            raise QueryError(f"{where}: strings must not contain the NUL character")
        return value
    if isinstance(value, (list, tuple)):
        return [normalize(v, where=f"{where}[{i}]", data=data, depth=depth + 1) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if _is_date_wire(value):
            return normalize_date(value, where)
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise QueryError(f"{where}: object keys must be strings")
            check_key(key, where=where, data=data)
            out[key] = normalize(item, where=f"{where}.{key}", data=data, depth=depth + 1)
        return out
    if hasattr(value, "to_wire"):
        raise QueryError(f"{where}: a command ({value!r}) cannot be used as a value here")
    raise QueryError(f"{where}: unsupported value of type {type(value).__name__}")


def check_key(key: str, *, where: str = "value", data: bool = True) -> None:
    if key.startswith("$"):
        raise QueryError(f"{where}: field name {key!r} must not start with '$'")
    if "\x00" in key:
        raise QueryError(f"{where}: field names must not contain the NUL character")
    if not data:
        return
    if "." in key:
        raise QueryError(f"{where}: field name {key!r} must not contain '.' (use nested objects)")
    if key not in SYSTEM_FIELDS and not FIELD_NAME.match(key):
        raise QueryError(
            f"{where}: field name {key!r} breaks WeChat's rules (letters, digits and '_', at most "
            f"32 characters, not starting with '_')")


def split_path(path: str, *, where: str = "field") -> tuple[str, ...]:
    """``"a.b.0"`` → ``("a", "b", "0")``, each component validated."""
    if not isinstance(path, str) or not path:
        raise QueryError(f"{where}: a field path must be a non-empty string")
    if path.startswith("$"):
        raise QueryError(f"{where}: unknown operator {path!r}")
    parts = tuple(path.split("."))
    if len(parts) > MAX_PATH_COMPONENTS:
        raise QueryError(f"{where}: field path {path!r} has more than {MAX_PATH_COMPONENTS} components")
    for part in parts:
        if not PATH_COMPONENT.match(part) or (is_index(part) and len(part) > 9):
            raise QueryError(f"{where}: field path {path!r} is not valid (letters, digits and '_' "
                             f"separated by '.')")
    return parts


def is_index(component: str) -> bool:
    """A path component made of ASCII digits indexes an array (or names an object key)."""
    return component.isascii() and component.isdigit()


def dumps(value: Any) -> str:
    """Canonical JSON text: sorted keys, compact, UTF-8 kept as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def equal(a: Any, b: Any) -> bool:
    """Type-strict JSON equality: ``1 == 1.0`` but ``1 != true`` and ``1 != "1"``."""
    ka, kb = kind(a), kind(b)
    if ka != kb:
        return False
    if ka == "array":
        return len(a) == len(b) and all(equal(x, y) for x, y in zip(a, b))
    if ka == "object":
        return a.keys() == b.keys() and all(equal(a[k], b[k]) for k in a)
    return a == b


#: rank of each type in sort order (missing and null first; dates last, as in MongoDB)
SORT_RANK = {"null": 0, "number": 1, "string": 2, "object": 3, "array": 4, "bool": 5, "date": 6}


def sort_key(value: Any, missing: bool = False) -> tuple[int, Any]:
    """Sort order of ``order_by``: missing/null < numbers < strings < objects < arrays < booleans
    < dates.

    Objects and arrays are not ordered among themselves (ties keep insertion order).
    """
    if missing or value is None:
        return (0, 0)
    if is_date(value):
        return (SORT_RANK["date"], value[DATE_KEY])
    k = kind(value)
    if k in ("number", "string", "bool"):
        return (SORT_RANK[k], value)
    return (SORT_RANK[k], 0)


def same_kind_comparable(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` order against each other (numbers, strings, booleans or dates
    alike; compare them with :func:`comparable_value`)."""
    if is_date(a) or is_date(b):
        return is_date(a) and is_date(b)
    ka = kind(a)
    return ka == kind(b) and ka in ("number", "string", "bool")


def comparable_value(value: Any) -> Any:
    """What ``<`` compares: a date's milliseconds, else the value itself."""
    return value[DATE_KEY] if is_date(value) else value
