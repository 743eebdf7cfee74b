"""The database's HTTP routes: ``/cloud/db/...`` (mini programs) and ``/tcb/database*`` (servers).

Mini programs (session token, security rules, shapes fixed by the client library)::

    POST /cloud/db/{collection}/get     {"where", "orderBy": [["f", "asc"|"desc"]], "skip", "limit", "field"}
                                        → {"data": [...]}
    POST /cloud/db/{collection}/count   {"where"}          → {"total": n}
    POST /cloud/db/{collection}/add     {"data": {...}}    → {"_id": "..."}
    POST /cloud/db/{collection}/update  {"where", "data"}  → {"stats": {"updated": n}}
    POST /cloud/db/{collection}/remove  {"where"}          → {"stats": {"removed": n}}
    GET|PATCH|PUT|DELETE /cloud/db/{collection}/doc/{id}  → {"data"} | {"stats": {...}}

Errors: ``{"errCode", "errMsg"}`` with 400 (bad query), 401 (no session), 403 (rule), 404,
413. Servers (``CSBOT_SERVER_KEY``, no rules) use WeChat's ``tcb`` shapes at ``/tcb/database*``
with ``query`` as WeChat's statement string (parsed by ``jsquery``, never run) or as JSON.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from csbot.cloud.database.access import ClientDatabase
from csbot.cloud.database.api import SERVER_MAX_LIMIT
from csbot.cloud.database.commands import serialize_condition, serialize_update, serialize_value
from csbot.cloud.database.errors import DatabaseError, InvalidParameter
from csbot.cloud.database.jsquery import ParsedStatement, parse_statement
from csbot.cloud.database.query import Eq, Field, parse_query
from csbot.cloud.database.store import (
    DocumentStore, FindSpec, JsonTexts, Projection, check_collection, check_skip_limit, parse_order,
)
from csbot.cloud.database.update import parse_update, replacement
from csbot.cloud.apidoc import TCB_PATHS, tcb_operation
from csbot.cloud.http import TcbError, cloud_error, tcb_endpoint
from csbot.services import services_of

log = logging.getLogger("csbot.cloud.database")

#: ``databasequery`` returns 10 documents unless the statement says ``limit()`` (WeChat's default)
TCB_DEFAULT_LIMIT = 10
TOO_LARGE = -502007
TCB_MAX_BATCH = 1000


def _store(request: web.Request) -> DocumentStore | None:
    return services_of(request).database


def _json(payload: Any, status: int = 200) -> web.Response:
    data = payload.get("data") if isinstance(payload, dict) and len(payload) == 1 else None
    if isinstance(data, JsonTexts):  # documents as stored: spliced, not decoded and re-encoded
        return web.Response(body=('{"data":[' + ",".join(data) + "]}").encode("utf-8"), status=status,
                            content_type="application/json")
    return web.json_response(payload, status=status, dumps=lambda v: json.dumps(v, ensure_ascii=False))


async def _read_object(request: web.Request, limit: int) -> Any:
    """The JSON body (an empty body is ``{}``), or an error response saying what is wrong."""
    if request.content_length is not None and request.content_length > limit:
        return cloud_error(413, f"request body larger than {limit} bytes", TOO_LARGE)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return cloud_error(413, f"request body larger than {limit} bytes", TOO_LARGE)
    if len(raw) > limit:
        return cloud_error(413, f"request body larger than {limit} bytes", TOO_LARGE)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return cloud_error(400, "the body is not a JSON object", InvalidParameter.code)
    if not isinstance(body, dict):
        return cloud_error(400, "the body must be a JSON object", InvalidParameter.code)
    return body


# ----------------------------------------------------------------------------- /cloud/db


def _client_route(operation: str, *, with_body: bool = True):  # type: ignore[no-untyped-def]
    async def route(request: web.Request) -> web.StreamResponse:
        from csbot.cloud.sessions import require_session  # csbot.cloud.sessions: 401 when absent

        session = await require_session(request)
        services = services_of(request)
        store = services.database
        if store is None:
            return cloud_error(503, "starting, retry shortly", -1)
        body: Any = {}
        if with_body:
            body = await _read_object(request, store.max_document_size + 64 * 1024)
            if isinstance(body, web.Response):
                return body
        client = ClientDatabase(store, services.settings.collection_rules, session.app, session.openid,
                                encoded_reads=True)
        collection = request.match_info["collection"]
        try:
            result = await client.run(collection, operation, body, request.match_info.get("id"))
        except DatabaseError as exc:
            log.info("cloud db %s %s/%s by %s refused (%s): %s", operation, session.app, collection,
                     session.openid, exc.status, exc.message)
            return cloud_error(exc.status, exc.message, exc.code)
        return _json(result)

    return route


def database_routes() -> list[web.RouteDef]:
    base = "/cloud/db/{collection}"
    return [
        web.post(f"{base}/get", _client_route("get")),
        web.post(f"{base}/count", _client_route("count")),
        web.post(f"{base}/add", _client_route("add")),
        web.post(f"{base}/update", _client_route("update")),
        web.post(f"{base}/remove", _client_route("remove")),
        web.get(f"{base}/doc/{{id}}", _client_route("doc.get", with_body=False)),
        web.patch(f"{base}/doc/{{id}}", _client_route("doc.update")),
        web.put(f"{base}/doc/{{id}}", _client_route("doc.set")),
        web.delete(f"{base}/doc/{{id}}", _client_route("doc.remove", with_body=False)),
    ]


# ----------------------------------------------------------------------------- /tcb/database*


def statement_of(payload: Any, action: str | None = None) -> ParsedStatement:
    """``query``: WeChat's statement string, or the same request as JSON: ``{"collection",
    "where", "orderBy", "skip", "limit", "field", "doc", "data"}`` (the endpoint gives the
    action: get, count, add, update or remove)."""
    query = payload.get("query") if isinstance(payload, dict) else None
    if isinstance(query, str):
        return parse_statement(query)
    if isinstance(query, dict):
        collection = query.get("collection")
        if not isinstance(collection, str):
            raise InvalidParameter("query.collection is required")
        return ParsedStatement(collection=collection, action=action, where=query.get("where"),
                               order=list(query.get("orderBy") or []),
                               skip=query.get("skip"), limit=query.get("limit"), field=query.get("field"),
                               doc_id=query.get("doc"), data=query.get("data"))
    raise InvalidParameter("query is required: a statement such as db.collection(\"x\").get() or a JSON object")


def _where(st: ParsedStatement) -> Any:
    where = parse_query(serialize_condition(st.where) if st.where is not None else None)
    if st.doc_id is not None:
        doc_query = Field(("_id",), Eq(st.doc_id))
        from csbot.cloud.database.query import And, MatchAll

        where = doc_query if isinstance(where, MatchAll) else And((doc_query, where))
    return where


def _expect(st: ParsedStatement, *actions: str) -> None:
    if st.action not in actions:
        raise InvalidParameter(f"this endpoint runs .{'() or .'.join(actions)}(), "
                               f"the query ends with .{st.action or 'nothing'}()")


def tcb_routes() -> list[web.RouteDef]:
    def tcb(operation: str, handler: Any, action: str) -> Any:
        async def run(request: web.Request, app: str, payload: Any) -> dict[str, Any]:
            store = _store(request)
            if store is None:
                raise TcbError(-1, "starting, retry shortly", 503)
            st: ParsedStatement | None = None
            try:
                st = statement_of(payload, action)
                check_collection(st.collection)
                result = await handler(store, app, st)
            except DatabaseError as exc:
                store.count_op(app, st.collection if st else "(unknown)", f"tcb.{operation}",
                               "denied" if exc.status == 403 else "invalid")
                # WeChat: -501007 invalid parameter / -502xxx database errors, in errcode
                raise TcbError(exc.code, exc.message, exc.status) from None
            store.count_op(app, st.collection, f"tcb.{operation}", "ok")
            return result

        return tcb_endpoint()(run)

    async def query(store: DocumentStore, app: str, st: ParsedStatement) -> dict[str, Any]:
        _expect(st, "get")
        skip, limit = check_skip_limit(st.skip, st.limit, default_limit=TCB_DEFAULT_LIMIT, max_limit=SERVER_MAX_LIMIT)
        where = _where(st)
        spec = FindSpec(query=where, order=parse_order(st.order), skip=skip, limit=limit,
                        projection=Projection.parse(st.field))
        docs = await store.find(app, st.collection, spec)
        total = await store.count(app, st.collection, where)
        return {"pager": {"Offset": skip, "Limit": limit, "Total": total},
                "data": [json.dumps(d, ensure_ascii=False) for d in docs]}

    async def count(store: DocumentStore, app: str, st: ParsedStatement) -> dict[str, Any]:
        _expect(st, "count")
        return {"count": await store.count(app, st.collection, _where(st))}

    async def add(store: DocumentStore, app: str, st: ParsedStatement) -> dict[str, Any]:
        _expect(st, "add")
        items = st.data if isinstance(st.data, list) else [st.data]
        if not items or len(items) > TCB_MAX_BATCH:
            raise InvalidParameter(f"add needs 1 to {TCB_MAX_BATCH} documents")
        bodies = [store.prepare_new(serialize_value(d)) for d in items]
        return {"id_list": await store.insert(app, st.collection, bodies)}

    async def update(store: DocumentStore, app: str, st: ParsedStatement) -> dict[str, Any]:
        _expect(st, "update", "set")
        if st.action == "set":
            if st.doc_id is None:
                raise InvalidParameter(".set() needs .doc(id)")
            updated, created = await store.replace(app, st.collection, st.doc_id, replacement(serialize_value(st.data)))
            return {"matched": 1 - created, "modified": updated, "id": st.doc_id if created else ""}
        matched, modified = await store.update_where(app, st.collection, _where(st),
                                                     parse_update(serialize_update(st.data)))
        return {"matched": matched, "modified": modified, "id": ""}

    async def delete(store: DocumentStore, app: str, st: ParsedStatement) -> dict[str, Any]:
        _expect(st, "remove")
        return {"deleted": await store.remove_where(app, st.collection, _where(st))}

    return [
        web.post("/tcb/databasequery", tcb("query", query, "get")),
        web.post("/tcb/databasecount", tcb("count", count, "count")),
        web.post("/tcb/databaseadd", tcb("add", add, "add")),
        web.post("/tcb/databaseupdate", tcb("update", update, "update")),
        web.post("/tcb/databasedelete", tcb("delete", delete, "remove")),
    ]


# ----------------------------------------------------------------------------- OpenAPI

_QUERY_REQUEST = {
    "type": "object", "required": ["env", "query"],
    "properties": {
        "env": {"type": "string", "description": "the csbot app (default: the CSBOT_* app)"},
        "query": {"oneOf": [
            {"type": "string", "description": "WeChat's statement, e.g. db.collection(\"geo\").where({done: true})"
                                              ".limit(10).get(); parsed, never evaluated"},
            {"type": "object", "description": "the same as JSON",
             "properties": {"collection": {"type": "string"}, "where": {"type": "object"},
                            "orderBy": {"type": "array", "items": {"type": "array", "items": {"type": "string"}}},
                            "skip": {"type": "integer"}, "limit": {"type": "integer"},
                            "field": {"type": "object"}, "doc": {"type": "string"}, "data": {}},
             "required": ["collection"]}]},
    },
}
_INT = {"type": "integer"}
for _name, _summary, _answer in (
    ("databasequery", "Query documents (… .get())",
     {"required": ["pager", "data"], "properties": {
         "pager": {"type": "object", "properties": {"Offset": _INT, "Limit": _INT, "Total": _INT}},
         "data": {"type": "array", "items": {"type": "string", "description": "a document as a JSON string"}}}}),
    ("databasecount", "Count documents (… .count())", {"required": ["count"], "properties": {"count": _INT}}),
    ("databaseadd", "Add documents (… .add({data: [...]}))",
     {"required": ["id_list"], "properties": {"id_list": {"type": "array", "items": {"type": "string"}}}}),
    ("databaseupdate", "Update documents (… .update({data}) or .doc(id).set({data}))",
     {"required": ["matched", "modified", "id"], "properties": {
         "matched": _INT, "modified": _INT, "id": {"type": "string"}}}),
    ("databasedelete", "Remove documents (… .remove())", {"required": ["deleted"], "properties": {"deleted": _INT}}),
):
    TCB_PATHS[f"/{_name}"] = tcb_operation(_name, _summary, _QUERY_REQUEST, _answer, tags=["database"])
