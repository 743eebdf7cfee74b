"""WeChat's ``tcb/database*`` query statements, parsed (never evaluated).

``db.collection("geo").where({done: true}).orderBy("n", "desc").limit(10).skip(1).get()`` is
read by a small recursive-descent parser that knows only that chain grammar:

    statement := "db" "." "collection" "(" string ")" ( "." method "(" args ")" )*
    method    := where | orderBy | skip | limit | field | doc | get | count | update | remove
                 | add | set
    value     := object | array | string | number | true | false | null | /regex/flags
                 | db.command.NAME(args) ( . NAME(args) )*      (also _.NAME(...))
                 | db.RegExp({regexp, options}) | db.RegExp(pattern, options)

Objects take unquoted, single- or double-quoted keys; strings take either quote. Anything
else (identifiers, function calls, ``new Date``, template strings) is a clear error. The
result is the structured request that the JSON form of ``/tcb`` takes too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from csbot.cloud.database.commands import Command, QueryCommand, RegExp, ServerDate, UpdateCommand
from csbot.cloud.database.errors import QueryError

MAX_QUERY_LENGTH = 256 * 1024
MAX_DEPTH = 64
_COMMANDS = {
    # JS name → Python method of db.command
    "eq": "eq", "neq": "neq", "lt": "lt", "lte": "lte", "gt": "gt", "gte": "gte", "in": "in_", "nin": "nin",
    "and": "and_", "or": "or_", "not": "not_", "nor": "nor", "exists": "exists", "size": "size", "all": "all",
    "elemMatch": "elem_match", "mod": "mod", "set": "set", "remove": "remove", "inc": "inc", "mul": "mul",
    "min": "min", "max": "max", "rename": "rename", "push": "push", "pop": "pop", "shift": "shift",
    "unshift": "unshift", "pull": "pull", "pullAll": "pull_all", "addToSet": "add_to_set",
}
_CHAIN = {"and": "and_", "or": "or_"}
_METHODS = {"where", "orderBy", "skip", "limit", "field", "doc", "get", "count", "update", "remove", "add", "set"}
_ACTIONS = {"get", "count", "update", "remove", "add", "set"}

_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>-?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
  | (?P<str>'(?:[^'\\\n]|\\.)*'|"(?:[^"\\\n]|\\.)*")
  | (?P<name>[A-Za-z_$][A-Za-z0-9_$]*)
  | (?P<punct>[{}\[\]():,.;])
  | (?P<slash>/)
""", re.VERBOSE)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "b": "\b", "f": "\f", "v": "\v", "0": "\0"}


@dataclass
class ParsedStatement:
    collection: str
    action: str | None = None
    where: Any = None
    order: list[list[str]] = field(default_factory=list)
    skip: int | None = None
    limit: int | None = None
    field: Any = None
    doc_id: str | None = None
    data: Any = None


def _unescape(body: str) -> str:
    def repl(m: re.Match[str]) -> str:
        c = m.group(1)
        if c == "u":
            return chr(int(m.group(2), 16))
        return _ESCAPES.get(c, c)

    return re.sub(r"\\(u)([0-9a-fA-F]{4})|\\(.)", lambda m: repl(m) if m.group(1) else _ESCAPES.get(m.group(3), m.group(3)), body)


class _Parser:
    def __init__(self, source: str) -> None:
        if not isinstance(source, str) or not source.strip():
            raise QueryError("query: needs a statement such as db.collection(\"x\").get()")
        if len(source) > MAX_QUERY_LENGTH:
            raise QueryError(f"query: longer than {MAX_QUERY_LENGTH} characters")
        self.src = source
        self.pos = 0
        self.depth = 0
        self.command = Command()

    # -- lexing (on demand: a '/' starts a regex literal only where a value is expected)

    def _skip_ws(self) -> None:
        while self.pos < len(self.src) and self.src[self.pos].isspace():
            self.pos += 1

    def peek(self) -> tuple[str, str]:
        self._skip_ws()
        if self.pos >= len(self.src):
            return ("end", "")
        m = _TOKEN.match(self.src, self.pos)
        if not m:
            raise QueryError(f"query: unexpected {self.src[self.pos]!r} at position {self.pos}")
        return (m.lastgroup or "", m.group())

    def take(self, expected: str | None = None) -> tuple[str, str]:
        kind, text = self.peek()
        if expected is not None and text != expected:
            shown = text or "end of query"
            raise QueryError(f"query: expected {expected!r} at position {self.pos}, found {shown!r}")
        self.pos += len(text)
        return kind, text

    def name(self) -> str:
        kind, text = self.take()
        if kind != "name":
            raise QueryError(f"query: expected a name at position {self.pos}, found {text!r}")
        return text

    # -- grammar

    def statement(self) -> ParsedStatement:
        if self.name() != "db":
            raise QueryError("query: must start with db.collection(...)")
        self.take(".")
        if self.name() != "collection":
            raise QueryError("query: must start with db.collection(...)")
        self.take("(")
        collection = self.value()
        self.take(")")
        if not isinstance(collection, str):
            raise QueryError("query: db.collection() needs the collection's name as a string")
        st = ParsedStatement(collection)
        while self.peek()[1] == ".":
            self.take(".")
            method = self.name()
            if method not in _METHODS:
                raise QueryError(f"query: unknown or unsupported method .{method}()")
            if st.action is not None:
                raise QueryError(f"query: .{method}() after .{st.action}()")
            args = self.args()
            self._apply(st, method, args)
        while self.peek()[1] == ";":
            self.take(";")
        if self.peek()[0] != "end":
            raise QueryError(f"query: unexpected {self.peek()[1]!r} at position {self.pos}")
        return st

    def _apply(self, st: ParsedStatement, method: str, args: list[Any]) -> None:
        def one(kind: type | tuple[type, ...], what: str) -> Any:
            if len(args) != 1 or not isinstance(args[0], kind) or isinstance(args[0], bool) and kind is int:
                raise QueryError(f"query: .{method}() needs {what}")
            return args[0]

        if method == "where":
            st.where = one((dict, QueryCommand), "a condition object")
        elif method == "orderBy":
            if len(args) != 2 or not all(isinstance(a, str) for a in args):
                raise QueryError("query: .orderBy() needs a field path and \"asc\" or \"desc\"")
            st.order.append([args[0], args[1]])
        elif method in ("skip", "limit"):
            setattr(st, method, one(int, "an integer"))
        elif method == "field":
            st.field = one(dict, "an object such as {name: true}")
        elif method == "doc":
            st.doc_id = one(str, "the document's _id as a string")
        elif method in ("get", "count", "remove"):
            if args:
                raise QueryError(f"query: .{method}() takes no arguments")
            st.action = method
        else:  # add, update, set: ({data: ...})
            arg = one(dict, "an object {data: ...}")
            if set(arg) != {"data"}:
                raise QueryError(f"query: .{method}() takes {{data: ...}}")
            st.action, st.data = method, arg["data"]

    def args(self) -> list[Any]:
        self.take("(")
        out: list[Any] = []
        if self.peek()[1] != ")":
            out.append(self.value())
            while self.peek()[1] == ",":
                self.take(",")
                if self.peek()[1] == ")":
                    break
                out.append(self.value())
        self.take(")")
        return out

    def value(self) -> Any:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise QueryError("query: nested too deeply")
        try:
            return self._value()
        finally:
            self.depth -= 1

    def _value(self) -> Any:
        kind, text = self.peek()
        if kind == "str":
            self.take()
            return _unescape(text[1:-1])
        if kind == "num":
            self.take()
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "slash":
            return self.regex_literal()
        if text == "{":
            return self.object()
        if text == "[":
            self.take("[")
            items: list[Any] = []
            while self.peek()[1] != "]":
                items.append(self.value())
                if self.peek()[1] != ",":
                    break
                self.take(",")
            self.take("]")
            return items
        if kind == "name":
            if text in ("true", "false", "null"):
                self.take()
                return {"true": True, "false": False, "null": None}[text]
            if text in ("db", "_"):
                return self.command_call()
            if text == "new":
                return self.new_date()
            raise QueryError(f"query: {text!r} is not allowed here (only literals and db.command calls)")
        raise QueryError(f"query: unexpected {text or 'end of query'!r} at position {self.pos}")

    def object(self) -> dict[str, Any]:
        self.take("{")
        out: dict[str, Any] = {}
        while self.peek()[1] != "}":
            kind, text = self.take()
            if kind == "str":
                key = _unescape(text[1:-1])
            elif kind in ("name", "num"):
                key = text
            else:
                raise QueryError(f"query: expected a key at position {self.pos}, found {text!r}")
            self.take(":")
            out[key] = self.value()
            if self.peek()[1] != ",":
                break
            self.take(",")
        self.take("}")
        return out

    def regex_literal(self) -> RegExp:
        start = self.pos
        self.take()  # '/'
        i = self.pos
        in_class = False
        while i < len(self.src):
            c = self.src[i]
            if c == "\\":
                i += 2
                continue
            if c == "[":
                in_class = True
            elif c == "]":
                in_class = False
            elif c == "/" and not in_class:
                break
            elif c == "\n":
                break
            i += 1
        if i >= len(self.src) or self.src[i] != "/":
            raise QueryError(f"query: unterminated regular expression at position {start}")
        pattern = self.src[self.pos:i]
        j = i + 1
        while j < len(self.src) and self.src[j].isalpha():
            j += 1
        flags = self.src[i + 1:j]
        self.pos = j
        return RegExp(pattern, flags)

    def new_date(self) -> Any:
        """``new Date()`` (now), ``new Date(ms)`` or ``new Date("ISO 8601")``: a date value."""
        self.take()
        if self.name() != "Date":
            raise QueryError("query: only new Date(...) may be constructed")
        args = self.args()
        if not args:
            return ServerDate()
        if len(args) == 1 and isinstance(args[0], (int, float, str)) and not isinstance(args[0], bool):
            return {"$date": args[0]}
        raise QueryError("query: new Date() takes milliseconds or an ISO 8601 string")

    def command_call(self) -> Any:
        root = self.name()
        if root == "db":
            self.take(".")
            member = self.name()
            if member == "RegExp":
                args = self.args()
                if len(args) == 1 and isinstance(args[0], dict):
                    return RegExp(args[0].get("regexp", ""), args[0].get("options", ""))
                if 1 <= len(args) <= 2 and all(isinstance(a, str) for a in args):
                    return RegExp(*args)
                raise QueryError("query: db.RegExp() needs {regexp, options}")
            if member == "serverDate":
                args = self.args()
                if not args:
                    return ServerDate()
                if len(args) == 1 and isinstance(args[0], dict) and set(args[0]) <= {"offset"}:
                    return ServerDate(args[0].get("offset", 0))
                raise QueryError("query: db.serverDate() takes nothing or {offset: milliseconds}")
            if member == "Geo":
                raise QueryError("query: db.Geo (geo queries) is not supported by csbot's database")
            if member != "command":
                raise QueryError(f"query: db.{member} is not allowed here")
        self.take(".")
        value = self._call(self.name(), _COMMANDS)
        while self.peek()[1] == ".":
            self.take(".")
            value = self._call(self.name(), _CHAIN, on=value)
        return value

    def _call(self, name: str, table: dict[str, str], on: Any = None) -> Any:
        if name not in table:
            raise QueryError(f"query: unknown command {name!r}")
        args = self.args()
        target = on if on is not None else self.command
        if on is not None and not isinstance(on, QueryCommand):
            raise QueryError(f"query: .{name}() can only follow a query command")
        try:
            return getattr(target, table[name])(*args)
        except TypeError:
            raise QueryError(f"query: wrong arguments for {name}()") from None


def parse_statement(source: str) -> ParsedStatement:
    """Parse one ``db.collection(...)...`` statement into its parts (nothing runs)."""
    return _Parser(source).statement()


__all__ = ["ParsedStatement", "parse_statement", "UpdateCommand"]
