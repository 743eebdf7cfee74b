"""Small helpers shared by the client and the token manager: redaction and JSON encoding."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

__all__ = ["redact_url", "dumps_json", "token_fingerprint", "SECRET_PARAMS"]

#: query parameters never written to a log: the token, the AppSecret, and the single-use
#: wx.login code (it can be exchanged for the user's session_key)
SECRET_PARAMS: tuple[str, ...] = ("access_token", "secret", "js_code")

_SECRET_QUERY = re.compile(
    r"([?&;](?:" + "|".join(SECRET_PARAMS) + r")=)[^&#;]*",
    re.IGNORECASE,
)
#: the user:password@ part of an authority, up to its last '@' (a password may hold an '@')
_USERINFO = re.compile(r"(?<=//)[^/?#]*@")


def redact_url(url: Any) -> str:
    """``url`` (str or yarl.URL) with any ``user:password@`` and the values of
    access_token/secret/js_code replaced by ***.

    Every URL the openapi layer logs or puts in an exception message goes through here, and so
    does a token-source URL shown by ``csbot check``.
    """
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub("***@", str(url), count=1))


def dumps_json(body: Any) -> bytes:
    """UTF-8 JSON as WeChat wants it: raw non-ASCII characters, never ``\\uXXXX`` escapes.

    WeChat's global error table has 40033 "request must not contain \\uxxxx characters";
    raw UTF-8 is always accepted.
    """
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def token_fingerprint(token: str | None) -> str:
    """A short, non-reversible tag of a token, so logs can tell two tokens apart safely."""
    if not token:
        return "-"
    return hashlib.sha256(token.encode("utf-8")).hexdigest()[:8]


def drop_none(fields: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments left at None are not sent (WeChat treats absent and null differently)."""
    return {k: v for k, v in fields.items() if v is not None}
