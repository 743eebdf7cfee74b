"""Security rules for mini-program access: WeChat's expression language, parsed and interpreted.

A rule is ``true``, ``false`` or an expression such as ``doc._openid == auth.openid`` over
``auth`` (``openid``), ``doc``, ``request.data`` and ``now`` (milliseconds), with ``== != < <= >
>= in && || !``, ``.`` and ``[]``, literals (numbers, strings, true/false/null, ``[...]``). It is
tokenised and parsed into a small tree and interpreted here: never ``eval``, never executed as
Python or JavaScript. At most 1,024 characters, as WeChat.

WeChat's query-subset semantics: for a ``where`` query, ``doc`` is the *query*, not the stored
documents. The query must pin every ``doc`` field the rule needs (``{"_openid": "{openid}"}``);
a rule that is not certainly true for every document the query could match refuses the whole
request with 403 and says which condition is missing. Nothing is filtered silently. For
``doc(id)`` operations the rule is checked against the stored document instead.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

from csbot.cloud.database.errors import PermissionDenied
from csbot.cloud.database.query import Query, pinned_fields
from csbot.cloud.database.values import comparable_value, equal, kind, same_kind_comparable

MAX_RULE_LENGTH = 1024
OPERATIONS = ("read", "create", "update", "delete")
BASIC_MODES = {
    # WeChat's basic permission modes, as rules (they refuse instead of filtering silently)
    "creator_write_all_read": {"read": True, "write": "doc._openid == auth.openid"},
    "creator_only": {"read": "doc._openid == auth.openid", "write": "doc._openid == auth.openid"},
    "admin_write_all_read": {"read": True, "write": False},
    "admin_only": {"read": False, "write": False},
}
VARIABLES = ("auth", "doc", "request", "now")


class RuleError(ValueError):
    """A rule that does not parse; the message says where."""


# ----------------------------------------------------------------------------- syntax tree


class Expr:
    pass


@dataclass(frozen=True)
class Lit(Expr):
    value: Any


@dataclass(frozen=True)
class Var(Expr):
    name: str


@dataclass(frozen=True)
class Member(Expr):
    obj: Expr
    key: Expr  # a Lit for ``.name``


@dataclass(frozen=True)
class ListLit(Expr):
    items: tuple[Expr, ...]


@dataclass(frozen=True)
class Unary(Expr):
    op: str
    operand: Expr


@dataclass(frozen=True)
class Binary(Expr):
    op: str
    left: Expr
    right: Expr


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)
  | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<op>==|!=|<=|>=|&&|\|\||[<>!().\[\],])
  | (?P<name>[A-Za-z_$][A-Za-z0-9_$]*)
""", re.VERBOSE)
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "/": "/"}


def _tokens(source: str) -> list[tuple[str, Any, int]]:
    out = []
    pos = 0
    while pos < len(source):
        m = _TOKEN.match(source, pos)
        if not m:
            raise RuleError(f"unexpected character {source[pos]!r} at position {pos}")
        kind_, text = m.lastgroup, m.group()
        if kind_ == "num":
            out.append(("lit", float(text) if any(c in text for c in ".eE") else int(text), pos))
        elif kind_ == "str":
            body = text[1:-1]
            out.append(("lit", re.sub(r"\\(.)", lambda e: _ESCAPES.get(e.group(1), e.group(1)), body), pos))
        elif kind_ == "op":
            out.append(("op", text, pos))
        elif kind_ == "name":
            if text in ("true", "false", "null"):
                out.append(("lit", {"true": True, "false": False, "null": None}[text], pos))
            elif text == "in":
                out.append(("op", "in", pos))
            else:
                out.append(("name", text, pos))
        pos = m.end()
    out.append(("end", None, len(source)))
    return out


class _Parser:
    def __init__(self, source: str, variables: tuple[str, ...] = VARIABLES) -> None:
        self.toks = _tokens(source)
        self.i = 0
        self.variables = variables

    def peek(self) -> tuple[str, Any, int]:
        return self.toks[self.i]

    def take(self, value: str | None = None) -> tuple[str, Any, int]:
        tok = self.toks[self.i]
        if value is not None and not (tok[0] == "op" and tok[1] == value):
            raise RuleError(f"expected {value!r} at position {tok[2]}")
        self.i += 1
        return tok

    def at(self, *values: str) -> bool:
        tok = self.peek()
        return tok[0] == "op" and tok[1] in values

    def parse(self) -> Expr:
        expr = self.or_()
        tok = self.peek()
        if tok[0] != "end":
            raise RuleError(f"unexpected {tok[1]!r} at position {tok[2]}")
        return expr

    def or_(self) -> Expr:
        left = self.and_()
        while self.at("||"):
            self.take()
            left = Binary("||", left, self.and_())
        return left

    def and_(self) -> Expr:
        left = self.unary()
        while self.at("&&"):
            self.take()
            left = Binary("&&", left, self.unary())
        return left

    def unary(self) -> Expr:
        if self.at("!"):
            self.take()
            return Unary("!", self.unary())
        return self.comparison()

    def comparison(self) -> Expr:
        left = self.postfix()
        if self.at("==", "!=", "<", "<=", ">", ">=", "in"):
            op = self.take()[1]
            return Binary(op, left, self.postfix())
        return left

    def postfix(self) -> Expr:
        expr = self.primary()
        while self.at(".", "["):
            if self.take()[1] == ".":
                tok = self.take()
                if tok[0] != "name":
                    raise RuleError(f"expected a field name at position {tok[2]}")
                expr = Member(expr, Lit(tok[1]))
            else:
                key = self.or_()
                self.take("]")
                expr = Member(expr, key)
        return expr

    def primary(self) -> Expr:
        tok = self.take()
        if tok[0] == "lit":
            return Lit(tok[1])
        if tok[0] == "name":
            if self.at("("):
                raise RuleError(f"function calls such as {tok[1]}() are not supported (position {tok[2]})")
            if tok[1] not in self.variables:
                raise RuleError(f"unknown variable {tok[1]!r} at position {tok[2]} "
                                f"(use {', '.join(self.variables)})")
            return Var(tok[1])
        if tok[0] == "op" and tok[1] == "(":
            expr = self.or_()
            self.take(")")
            return expr
        if tok[0] == "op" and tok[1] == "[":
            items = []
            if not self.at("]"):
                items.append(self.or_())
                while self.at(","):
                    self.take()
                    items.append(self.or_())
            self.take("]")
            return ListLit(tuple(items))
        raise RuleError(f"unexpected {tok[1] if tok[0] != 'end' else 'end of rule'!r} at position {tok[2]}")


def parse_rule(source: Any, *, where: str = "rule", variables: tuple[str, ...] = VARIABLES) -> "Rule":
    """Parse a rule over ``variables`` (the database's by default; storage rules use
    ``auth`` and ``resource``)."""
    if isinstance(source, bool):
        return Rule(str(source).lower(), Lit(source))
    if not isinstance(source, str):
        raise RuleError(f"{where}: a rule is true, false or an expression string")
    if len(source) > MAX_RULE_LENGTH:
        raise RuleError(f"{where}: longer than {MAX_RULE_LENGTH} characters")
    try:
        return Rule(source, _Parser(source, variables).parse())
    except RuleError as exc:
        raise RuleError(f"{where}: {exc} in {source!r}") from None


# ----------------------------------------------------------------------------- interpretation


class _Unknown:
    """The value of a ``doc`` field the query does not pin."""

    def __init__(self, path: tuple[str, ...]) -> None:
        self.path = path


class _PinnedDoc:
    """``doc`` under query-subset semantics: only the pinned fields have values."""

    def __init__(self, pins: Mapping[tuple[str, ...], Any], path: tuple[str, ...] = ()) -> None:
        self.pins = pins
        self.path = path


_MISSING = None


def _member(obj: Any, key: Any) -> Any:
    if isinstance(obj, _Unknown):
        return obj
    if isinstance(obj, _PinnedDoc):
        if not isinstance(key, (str, int)) or isinstance(key, bool):
            return _Unknown(obj.path)
        path = obj.path + (str(key),)
        if path in obj.pins:
            return obj.pins[path]
        if any(p[:len(path)] == path for p in obj.pins):
            return _PinnedDoc(obj.pins, path)
        return _Unknown(path)
    if isinstance(obj, dict) and isinstance(key, str):
        return obj.get(key, _MISSING)
    if isinstance(obj, list) and isinstance(key, int) and not isinstance(key, bool) and 0 <= key < len(obj):
        return obj[key]
    return _MISSING


def _unknown(*values: Any) -> _Unknown | None:
    for v in values:
        if isinstance(v, _Unknown):
            return v
        if isinstance(v, _PinnedDoc):
            return _Unknown(v.path)
    return None


def evaluate(expr: Expr, env: Mapping[str, Any]) -> Any:
    """The value of ``expr``: a JSON value, or an unknown ``doc`` field."""
    if isinstance(expr, Lit):
        return expr.value
    if isinstance(expr, Var):
        return env.get(expr.name)
    if isinstance(expr, Member):
        return _member(evaluate(expr.obj, env), evaluate(expr.key, env))
    if isinstance(expr, ListLit):
        items = [evaluate(i, env) for i in expr.items]
        return _unknown(*items) or items
    if isinstance(expr, Unary):
        value = _truth(evaluate(expr.operand, env))
        return value if isinstance(value, _Unknown) else not value
    assert isinstance(expr, Binary)
    if expr.op in ("&&", "||"):
        left = _truth(evaluate(expr.left, env))
        if expr.op == "&&" and left is False or expr.op == "||" and left is True:
            return left
        right = _truth(evaluate(expr.right, env))
        if expr.op == "&&" and right is False or expr.op == "||" and right is True:
            return right
        return _unknown(left, right) or right
    left, right = evaluate(expr.left, env), evaluate(expr.right, env)
    unknown = _unknown(left, right)
    if unknown is not None:
        return unknown
    if expr.op == "==":
        return left is not None and right is not None and equal(left, right) or (left is None and right is None)
    if expr.op == "!=":
        return not (left is not None and right is not None and equal(left, right) or (left is None and right is None))
    if expr.op == "in":
        return isinstance(right, list) and left is not None and any(equal(left, r) for r in right if r is not None)
    if not same_kind_comparable(left, right):
        return False
    left, right = comparable_value(left), comparable_value(right)
    return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[expr.op]


def holds(rule: "Rule", env: Mapping[str, Any]) -> bool:
    """Whether ``rule`` is certainly true in ``env`` (an unknown value is not true)."""
    return _truth(evaluate(rule.expr, env)) is True


def _truth(value: Any) -> Any:
    if isinstance(value, (_Unknown, _PinnedDoc)):
        return _unknown(value)
    return value is True


def _doc_paths(expr: Expr) -> Iterator[tuple[str, ...]]:
    """The ``doc.a.b`` paths an expression reads (literal member chains only)."""
    if isinstance(expr, Member):
        chain: list[str] = []
        node: Expr = expr
        while isinstance(node, Member) and isinstance(node.key, Lit) and isinstance(node.key.value, (str, int)):
            chain.append(str(node.key.value))
            node = node.obj
        if isinstance(node, Var) and node.name == "doc":
            for i in range(len(chain)):
                yield tuple(reversed(chain))[: i + 1]
        else:
            yield from _doc_paths(expr.obj)
        yield from _doc_paths(expr.key)
    elif isinstance(expr, (Unary,)):
        yield from _doc_paths(expr.operand)
    elif isinstance(expr, Binary):
        yield from _doc_paths(expr.left)
        yield from _doc_paths(expr.right)
    elif isinstance(expr, ListLit):
        for item in expr.items:
            yield from _doc_paths(item)


@dataclass(frozen=True)
class Rule:
    source: str
    expr: Expr

    @property
    def constant(self) -> bool | None:
        return self.expr.value if isinstance(self.expr, Lit) and isinstance(self.expr.value, bool) else None


@dataclass(frozen=True)
class CollectionRules:
    """The rules of one collection, by operation (``write`` fills the missing write kinds)."""

    read: Rule
    create: Rule
    update: Rule
    delete: Rule
    origin: str = "admin_only (default)"

    def for_operation(self, operation: str) -> Rule:
        return getattr(self, operation)


ADMIN_ONLY = None  # set below


def rules_from_config(table: Mapping[str, Any], *, where: str) -> CollectionRules:
    """``[collections.NAME]``: ``mode = "creator_only"`` or ``read``/``write``/``create``/
    ``update``/``delete``. Unknown keys and bad expressions are configuration errors."""
    known = {"mode", "read", "write", "create", "update", "delete", "indexes"}
    unknown = set(table) - known
    if unknown:
        raise RuleError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
    explicit = {k: table[k] for k in ("read", "write", "create", "update", "delete") if k in table}
    if "mode" in table:
        if explicit:
            raise RuleError(f"{where}: give either mode or rules (read/write/...), not both")
        if table["mode"] not in BASIC_MODES:
            raise RuleError(f"{where}.mode: must be one of {', '.join(BASIC_MODES)}")
        explicit = dict(BASIC_MODES[table["mode"]])
        origin = f"mode {table['mode']}"
    elif explicit:
        origin = "rules"
    else:
        explicit = dict(BASIC_MODES["admin_only"])
        origin = "admin_only (default)"
    write = explicit.get("write", False)
    parsed = {op: parse_rule(explicit.get(op, write if op != "read" else False), where=f"{where}.{op}")
              for op in OPERATIONS}
    return CollectionRules(origin=origin, **parsed)


ADMIN_ONLY = rules_from_config({}, where="default")


def _deny(collection: str, operation: str, rule: Rule, why: str) -> PermissionDenied:
    return PermissionDenied(f"{operation} on collection {collection!r} denied by its rule "
                            f"{operation} = {rule.source!r}: {why}")


def check_query(rules: CollectionRules, collection: str, operation: str, query: Query, *,
                openid: str, data: Any = None, now_ms: int = 0) -> None:
    """Query-subset check of a ``where`` read/update/delete; raises :class:`PermissionDenied`."""
    rule = rules.for_operation(operation)
    if rule.constant is True:
        return
    if rule.constant is False:
        raise _deny(collection, operation, rule, "mini programs may not do this (only the server may)")
    needed = sorted(set(_doc_paths(rule.expr)))
    for branch in pinned_fields(query):
        paths = [p for p in needed if p in branch]
        choices = [branch[p] for p in paths]
        combos = list(itertools.islice(itertools.product(*choices), 257))
        if len(combos) > 256:
            raise _deny(collection, operation, rule, "the query allows too many value combinations")
        for combo in combos:
            pins = dict(zip(paths, combo))
            env = {"auth": {"openid": openid}, "doc": _PinnedDoc(pins), "request": {"data": data},
                   "now": now_ms}
            result = _truth(evaluate(rule.expr, env))
            if isinstance(result, _Unknown):
                field = ".".join(result.path) or "doc"
                hint = (f'; add "{field}": "{{openid}}" to where' if field == "_openid" else "")
                raise _deny(collection, operation, rule,
                            f"the query must fix {field} to a value the rule allows{hint}")
            if result is not True:
                shown = ", ".join(f"{'.'.join(p)} = {v!r}" for p, v in pins.items()) or "this query"
                raise _deny(collection, operation, rule, f"the rule is false for {shown}")


def check_document(rules: CollectionRules, collection: str, operation: str, doc: Any, *,
                   openid: str, data: Any = None, now_ms: int = 0) -> None:
    """Check a rule against a concrete document (``doc(id)`` operations, ``add``)."""
    rule = rules.for_operation(operation)
    if rule.constant is True:
        return
    if rule.constant is False:
        raise _deny(collection, operation, rule, "mini programs may not do this (only the server may)")
    env = {"auth": {"openid": openid}, "doc": doc, "request": {"data": data}, "now": now_ms}
    if _truth(evaluate(rule.expr, env)) is not True:
        what = "the new document" if operation == "create" else f"document {doc.get('_id')!r}"
        raise _deny(collection, operation, rule, f"the rule is false for {what}")


__all__ = ["CollectionRules", "Rule", "RuleError", "check_query", "check_document", "rules_from_config",
           "parse_rule", "ADMIN_ONLY", "BASIC_MODES", "kind"]
