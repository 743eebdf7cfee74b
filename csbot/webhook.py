"""The webhook: ``/wechat`` (app ``default``) and ``/wechat/{app}``.

GET is WeChat's URL-verification handshake. POST verifies, decrypts and parses the push
(``csbot.wire``), commits it to the inbox, and only then answers ``success``. Handlers run
after the answer, except inline ones, which may give a passive reply within their budget.
Client mistakes get a short plain-text 4xx and a WARNING line; a store that cannot commit
gets 503 so WeChat retries. Nothing else ever reaches the caller. A plaintext push whose
(timestamp, nonce) already came with another body is refused (``csbot.replay``); bodies over
64 KiB are decoded in a worker thread so one push never holds the event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

from aiohttp import web
from sqlalchemy.exc import DataError, IntegrityError

from csbot.config import AppConfig
from csbot.refused import keep_refused
from csbot.services import services_of
from csbot.statuses import InboundStatus
from csbot.wire import MessageCrypto, Push, WireError, decode_push, encrypted_envelope, render_fields, verify_handshake

log = logging.getLogger("csbot.webhook")

#: every plain-text answer (echostr above all) is text, never sniffed as HTML
_NOSNIFF = {"X-Content-Type-Options": "nosniff"}
#: bodies larger than this are decoded in a worker thread
_THREAD_DECODE_BYTES = 64 * 1024


def _text(text: str, status: int = 200) -> web.Response:
    return web.Response(status=status, text=text, content_type="text/plain", headers=_NOSNIFF)


def _refuse(request: web.Request, app_name: str, status: int, reason: str) -> web.Response:
    if request.method == "POST":
        services_of(request).metrics.pushes.labels(app_name if status != 404 else "unknown", f"refused_{status}").inc()
    log.warning("refused %s %s for app %s from %s: %d %s", request.method, request.path, app_name,
                request.remote, status, reason)
    keep_refused(request, app_name, status, reason)  # CSBOT_KEEP_REFUSED, for `csbot refused`
    return _text(reason, status)


def _app_config(request: web.Request) -> tuple[str, AppConfig | None]:
    name = request.match_info.get("app", "default")
    return name, services_of(request).settings.apps.get(name)


async def handshake(request: web.Request) -> web.Response:
    name, app = _app_config(request)
    if app is None:
        return _refuse(request, name, 404, "unknown app")
    try:
        echostr = verify_handshake(app, request.query, now=time.time(),
                                   max_clock_skew=services_of(request).settings.max_clock_skew)
    except WireError as exc:
        return _refuse(request, name, exc.status, exc.reason)
    return _text(echostr)


async def receive(request: web.Request) -> web.Response:
    started = time.monotonic()
    name, app = _app_config(request)
    if app is None:
        return _refuse(request, name, 404, "unknown app")
    services = services_of(request)
    settings, metrics = services.settings, services.metrics
    if request.content_length is not None and request.content_length > settings.max_body_size:
        return _refuse(request, name, 413, f"body larger than {settings.max_body_size} bytes")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _refuse(request, name, 413, f"body larger than {settings.max_body_size} bytes")
    if len(body) > settings.max_body_size:
        return _refuse(request, name, 413, f"body larger than {settings.max_body_size} bytes")
    query = request.query
    try:
        if len(body) > _THREAD_DECODE_BYTES:
            push = await asyncio.to_thread(decode_push, app, query, body, now=time.time(),
                                           max_clock_skew=settings.max_clock_skew)
        else:
            push = decode_push(app, query, body, now=time.time(), max_clock_skew=settings.max_clock_skew)
    except WireError as exc:
        return _refuse(request, name, exc.status, exc.reason)
    except Exception as exc:  # a gap in the wire layer; the caller still gets a plain 400
        log.error("decoding a push for app %s failed unexpectedly: %s", name, type(exc).__name__)
        log.debug("decode failure", exc_info=True)
        return _refuse(request, name, 400, "malformed push")

    inbox = services.inbox
    assert inbox is not None and services.replay is not None  # the app serves requests only once started
    if push.mode == "plaintext":
        try:
            first = await services.replay.first_body(inbox.writer, name, query["timestamp"], query["nonce"],
                                                     body, max_clock_skew=settings.max_clock_skew)
        except Exception as exc:
            return _store_unavailable(name, metrics, exc)
        if not first:
            return _refuse(request, name, 403, "timestamp and nonce already used with another body")
    try:
        inline_routes = services.router.inline_routes(push.event)
    except Exception:  # routing can never keep a push from being stored and acknowledged
        log.exception("routing push %s for app %s failed; it takes the normal path", push.dedup_key, name)
        inline_routes = []
    try:
        accepted = await inbox.accept(
            name, push, status=InboundStatus.INLINE if inline_routes else InboundStatus.PENDING)
    except Exception as exc:
        if _refused_values(exc):  # this push's values, not the store: WeChat must not retry
            log.warning("push %s for app %s cannot be stored: %s", push.dedup_key, name, type(exc).__name__)
            return _refuse(request, name, 400, "push has values the store cannot keep")
        return _store_unavailable(name, metrics, exc)  # the store could not commit: WeChat must retry
    metrics.pushes.labels(name, "stored" if accepted.new else "duplicate").inc()
    if accepted.new and services.webhooks is not None:  # outbound webhooks; only queues, never waits
        services.webhooks.emit("message.received", name, push.openid, message_id=accepted.message_id)
    metrics.ack_seconds.labels(name).observe(time.monotonic() - started)

    if not accepted.new:
        if inline_routes:
            stored = await inbox.stored_passive_reply(name, push.dedup_key)
            if stored:
                return _passive_response(app, push, json.loads(stored), request.query.get("nonce", ""))
        return _text("success")

    if inline_routes and accepted.message_id is not None:
        passive = await inbox.run_inline(name, app.appid, accepted.message_id, push, inline_routes)
        if passive is not None:
            return _passive_response(app, push, passive, request.query.get("nonce", ""))
    return _text("success")


def _refused_values(exc: BaseException) -> bool:
    """True when the database refused the values themselves (SQLSTATE class 22, "data
    exception", or text the driver cannot encode), as opposed to being unreachable."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (DataError, UnicodeError)):
            return True
        state = getattr(current, "sqlstate", None)
        if isinstance(state, str) and state.startswith("22"):
            return True
        current = getattr(current, "orig", None) or current.__cause__
    return False


def _store_unavailable(name: str, metrics: Any, exc: Exception) -> web.Response:
    # why, for the operator: the first line of the message (statement parameters are hidden by the
    # engine), except for a constraint violation, whose message quotes the row's values
    detail = type(exc).__name__
    if not isinstance(exc, IntegrityError):
        detail += ": " + (str(exc).splitlines() or [""])[0][:200]
    log.error("could not store a push for app %s: %s", name, detail)
    metrics.pushes.labels(name, "store_unavailable").inc()
    return _text("store unavailable, retry later", 503)


def _passive_response(app: AppConfig, push: Push, fields: dict[str, Any], nonce: str) -> web.Response:
    """The passive reply in the push's format, encrypted when the push was."""
    body = render_fields(fields, push.fmt)
    if push.mode != "plaintext" and push.aes_key:
        crypto = MessageCrypto(push.aes_key, app.appid)
        body = encrypted_envelope(crypto, app.token, body, push.fmt, nonce=nonce or "0",
                                  timestamp=int(time.time()))
    ctype = "application/json" if push.fmt == "json" else "application/xml"
    return web.Response(body=body, content_type=ctype, charset="utf-8")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/wechat", handshake)
    app.router.add_post("/wechat", receive)
    app.router.add_get("/wechat/{app}", handshake)
    app.router.add_post("/wechat/{app}", receive)
