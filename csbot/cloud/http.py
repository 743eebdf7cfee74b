"""The ``/cloud`` routes (and where the ``/tcb`` ones are registered).

    POST /cloud/login              {"code", "appid"?} → {"token", "expires_in", "openid"}
    POST /cloud/logout             Bearer token → {"errCode": 0, "errMsg": "ok"}
    POST /cloud/functions/{name}   Bearer token, {"data": {...}} → {"result", "requestID"}

Every error is ``{"errCode", "errMsg"}`` with a 4xx/5xx status (``csbot.cloud.errors``).
Other cloud services (database, storage) add their route tables through ``setup_cloud``.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from aiohttp import web

from csbot.cloud.errors import ERR_BAD_REQUEST, ERR_TOO_LARGE, ERR_UNAVAILABLE, CloudError
from csbot.cloud.sessions import bearer_token, require_session
from csbot.services import services_of

__all__ = ["setup_cloud", "read_json_object", "MAX_BODY"]

log = logging.getLogger("csbot.cloud.http")

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


async def read_json_object(request: web.Request, limit: int = MAX_BODY) -> dict[str, Any]:
    """The body as a JSON object, or a 400/413 ``CloudError`` saying what is wrong."""
    raw = await read_body(request, limit)
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CloudError(400, ERR_BAD_REQUEST, "body is not UTF-8") from None
    except RecursionError:
        raise CloudError(400, ERR_BAD_REQUEST, "body is nested too deeply") from None
    except ValueError as exc:
        raise CloudError(400, ERR_BAD_REQUEST, f"body is not JSON ({exc.msg} at {exc.pos})"  # type: ignore[attr-defined]
                         if hasattr(exc, "msg") else "body is not JSON") from None
    if not isinstance(body, dict):
        raise CloudError(400, ERR_BAD_REQUEST, "body must be a JSON object")
    if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(body):
        raise CloudError(400, ERR_BAD_REQUEST, "body has a lone UTF-16 surrogate")
    return body


def json_response(payload: Any, status: int = 200) -> web.Response:
    return web.Response(body=json.dumps(payload, ensure_ascii=False).encode("utf-8"), status=status,
                        content_type="application/json", charset="utf-8")


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


def _services(request: web.Request) -> Any:
    services = services_of(request)
    if services.sessions is None:  # still starting
        raise CloudError(503, ERR_UNAVAILABLE, "starting, retry shortly", headers={"Retry-After": "1"})
    return services


def setup_cloud(app: web.Application) -> None:
    """Register the ``/cloud`` routes (they reach the services through ``services_of``)."""
    app.router.add_post("/cloud/login", login)
    app.router.add_post("/cloud/logout", logout)
