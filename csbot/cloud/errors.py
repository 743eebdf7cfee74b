"""Errors of the ``/cloud`` API: one JSON shape, ``{"errCode", "errMsg"}`` (+ ``requestID``).

``CloudError`` is an aiohttp HTTP exception, so a route (or ``require_session``) can simply
raise it and the caller gets the status, the JSON body and any headers (``Retry-After``).
The ``errCode`` values are csbot's own where WeChat has none (see the README's table);
WeChat's codes pass through where they exist (40029, 40226, -1, 45011 on login).
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from aiohttp import web

__all__ = ["CloudError", "ERR_BAD_REQUEST", "ERR_UNAUTHORIZED", "ERR_FORBIDDEN", "ERR_NOT_FOUND",
           "ERR_TOO_LARGE", "ERR_RATE_LIMITED", "ERR_FUNCTION_FAILED", "ERR_BAD_RESULT", "ERR_TIMEOUT",
           "ERR_UNAVAILABLE"]

ERR_BAD_REQUEST = -400001
ERR_UNAUTHORIZED = -401001
ERR_FORBIDDEN = -403001
ERR_NOT_FOUND = -404001
ERR_TOO_LARGE = -413001
ERR_RATE_LIMITED = -429001
#: a function raised (the issue's, and WeChat's, generic failure code)
ERR_FUNCTION_FAILED = -1
ERR_BAD_RESULT = -500001
ERR_TIMEOUT = -504001
ERR_UNAVAILABLE = -503001


class CloudError(web.HTTPException):
    """An HTTP error with the body ``{"errCode", "errMsg", ...extra}``; raise it from a route."""

    status_code = 400

    def __init__(self, status: int, err_code: int, err_msg: str, *,
                 headers: Mapping[str, str] | None = None, **extra: Any) -> None:
        self.status_code = status  # read by HTTPException.__init__
        self.err_code = err_code
        self.err_msg = err_msg
        self.extra = extra
        payload = {"errCode": err_code, "errMsg": err_msg, **extra}
        super().__init__(headers=dict(headers or {}), text=json.dumps(payload, ensure_ascii=False),
                         content_type="application/json")

    def __str__(self) -> str:
        return f"{self.status_code} {self.err_code}: {self.err_msg}"
