"""The documents table: every database operation as one SQL transaction.

The store knows nothing of callers or rules: it takes parsed queries and updates, compiles
them for the engine's dialect, and enforces the limits that protect the table (document size,
field names, ``_id`` collisions). ``Database`` (server side) and the HTTP routes (clients, with
rules) are built on it.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Awaitable, Callable, Iterable, Mapping, Sequence

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from csbot.cloud.database.errors import (
    DocumentTooLarge, DuplicateId, InvalidParameter, QueryError, RegexTooSlow,
)
from csbot.cloud.database.matcher import lookup
from csbot.cloud.database.query import And, Cmp, Eq, Field, MatchAll, Query
from csbot.cloud.database.sql import Compiler, dialect_for
from csbot.cloud.database.update import Update, apply
from csbot.cloud.database.values import dumps, normalize, split_path

COLLECTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
APP_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
DEFAULT_MAX_DOCUMENT_SIZE = 1024 * 1024


def check_collection(name: Any) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.match(name):
        raise InvalidParameter(f"collection name {name!r} must be 1-64 letters, digits, '_' or '-'")
    return name


def check_doc_id(doc_id: Any) -> str:
    if not isinstance(doc_id, str) or not doc_id or len(doc_id) > 128 or "\x00" in doc_id:
        raise InvalidParameter("_id must be a non-empty string of at most 128 characters")
    return doc_id


@dataclass(frozen=True)
class Projection:
    """``field({...})``: include mode (``{"name": true}``, ``_id`` kept unless excluded) or
    exclude mode (``{"secret": false}``)."""

    paths: tuple[tuple[str, ...], ...] = ()
    include: bool = True
    keep_id: bool = True

    @classmethod
    def parse(cls, spec: Any) -> "Projection | None":
        if spec is None or spec == {}:
            return None
        if not isinstance(spec, dict):
            raise QueryError("field: needs an object such as {\"name\": true}")
        include: bool | None = None
        keep_id = True
        paths = []
        for key, flag in spec.items():
            if flag not in (True, False, 0, 1):
                raise QueryError(f"field.{key}: must be true or false")
            flag = bool(flag)
            if key == "_id":
                keep_id = flag
                continue
            if include is not None and include != flag:
                raise QueryError("field: mixes included and excluded fields (only _id may differ)")
            include = flag
            paths.append(split_path(key, where="field"))
        if include is None:  # only _id given
            include = keep_id
        return cls(tuple(paths), include, keep_id)

    def apply(self, doc: dict[str, Any]) -> dict[str, Any]:
        if self.include:
            out: dict[str, Any] = {}
            if self.keep_id and "_id" in doc:
                out["_id"] = doc["_id"]
            for path in self.paths:
                found, value = lookup(doc, path)
                if found:
                    target = out
                    for key in path[:-1]:
                        target = target.setdefault(key, {})
                        if not isinstance(target, dict):
                            break
                    else:
                        target[path[-1]] = value
            return out
        out = json.loads(json.dumps(doc))
        if not self.keep_id:
            out.pop("_id", None)
        for path in self.paths:
            target = out
            for key in path[:-1]:
                target = target.get(key) if isinstance(target, dict) else None
            if isinstance(target, dict):
                target.pop(path[-1], None)
        return out


@dataclass(frozen=True)
class FindSpec:
    query: Query = field(default_factory=MatchAll)
    order: tuple[tuple[tuple[str, ...], bool], ...] = ()
    skip: int = 0
    limit: int = 100
    projection: Projection | None = None


def present(body: dict[str, Any]) -> dict[str, Any]:
    """A document as callers see it: ``_id`` and ``_openid`` first, then the stored keys."""
    out = {}
    for key in ("_id", "_openid"):
        if key in body:
            out[key] = body[key]
    for key in sorted(body):
        if key not in out:
            out[key] = body[key]
    return out


_SQL_OPS = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_TOO_COMPLEX = ("parser stack overflow", "expression tree is too large", "stack depth limit exceeded",
                "too many terms", "too many sql variables", "at most 64 tables in a join")


def _query_error_of(driver_error: BaseException) -> QueryError | None:
    """The client's mistake behind a database error, if it is one: a ``$regex`` past its time
    bound, or a query beyond the engine's limits on a statement's size."""
    message = str(driver_error)
    if "user-defined function raised exception" in message:
        return RegexTooSlow()  # csbot_regexp is the only function csbot registers
    if any(marker in message.lower() for marker in _TOO_COMPLEX):
        return QueryError("the query is too complex for the database (too deeply nested or too "
                          "many conditions); simplify it")
    return None


async def _execute(conn: AsyncConnection, sql: str, params: Any) -> Any:
    """Run a compiled statement; the engine's limits on a query's size become a QueryError."""
    try:
        return await conn.execute(text(sql), params)
    except DBAPIError as exc:
        error = _query_error_of(exc.orig)
        if error is not None:
            raise error from None
        raise


_NAMED = re.compile(r"(?<![:\w]):(q\d+)\b")


@lru_cache(maxsize=512)
def _positional(sql: str) -> tuple[str, tuple[str, ...]]:
    """``:q1`` placeholders as asyncpg's ``$1`` (cached: one query shape, one conversion)."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _NAMED.sub(number, sql), tuple(names)


class JsonTexts(list):  # type: ignore[type-arg]
    """Documents already encoded as JSON text (``find_json``): the HTTP layer splices them into
    its answer instead of decoding and re-encoding each one."""


def encode_document(body: dict[str, Any]) -> str:
    """A whole document as stored: canonical JSON (compact, nested keys sorted) with ``_id`` and
    ``_openid`` first, then the other keys sorted: exactly what readers are given, so SQLite
    reads are returned as stored."""
    return "{" + ",".join(f"{dumps(k)}:{dumps(v)}" for k, v in present(body).items()) + "}"


class DocumentStore:
    """Operations on the ``cloud_documents`` table for one deployment (all apps)."""

    def __init__(self, engine: AsyncEngine, *, max_document_size: int = DEFAULT_MAX_DOCUMENT_SIZE,
                 indexes: Mapping[str, Sequence[Sequence[str]]] | None = None,
                 metrics: Any = None) -> None:
        self.engine = engine
        self.dialect = dialect_for(engine.dialect.name)
        self.is_pg = engine.dialect.name == "postgresql"
        self.max_document_size = max_document_size
        self.indexes = {k: [list(i) for i in v] for k, v in (indexes or {}).items()}
        #: declared indexes known to exist (ensure_indexes); the SQLite prefilter names them
        self.created_indexes: set[str] = set()
        self.metrics = metrics

    # ------------------------------------------------------------------ helpers

    def count_op(self, app: str, collection: str, operation: str, outcome: str) -> None:
        if self.metrics is not None and hasattr(self.metrics, "cloud_db"):
            self.metrics.cloud_db.labels(app, collection, operation, outcome).inc()

    def _scope(self, app: str, collection: str) -> str:
        if not APP_NAME.match(app):
            raise InvalidParameter(f"app name {app!r} is not valid")
        check_collection(collection)
        # literals, not parameters: the declared partial indexes must see them
        return f"app = '{app}' AND collection = '{collection}'"

    def _where(self, compiler: Compiler, app: str, collection: str, query: Query) -> str:
        parts = [self._scope(app, collection)]
        conjuncts = query.items if isinstance(query, And) else (query,)
        for item in conjuncts:  # plain-column shortcuts for _id and _openid
            if (isinstance(item, Field) and len(item.path) == 1 and item.path[0] in ("_id", "_openid")
                    and isinstance(item.cond, Eq) and isinstance(item.cond.value, str)):
                column = "doc_id" if item.path[0] == "_id" else "openid"
                parts.append(f"{column} = {compiler.bind(item.cond.value)}")
        prefilter = self._index_prefilter(compiler, app, collection, conjuncts)
        if prefilter:
            parts.append(prefilter)
        parts.append(compiler.where(query))
        return " AND ".join(parts)

    def _index_prefilter(self, compiler: Compiler, app: str, collection: str, conjuncts: Any) -> str | None:
        """SQLite only: narrow to the rows a declared index finds, as ``seq IN (… UNION ALL …)``.

        An equality or a comparison on a top-level field compiles to "the value matches OR the
        field is an array with a matching element"; SQLite uses no partial index for such an
        OR. Both halves are separate indexed lookups here; the full condition still decides.
        """
        if self.is_pg or collection not in self.indexes:
            return None
        first_fields = {tuple(split_path(i[0])): self._index_name(collection, i)
                        for i in self.indexes[collection] if i}
        scope = f"collection = '{collection}' AND app = '{app}'"
        d = self.dialect
        for item in conjuncts:
            if not (isinstance(item, Field) and item.path in first_fields and len(item.path) == 1):
                continue
            name = first_fields[item.path]
            if name not in self.created_indexes:
                continue
            node = d.child(d.root(), item.path[0])
            value = d.scalar(node).value
            # the indexed expression alone, no json_type guard: the lookup stays inside the index
            # (a guard reads every candidate's body) and finds a superset (json_extract gives 1
            # for true, numbers order below text); the full condition below decides exactly
            if isinstance(item.cond, Eq) and isinstance(item.cond.value, (str, int, float)):
                match = f"{value} = {compiler.bind(item.cond.value)}"
            elif isinstance(item.cond, Cmp) and isinstance(item.cond.value, (str, int, float)):
                match = f"{value} {_SQL_OPS[item.cond.op]} {compiler.bind(item.cond.value)}"
            else:
                continue
            # INDEXED BY: with statistics SQLite would rather walk the whole collection than trust
            # the (nearly empty) partial index of array values
            return (f"seq IN (SELECT seq FROM cloud_documents INDEXED BY {name} WHERE {scope} AND {match} "
                    f"UNION ALL SELECT seq FROM cloud_documents INDEXED BY {name}_a WHERE {scope} "
                    f"AND {d.type_of(node)} = 'array')")
        return None

    def _body_sql(self) -> str:
        return "body::text" if self.is_pg else "body"

    def _body_param(self, name: str) -> str:
        return f"CAST(:{name} AS jsonb)" if self.is_pg else f":{name}"

    @staticmethod
    def _load(raw: Any) -> dict[str, Any]:
        return raw if isinstance(raw, dict) else json.loads(raw)

    def _encode(self, body: dict[str, Any]) -> str:
        encoded = encode_document(body)
        size = len(encoded.encode("utf-8"))
        if size > self.max_document_size:
            raise DocumentTooLarge(f"the document is {size} bytes; the limit is "
                                   f"{self.max_document_size} (db_max_document_size)")
        return encoded

    async def _begin_write(self, conn: AsyncConnection) -> None:
        """SQLite: take the write lock first, so read-modify-write never loses an update."""
        if not self.is_pg:
            await conn.execute(text("UPDATE cloud_documents SET seq = seq WHERE 1 = 0"))

    # ------------------------------------------------------------------ reads

    async def find(self, app: str, collection: str, spec: FindSpec) -> list[dict[str, Any]]:
        docs = [present(json.loads(b)) for b in await self._find_bodies(app, collection, spec)]
        if spec.projection is not None:
            docs = [spec.projection.apply(d) for d in docs]
        return docs

    async def find_json(self, app: str, collection: str, spec: FindSpec) -> JsonTexts:
        """:meth:`find`'s documents as JSON text. Without a projection the stored text itself
        (no decoding and re-encoding: the bulk of a read's CPU otherwise); key order is the
        store's (SQLite: as :func:`encode_document` wrote it; PostgreSQL: JSONB's)."""
        bodies = await self._find_bodies(app, collection, spec)
        if spec.projection is None:
            return JsonTexts(bodies)
        return JsonTexts(json.dumps(spec.projection.apply(present(json.loads(b))), ensure_ascii=False)
                         for b in bodies)

    async def _find_bodies(self, app: str, collection: str, spec: FindSpec) -> list[str]:
        c = Compiler(self.dialect)
        where = self._where(c, app, collection, spec.query)
        sql = (f"SELECT {self._body_sql()} FROM cloud_documents WHERE {where} "
               f"ORDER BY {c.order_by(list(spec.order))} LIMIT {int(spec.limit)} OFFSET {int(spec.skip)}")
        return [r[0] for r in await self._fetch(sql, c.params)]

    async def _fetch(self, sql: str, params: dict[str, Any]) -> list[Any]:
        """A read statement through the driver itself (aiosqlite, asyncpg) on a connection of the
        engine's pool: SQLAlchemy's statement and result machinery cost more than the indexed
        query does. Errors that are the query's fault become a QueryError, as in ``_execute``."""
        async with self.engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            try:
                if self.is_pg:
                    statement, names = _positional(sql)
                    return list(await driver.fetch(statement, *(params[n] for n in names)))
                async with driver.execute(sql, params) as cursor:
                    return list(await cursor.fetchall())
            except Exception as exc:
                error = _query_error_of(exc)
                if error is not None:
                    raise error from None
                raise

    async def count(self, app: str, collection: str, query: Query) -> int:
        c = Compiler(self.dialect)
        sql = f"SELECT count(*) FROM cloud_documents WHERE {self._where(c, app, collection, query)}"
        async with self.engine.connect() as conn:
            return int((await _execute(conn, sql, c.params)).scalar_one())

    async def get(self, app: str, collection: str, doc_id: str) -> dict[str, Any] | None:
        self._scope(app, collection)
        async with self.engine.connect() as conn:
            row = (await conn.execute(text(
                f"SELECT {self._body_sql()} FROM cloud_documents WHERE app = :app AND collection = :c "
                f"AND doc_id = :id"), {"app": app, "c": collection, "id": check_doc_id(doc_id)})).first()
        return present(self._load(row[0])) if row else None

    async def iterate(self, app: str, collection: str, batch: int = 500):  # type: ignore[no-untyped-def]
        """Every document in insertion order, fetched ``batch`` at a time (export)."""
        self._scope(app, collection)
        last = 0
        while True:
            async with self.engine.connect() as conn:
                rows = (await conn.execute(text(
                    f"SELECT seq, {self._body_sql()} FROM cloud_documents WHERE app = :app AND collection = :c "
                    f"AND seq > :last ORDER BY seq LIMIT {int(batch)}"),
                    {"app": app, "c": collection, "last": last})).all()
            for seq, raw in rows:
                yield present(self._load(raw))
            if len(rows) < batch:
                return
            last = rows[-1][0]

    async def collections(self, app: str) -> list[tuple[str, int]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(text(
                "SELECT collection, count(*) FROM cloud_documents WHERE app = :app "
                "GROUP BY collection ORDER BY collection"), {"app": app})).all()
        return [(r[0], int(r[1])) for r in rows]

    # ------------------------------------------------------------------ writes

    def prepare_new(self, data: Any, *, openid: str | None = None) -> dict[str, Any]:
        """Validate a new document; generate ``_id`` when absent."""
        if not isinstance(data, dict):
            raise QueryError("data: a document must be an object")
        body = normalize(data, where="data", data=True)
        if "_id" in body:
            check_doc_id(body["_id"])
        else:
            body["_id"] = uuid.uuid4().hex
        if openid is not None:
            body["_openid"] = openid
        if "_openid" in body and not isinstance(body["_openid"], str):
            raise QueryError("data._openid: must be a string")
        return body

    async def insert(self, app: str, collection: str, bodies: list[dict[str, Any]],
                     conn: AsyncConnection | None = None) -> list[str]:
        """Insert prepared documents (see :meth:`prepare_new`); all or none."""
        self._scope(app, collection)
        ids = [b["_id"] for b in bodies]
        if len(set(ids)) != len(ids):
            raise DuplicateId("the same _id appears twice in one add")
        now = time.time()
        rows = [{"app": app, "c": collection, "id": b["_id"], "openid": b.get("_openid"),
                 "body": self._encode(b), "now": now} for b in bodies]
        sql = text(f"INSERT INTO cloud_documents (app, collection, doc_id, openid, body, created_at, "
                   f"updated_at) VALUES (:app, :c, :id, :openid, {self._body_param('body')}, :now, :now)")

        async def run(c: AsyncConnection) -> None:
            binds = {f"i{n}": i for n, i in enumerate(ids)}
            placeholders = ", ".join(f":{k}" for k in binds)
            existing = (await c.execute(text(
                f"SELECT doc_id FROM cloud_documents WHERE app = :app AND collection = :c "
                f"AND doc_id IN ({placeholders})"), {"app": app, "c": collection, **binds})).first()
            if existing:
                raise DuplicateId(f"_id {existing[0]!r} already exists in collection {collection!r}")
            try:
                await c.execute(sql, rows)
            except IntegrityError:  # a concurrent add took the _id meanwhile
                raise DuplicateId(f"an _id of this add already exists in collection {collection!r}") from None

        if conn is not None:
            await run(conn)
        else:
            async with self.engine.begin() as c:
                await run(c)
        return ids

    async def update_where(
        self, app: str, collection: str, query: Query, update: Update, *,
        check: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None,
        limit_one_id: str | None = None,
    ) -> tuple[int, int]:
        """Apply ``update`` to every matching document: ``(matched, modified)``.

        ``check`` sees each stored document before it is changed (the rules of ``doc(id)``).
        """
        c = Compiler(self.dialect)
        where = self._where(c, app, collection, query)
        lock = " FOR UPDATE" if self.is_pg else ""
        matched = modified = 0
        now = time.time()
        async with self.engine.begin() as conn:
            await self._begin_write(conn)
            rows = (await _execute(
                conn, f"SELECT seq, {self._body_sql()} FROM cloud_documents WHERE {where} ORDER BY seq{lock}",
                c.params)).all()
            changes = []
            for seq, raw in rows:
                body = self._load(raw)
                if check is not None:
                    result = check(present(body))
                    if result is not None:
                        await result
                matched += 1
                new = apply(update, body)
                new["_id"] = body["_id"]
                if new.get("_openid") is not None and not isinstance(new["_openid"], str):
                    raise QueryError("_openid must be a string")
                if dumps(new) != dumps(body):
                    modified += 1
                    changes.append({"seq": seq, "body": self._encode(new), "openid": new.get("_openid"),
                                    "now": now})
            if changes:
                await conn.execute(text(
                    f"UPDATE cloud_documents SET body = {self._body_param('body')}, openid = :openid, "
                    f"updated_at = :now WHERE seq = :seq"), changes)
        return matched, modified

    async def replace(
        self, app: str, collection: str, doc_id: str, body: dict[str, Any], *,
        check_existing: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None,
        check_new: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None,
        openid_for_new: str | None = None,
    ) -> tuple[int, int]:
        """``doc(id).set(body)``: replace the document, or create it. ``(updated, created)``.

        ``_id`` stays; ``_openid`` stays as stored unless ``body`` sets one (server side).
        """
        self._scope(app, collection)
        check_doc_id(doc_id)
        now = time.time()
        async with self.engine.begin() as conn:
            await self._begin_write(conn)
            lock = " FOR UPDATE" if self.is_pg else ""
            row = (await conn.execute(text(
                f"SELECT seq, {self._body_sql()} FROM cloud_documents WHERE app = :app AND collection = :c "
                f"AND doc_id = :id{lock}"), {"app": app, "c": collection, "id": doc_id})).first()
            new = dict(body)
            new["_id"] = doc_id
            if row is None:
                if openid_for_new is not None:
                    new["_openid"] = openid_for_new
                if check_new is not None:
                    result = check_new(new)
                    if result is not None:
                        await result
                await self.insert(app, collection, [new], conn=conn)
                return 0, 1
            old = self._load(row[1])
            if check_existing is not None:
                result = check_existing(present(old))
                if result is not None:
                    await result
            if "_openid" not in new and "_openid" in old:
                new["_openid"] = old["_openid"]
            if dumps(new) == dumps(old):
                return 0, 0
            await conn.execute(text(
                f"UPDATE cloud_documents SET body = {self._body_param('body')}, openid = :openid, "
                f"updated_at = :now WHERE seq = :seq"),
                {"seq": row[0], "body": self._encode(new), "openid": new.get("_openid"), "now": now})
            return 1, 0

    async def remove_where(
        self, app: str, collection: str, query: Query, *,
        check: Callable[[dict[str, Any]], Awaitable[None] | None] | None = None,
    ) -> int:
        c = Compiler(self.dialect)
        where = self._where(c, app, collection, query)
        async with self.engine.begin() as conn:
            await self._begin_write(conn)
            if check is not None:
                lock = " FOR UPDATE" if self.is_pg else ""
                rows = (await _execute(
                    conn, f"SELECT seq, {self._body_sql()} FROM cloud_documents WHERE {where}{lock}",
                    c.params)).all()
                for _, raw in rows:
                    result = check(present(self._load(raw)))
                    if result is not None:
                        await result
                if not rows:
                    return 0
                seqs = [r[0] for r in rows]
                await conn.execute(text("DELETE FROM cloud_documents WHERE seq = :seq"),
                                   [{"seq": s} for s in seqs])
                return len(seqs)
            result = await _execute(conn, f"DELETE FROM cloud_documents WHERE {where}", c.params)
            return int(result.rowcount or 0)

    # ------------------------------------------------------------------ declared indexes

    def index_statements(self) -> list[str]:
        """``CREATE INDEX`` for each declared index: partial on the collection, expressions on
        the fields' values, and a partial index of the documents whose first field is an array
        (which "array contains" matches)."""
        out = []
        for collection, declared in sorted(self.indexes.items()):
            check_collection(collection)
            for fields in declared:
                paths = [split_path(f, where=f"collections.{collection}.indexes") for f in fields]
                name = self._index_name(collection, fields)
                values = [self.dialect.index_exprs(p)[0] for p in paths]
                first_type = self.dialect.index_exprs(paths[0])[1]
                if self.is_pg:  # app first: PostgreSQL combines both indexes in a BitmapOr
                    cols = ["app"] + [f"({v})" for v in values]
                else:  # expressions first: the SQLite prefilter looks them up without app
                    cols = values + ["app"]
                out.append(f"CREATE INDEX IF NOT EXISTS {name} ON cloud_documents "
                           f"({', '.join(cols)}) WHERE collection = '{collection}'")
                # the documents whose first field is an array ("contains" matches): usually none,
                # so a partial index the planners know to be tiny
                out.append(f"CREATE INDEX IF NOT EXISTS {name}_a ON cloud_documents (app) "
                           f"WHERE collection = '{collection}' AND {first_type} = 'array'")
        return out

    @staticmethod
    def _index_name(collection: str, fields: Sequence[str]) -> str:
        return "ix_cdoc_" + hashlib.sha1(f"{collection}:{list(fields)}".encode()).hexdigest()[:10]

    async def ensure_indexes(self) -> None:
        statements = self.index_statements()
        if statements:
            async with self.engine.begin() as conn:
                for statement in statements:
                    await conn.execute(text(statement))
        self.created_indexes = {self._index_name(c, f) for c, declared in self.indexes.items() for f in declared}


def parse_order(orders: Iterable[Any]) -> tuple[tuple[tuple[str, ...], bool], ...]:
    """``[["field", "asc"|"desc"], ...]`` (or ``{"field", "direction"}`` objects)."""
    out = []
    for item in orders:
        if isinstance(item, dict):
            item = [item.get("field", item.get("fieldPath")), item.get("direction", "asc")]
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise InvalidParameter("orderBy: each entry is [field, \"asc\" | \"desc\"]")
        path, direction = item
        if direction not in ("asc", "desc"):
            raise InvalidParameter(f"orderBy: direction must be \"asc\" or \"desc\", got {direction!r}")
        out.append((split_path(path, where="orderBy"), direction == "desc"))
    if len(out) > 8:
        raise InvalidParameter("orderBy: at most 8 fields")
    return tuple(out)


def check_skip_limit(skip: Any, limit: Any, *, default_limit: int, max_limit: int) -> tuple[int, int]:
    """Validate skip and limit; a limit above the maximum is lowered to it, as WeChat does."""
    if skip is None:
        skip = 0
    if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
        raise InvalidParameter("skip must be a non-negative integer")
    if limit is None:
        limit = default_limit
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
        raise InvalidParameter("limit must be a non-negative integer")
    return skip, min(limit, max_limit)
