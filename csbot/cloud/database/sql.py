"""Query compilers: the query tree (``query.py``) as SQL over the documents table.

One compiler walks the tree; a small dialect object says how SQLite (JSON1, text bodies) and
PostgreSQL (JSONB) read a value, its type and an array's elements. Every comparison is guarded
by the JSON type, so the result is exactly the reference matcher's (``matcher.py``):
SQLite's ``json_extract`` returns 1 for ``true`` and ``json_each`` walks objects and scalars,
PostgreSQL's jsonb operators order across types; neither leaks through.

Values always travel as bound parameters. Paths are inlined: they are validated (``\\w``
components only) and the declared expression indexes must see the same expression text.
Negations compile to ``(p) IS NOT TRUE`` so a NULL from a missing field counts as "no match".
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Callable

from csbot.cloud.database.query import (
    All, And, Cmp, Cond, CondAnd, CondNor, CondOr, ElemMatch, Eq, Exists, Field, In, MatchAll,
    Mod, Ne, Nin, Nor, Not, Or, Query, Regex, Size,
)
from csbot.cloud.database.values import dumps, is_date, is_index, kind

_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
TRUE = "1=1"
FALSE = "1=0"


def _not(sql: str) -> str:
    return f"(({sql}) IS NOT TRUE)"


def _or(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else "(" + " OR ".join(parts) + ")"


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else "(" + " AND ".join(parts) + ")"


# ----------------------------------------------------------------------------- nodes


@dataclass(frozen=True)
class Node:
    """A JSON value inside the document: SQLite addresses it as (doc, JSON path expression),
    PostgreSQL as a jsonb expression. ``known_object``: the root (or a guarded element)."""

    expr: str
    path: str = ""
    known_object: bool = False


@dataclass(frozen=True)
class Scalar:
    """A value viewed as (json type, SQL value, JSON text): a node, or a row of json_each."""

    type: str
    value: str
    text: str


class SqliteDialect:
    name = "sqlite"
    number_types = "IN ('integer','real')"

    def root(self, column: str = "body") -> Node:
        return Node(column, "'$'", True)

    @staticmethod
    def _lit(path: str) -> bool:
        return path.startswith("'") and path.endswith("'") and "||" not in path and "CASE" not in path

    def child(self, node: Node, key: str) -> Node:
        if is_index(key):
            if self._lit(node.path):
                base = node.path[1:-1]
                path = (f"CASE json_type({node.expr},{node.path}) WHEN 'array' THEN '{base}[{int(key)}]' "
                        f"ELSE '{base}.\"{key}\"' END")
            else:
                path = (f"(CASE json_type({node.expr},{node.path}) WHEN 'array' THEN {node.path} || '[{int(key)}]' "
                        f"ELSE {node.path} || '.\"{key}\"' END)")
            return Node(node.expr, path)
        if self._lit(node.path):
            return Node(node.expr, f"'{node.path[1:-1]}.\"{key}\"'")
        # || binds tighter than any comparison: a flat chain keeps SQLite's parser stack shallow
        return Node(node.expr, f"{node.path} || '.\"{key}\"'")

    def type_of(self, node: Node) -> str:
        return f"json_type({node.expr},{node.path})"

    def scalar(self, node: Node) -> Scalar:
        return Scalar(self.type_of(node), f"json_extract({node.expr},{node.path})",
                      f"({node.expr} -> ({node.path}))")

    def is_type(self, t: str, k: str) -> str:
        return {"null": f"{t} = 'null'", "bool": f"{t} IN ('true','false')",
                "number": f"{t} IN ('integer','real')", "string": f"{t} = 'text'",
                "array": f"{t} = 'array'", "object": f"{t} = 'object'"}[k]

    def elements(self, node: Node, alias: str) -> tuple[str, Node, Scalar]:
        """FROM clause over an array's elements, each element as a node and as a scalar view."""
        frm = f"json_each({node.expr},{node.path}) AS {alias}"
        return frm, Node(node.expr, f"{node.path} || '[' || {alias}.key || ']'"), \
            Scalar(f"{alias}.type", f"{alias}.value", f"{alias}.value")

    def guard_array(self, node: Node) -> str:
        return f"{self.type_of(node)} = 'array'"

    def eq(self, s: Scalar, value: Any, bind: Callable[[Any], str]) -> str:
        k = kind(value)
        if k == "null":
            return f"{s.type} = 'null'"
        if k == "bool":
            return f"{s.type} = '{'true' if value else 'false'}'"
        if k == "number":
            return f"({s.value} = {bind(value)} AND {s.type} IN ('integer','real'))"
        if k == "string":
            return f"({s.value} = {bind(value)} AND {s.type} = 'text')"
        return f"({s.type} = '{k}' AND {s.text} = {bind(dumps(value))})"

    def cmp(self, s: Scalar, op: str, value: Any, bind: Callable[[Any], str]) -> str:
        if is_date(value):  # {"$date": ms}: an object; CASE keeps json_type off non-JSON text
            ms = f"CASE WHEN {s.type} = 'object' THEN {s.text} END"
            return (f"(json_type({ms}, '$.\"$date\"') IN ('integer','real') AND "
                    f"json_extract({ms}, '$.\"$date\"') {_OPS[op]} {bind(value['$date'])})")
        k = kind(value)
        if k == "bool":
            return f"({s.type} IN ('true','false') AND {s.value} {_OPS[op]} {1 if value else 0})"
        return f"({s.value} {_OPS[op]} {bind(value)} AND {self.is_type(s.type, k)})"

    def mod(self, s: Scalar, d: str, r: str) -> str:
        return f"({s.type} IN ('integer','real') AND CAST({s.value} AS INTEGER) % {d} = {r})"

    def regex(self, s: Scalar, pattern: str, options: str, bind: Callable[[Any], str], statement: str) -> str:
        # statement: this statement's id, so all its searches share one time budget (matcher.py)
        return (f"({s.type} = 'text' AND csbot_regexp({bind(pattern)}, {bind(options)}, {s.value}, "
                f"{statement}) = 1)")

    def size(self, node: Node, n: str) -> str:
        return f"({self.type_of(node)} = 'array' AND json_array_length({node.expr},{node.path}) = {n})"

    def order_keys(self, node: Node) -> list[str]:
        t = self.type_of(node)
        v = f"json_extract({node.expr},{node.path})"
        date = self.scalar(self.child(node, "$date"))  # a date sorts after booleans, by its ms
        return [
            f"CASE WHEN {date.type} IN ('integer','real') THEN 6 ELSE CASE {t} WHEN 'integer' THEN 1 "
            f"WHEN 'real' THEN 1 WHEN 'text' THEN 2 WHEN 'object' THEN 3 WHEN 'array' THEN 4 WHEN 'true' THEN 5 "
            f"WHEN 'false' THEN 5 ELSE 0 END END",
            f"CASE WHEN {t} IN ('integer','real','true','false') THEN {v} "
            f"WHEN {date.type} IN ('integer','real') THEN {date.value} END",
            f"CASE WHEN {t} = 'text' THEN {v} END",
        ]

    def index_exprs(self, path: tuple[str, ...]) -> list[str]:
        node = self.root()
        for key in path:
            node = self.child(node, key)
        s = self.scalar(node)
        return [s.value, s.type]


class PostgresDialect:
    name = "postgresql"

    def root(self, column: str = "body") -> Node:
        return Node(column, "", True)

    @staticmethod
    def expr(node: Node) -> str:
        return node.expr if not node.path else f"({node.expr} #> '{{{node.path}}}')"

    def child(self, node: Node, key: str) -> Node:
        # #> follows an integer component as an array index and any component as an object key
        return Node(node.expr, f"{node.path},{key}" if node.path else key)

    def type_of(self, node: Node) -> str:
        return f"jsonb_typeof({self.expr(node)})"

    def is_type(self, t: str, k: str) -> str:
        return f"{t} = '" + {"null": "null", "bool": "boolean", "number": "number", "string": "string",
                              "array": "array", "object": "object"}[k] + "'"

    def scalar(self, node: Node) -> Scalar:
        e = self.expr(node)
        return Scalar(f"jsonb_typeof({e})", e, e)

    def elements(self, node: Node, alias: str) -> tuple[str, Node, Scalar]:
        e = self.expr(node)
        frm = f"jsonb_array_elements(CASE WHEN jsonb_typeof({e}) = 'array' THEN {e} END) AS {alias}(v)"
        return frm, Node(f"{alias}.v"), Scalar(f"jsonb_typeof({alias}.v)", f"{alias}.v", f"{alias}.v")

    def guard_array(self, node: Node) -> str:
        return f"{self.type_of(node)} = 'array'"

    def eq(self, s: Scalar, value: Any, bind: Callable[[Any], str]) -> str:
        return f"{s.value} = CAST({bind(dumps(value))} AS jsonb)"

    def cmp(self, s: Scalar, op: str, value: Any, bind: Callable[[Any], str]) -> str:
        if is_date(value):  # {"$date": ms}
            ms = f"({s.value} -> '$date')"
            return (f"({s.type} = 'object' AND jsonb_typeof({ms}) = 'number' AND "
                    f"{ms} {_OPS[op]} CAST({bind(dumps(value['$date']))} AS jsonb))")
        k = kind(value)
        if k == "string":
            return (f"({s.type} = 'string' AND ({s.value} #>> '{{}}') COLLATE \"C\" {_OPS[op]} "
                    f"{bind(value)})")
        return f"({s.value} {_OPS[op]} CAST({bind(dumps(value))} AS jsonb) AND {self.is_type(s.type, k)})"

    def mod(self, s: Scalar, d: str, r: str) -> str:
        return (f"COALESCE(CASE WHEN {s.type} = 'number' THEN trunc(CAST({s.value} AS numeric)) % {d} = {r} "
                f"END, FALSE)")

    def regex(self, s: Scalar, pattern: str, options: str, bind: Callable[[Any], str], statement: str) -> str:
        newline = {(False, False): "p", (False, True): "s", (True, False): "n", (True, True): "w"}[
            ("m" in options, "s" in options)]
        flags = newline + ("i" if "i" in options else "")
        return f"({s.type} = 'string' AND ({s.value} #>> '{{}}') ~ {bind(f'(?{flags})' + pattern)})"

    def size(self, node: Node, n: str) -> str:
        e = self.expr(node)
        return f"COALESCE(CASE WHEN jsonb_typeof({e}) = 'array' THEN jsonb_array_length({e}) = {n} END, FALSE)"

    def order_keys(self, node: Node) -> list[str]:
        e = self.expr(node)
        t = f"jsonb_typeof({e})"
        ms = f"({e} -> '$date')"  # a date sorts after booleans, by its ms
        return [
            f"CASE WHEN {t} = 'object' AND jsonb_typeof({ms}) = 'number' THEN 6 ELSE CASE {t} WHEN 'number' "
            f"THEN 1 WHEN 'string' THEN 2 WHEN 'object' THEN 3 WHEN 'array' THEN 4 WHEN 'boolean' THEN 5 ELSE 0 END END",
            f"CASE WHEN {t} IN ('number','boolean') THEN {e} WHEN {t} = 'object' THEN {ms} END",
            f"CASE WHEN {t} = 'string' THEN ({e} #>> '{{}}') END COLLATE \"C\"",
        ]

    def index_exprs(self, path: tuple[str, ...]) -> list[str]:
        node = self.root()
        for key in path:
            node = self.child(node, key)
        return [self.expr(node), self.type_of(node)]


def dialect_for(name: str) -> SqliteDialect | PostgresDialect:
    return PostgresDialect() if name == "postgresql" else SqliteDialect()


# ----------------------------------------------------------------------------- the compiler


class Compiler:
    """Compiles one statement's conditions; collects the bound parameters in ``params``."""

    def __init__(self, dialect: SqliteDialect | PostgresDialect, prefix: str = "q") -> None:
        self.d = dialect
        self.params: dict[str, Any] = {}
        self._prefix = prefix
        self._n = 0
        self._aliases = 0
        self._statement: str | None = None

    def bind(self, value: Any) -> str:
        self._n += 1
        name = f"{self._prefix}{self._n}"
        self.params[name] = value
        return f":{name}"

    def statement(self) -> str:
        """A bound id unique to this statement (the SQLite regex time budget is per statement)."""
        if self._statement is None:
            self._statement = self.bind(uuid.uuid4().hex)
        return self._statement

    def _alias(self) -> str:
        self._aliases += 1
        return f"e{self._aliases}"

    # -- queries

    def where(self, query: Query, root: Node | None = None) -> str:
        root = root or self.d.root()
        if isinstance(query, MatchAll):
            return TRUE
        if isinstance(query, And):
            return _and([self.where(q, root) for q in query.items])
        if isinstance(query, Or):
            return _or([self.where(q, root) for q in query.items])
        if isinstance(query, Nor):
            return _not(_or([self.where(q, root) for q in query.items]))
        if isinstance(query, Field):
            return self.cond(query.cond, lambda atom: self._any(root, query.path, atom))
        raise TypeError(f"not a query node: {query!r}")

    def _any(self, node: Node, path: tuple[str, ...], atom: Callable[[Node], str]) -> str:
        """Some candidate at ``path`` below ``node`` satisfies ``atom`` (arrays of objects are
        followed for field-name components)."""
        key, rest = path[0], path[1:]
        child = self.d.child(node, key)
        direct = atom(child) if not rest else self._any(child, rest, atom)
        if is_index(key) or node.known_object:
            return direct
        alias = self._alias()
        frm, element, escalar = self.d.elements(node, alias)
        element_child = self.d.child(Node(element.expr, element.path), key)
        inner = atom(element_child) if not rest else self._any(element_child, rest, atom)
        return (f"({direct} OR ({self.d.guard_array(node)} AND EXISTS (SELECT 1 FROM {frm} "
                f"WHERE {self.d.is_type(escalar.type, 'object')} AND {inner})))")

    def _expand(self, node: Node, atom: Callable[[Scalar], str]) -> str:
        """The value itself or, when it is an array, one of its elements satisfies ``atom``."""
        alias = self._alias()
        frm, _, escalar = self.d.elements(node, alias)
        return (f"({atom(self.d.scalar(node))} OR ({self.d.guard_array(node)} AND EXISTS "
                f"(SELECT 1 FROM {frm} WHERE {atom(escalar)})))")

    def _present(self, node: Node) -> str:
        return f"{self.d.type_of(node)} IS NOT NULL"

    def cond(self, cond: Cond, any_: Callable[[Callable[[Node], str]], str]) -> str:
        d = self.d
        if isinstance(cond, Eq):
            value = cond.value
            sql = any_(lambda n: self._expand(n, lambda s: d.eq(s, value, self.bind)))
            if value is None:
                sql = f"({sql} OR {_not(any_(self._present))})"
            return sql
        if isinstance(cond, Ne):
            return _not(self.cond(Eq(cond.value), any_))
        if isinstance(cond, Cmp):
            return any_(lambda n: self._expand(n, lambda s: d.cmp(s, cond.op, cond.value, self.bind)))
        if isinstance(cond, In):
            if not cond.values:
                return FALSE
            return _or([self.cond(Eq(v), any_) for v in cond.values])
        if isinstance(cond, Nin):
            return _not(self.cond(In(cond.values), any_))
        if isinstance(cond, Exists):
            sql = any_(self._present)
            return sql if cond.flag else _not(sql)
        if isinstance(cond, Size):
            n = self.bind(cond.n)
            return any_(lambda node: d.size(node, n))
        if isinstance(cond, All):
            if not cond.values:
                return FALSE
            return _and([self.cond(Eq(v), any_) for v in cond.values])
        if isinstance(cond, ElemMatch):
            return any_(lambda node: self._elem_match(node, cond))
        if isinstance(cond, Mod):
            dv, rv = self.bind(cond.divisor), self.bind(cond.remainder)
            return any_(lambda n: self._expand(n, lambda s: d.mod(s, dv, rv)))
        if isinstance(cond, Regex):
            return any_(lambda n: self._expand(n, lambda s: d.regex(s, cond.pattern, cond.options, self.bind,
                                                                    self.statement())))
        if isinstance(cond, Not):
            return _not(self.cond(cond.cond, any_))
        if isinstance(cond, CondAnd):
            return _and([self.cond(c, any_) for c in cond.items])
        if isinstance(cond, CondOr):
            return _or([self.cond(c, any_) for c in cond.items])
        if isinstance(cond, CondNor):
            return _not(_or([self.cond(c, any_) for c in cond.items]))
        raise TypeError(f"not a condition: {cond!r}")

    def _elem_match(self, node: Node, cond: ElemMatch) -> str:
        alias = self._alias()
        frm, element, escalar = self.d.elements(node, alias)
        if cond.query is not None:
            inner = (f"{self.d.is_type(escalar.type, 'object')} AND "
                     f"{self.where(cond.query, Node(element.expr, element.path, True))}")
        else:
            assert cond.cond is not None
            inner = self.cond(cond.cond, lambda atom: atom(element))
        return f"({self.d.guard_array(node)} AND EXISTS (SELECT 1 FROM {frm} WHERE {inner}))"

    # -- ordering

    def order_by(self, orders: list[tuple[tuple[str, ...], bool]], tiebreak: str = "seq") -> str:
        parts: list[str] = []
        for path, descending in orders:
            node = self.d.root()
            for key in path:
                node = self.d.child(node, key)
            direction = " DESC" if descending else " ASC"
            parts.extend(k + direction for k in self.d.order_keys(node))
        parts.append(f"{tiebreak} ASC")
        return ", ".join(parts)
