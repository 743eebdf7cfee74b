"""The HTTP face of the cloud services: ``/cloud/...`` (mini programs) and ``/tcb/...`` (servers).

Each service keeps its routes in its own module and registers them here. What they share:

- ``/cloud`` errors are ``{"errCode", "errMsg"}`` with a 4xx status (:func:`cloud_error`);
- ``/tcb`` is WeChat's server HTTP API (``https://api.weixin.qq.com/tcb/<name>``) on csbot:
  the caller presents ``CSBOT_SERVER_KEY`` as ``Authorization: Bearer``; the request's ``env``
  names the app (``default`` for the app of the environment variables); answers carry
  ``errcode``/``errmsg`` like WeChat's. :func:`tcb_endpoint` does all of that for a handler.
"""

from __future__ import annotations

import functools
import hmac
import json
import logging
from typing import Any, Awaitable, Callable

from aiohttp import web

from csbot.config import Settings
from csbot.services import services_of

log = logging.getLogger("csbot.cloud.http")

def cloud_error(status: int, message: str, code: int | str | None = None) -> web.Response:
    """A ``/cloud`` error: ``{"errCode", "errMsg"}`` (errCode defaults to the HTTP status)."""
    return web.json_response({"errCode": status if code is None else code, "errMsg": message}, status=status)


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


# ---------------------------------------------------------------- registration


def setup_cloud(app: web.Application) -> None:
    """Mount every cloud service's routes (called once by :func:`csbot.app.create_app`).

    ``/tcb/*`` exists only when ``CSBOT_SERVER_KEY`` is set (otherwise it answers 404).
    """
    from csbot.cloud.apidoc import tcb_openapi_document
    from csbot.cloud.storage_http import storage_routes, storage_tcb_routes

    app.router.add_routes(storage_routes())
    if services_of(app).settings.server_key:
        app.router.add_routes(storage_tcb_routes())

        async def openapi_json(request: web.Request) -> web.Response:
            return web.json_response(tcb_openapi_document())

        app.router.add_get("/tcb/openapi.json", openapi_json)
