"""The HTTP face of the cloud services: ``/cloud/...`` (mini programs) and ``/tcb/...`` (servers).

Each service keeps its routes in its own module and registers them in :func:`setup_cloud`.
The ``/cloud`` routes of sessions and functions live here:

    POST /cloud/login              {"code", "appid"?} → {"token", "expires_in", "openid"}
    POST /cloud/logout             Bearer token → {"errCode": 0, "errMsg": "ok"}
    POST /cloud/functions/{name}   Bearer token, {"data": {...}} → {"result", "requestID"}

What they share:

- ``/cloud`` errors are ``{"errCode", "errMsg"}`` with a 4xx/5xx status (``CloudError``, which a
  route raises; :func:`cloud_error` returns one);
- ``/tcb`` is WeChat's server HTTP API (``https://api.weixin.qq.com/tcb/<name>``) on csbot:
  the caller presents ``CSBOT_SERVER_KEY`` as ``Authorization: Bearer``; the request's ``env``
  names the app (``default`` for the app of the environment variables); answers carry
  ``errcode``/``errmsg`` like WeChat's. :func:`tcb_endpoint` does all of that for a handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import re
from typing import Any, AsyncIterator, Awaitable, Callable

from aiohttp import web

from csbot.cloud.errors import (ERR_BAD_REQUEST, ERR_FORBIDDEN, ERR_NOT_FOUND, ERR_RATE_LIMITED, ERR_TOO_LARGE,
                                ERR_UNAUTHORIZED, ERR_UNAVAILABLE, CloudError)
from csbot.cloud.functions import SOURCE_CLIENT, FunctionCallError, FunctionRegistry, Functions
from csbot.cloud.opendata import MAX_CLOUD_IDS, cloud_id_markers, resolve_cloud_ids
from csbot.cloud.sessions import CloudSession, bearer_token, require_session
from csbot.config import Settings
from csbot.openapi import APITransportError, WeChatAPIError
from csbot.services import services_of

log = logging.getLogger("csbot.cloud.http")

#: seconds between purges of expired login sessions
PURGE_SECONDS = 3600
#: largest /cloud request body (WeChat's callFunction limit is of the same order)
MAX_BODY = 1024 * 1024
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abAB]")


async def read_body(request: web.Request, limit: int = MAX_BODY) -> bytes:
    """The request body, refusing more than ``limit`` bytes with 413 (streamed, never buffered past it)."""
    too_large = CloudError(413, ERR_TOO_LARGE, f"request body larger than {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False


def _refuse_constant(name: str) -> Any:
    """NaN and Infinity are not JSON (Python's parser takes them; a function could not answer them)."""
    raise ValueError(f"{name} is not JSON")


async def read_json_object(request: web.Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The body as a JSON object, or a 400/413 ``CloudError`` saying what is wrong."""
    raw = await read_body(request, limit)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise CloudError(400, ERR_BAD_REQUEST, "body is not UTF-8") from None
    except RecursionError:
        raise CloudError(400, ERR_BAD_REQUEST, "body is nested too deeply") from None
    except ValueError as exc:
        reason = f"{exc.msg} at {exc.pos}" if isinstance(exc, json.JSONDecodeError) else str(exc)
        raise CloudError(400, ERR_BAD_REQUEST, f"body is not JSON ({reason})") from None
    if not isinstance(body, dict):
        raise CloudError(400, ERR_BAD_REQUEST, "body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(body):
        raise CloudError(400, ERR_BAD_REQUEST, "body has a lone UTF-16 surrogate")
    return body


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(payload, ensure_ascii=False).encode("utf-8"), status=status,
                        content_type="application/json", charset="utf-8")


_ERR_CODES = {400: ERR_BAD_REQUEST, 401: ERR_UNAUTHORIZED, 403: ERR_FORBIDDEN, 404: ERR_NOT_FOUND,
              413: ERR_TOO_LARGE, 503: ERR_UNAVAILABLE}


def cloud_error(status: int, message: str, code: int | str | None = None) -> web.Response:
    """A ``/cloud`` error answered rather than raised: the body :class:`CloudError` gives
    (``code`` defaults to the cloud error code of ``status``)."""
    err_code = _ERR_CODES.get(status, ERR_BAD_REQUEST) if code is None else code
    return web.json_response({"errCode": err_code, "errMsg": message}, status=status)


def base_url(request: web.Request, settings: Settings) -> str:
    """Where callers reach csbot: ``CSBOT_PUBLIC_URL``, else this request's scheme and host."""
    if settings.public_url:
        return settings.public_url
    scheme = "https" if request.secure or request.headers.get("X-Forwarded-Proto", "") == "https" else "http"
    return f"{scheme}://{request.host}"


# ---------------------------------------------------------------- /tcb


class TcbError(Exception):
    """A ``/tcb`` failure: WeChat's ``errcode`` and ``errmsg``, and our HTTP status."""

    def __init__(self, errcode: int, errmsg: str, status: int = 400) -> None:
        super().__init__(errmsg)
        self.errcode = errcode
        self.errmsg = errmsg
        self.status = status


def tcb_response(payload: dict[str, Any] | None = None, status: int = 200) -> web.Response:
    body = {"errcode": 0, "errmsg": "ok"}
    body.update(payload or {})
    return web.json_response(body, status=status)


def require_server_key(request: web.Request, settings: Settings) -> None:
    """The server key as ``Authorization: Bearer``, compared in constant time; else 401."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise TcbError(41001, "access_token missing: send Authorization: Bearer <CSBOT_SERVER_KEY>", 401)
    if not hmac.compare_digest(presented.strip().encode(), settings.server_key.encode()):
        raise TcbError(40014, "invalid access_token: the bearer key is not CSBOT_SERVER_KEY", 401)


def app_for_env(settings: Settings, env: Any) -> str:
    """``env`` names a csbot app (``default`` is the app of the environment variables)."""
    if not isinstance(env, str) or not env:
        raise TcbError(40097, "invalid args: env is required (the name of a csbot app, e.g. default)")
    if env not in settings.apps:
        raise TcbError(85088, f"env {env!r} is not an app of this csbot", 404)
    return env


TcbHandler = Callable[[web.Request, str, Any], Awaitable[dict[str, Any] | web.StreamResponse]]


def tcb_endpoint(*, env_from: str = "body",
                 body: str = "json") -> Callable[[TcbHandler], Callable[[web.Request], Awaitable[web.StreamResponse]]]:
    """Wrap ``handler(request, app, payload)`` as a ``/tcb`` route.

    Checks the server key, reads the JSON body (``body="json"``; ``"raw"`` leaves it unread),
    finds the app from ``env`` (in the body, or ``env_from="query"``), and answers the handler's
    dict with ``errcode: 0, errmsg: "ok"`` added. :class:`TcbError` becomes WeChat's error shape;
    anything unexpected is logged and answered ``-1 system error`` without details.
    """

    def wrap(handler: TcbHandler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        @functools.wraps(handler)
        async def route(request: web.Request) -> web.StreamResponse:
            settings = services_of(request).settings
            try:
                require_server_key(request, settings)
                payload: Any = None
                if body == "json":
                    payload = await read_json(request)
                    if not isinstance(payload, dict):
                        raise TcbError(47001, "data format error: the body must be a JSON object")
                env = request.query.get("env") if env_from == "query" else (payload or {}).get("env")
                app = app_for_env(settings, env)
                result = await handler(request, app, payload)
                if isinstance(result, web.StreamResponse):
                    return result
                return tcb_response(result)
            except TcbError as exc:
                log.info("%s %s refused: %s", request.method, request.path, exc.errmsg)
                return web.json_response({"errcode": exc.errcode, "errmsg": exc.errmsg}, status=exc.status)
            except web.HTTPException:
                raise
            except Exception:
                log.exception("%s %s failed", request.method, request.path)
                return web.json_response({"errcode": -1, "errmsg": "system error"}, status=500)

        return route

    return wrap


async def read_json(request: web.Request) -> Any:
    """The request's JSON body; :class:`TcbError` 44002/47001 when empty or not JSON."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise TcbError(47001, "data format error: the body is too large", 413) from None
    if not raw.strip():
        raise TcbError(44002, "empty post data")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise TcbError(47001, "data format error: the body is not valid JSON") from None


# --------------------------------------------------------------------------- routes


async def login(request: web.Request) -> web.Response:
    body = await read_json_object(request, 16 * 1024)
    code = body.get("code")
    if not isinstance(code, str) or not code.strip() or len(code) > 256:
        raise CloudError(400, 40029, "code is required: the code of wx.login()")
    services = _services(request)
    cfg = services.sessions.app_for(body.get("appid"))
    answer = await services.sessions.login(services.openapi, cfg.name, code.strip())
    return json_response(answer)


async def logout(request: web.Request) -> web.Response:
    await require_session(request)
    token = bearer_token(request)
    assert token is not None
    await _services(request).sessions.revoke(token)
    return json_response({"errCode": 0, "errMsg": "ok"})


async def call_function(request: web.Request) -> web.Response:
    """``POST /cloud/functions/{name}``: run a callable function as the session's user."""
    name = request.match_info["name"]
    session = await require_session(request)
    services = _services(request)
    functions: Functions = services.functions
    spec = functions.registry.get(name)
    if spec is None:
        raise CloudError(404, ERR_NOT_FOUND, f"function {name!r} not found")
    started = functions.clock()
    refused = ""  # why the call was refused before the function ran (invoke() counts the rest)
    try:
        if not spec.client:
            refused = "forbidden"
            log.warning("refused client call of server-only function %s by %s", name, session.openid)
            raise CloudError(403, ERR_FORBIDDEN, f"function {name!r} is server-only (client=False)")
        if not await functions.allow(session.app, session.openid):
            refused = "rate_limited"
            raise CloudError(429, ERR_RATE_LIMITED, "too many calls, slow down", headers={"Retry-After": "1"})
        refused = "bad_request"
        body = await read_json_object(request)
        data = body.get("data", {})
        if not isinstance(data, dict):
            raise CloudError(400, ERR_BAD_REQUEST, "data must be a JSON object")
        opened: list[str] = []
        markers = cloud_id_markers(data)
        if markers:
            data, opened = await _open_cloud_ids(services, session, data, markers)
        refused = ""
        invocation = await functions.invoke(name, data, app=session.app, openid=session.openid,
                                            unionid=session.unionid, source=SOURCE_CLIENT,
                                            client_ip=request.remote, open_data_info=opened)
    except FunctionCallError as exc:
        raise exc.cloud_error() from None
    except CloudError as exc:
        if refused == "bad_request":
            refused = "too_large" if exc.status == 413 else ("unavailable" if exc.status == 503 else refused)
            log.warning("refused call of %s by %s: %s", name, session.openid, exc.err_msg)
        raise
    finally:
        if refused:
            functions.observe(name, refused, functions.clock() - started)
    return web.Response(body=invocation.body, content_type="application/json", charset="utf-8")


async def _open_cloud_ids(services: Any, session: CloudSession, data: dict[str, Any],
                          markers: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """``data`` with its top-level CloudID markers replaced, and the keys replaced."""
    if len(markers) > MAX_CLOUD_IDS:
        raise CloudError(400, ERR_BAD_REQUEST, f"at most {MAX_CLOUD_IDS} CloudIDs per call")
    try:
        opened = await resolve_cloud_ids(services.openapi.get(session.app), markers, session.openid)
    except (WeChatAPIError, APITransportError) as exc:
        log.warning("app %s: CloudIDs could not be opened: %s", session.app, exc)
        raise CloudError(503, ERR_UNAVAILABLE, "open data is unavailable, retry later",
                         headers={"Retry-After": "2"}) from None
    return {**data, **opened}, list(opened)


def _services(request: web.Request) -> Any:
    services = services_of(request)
    if services.sessions is None:  # still starting
        raise CloudError(503, ERR_UNAVAILABLE, "starting, retry shortly", headers={"Retry-After": "1"})
    return services


async def _purge_expired_sessions(app: web.Application) -> AsyncIterator[None]:
    """Expired login sessions are deleted every hour (and at each user's next login)."""
    services = services_of(app)

    async def loop() -> None:
        while True:
            await asyncio.sleep(PURGE_SECONDS)
            if services.sessions is None:
                continue
            try:
                purged = await services.sessions.purge_expired()
                if purged:
                    log.info("deleted %d expired login session(s)", purged)
            except Exception as exc:  # the store is down: next hour
                log.warning("could not delete expired login sessions: %s", exc)

    task = asyncio.create_task(loop(), name="csbot-cloud-session-purge")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def setup_cloud(app: web.Application) -> None:
    """Mount every cloud service's routes (called once by :func:`csbot.app.create_app`) and load
    the callable functions of the app's handler modules.

    ``/tcb/*`` exists only when ``CSBOT_SERVER_KEY`` is set (otherwise it answers 404).
    """
    from csbot.cloud.apidoc import tcb_openapi_document
    from csbot.cloud.database.http import database_routes, tcb_routes as database_tcb_routes
    from csbot.cloud.functions_tcb import functions_tcb_routes
    from csbot.cloud.storage_http import storage_routes, storage_tcb_routes

    services = services_of(app)
    settings = services.settings
    services.functions = Functions(FunctionRegistry.from_router(services.router), services,
                                   rate_per_second=settings.function_rate_per_second,
                                   burst=settings.function_rate_burst)
    app.cleanup_ctx.append(_purge_expired_sessions)
    app.router.add_post("/cloud/login", login)
    app.router.add_post("/cloud/logout", logout)
    app.router.add_post("/cloud/functions/{name}", call_function)
    app.router.add_routes(storage_routes())
    app.router.add_routes(database_routes())
    if settings.server_key:
        app.router.add_routes(functions_tcb_routes())
        app.router.add_routes(storage_tcb_routes())
        app.router.add_routes(database_tcb_routes())

        async def openapi_json(request: web.Request) -> web.Response:
            return web.json_response(tcb_openapi_document())

        app.router.add_get("/tcb/openapi.json", openapi_json)
