"""The review HTTP API under ``/api/``: JSON, bearer-token authenticated, described at /api/openapi.json.

Always mounted. Every call needs ``Authorization: Bearer <token>``: the admin token when
``CSBOT_ADMIN_TOKEN`` is set (compared in constant time; acts as an admin named by the body's
``agent``/``author``, default ``api``; an unset token matches nothing) or an agent's API token from
``csbot agents token NAME`` (acts as that agent, with that agent's role; the body's names are
ignored). A missing or wrong token gets 401. Every error is a short JSON ``{"error": "..."}``
with a 4xx status; nothing else leaks.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from csbot.review import i18n
from csbot.review.audit import Actor
from csbot.review.i18n import N_
from csbot.review.cli import CSV_BOM, format_batch
from csbot.review.service import (ASSIGNED_FILTERS, STATUSES, Conflict, Invalid, NotYours, ReviewError,
                                  parse_time)
from csbot.services import Services

log = logging.getLogger("csbot.review.api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def bearer_ok(request: web.Request, token: str) -> bool:
    header = request.headers.get("Authorization", "")
    scheme, _, given = header.partition(" ")
    if not token or scheme.lower() != "bearer" or not given.strip():
        return False  # no admin token set: nothing matches it, not even an empty one
    return hmac.compare_digest(given.strip().encode("utf-8"), token.encode("utf-8"))


ACTOR: Any = web.RequestKey("csbot_actor", Actor) if hasattr(web, "RequestKey") else "csbot_actor"


def actor_for(request: web.Request, name: str | None = None) -> Actor:
    """Who this request acts as: its agent token's agent, or (admin token) an admin called ``name``."""
    actor: Actor = request[ACTOR]
    if actor.agent_id is None:
        return Actor(name=name or "api", role="admin", address=actor.address)
    return actor


def make_middlewares(token: str, services: Services | None = None) -> list[Any]:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        # errors in the caller's language (Accept-Language; English when it names none we have)
        i18n.activate(i18n.from_accept_language(request.headers.get("Accept-Language")) or i18n.DEFAULT)
        try:
            return await handler(request)
        except ReviewError as exc:
            headers = {"Retry-After": str(exc.retry_after)} if hasattr(exc, "retry_after") else {}
            return json_error(exc.status, exc.localized(), **headers)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {k: v for k, v in exc.headers.items() if k in ("Allow", "WWW-Authenticate")}
            return json_error(exc.status, i18n.gettext(exc.reason), **headers)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("review API: unexpected error on %s %s", request.method, request.path)
            return json_error(500, i18n.gettext(N_("internal error")))

    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if bearer_ok(request, token):
            request[ACTOR] = Actor(name="api", role="admin", address=request.remote)
            return await handler(request)
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        agent = None
        if services is not None and scheme.lower() == "bearer" and given.strip():
            agent = await services.agents.by_token(given.strip(), address=request.remote)
        if agent is None:
            log.warning("review API: refused %s %s from %s: missing or wrong bearer token",
                        request.method, request.path, request.remote)
            message = (N_("missing or wrong bearer token") if token else
                       N_("missing or wrong bearer token; CSBOT_ADMIN_TOKEN is not set, so only agents' tokens "
                          "work: csbot agents add NAME --role admin, then csbot agents token NAME"))
            return json_error(401, i18n.gettext(message), **{"WWW-Authenticate": "Bearer"})
        request[ACTOR] = agent
        return await handler(request)

    return [errors, auth]


async def read_object(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.read()
        data = json.loads(body or b"null")
    except web.HTTPRequestEntityTooLarge:
        raise
    except (ValueError, UnicodeDecodeError):
        raise Invalid(N_("the body must be a JSON object")) from None
    if not isinstance(data, dict):
        raise Invalid(N_("the body must be a JSON object"))
    return data


def int_param(request: web.Request, name: str, default: int | None, lo: int, hi: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise Invalid(N_("%(name)s must be an integer"), name=name) from None
    if not lo <= value <= hi:
        raise Invalid(N_("%(name)s must be between %(lo)s and %(hi)s"), name=name, lo=lo, hi=hi)
    return value


def bool_param(request: web.Request, name: str) -> bool:
    raw = (request.query.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise Invalid(N_("%(name)s must be true or false"), name=name)


def optional_str(data: dict[str, Any], name: str) -> str | None:
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise Invalid(N_("%(name)s must be a string"), name=name)
    return value


def build_api(services: Services) -> web.Application:
    """The ``/api`` sub-application; ``services.review`` is the started service's :class:`Review`."""
    api = web.Application(middlewares=make_middlewares(services.settings.admin_token, services))
    routes = web.RouteTableDef()

    @routes.get("/conversations")
    async def list_conversations(request: web.Request) -> web.Response:
        q = request.query
        status = q.get("status") or None
        if status is not None and status not in STATUSES:
            raise Invalid(N_("status must be one of %(choices)s"), choices=", ".join(STATUSES))
        assigned = q.get("assigned") or None
        if assigned is not None and assigned not in ASSIGNED_FILTERS:
            raise Invalid(N_("assigned must be one of %(choices)s"), choices=", ".join(ASSIGNED_FILTERS))
        page = await services.review.list_conversations(
            app=q.get("app") or None, status=status, since=parse_time(q.get("since")),
            search=(q.get("search") or None), limit=int_param(request, "limit", 50, 1, 500),
            cursor=q.get("cursor") or None, assigned=assigned, viewer=request[ACTOR],
            undelivered=bool_param(request, "undelivered"))
        return web.json_response({"conversations": page.conversations, "next_cursor": page.next_cursor})

    @routes.get("/conversations/{app}/{openid}")
    async def thread(request: web.Request) -> web.Response:
        limit = int_param(request, "limit", 500, 1, 5000)
        before = int_param(request, "before", None, 1, 2**62)
        result = await services.review.thread(request.match_info["app"], request.match_info["openid"],
                                         limit=limit, before=before, viewer=request[ACTOR])
        return web.json_response({k: result[k] for k in ("conversation", "items", "truncated")})

    @routes.post("/conversations/{app}/{openid}/reply")
    async def reply(request: web.Request) -> web.Response:
        data = await read_object(request)
        agent = optional_str(data, "agent") or "api"
        app, openid = request.match_info["app"], request.match_info["openid"]
        by = actor_for(request, agent)
        message_id = await services.review.reply(app, openid, data.get("text"), agent=by.name, by=by,
                                                 key=request.headers.get("Idempotency-Key") or None)
        conv = await services.review.conversation(app, openid)
        return web.json_response({"message_id": message_id, "status": "queued", "conversation": conv},
                                 status=202)

    @routes.post("/conversations/{app}/{openid}/status")
    async def status(request: web.Request) -> web.Response:
        data = await read_object(request)
        if data.get("status") not in STATUSES:
            raise Invalid(N_("status must be one of %(choices)s"), choices=", ".join(STATUSES))
        agent = optional_str(data, "agent")
        by = actor_for(request, agent)
        conv = await services.review.set_status(request.match_info["app"], request.match_info["openid"],
                                           data["status"], agent=by.name, by=by)
        return web.json_response({"conversation": conv})

    @routes.post("/conversations/{app}/{openid}/assign")
    async def assign(request: web.Request) -> web.Response:
        data = await read_object(request)
        if "agent" not in data:
            raise Invalid(N_("give agent: a name, or null to unassign"))
        agent = optional_str(data, "agent")
        by = actor_for(request, optional_str(data, "by"))
        conv = await services.review.assign(request.match_info["app"], request.match_info["openid"], agent or None,
                                       by=by, known_agents=await services.agents.names())
        return web.json_response({"conversation": conv})

    @routes.post("/conversations/{app}/{openid}/tags")
    async def tags(request: web.Request) -> web.Response:
        data = await read_object(request)
        result = await services.review.set_tags(request.match_info["app"], request.match_info["openid"],
                                           tags=data.get("tags"), add=data.get("add"), remove=data.get("remove"),
                                           by=actor_for(request, optional_str(data, "agent")))
        return web.json_response({"tags": result})

    @routes.post("/conversations/{app}/{openid}/notes")
    async def notes(request: web.Request) -> web.Response:
        data = await read_object(request)
        author = optional_str(data, "author") or "api"
        by = actor_for(request, author)
        note = await services.review.add_note(request.match_info["app"], request.match_info["openid"],
                                         data.get("text"), author=by.name, by=by)
        return web.json_response({"note": note}, status=201)

    @routes.post("/messages/{id}/retry")
    async def retry(request: web.Request) -> web.Response:
        data = await read_object(request) if request.can_read_body else {}
        actor = optional_str(data, "agent") or "api"
        try:
            message_id = int(request.match_info["id"])
        except ValueError:
            raise Invalid(N_("the message id must be an integer")) from None
        message = await services.review.retry(message_id, by=actor_for(request, actor))
        return web.json_response({"message": message, "status": "queued"}, status=202)

    @routes.get("/webhooks/deliveries")
    async def webhook_deliveries(request: web.Request) -> web.Response:
        from csbot.outbound_webhooks import list_deliveries

        if not request[ACTOR].is_admin:
            raise NotYours(N_("only an admin sees webhook deliveries"))
        q = request.query
        rows = await list_deliveries(services.sessionmaker, status=q.get("status") or None,  # type: ignore[arg-type]
                                     webhook=q.get("webhook") or None,
                                     limit=int_param(request, "limit", 50, 1, 1000) or 50)
        return web.json_response({"deliveries": rows})

    @routes.post("/webhooks/deliveries/{id}/redeliver")
    async def webhook_redeliver(request: web.Request) -> web.Response:
        from csbot.outbound_webhooks import redeliver

        if not request[ACTOR].is_admin:
            raise NotYours(N_("only an admin re-drives webhook deliveries"))
        try:
            delivery_id = int(request.match_info["id"])
        except ValueError:
            raise Invalid(N_("the delivery id must be an integer")) from None
        if not 0 < delivery_id < 2**62:
            raise Invalid(N_("the delivery id must be a positive integer"))
        if not await redeliver(services.sessionmaker, [delivery_id]):  # type: ignore[arg-type]
            raise Conflict(N_("delivery %(id)s does not exist or has not failed"), id=delivery_id)
        if services.webhooks is not None:
            services.webhooks.wake()
        return web.json_response({"id": delivery_id, "status": "pending"}, status=202)

    @routes.get("/export")
    async def export(request: web.Request) -> web.StreamResponse:
        if not request[ACTOR].is_admin:
            raise NotYours(N_("only an admin exports every conversation"))
        q = request.query
        fmt = q.get("format") or "jsonl"
        if fmt not in ("jsonl", "csv"):
            raise Invalid(N_("format must be jsonl or csv"))
        since, until = parse_time(q.get("since")), parse_time(q.get("until"))
        app = q.get("app") or None
        ctype = "application/x-ndjson" if fmt == "jsonl" else "text/csv"
        resp = web.StreamResponse(headers={
            "Content-Type": f"{ctype}; charset=utf-8",
            "Content-Disposition": f'attachment; filename="csbot-export.{fmt}"'})
        await resp.prepare(request)
        if fmt == "csv":
            await resp.write(CSV_BOM.encode("utf-8"))  # Excel and WPS then read the Chinese right
        first = True
        async for rows in services.review.export(since=since, until=until, app=app):
            await resp.write(format_batch(rows, fmt, header=first).encode("utf-8"))
            first = False
        if first and fmt == "csv":
            await resp.write(format_batch([], fmt, header=True).encode("utf-8"))
        await resp.write_eof()
        return resp

    @routes.post("/send")
    async def send(request: web.Request) -> web.Response:
        data = await read_object(request)
        app, touser = data.get("app", "default"), data.get("touser")
        if not isinstance(app, str):
            raise Invalid(N_("app must be a string"))
        message_id = await services.review.send(app, touser, data, author="operator", by=actor_for(request, "operator"))
        return web.json_response({"message_id": message_id, "status": "queued"}, status=202)

    @routes.get("/audit")
    async def audit(request: web.Request) -> web.Response:
        if not request[ACTOR].is_admin:
            raise NotYours(N_("only an admin reads the audit log"))
        q = request.query
        entries = await services.audit.entries(since=parse_time(q.get("since")), until=parse_time(q.get("until")),
                                          action=q.get("action") or None, agent=q.get("agent") or None,
                                          app=q.get("app") or None, openid=q.get("openid") or None,
                                          limit=int_param(request, "limit", 1000, 1, 10000) or 1000)
        return web.json_response({"entries": entries})

    @routes.get("/openapi.json")
    async def openapi(request: web.Request) -> web.Response:
        return web.json_response(openapi_document())

    api.add_routes(routes)
    return api


# --------------------------------------------------------------------------- OpenAPI document


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"$ref": f"#/components/responses/E{c}"} for c in codes}


NULLABLE_NUMBER = {"type": "number", "nullable": True}
NULLABLE_STRING = {"type": "string", "nullable": True}
TIME = {"type": "string", "format": "date-time", "description": "ISO 8601, UTC, with its offset"}
NULLABLE_TIME = {**TIME, "nullable": True}
NAME = {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[^\x00-\x1f]*\S[^\x00-\x1f]*$"}
TEXT = {"type": "string", "minLength": 1, "maxLength": 4000, "pattern": r"\S"}


def openapi_document() -> dict[str, Any]:
    path_params = [
        {"name": "app", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 64},
         "description": "app name from the configuration (`default` for the CSBOT_* app)"},
        {"name": "openid", "in": "path", "required": True, "schema": {"type": "string", "maxLength": 128}},
    ]
    time_param = {"type": "string", "description": "2h, 30m, 3d, 1w (that long ago), an ISO date or date-time "
                                                   "(local time when no offset), or Unix seconds"}
    conv_ops = {"parameters": path_params}
    return {
        "openapi": "3.0.3",
        "info": {"title": "csbot review API", "version": "1",
                 "description": "Read conversations, step in, and hand back. Times are ISO 8601 "
                                "date-times in UTC with their offset (2026-11-20T04:28:05.123+00:00)."},
        "servers": [{"url": "/api"}],
        "security": [{"bearer": []}],
        "paths": {
            "/conversations": {"get": {
                "operationId": "listConversations", "summary": "conversations, newest activity first",
                "parameters": [
                    {"name": "app", "in": "query", "schema": {"type": "string"}},
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
                    {"name": "since", "in": "query", "schema": time_param},
                    {"name": "search", "in": "query", "schema": {"type": "string", "maxLength": 200},
                     "description": "only conversations with a message containing this text"},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 500,
                                                                "default": 50}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"},
                     "description": "next_cursor of the previous page"},
                    {"name": "assigned", "in": "query",
                     "schema": {"type": "string", "enum": ["mine", "unassigned"]},
                     "description": "mine: assigned to the token's agent; unassigned: to nobody"},
                    {"name": "undelivered", "in": "query", "schema": {"type": "boolean", "default": False},
                     "description": "only conversations with a reply that never arrived (failed, dead or "
                                    "quota_exceeded, and no later reply delivered)"}],
                "responses": {"200": _json({"type": "object", "required": ["conversations", "next_cursor"],
                                            "properties": {"conversations": {"type": "array",
                                                                             "items": _ref("Conversation")},
                                                           "next_cursor": NULLABLE_STRING}}, "a page"),
                              **_errors(400, 401)}}},
            "/conversations/{app}/{openid}": {**conv_ops, "get": {
                "operationId": "getThread", "summary": "the whole thread, in order",
                "parameters": [
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 5000,
                                                                "default": 500},
                     "description": "the latest this many messages"},
                    {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1},
                     "description": "only messages older than this id (paging back)"}],
                "responses": {"200": _json(_ref("Thread"), "the thread"), **_errors(400, 401, 403, 404)}}},
            "/conversations/{app}/{openid}/reply": {**conv_ops, "post": {
                "operationId": "reply", "summary": "an agent's text reply through the outbox; takes the "
                                                   "conversation over",
                "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                                "description": "the same key again (a retry after a timeout) queues nothing "
                                               "more and answers with the first reply's message_id",
                                "schema": {"type": "string", "minLength": 1, "maxLength": 200}}],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["text"],
                    "properties": {"text": TEXT, "agent": NAME}}}}},
                "responses": {"202": _json({"type": "object", "required": ["message_id", "status", "conversation"],
                                            "properties": {"message_id": {"type": "integer"},
                                                           "status": {"type": "string", "enum": ["queued"]},
                                                           "conversation": _ref("Conversation")}},
                                           "queued"), **_errors(400, 401, 403, 404, 413)}}},
            "/conversations/{app}/{openid}/status": {**conv_ops, "post": {
                "operationId": "setStatus", "summary": "take over (human), hand back (bot) or close",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["status"],
                    "properties": {"status": {"type": "string", "enum": list(STATUSES)}, "agent": NAME}}}}},
                "responses": {"200": _json({"type": "object", "required": ["conversation"],
                                            "properties": {"conversation": _ref("Conversation")}}, "changed"),
                              **_errors(400, 401, 403, 404, 413)}}},
            "/conversations/{app}/{openid}/assign": {**conv_ops, "post": {
                "operationId": "assign", "summary": "give the conversation to an agent (null: to nobody); "
                                                    "the status does not change",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["agent"],
                    "properties": {"agent": {**NAME, "nullable": True,
                                             "description": "an enabled agent's name, or null"},
                                   "by": NAME}}}}},
                "responses": {"200": _json({"type": "object", "required": ["conversation"],
                                            "properties": {"conversation": _ref("Conversation")}}, "assigned"),
                              **_errors(400, 401, 403, 404, 413)}}},
            "/conversations/{app}/{openid}/tags": {**conv_ops, "post": {
                "operationId": "setTags", "summary": "replace (tags) and/or add and remove tags",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {
                        "tags": {"type": "array", "maxItems": 20, "items": {"type": "string"}},
                        "add": {"type": "array", "maxItems": 20, "items": {"type": "string"}},
                        "remove": {"type": "array", "items": {"type": "string"}}}}}}},
                "responses": {"200": _json({"type": "object", "required": ["tags"],
                                            "properties": {"tags": {"type": "array", "items": {"type": "string"}}}},
                                           "the tags now"), **_errors(400, 401, 403, 404, 413)}}},
            "/conversations/{app}/{openid}/notes": {**conv_ops, "post": {
                "operationId": "addNote", "summary": "a private note (never sent to the customer)",
                "requestBody": {"required": True, "content": {"application/json": {"schema": {
                    "type": "object", "required": ["text"], "properties": {"text": TEXT, "author": NAME}}}}},
                "responses": {"201": _json({"type": "object", "required": ["note"],
                                            "properties": {"note": _ref("Note")}}, "added"),
                              **_errors(400, 401, 403, 404, 413)}}},
            "/messages/{id}/retry": {"post": {
                "operationId": "retry", "summary": "queue a failed, dead or quota_exceeded reply again; it goes "
                                                   "through the outbox like any reply (the user's order, the "
                                                   "reply quota, retries with backoff)",
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "integer", "minimum": 1}}],
                "requestBody": {"required": False, "content": {"application/json": {"schema": {
                    "type": "object", "properties": {"agent": NAME}}}}},
                "responses": {"202": _json({"type": "object", "required": ["message", "status"],
                                            "properties": {"message": _ref("Item"),
                                                           "status": {"type": "string", "enum": ["queued"]}}},
                                           "queued again"), **_errors(400, 401, 403, 404, 409, 413)}}},
            "/webhooks/deliveries": {"get": {
                "operationId": "listWebhookDeliveries", "summary": "outbound webhook deliveries, newest first",
                "parameters": [
                    {"name": "status", "in": "query",
                     "schema": {"type": "string", "enum": ["pending", "delivered", "failed"]}},
                    {"name": "webhook", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000,
                                                                "default": 50}}],
                "responses": {"200": _json({"type": "object", "required": ["deliveries"], "properties": {
                    "deliveries": {"type": "array", "items": _ref("WebhookDelivery")}}}, "deliveries"),
                    **_errors(400, 401, 403)}}},
            "/webhooks/deliveries/{id}/redeliver": {"post": {
                "operationId": "redeliverWebhook", "summary": "queue a failed delivery again",
                "parameters": [{"name": "id", "in": "path", "required": True,
                                "schema": {"type": "integer", "minimum": 1}}],
                "responses": {"202": _json({"type": "object", "required": ["id", "status"], "properties": {
                    "id": {"type": "integer"}, "status": {"type": "string", "enum": ["pending"]}}}, "queued"),
                    **_errors(400, 401, 403, 409)}}},
            "/export": {"get": {
                "operationId": "export", "summary": "every message in a time range, as JSON lines or CSV",
                "parameters": [
                    {"name": "since", "in": "query", "schema": time_param},
                    {"name": "until", "in": "query", "schema": time_param},
                    {"name": "app", "in": "query", "schema": {"type": "string"}},
                    {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["jsonl", "csv"],
                                                                 "default": "jsonl"}}],
                "responses": {"200": {"description": "the messages, oldest first", "content": {
                    "application/x-ndjson": {"schema": {"type": "string"}},
                    "text/csv": {"schema": {"type": "string"}}}}, **_errors(400, 401, 403)}}},
            "/send": {"post": {
                "operationId": "send", "summary": "any customer-service message to a user, through the outbox",
                "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("SendBody")}}},
                "responses": {"202": _json({"type": "object", "required": ["message_id", "status"],
                                            "properties": {"message_id": {"type": "integer"},
                                                           "status": {"type": "string", "enum": ["queued"]}}},
                                           "queued"), **_errors(400, 401, 403, 404, 413)}}},
            "/audit": {"get": {
                "operationId": "audit", "summary": "the audit log, oldest first (admin token or an admin's token)",
                "parameters": [
                    {"name": "since", "in": "query", "schema": time_param},
                    {"name": "until", "in": "query", "schema": time_param},
                    {"name": "action", "in": "query", "schema": {"type": "string"}},
                    {"name": "agent", "in": "query", "schema": {"type": "string"}},
                    {"name": "app", "in": "query", "schema": {"type": "string"}},
                    {"name": "openid", "in": "query", "schema": {"type": "string"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000,
                                                                "default": 1000}}],
                "responses": {"200": _json({"type": "object", "required": ["entries"], "properties": {
                    "entries": {"type": "array", "items": _ref("AuditEntry")}}}, "entries"),
                    **_errors(400, 401, 403)}}},
            "/openapi.json": {"get": {"operationId": "openapi", "summary": "this document",
                                      "responses": {"200": _json({"type": "object"}, "OpenAPI 3 document"),
                                                    **_errors(401)}}},
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "CSBOT_ADMIN_TOKEN, or an agent's token from "
                                                          "`csbot agents token NAME` (acts as that agent)"}},
            "responses": {f"E{c}": _json(_ref("Error"), d) for c, d in (
                (400, "bad input"), (401, "missing or wrong bearer token"),
                (403, "an agent's token: not this agent's conversation, or an admin's action"),
                (404, "no such conversation, message or app"),
                (409, "the reply is not in a state that allows this"), (413, "body too large"))},
            "schemas": SCHEMAS,
        },
    }


SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
    "AuditEntry": {
        "type": "object", "required": ["kind", "id", "action", "agent", "at", "address", "app", "openid", "detail"],
        "properties": {"kind": {"type": "string", "enum": ["audit"]}, "id": {"type": "integer"},
                       "action": {"type": "string"}, "agent": NULLABLE_STRING,
                       "at": {"type": "string", "description": "ISO 8601 with offset"}, "ts": {"type": "number"},
                       "address": NULLABLE_STRING, "app": NULLABLE_STRING, "openid": NULLABLE_STRING,
                       "detail": NULLABLE_STRING}},
    "LastMessage": {"type": "object", "nullable": True, "required": ["id", "direction", "type", "summary", "at"],
                    "properties": {"id": {"type": "integer"}, "direction": {"type": "string", "enum": ["in", "out"]},
                                   "type": {"type": "string"}, "summary": {"type": "string"},
                                   "at": TIME}},
    "Conversation": {
        "type": "object",
        "required": ["kind", "id", "app", "openid", "status", "assigned_agent", "tags", "created_at",
                     "last_message_at", "human_since", "last_agent_reply_at", "transferred_at", "closed_at",
                     "unanswered", "undelivered", "last_message"],
        "properties": {
            "kind": {"type": "string", "enum": ["conversation"]}, "id": {"type": "integer"},
            "app": {"type": "string"}, "openid": {"type": "string"},
            "status": {"type": "string", "enum": list(STATUSES)}, "assigned_agent": NULLABLE_STRING,
            "tags": {"type": "array", "items": {"type": "string"}}, "created_at": TIME,
            "last_message_at": TIME, "human_since": NULLABLE_TIME,
            "last_agent_reply_at": NULLABLE_TIME, "transferred_at": NULLABLE_TIME, "closed_at": NULLABLE_TIME,
            "unanswered": {"type": "boolean", "description": "the customer's last message has no reply after it"},
            "undelivered": {"type": "boolean", "description": "a reply ended failed, dead or quota_exceeded and "
                                                              "no later reply was delivered"},
            "last_message": _ref("LastMessage")}},
    "Note": {"type": "object", "required": ["kind", "id", "author", "text", "at"],
             "properties": {"kind": {"type": "string", "enum": ["note"]}, "id": {"type": "integer"},
                            "author": {"type": "string"}, "text": {"type": "string"}, "at": TIME}},
    "Item": {
        "type": "object", "required": ["kind", "id", "at"],
        "description": "a message (kind=message: inbound push or outbound reply with its delivery state), "
                       "a private note (kind=note), a status change (kind=event, with the address it came "
                       "from) or another audited action on the conversation (kind=audit: assign, tag, retry, ...)",
        "properties": {
            "kind": {"type": "string", "enum": ["message", "note", "event", "audit"]}, "id": {"type": "integer"},
            "action": {"type": "string"}, "agent": NULLABLE_STRING, "address": NULLABLE_STRING,
            "at": TIME, "received_at": TIME, "sent_at": NULLABLE_TIME,
            "retryable": {"type": "boolean", "description": "a reply that can be retried (POST "
                                                            "/messages/{id}/retry)"},
            "direction": {"type": "string", "enum": ["in", "out"]},
            "type": {"type": "string", "description": "WeChat MsgType or the reply's msgtype"},
            "event": NULLABLE_STRING, "text": NULLABLE_STRING,
            "content": {"type": "object", "description": "the push's fields, or the reply's typed part"},
            "status": {"type": "string", "description": "inbound: pending, inline, done, failed; outbound: "
                                                        "queued, sending, sent, failed, dead, quota_exceeded, "
                                                        "in_doubt"},
            "handler": NULLABLE_STRING, "author": NULLABLE_STRING, "error": NULLABLE_STRING,
            "errcode": {"type": "integer", "nullable": True}, "errmsg": NULLABLE_STRING,
            "transferred": {"type": "boolean", "description": "handed to WeChat's customer-service tool"},
            "actor": NULLABLE_STRING, "detail": NULLABLE_STRING}},
    "WebhookDelivery": {
        "type": "object",
        "required": ["id", "webhook", "event", "app", "openid", "status", "attempts", "created_at",
                     "next_attempt_at", "delivered_at", "last_status", "last_error"],
        "properties": {
            "id": {"type": "integer"}, "webhook": {"type": "string"},
            "event": {"type": "string", "enum": ["message.received", "message.sent", "message.failed",
                                                 "conversation.status_changed"]},
            "app": NULLABLE_STRING, "openid": NULLABLE_STRING,
            "status": {"type": "string", "enum": ["pending", "delivered", "failed"]},
            "attempts": {"type": "integer"}, "created_at": TIME, "next_attempt_at": NULLABLE_TIME,
            "delivered_at": NULLABLE_TIME, "last_status": {"type": "integer", "nullable": True},
            "last_error": NULLABLE_STRING}},
    "Thread": {"type": "object", "required": ["conversation", "items", "truncated"],
               "properties": {"conversation": _ref("Conversation"),
                              "items": {"type": "array", "items": _ref("Item")},
                              "truncated": {"type": "boolean"}}},
    "SendBody": {
        "type": "object", "required": ["touser", "msgtype"],
        "properties": {
            "app": {"type": "string", "default": "default"},
            "touser": {"type": "string", "minLength": 1, "maxLength": 128},
            "msgtype": {"type": "string", "enum": ["text", "image", "link", "miniprogrampage"]},
            "text": {"type": "object", "required": ["content"], "properties": {"content": TEXT}},
            "image": {"type": "object", "required": ["media_id"], "properties": {"media_id": {"type": "string"}}},
            "link": {"type": "object", "required": ["title", "description", "url", "thumb_url"],
                     "properties": {k: {"type": "string"} for k in ("title", "description", "url", "thumb_url")}},
            "miniprogrampage": {"type": "object", "required": ["title", "pagepath", "thumb_media_id"],
                                "properties": {k: {"type": "string"} for k in
                                               ("title", "pagepath", "thumb_media_id", "appid")}}}},
}
