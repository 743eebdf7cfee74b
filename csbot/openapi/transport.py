"""One aiohttp session per app: rate limit, timeout, error mapping, JSON decoding.

Everything that can go wrong on the wire becomes ``APITransportError`` or
``WeChatAPIError`` here, with the URL redacted, so no caller ever sees (or logs) an
exception whose text contains the access token or the AppSecret.

Transport failures are split by whether the request was written (an aiohttp trace hook
marks the moment its headers went out): before that, ``RequestNotSent`` (DNS, connection
refused, connect timeout: safe to resend); after it, ``AnswerLost`` (read timeout,
connection dropped, 5xx, garbage: WeChat may have acted, a send is *in doubt*).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from types import SimpleNamespace
from typing import Any, Literal

import aiohttp
from aiolimiter import AsyncLimiter

from csbot.openapi.errors import AnswerLost, APITransportError, RequestNotSent, WeChatAPIError
from csbot.openapi.util import dumps_json, redact_url

__all__ = ["Transport", "decode_answer", "make_limiter"]

log = logging.getLogger("csbot.openapi")

#: a request body, or a zero-argument factory of one (aiohttp.FormData can be sent only once,
#: and a call retried with a fresh token needs a fresh body)
BodyData = Any

#: a rate-limit slot taken ahead by ``Transport.reserve`` for the next request of this task
_reserved: contextvars.ContextVar[bool] = contextvars.ContextVar("csbot_rate_reserved", default=False)


async def _on_headers_sent(_session: Any, ctx: SimpleNamespace, _params: Any) -> None:
    state = ctx.trace_request_ctx
    if isinstance(state, dict):
        state["written"] = True


def _trace_config() -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_on_headers_sent)
    return trace


def make_limiter(rate_per_second: float) -> AsyncLimiter | None:
    """aiolimiter for ``rate_per_second`` calls/s; None (unlimited) for 0 or less.

    AsyncLimiter cannot grant one unit when ``max_rate`` < 1, so slow rates become
    "1 call per 1/rate seconds".
    """
    if rate_per_second <= 0:
        return None
    if rate_per_second >= 1:
        return AsyncLimiter(rate_per_second, 1.0)
    return AsyncLimiter(1, 1.0 / rate_per_second)


def decode_answer(path: str, status: int, content_type: str, body: bytes) -> Any:
    """JSON answer → dict; raise ``WeChatAPIError`` for a non-zero errcode.

    WeChat sometimes labels JSON as text/plain, so the Content-Type is not trusted here.
    """
    if status >= 500:
        raise AnswerLost(f"{path}: HTTP {status} from WeChat", status=status, path=path)
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        if 400 <= status < 500:
            raise RequestNotSent(f"{path}: HTTP {status} from WeChat", status=status, path=path) from None
        raise AnswerLost(
            f"{path}: HTTP {status}, answer is not JSON ({content_type or 'no content type'}, {len(body)} bytes)",
            status=status,
            path=path,
        ) from None
    if not isinstance(data, dict):
        raise AnswerLost(f"{path}: HTTP {status}, answer is JSON but not an object", status=status, path=path)
    check_errcode(path, data)
    if status >= 400:
        raise RequestNotSent(f"{path}: HTTP {status} from WeChat", status=status, path=path)
    return data


def check_errcode(path: str, data: dict[str, Any]) -> None:
    errcode = data.get("errcode", 0)
    try:
        code = int(errcode or 0)
    except (TypeError, ValueError):
        code = -1
    if code != 0:
        errmsg = str(data.get("errmsg") or "")
        rid = data.get("rid")
        raise WeChatAPIError(code, errmsg, str(rid) if rid else None, path, data)


class Transport:
    """HTTP to WeChat for one app: a lazily created session, a limiter and a timeout."""

    def __init__(self, *, timeout: float, rate_per_second: float, user_agent: str = "csbot") -> None:
        self.timeout = timeout
        self.limiter: AsyncLimiter | None = make_limiter(rate_per_second)
        self._user_agent = user_agent
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    def session(self) -> aiohttp.ClientSession:
        """The app's session, created on first use (it must be created inside the loop)."""
        if self._closed:
            raise RuntimeError("this OpenAPI client is closed")
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers={"User-Agent": self._user_agent},
                # The limiter, not the pool, is what bounds the request rate.
                connector=aiohttp.TCPConnector(limit=100),
                trace_configs=[_trace_config()],
            )
        return self._session

    async def close(self) -> None:
        self._closed = True
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    async def reserve(self) -> None:
        """Wait for a rate-limit slot now; the next limited request of this task uses it.

        The outbox waits here *before* it marks a reply ``sending``, so a row is ``sending``
        only while its request is really on its way, never while it queues behind the limiter.
        """
        if self.limiter is not None:
            await self.limiter.acquire()
            _reserved.set(True)

    async def request(
        self,
        method: str,
        url: str,
        *,
        path: str,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        data: BodyData = None,
        expect: Literal["json", "bytes"] = "json",
        limited: bool = True,
    ) -> Any:
        """Send one request and decode it; every failure is mapped to our two error types."""
        headers: dict[str, str] = {}
        body: Any = None
        if json_body is not None:
            body = dumps_json(json_body)
            headers["Content-Type"] = "application/json; charset=utf-8"
        elif data is not None:
            body = data() if callable(data) else data
        query = {k: str(v) for k, v in (params or {}).items() if v is not None}
        if limited and self.limiter is not None:
            if _reserved.get():
                _reserved.set(False)
            else:
                await self.limiter.acquire()
        session = self.session()
        state = {"written": False}
        try:
            async with session.request(method, url, params=query, data=body, headers=headers,
                                       trace_request_ctx=state) as resp:
                raw = await resp.read()
                status = resp.status
                ctype = resp.content_type or ""
        except asyncio.CancelledError:
            raise
        except (asyncio.TimeoutError, aiohttp.ClientError, OSError) as exc:
            where = redact_url(_with_query(url, query))
            # str(exc) of some aiohttp errors contains the URL (and so the token): not used.
            if isinstance(exc, asyncio.TimeoutError):
                what = f"timed out after {self.timeout}s"
            elif isinstance(exc, aiohttp.ClientConnectorError):
                what = f"cannot connect ({type(exc).__name__})"
            else:
                what = type(exc).__name__
            if not state["written"]:
                log.warning("%s %s: %s before the request was sent", method, where, what)
                raise RequestNotSent(f"{path}: {what} (request not sent)", path=path) from None
            log.warning("%s %s: %s after the request was sent", method, where, what)
            raise AnswerLost(f"{path}: {what} after the request was sent", path=path) from None
        log.debug("%s %s → HTTP %s, %d bytes", method, redact_url(_with_query(url, query)), status, len(raw))
        if expect == "bytes" and status < 400 and not _looks_like_json(ctype, raw):
            return raw
        return decode_answer(path, status, ctype, raw)


def _looks_like_json(content_type: str, raw: bytes) -> bool:
    """media/get answers bytes on success and JSON on error (spec 6.5)."""
    if content_type in ("application/json", "text/plain", "text/json"):
        return True
    return not content_type.startswith(("image/", "video/", "audio/", "application/octet-stream")) and raw[:1] == b"{"


def _with_query(url: str, query: dict[str, str]) -> str:
    if not query:
        return url
    from urllib.parse import urlencode

    return f"{url}?{urlencode(query)}"

