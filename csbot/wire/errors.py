"""Errors raised while turning the bytes of a WeChat push into a verified push.

Each error carries the HTTP status the webhook should answer with, a short
``reason`` that is safe to show to a caller (it never contains a key, a token
or a decrypted body) and, for crypto failures, the WXBizMsgCrypt error code so
an operator can match it against WeChat's documentation.
"""

from __future__ import annotations

__all__ = ["WireError", "SignatureError", "BadPush", "CryptoError", "TooLarge"]


class WireError(Exception):
    """Base class: the push cannot be accepted."""

    status: int = 400

    def __init__(self, reason: str, *, code: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code

    def __str__(self) -> str:
        return self.reason if self.code is None else f"{self.reason} ({self.code})"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, code={self.code!r})"


class SignatureError(WireError):
    """The push is not authenticated: missing/wrong signature or msg_signature, or a stale timestamp."""

    status = 403


class BadPush(WireError):
    """The push is authenticated (or not yet) but malformed or refused by policy."""

    status = 400


class CryptoError(BadPush):
    """Decryption/encryption failed; ``code`` is the WXBizMsgCrypt code (-40004, -40005, -40007, -40008, -40010)."""

    status = 400


class TooLarge(WireError):
    """The body exceeds the configured size limit (checked by the webhook)."""

    status = 413
