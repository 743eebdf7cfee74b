"""Errors of WeChat's server API, classified so callers know whether a retry can help.

Two kinds of failure:

* ``WeChatAPIError``: WeChat answered, with a non-zero ``errcode``. Whether retrying helps
  depends on the code (``-1`` busy and ``45011`` per-minute quota: yes; almost everything
  else: no).
* ``APITransportError``: no usable answer (timeout, connection error, HTTP 5xx, a body that
  is not JSON). For a send this means *maybe delivered*: WeChat may have processed the
  request before the answer was lost, so only a caller that owns de-duplication (the
  durable outbox) may retry it.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

import aiohttp

__all__ = [
    "WeChatAPIError",
    "APITransportError",
    "RequestNotSent",
    "AnswerLost",
    "is_transient",
    "parse_rid",
    "PERMANENT_ERRCODES",
    "TOKEN_ERRCODES",
    "TRANSIENT_ERRCODES",
]

#: the access token is invalid, not the latest, or expired: refetch and retry once
TOKEN_ERRCODES: frozenset[int] = frozenset({40001, 40014, 42001})

#: WeChat is busy (-1) or the per-minute quota is used up (45011): a later retry can succeed.
#: 45009 is the *daily* quota and is deliberately not here: retrying today cannot help.
TRANSIENT_ERRCODES: frozenset[int] = frozenset({-1, 45011})

#: codes a retry cannot fix: reply window/quota, bad openid/template/page/data, missing
#: permission, daily quota, and the token-fetch configuration problems (bad appid/secret,
#: IP whitelist, risky IP). Kept explicit for callers that dead-letter on sight.
PERMANENT_ERRCODES: frozenset[int] = frozenset(
    {45015, 45047, 40003, 43101, 48001, 47003, 40037, 41030, 45009, 40013, 40125, 40164, 89503, 41001}
)

_RID = re.compile(r"\brid:\s*([0-9A-Za-z_-]+)")


def parse_rid(errmsg: str | None) -> str | None:
    """WeChat's request id from an errmsg like ``"invalid openid rid: 6f1a-…"``."""
    if not errmsg:
        return None
    match = _RID.search(errmsg)
    return match.group(1) if match else None


class WeChatAPIError(Exception):
    """WeChat answered with a non-zero ``errcode``; carries ``rid`` for support tickets."""

    def __init__(
        self,
        errcode: int,
        errmsg: str = "",
        rid: str | None = None,
        path: str = "",
        response: dict[str, Any] | None = None,
    ) -> None:
        self.errcode = int(errcode)
        self.errmsg = errmsg or ""
        self.rid = rid if rid else parse_rid(self.errmsg)
        self.path = path
        #: the whole decoded answer, for fields beyond errcode/errmsg
        self.response = response if response is not None else {}
        super().__init__(f"{path or 'WeChat API'}: errcode {self.errcode}: {self.errmsg}")

    @property
    def transient(self) -> bool:
        """True when the same request may succeed later (-1 busy, 45011 minute quota)."""
        return self.errcode in TRANSIENT_ERRCODES

    @property
    def permanent(self) -> bool:
        """True for the codes a retry is known not to fix."""
        return self.errcode in PERMANENT_ERRCODES

    @property
    def token_error(self) -> bool:
        """True for 40001/40014/42001 (the access token was refused)."""
        return self.errcode in TOKEN_ERRCODES

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.errcode, self.errmsg, self.rid, self.path, self.response))


class APITransportError(Exception):
    """No usable answer: timeout, connection error, HTTP 5xx or a non-JSON body.

    ``status`` is the HTTP status when there was one. ``transient`` is True except for
    HTTP 4xx answers (other than 408/429), which mean a wrong URL or method and will not
    fix themselves. ``maybe_delivered`` is False only when the connection could not even
    be opened; otherwise WeChat may have acted on the request (a send may have gone out).
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        path: str = "",
        transient: bool | None = None,
        maybe_delivered: bool = True,
    ) -> None:
        self.status = status
        self.path = path
        if transient is None:
            transient = not (status is not None and 400 <= status < 500 and status not in (408, 429))
        self._transient = transient
        self.maybe_delivered = maybe_delivered
        super().__init__(message)

    @property
    def transient(self) -> bool:
        return self._transient


class RequestNotSent(APITransportError):
    """The request never reached the wire: DNS failure, connection refused or timed out while
    connecting, or a refusal answered before WeChat could act (HTTP 408/429, other 4xx).
    Nothing was delivered, so a resend cannot duplicate anything."""

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, maybe_delivered=False, **kw)


class AnswerLost(APITransportError):
    """The request was written but no usable answer came back: a read timeout, the connection
    dropped after the request was sent, an HTTP 5xx (often from a proxy in front of WeChat),
    a body that is not JSON. WeChat may have acted on it: a send is *in doubt*."""

    def __init__(self, message: str, **kw: Any) -> None:
        super().__init__(message, maybe_delivered=True, **kw)


def is_transient(exc: BaseException) -> bool:
    """Can a later retry of the same request succeed? (The caller decides whether it may.)"""
    if isinstance(exc, (WeChatAPIError, APITransportError)):
        return exc.transient
    if isinstance(exc, (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError)):
        return True
    return False
