"""One aiohttp session per app: rate limit, timeout, error mapping, JSON decoding.

Everything that can go wrong on the wire becomes ``APITransportError`` or
``WeChatAPIError`` here, with the URL redacted, so no caller ever sees (or logs) an
exception whose text contains the access token or the AppSecret.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Literal

import aiohttp
from aiolimiter import AsyncLimiter

from csbot.openapi.errors import APITransportError, WeChatAPIError
from csbot.openapi.util import dumps_json, redact_url

__all__ = ["Transport", "decode_answer", "make_limiter"]

log = logging.getLogger("csbot.openapi")

#: a request body, or a zero-argument factory of one (aiohttp.FormData can be sent only once,
#: and a call retried with a fresh token needs a fresh body)
BodyData = Any


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
        raise APITransportError(f"{path}: HTTP {status} from WeChat", status=status, path=path)
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise APITransportError(
            f"{path}: HTTP {status}, answer is not JSON ({content_type or 'no content type'}, {len(body)} bytes)",
            status=status,
            path=path,
        ) from None
    if not isinstance(data, dict):
        raise APITransportError(f"{path}: HTTP {status}, answer is JSON but not an object", status=status, path=path)
    check_errcode(path, data)
    if status >= 400:
        raise APITransportError(f"{path}: HTTP {status} from WeChat", status=status, path=path)
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
            )
        return self._session

    async def close(self) -> None:
        self._closed = True
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

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
            await self.limiter.acquire()
        session = self.session()
        try:
            async with session.request(method, url, params=query, data=body, headers=headers) as resp:
                raw = await resp.read()
                status = resp.status
                ctype = resp.content_type or ""
        except asyncio.CancelledError:
            raise
        except asyncio.TimeoutError:
            log.warning("%s %s timed out after %.1fs", method, redact_url(_with_query(url, query)), self.timeout)
            raise APITransportError(f"{path}: timed out after {self.timeout}s", path=path) from None
        except aiohttp.ClientConnectorError as exc:
            log.warning("%s %s: cannot connect: %s", method, redact_url(_with_query(url, query)), type(exc).__name__)
            raise APITransportError(
                f"{path}: cannot connect ({type(exc).__name__})", path=path, maybe_delivered=False
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            log.warning("%s %s failed: %s", method, redact_url(_with_query(url, query)), type(exc).__name__)
            # str(exc) of some aiohttp errors contains the URL (and so the token): not used.
            raise APITransportError(f"{path}: {type(exc).__name__}", path=path) from None
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

