"""``context.db`` and ``csbot.cloud.Database``: WeChat's server-side database API in Python.

    _ = db.command
    await db.collection("orders").add({"status": "paid", "total": 30})      # → {"_id": ...}
    await db.collection("orders").where({"total": _.gt(20)}).order_by("total", "desc").get()
    await db.collection("orders").doc(order_id).update({"status": "shipped"})

Server side means no security rules (like cloud functions): rules apply to mini programs only.
``get()`` returns 100 documents unless ``limit()`` says otherwise, at most 1000.
Dates: a ``datetime`` or ``db.server_date()`` is stored as ``{"$date": epoch ms}`` and read
back in that form (MongoDB's extended JSON, what the mini-program client turns into a Date).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Any, AsyncIterator

from csbot.cloud.database.commands import Command, RegExp, ServerDate, serialize_condition, serialize_update
from csbot.cloud.database.errors import DatabaseError, DocumentNotFound, InvalidParameter
from csbot.cloud.database.query import Field, Eq, And, parse_query
from csbot.cloud.database.store import (
    DocumentStore, FindSpec, Projection, check_collection, check_doc_id, check_skip_limit, parse_order,
)
from csbot.cloud.database.update import parse_update, replacement

SERVER_DEFAULT_LIMIT = 100
SERVER_MAX_LIMIT = 1000
MAX_ADD_BATCH = 1000


@dataclass(frozen=True)
class _QueryState:
    where: Any = None
    order: tuple[tuple[str, str], ...] = ()
    skip: int | None = None
    limit: int | None = None
    field: Any = None


class Query:
    """A query under construction; every method returns a new query (safe to reuse)."""

    def __init__(self, db: "Database", collection: str, state: _QueryState | None = None) -> None:
        self._db = db
        self._collection = collection
        self._state = state or _QueryState()

    def _with(self, **changes: Any) -> "Query":
        return Query(self._db, self._collection, replace(self._state, **changes))

    def where(self, condition: Any) -> "Query":
        return self._with(where=serialize_condition(condition))

    def order_by(self, field_path: str, direction: str = "asc") -> "Query":
        return self._with(order=self._state.order + ((field_path, direction),))

    orderBy = order_by  # noqa: N815 - the SDK's spelling

    def skip(self, n: int) -> "Query":
        return self._with(skip=n)

    def limit(self, n: int) -> "Query":
        return self._with(limit=n)

    def field(self, projection: dict[str, Any]) -> "Query":
        return self._with(field=projection)

    def _spec(self) -> FindSpec:
        skip, limit = check_skip_limit(self._state.skip, self._state.limit,
                                       default_limit=self._db.default_limit, max_limit=self._db.max_limit)
        return FindSpec(query=parse_query(self._state.where), order=parse_order(self._state.order),
                        skip=skip, limit=limit, projection=Projection.parse(self._state.field))

    async def get(self) -> dict[str, Any]:
        """``{"data": [documents]}``."""
        async with self._db._metered(self._collection, "get"):
            return {"data": await self._db.store.find(self._db.app, self._collection, self._spec())}

    async def count(self) -> dict[str, Any]:
        """``{"total": n}``."""
        async with self._db._metered(self._collection, "count"):
            total = await self._db.store.count(self._db.app, self._collection, parse_query(self._state.where))
            return {"total": total}

    async def update(self, data: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Partial update of every matching document: ``{"stats": {"updated": n}}``."""
        data = kwargs.pop("data", data)
        async with self._db._metered(self._collection, "update"):
            upd = parse_update(serialize_update(data))
            _, modified = await self._db.store.update_where(
                self._db.app, self._collection, parse_query(self._state.where), upd)
            return {"stats": {"updated": modified}}

    async def remove(self) -> dict[str, Any]:
        """Remove every matching document: ``{"stats": {"removed": n}}``."""
        async with self._db._metered(self._collection, "remove"):
            removed = await self._db.store.remove_where(self._db.app, self._collection,
                                                        parse_query(self._state.where))
            return {"stats": {"removed": removed}}


class CollectionReference(Query):
    """``db.collection(name)``: a query over the whole collection, plus ``add`` and ``doc``."""

    def __init__(self, db: "Database", name: str) -> None:
        super().__init__(db, check_collection(name))
        self.name = name

    def doc(self, doc_id: str) -> "DocumentReference":
        return DocumentReference(self._db, self.name, check_doc_id(doc_id))

    async def add(self, data: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Add a document (``{"_id"}``) or a list of documents (``{"_ids": [...]}``).

        An ``_id`` is generated when absent; a supplied one must not exist yet."""
        data = kwargs.pop("data", data)
        async with self._db._metered(self.name, "add"):
            many = isinstance(data, list)
            items = data if many else [data]
            if not items or len(items) > MAX_ADD_BATCH:
                raise InvalidParameter(f"add needs 1 to {MAX_ADD_BATCH} documents")
            from csbot.cloud.database.commands import serialize_value

            bodies = [self._db.store.prepare_new(serialize_value(d)) for d in items]
            ids = await self._db.store.insert(self._db.app, self.name, bodies)
            return {"_ids": ids} if many else {"_id": ids[0]}


class DocumentReference:
    """``collection.doc(id)``."""

    def __init__(self, db: "Database", collection: str, doc_id: str) -> None:
        self._db = db
        self._collection = collection
        self.id = doc_id

    def _query(self) -> Any:
        return Field(("_id",), Eq(self.id))

    async def get(self) -> dict[str, Any]:
        """``{"data": document}``; raises :class:`DocumentNotFound` when there is none."""
        async with self._db._metered(self._collection, "doc.get"):
            doc = await self._db.store.get(self._db.app, self._collection, self.id)
            if doc is None:
                raise DocumentNotFound(f"document {self.id!r} does not exist in {self._collection!r}")
            return {"data": doc}

    async def set(self, data: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Replace the whole document (created when absent):
        ``{"_id", "stats": {"updated", "created"}}``."""
        data = kwargs.pop("data", data)
        async with self._db._metered(self._collection, "doc.set"):
            from csbot.cloud.database.commands import serialize_value

            body = replacement(serialize_value(data))
            if "_id" in body and body["_id"] != self.id:
                raise InvalidParameter("data._id differs from the document's id")
            updated, created = await self._db.store.replace(self._db.app, self._collection, self.id, body)
            return {"_id": self.id, "stats": {"updated": updated, "created": created}}

    async def update(self, data: Any = None, **kwargs: Any) -> dict[str, Any]:
        """Partial update: ``{"stats": {"updated": 0 | 1}}``."""
        data = kwargs.pop("data", data)
        async with self._db._metered(self._collection, "doc.update"):
            upd = parse_update(serialize_update(data))
            _, modified = await self._db.store.update_where(self._db.app, self._collection, self._query(), upd)
            return {"stats": {"updated": modified}}

    async def remove(self) -> dict[str, Any]:
        """``{"stats": {"removed": 0 | 1}}``."""
        async with self._db._metered(self._collection, "doc.remove"):
            removed = await self._db.store.remove_where(self._db.app, self._collection, self._query())
            return {"stats": {"removed": removed}}


class Database:
    """One app's collections, server side (no security rules)."""

    command = Command()

    def __init__(self, store: DocumentStore, app: str = "default", *,
                 default_limit: int = SERVER_DEFAULT_LIMIT, max_limit: int = SERVER_MAX_LIMIT) -> None:
        self.store = store
        self.app = app
        self.default_limit = default_limit
        self.max_limit = max_limit
        self._engine_owned: Any = None

    @staticmethod
    def RegExp(regexp: str, options: str = "") -> RegExp:  # noqa: N802 - the SDK's name
        return RegExp(regexp, options)

    @staticmethod
    def server_date(offset: float = 0) -> ServerDate:
        """The server's clock (plus ``offset`` ms) when the operation runs; stored as a date."""
        return ServerDate(offset)

    serverDate = server_date  # noqa: N815 - the SDK's spelling

    def collection(self, name: str) -> CollectionReference:
        return CollectionReference(self, name)

    async def collections(self) -> list[dict[str, Any]]:
        """``[{"name", "count"}]`` of the collections that hold documents."""
        return [{"name": n, "count": c} for n, c in await self.store.collections(self.app)]

    @contextlib.asynccontextmanager
    async def _metered(self, collection: str, operation: str) -> AsyncIterator[None]:
        try:
            yield
        except DatabaseError as exc:
            self.store.count_op(self.app, collection, operation, outcome_of(exc))
            raise
        except Exception:
            self.store.count_op(self.app, collection, operation, "error")
            raise
        self.store.count_op(self.app, collection, operation, "ok")

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(cls, database_url: str | None = None, app: str = "default",
                      **store_options: Any) -> AsyncIterator["Database"]:
        """For scripts: ``async with Database.connect(url) as db: ...`` (``url`` defaults to
        ``CSBOT_DATABASE_URL``; SQLite is migrated, PostgreSQL must be current: ``csbot
        migrate``). ``store_options`` (``max_document_size``, ``indexes``) go to the store."""
        import os

        from csbot.store import make_engine
        from csbot.store.migrate import ensure_schema

        url = database_url or os.environ.get("CSBOT_DATABASE_URL") or "sqlite+aiosqlite:///csbot.db"
        engine = make_engine(url)
        try:
            await ensure_schema(engine, url, auto_upgrade=url.startswith("sqlite"))
            yield cls(DocumentStore(engine, **store_options), app)
        finally:
            await engine.dispose()


def outcome_of(exc: DatabaseError) -> str:
    return {400: "invalid", 403: "denied", 404: "not_found", 413: "too_large"}.get(exc.status, "error")


__all__ = ["Database", "CollectionReference", "DocumentReference", "Query", "And"]
