"""The whole inbound decode: query + body bytes -> a verified, typed ``Push``.

Order matters: the 3-field ``signature`` and the timestamp are checked before
the body is parsed; an encrypted body is only decrypted after its
``msg_signature`` (the signature that actually covers the body) is verified.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .crypto import VALIDATE_APPID_ERROR, MessageCrypto
from .errors import BadPush, CryptoError, SignatureError
from .parse import MAX_FIELD_BYTES, describe, dedup_key, normalize_event, parse_fields, sniff_format
from .signature import check_msg_signature, check_signature

__all__ = ["Push", "AppKeys", "verify_handshake", "decode_push"]

VALIDATE_SIGNATURE_ERROR = -40001

#: outer fields of a safe-mode envelope; anything else means compatible mode.
#: AgentID is WeCom's envelope field (it is next to Encrypt in safe mode too).
_ENVELOPE_FIELDS = frozenset({"ToUserName", "Encrypt", "AgentID"})
_TIMESTAMP = re.compile(r"[0-9]{1,12}")


class AppKeys(Protocol):
    """What the wire layer needs from an app's configuration (``csbot.config.AppConfig`` fits)."""

    @property
    def appid(self) -> str: ...

    @property
    def token(self) -> str: ...

    @property
    def require_encryption(self) -> bool: ...

    @property
    def aes_keys(self) -> list[str]:
        """Current then previous EncodingAESKey; empty for a plaintext-only app."""
        ...


@dataclass(frozen=True)
class Push:
    """A verified, decrypted and normalised push."""

    event: dict[str, Any]
    fmt: str  # "xml" | "json": format of the body WeChat sent (a reply must use it)
    mode: str  # "plaintext" | "compatible" | "safe"
    aes_key: str | None  # the EncodingAESKey that decrypted it; an encrypted reply must use it
    dedup_key: str
    openid: str
    msg_type: str
    event_name: str | None
    text: str | None
    create_time: int

    def is_message(self) -> bool:
        """True for user messages (text, image, ...), False for events."""
        return self.msg_type.lower() != "event"

    def __repr__(self) -> str:  # keep message content and keys out of logs
        return (
            f"Push(fmt={self.fmt!r}, mode={self.mode!r}, msg_type={self.msg_type!r}, "
            f"event_name={self.event_name!r}, dedup_key={self.dedup_key!r})"
        )


def _check_query_signature(app: AppKeys, query: Mapping[str, str]) -> tuple[str, str]:
    signature = query.get("signature")
    timestamp = query.get("timestamp")
    nonce = query.get("nonce")
    if not signature or timestamp is None or nonce is None:
        raise SignatureError("missing signature", code=VALIDATE_SIGNATURE_ERROR)
    if not check_signature(app.token, timestamp, nonce, signature):
        raise SignatureError("signature mismatch", code=VALIDATE_SIGNATURE_ERROR)
    return timestamp, nonce


def _check_timestamp(timestamp: str, now: float, max_clock_skew: int) -> None:
    if not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureError("timestamp is not an integer")
    if max_clock_skew > 0 and abs(now - int(timestamp)) > max_clock_skew:
        raise SignatureError("timestamp outside the allowed clock skew")


def verify_handshake(app: AppKeys, query: Mapping[str, str], *, now: float, max_clock_skew: int) -> str:
    """GET URL verification: return ``echostr`` unchanged if the 3-field signature is right.

    Mini Programs and Official Accounts echo ``echostr`` as-is in every mode
    (the encrypted echostr with msg_signature is WeCom only). The timestamp is held to
    the same window as a push's, so a handshake URL found in a log cannot be replayed later.
    """
    timestamp, _ = _check_query_signature(app, query)
    _check_timestamp(timestamp, now, max_clock_skew)
    echostr = query.get("echostr")
    if echostr is None:
        raise BadPush("missing echostr")
    return echostr


def _decrypt(app: AppKeys, encrypt: str) -> tuple[bytes, str]:
    """Try each key in order (current, then previous) and say which one worked.

    A -40005 (appid mismatch) means a key *did* decrypt the buffer cleanly, so
    it is more telling than the failures of the other keys and is reported.
    """
    errors: list[CryptoError] = []
    for key in app.aes_keys:
        try:
            return MessageCrypto(key, app.appid).decrypt_for_app(encrypt), key
        except CryptoError as exc:
            errors.append(exc)
    for exc in errors:
        if exc.code == VALIDATE_APPID_ERROR:
            raise exc
    raise errors[-1]


def decode_push(
    app: AppKeys, query: Mapping[str, str], body: bytes, *, now: float, max_clock_skew: int
) -> Push:
    """Verify and decode one POST push (see the module docstring for the order of checks).

    ``max_clock_skew`` <= 0 disables the timestamp window (WeChat defines none;
    it is local hardening). Repeated nonces are never refused: WeChat retries,
    and duplicates are handled by ``Push.dedup_key``.
    """
    timestamp, nonce = _check_query_signature(app, query)
    _check_timestamp(timestamp, now, max_clock_skew)

    fmt = sniff_format(body)
    encrypt_type = (query.get("encrypt_type") or "").strip().lower()
    # an envelope's Encrypt is as large as the message; the message's own fields get the limits
    fields = parse_fields(body, fmt, field_limit=max(len(body), MAX_FIELD_BYTES) if encrypt_type == "aes"
                          else MAX_FIELD_BYTES)

    aes_key: str | None = None
    if encrypt_type == "aes":
        if not app.aes_keys:
            raise BadPush("encrypted push but no EncodingAESKey configured")
        encrypt = fields.get("Encrypt")
        if not isinstance(encrypt, str) or not encrypt:
            raise BadPush("encrypted push has no Encrypt field")
        msg_signature = query.get("msg_signature")
        if not msg_signature:
            raise SignatureError("missing msg_signature", code=VALIDATE_SIGNATURE_ERROR)
        if not check_msg_signature(app.token, timestamp, nonce, encrypt, msg_signature):
            raise SignatureError("msg_signature mismatch", code=VALIDATE_SIGNATURE_ERROR)
        plaintext, aes_key = _decrypt(app, encrypt)
        mode = "compatible" if set(fields) - _ENVELOPE_FIELDS else "safe"
        # In compatible mode the outer plaintext copy is unauthenticated; the
        # decrypted fields are the ones that count.
        fields = parse_fields(plaintext, sniff_format(plaintext))
    elif encrypt_type in ("", "raw"):
        # "raw" as plaintext follows co-wechat; whether WeChat sends it is UNCONFIRMED.
        if app.require_encryption:
            raise BadPush("plaintext pushes are refused: this app requires encryption")
        mode = "plaintext"
        # An Encrypt field without encrypt_type=aes is not covered by any
        # signature we checked: ignore it rather than trust it.
        fields = {k: v for k, v in fields.items() if k != "Encrypt"}
    else:
        raise BadPush("unsupported encrypt_type (expected aes or none)")

    event = normalize_event(fields)
    event_name = event.get("Event")
    return Push(
        event=event,
        fmt=fmt,
        mode=mode,
        aes_key=aes_key,
        dedup_key=dedup_key(event),
        openid=event["FromUserName"],
        msg_type=event["MsgType"],
        event_name=event_name if isinstance(event_name, str) else None,
        text=describe(event),
        create_time=event["CreateTime"],
    )
