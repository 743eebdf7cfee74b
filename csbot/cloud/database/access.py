"""Mini-program access: each ``/cloud/db`` operation with the caller's openid and the rules.

The HTTP layer (``http.py``) only reads requests and writes answers; everything that decides
(placeholders, limits, rules, ownership of ``_openid``) is here, so it is tested without HTTP.

- ``"{openid}"`` anywhere in ``where`` or ``data`` becomes the caller's openid.
- ``get`` returns 20 documents by default and at most 20, as WeChat's client does.
- ``where`` operations are checked with query-subset semantics; ``doc(id)`` operations
  against the stored document; ``add`` against the new document.
- Documents a client adds carry ``_openid`` = the caller; a client never writes ``_id`` in an
  update nor anyone's ``_openid``.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from csbot.cloud.database.errors import DatabaseError, DocumentNotFound, InvalidParameter, PermissionDenied
from csbot.cloud.database.query import Eq, Field, parse_query
from csbot.cloud.database.rules import ADMIN_ONLY, CollectionRules, check_document, check_query
from csbot.cloud.database.store import (
    DocumentStore, FindSpec, Projection, check_collection, check_doc_id, check_skip_limit, parse_order,
)
from csbot.cloud.database.update import parse_update, replacement

CLIENT_DEFAULT_LIMIT = 20
CLIENT_MAX_LIMIT = 20
OPENID_PLACEHOLDER = "{openid}"


def replace_placeholder(value: Any, openid: str) -> Any:
    if value == OPENID_PLACEHOLDER:
        return openid
    if isinstance(value, dict):
        return {k: replace_placeholder(v, openid) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_placeholder(v, openid) for v in value]
    return value


def _now_ms() -> int:
    return int(time.time() * 1000)


class ClientDatabase:
    """The database as one mini-program user may use it."""

    def __init__(self, store: DocumentStore, rules: Mapping[str, CollectionRules], app: str, openid: str,
                 *, encoded_reads: bool = False) -> None:
        self.store = store
        self.rules = rules
        self.app = app
        self.openid = openid
        #: ``get`` answers documents as JSON text (:class:`JsonTexts`) for the HTTP layer to splice
        self.encoded_reads = encoded_reads

    def _rules(self, collection: str) -> CollectionRules:
        return self.rules.get(collection, ADMIN_ONLY)

    def metric_label(self, collection: str) -> str:
        """Collections named in the configuration by name; anything else as one label (a client
        must not be able to create unbounded metric series)."""
        return collection if collection in self.rules else "(undeclared)"

    async def run(self, collection: str, operation: str, body: Mapping[str, Any], doc_id: str | None = None) -> Any:
        """Run one operation and count it (``csbot_cloud_db_operations_total``)."""
        label = self.metric_label(collection)
        try:
            check_collection(collection)
            if doc_id is not None:
                check_doc_id(doc_id)
            if not isinstance(body, Mapping):
                raise InvalidParameter("the body must be a JSON object")
            body = replace_placeholder(dict(body), self.openid)
            result = await getattr(self, f"_{operation.replace('.', '_')}")(collection, body, doc_id)
        except DatabaseError as exc:
            from csbot.cloud.database.api import outcome_of

            self.store.count_op(self.app, label, operation, outcome_of(exc))
            raise
        except Exception:
            self.store.count_op(self.app, label, operation, "error")
            raise
        self.store.count_op(self.app, label, operation, "ok")
        return result

    def _check_query(self, collection: str, operation: str, query: Any, data: Any = None) -> None:
        check_query(self._rules(collection), collection, operation, query, openid=self.openid, data=data,
                    now_ms=_now_ms())

    def _check_doc(self, collection: str, operation: str, doc: Any, data: Any = None) -> None:
        check_document(self._rules(collection), collection, operation, doc, openid=self.openid, data=data,
                       now_ms=_now_ms())

    def _own_openid_only(self, data: Any) -> None:
        if isinstance(data, dict) and "_openid" in data and data["_openid"] != self.openid:
            raise PermissionDenied("a mini program may not write another user's _openid")

    def _parse_client_update(self, data: Any) -> Any:
        update = parse_update(data)
        if "_openid" in update.touches():
            raise PermissionDenied("a mini program may not change _openid")
        return update

    # -- where operations

    async def _get(self, collection: str, body: dict[str, Any], _: Any) -> dict[str, Any]:
        query = parse_query(body.get("where"))
        skip, limit = check_skip_limit(body.get("skip"), body.get("limit"),
                                       default_limit=CLIENT_DEFAULT_LIMIT, max_limit=CLIENT_MAX_LIMIT)
        spec = FindSpec(query=query, order=parse_order(body.get("orderBy") or []), skip=skip, limit=limit,
                        projection=Projection.parse(body.get("field")))
        self._check_query(collection, "read", query)
        if self.encoded_reads:
            return {"data": await self.store.find_json(self.app, collection, spec)}
        return {"data": await self.store.find(self.app, collection, spec)}

    async def _count(self, collection: str, body: dict[str, Any], _: Any) -> dict[str, Any]:
        query = parse_query(body.get("where"))
        self._check_query(collection, "read", query)
        return {"total": await self.store.count(self.app, collection, query)}

    async def _add(self, collection: str, body: dict[str, Any], _: Any) -> dict[str, Any]:
        data = body.get("data")
        if not isinstance(data, dict):
            raise InvalidParameter("add needs {\"data\": {...}} (one document)")
        self._own_openid_only(data)
        doc = self.store.prepare_new(data, openid=self.openid)
        self._check_doc(collection, "create", doc, data)
        ids = await self.store.insert(self.app, collection, [doc])
        return {"_id": ids[0]}

    async def _update(self, collection: str, body: dict[str, Any], _: Any) -> dict[str, Any]:
        query = parse_query(body.get("where"))
        data = body.get("data")
        update = self._parse_client_update(data)
        self._check_query(collection, "update", query, data)
        _, modified = await self.store.update_where(self.app, collection, query, update)
        return {"stats": {"updated": modified}}

    async def _remove(self, collection: str, body: dict[str, Any], _: Any) -> dict[str, Any]:
        query = parse_query(body.get("where"))
        self._check_query(collection, "delete", query)
        return {"stats": {"removed": await self.store.remove_where(self.app, collection, query)}}

    # -- doc(id) operations: checked against the stored document

    async def _doc_get(self, collection: str, body: dict[str, Any], doc_id: str) -> dict[str, Any]:
        doc = await self.store.get(self.app, collection, doc_id)
        if doc is None:
            raise DocumentNotFound(f"document {doc_id!r} does not exist in {collection!r}")
        self._check_doc(collection, "read", doc)
        return {"data": doc}

    async def _doc_update(self, collection: str, body: dict[str, Any], doc_id: str) -> dict[str, Any]:
        data = body.get("data")
        update = self._parse_client_update(data)
        _, modified = await self.store.update_where(
            self.app, collection, Field(("_id",), Eq(doc_id)), update,
            check=lambda doc: self._check_doc(collection, "update", doc, data))
        return {"stats": {"updated": modified}}

    async def _doc_set(self, collection: str, body: dict[str, Any], doc_id: str) -> dict[str, Any]:
        data = body.get("data")
        new = replacement(data)
        self._own_openid_only(new)
        if new.get("_id", doc_id) != doc_id:
            raise InvalidParameter("data._id differs from the document's id")
        new.pop("_openid", None)  # the stored owner stays; a new document gets the caller
        updated, created = await self.store.replace(
            self.app, collection, doc_id, new,
            check_existing=lambda doc: self._check_doc(collection, "update", doc, data),
            check_new=lambda doc: self._check_doc(collection, "create", doc, data),
            openid_for_new=self.openid)
        return {"stats": {"updated": updated, "created": created}}

    async def _doc_remove(self, collection: str, body: dict[str, Any], doc_id: str) -> dict[str, Any]:
        removed = await self.store.remove_where(
            self.app, collection, Field(("_id",), Eq(doc_id)),
            check=lambda doc: self._check_doc(collection, "delete", doc))
        return {"stats": {"removed": removed}}
