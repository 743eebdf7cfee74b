"""Serialising WeChat field dicts (passive replies and the test kit's push builder).

XML follows WeChat's own style: strings in CDATA, integers bare, nested
mappings as nested elements and a list under key ``K`` as repeated ``<K>``
elements (the shape of ``<SubscribeMsgPopupEvent><List>..</List><List>..</List>``).
JSON is compact and keeps non-ASCII text as UTF-8, like WeChat's JSON pushes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from .crypto import MessageCrypto
from .signature import compute_signature

__all__ = ["render_fields", "encrypted_envelope", "cdata"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*\Z")


def cdata(text: str) -> str:
    """Wrap ``text`` in CDATA; a literal ``]]>`` is split across two sections."""
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def _scalar(value: Any) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if value is None:
        return ""
    return cdata(str(value))


def _element(key: str, value: Any, out: list[str]) -> None:
    if not _NAME.match(key):
        raise ValueError(f"not usable as an XML element name: {key!r}")
    if isinstance(value, Mapping):
        out.append(f"<{key}>")
        for k, v in value.items():
            _element(str(k), v, out)
        out.append(f"</{key}>")
    elif isinstance(value, (list, tuple)):
        for item in value:
            _element(key, item, out)
    else:
        out.append(f"<{key}>{_scalar(value)}</{key}>")


def render_fields(fields: Mapping[str, Any], fmt: str) -> bytes:
    """Render ``fields`` as a WeChat XML (``<xml>..</xml>``) or compact JSON body."""
    if fmt == "json":
        return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if fmt == "xml":
        out: list[str] = ["<xml>"]
        for key, value in fields.items():
            _element(str(key), value, out)
        out.append("</xml>")
        return "".join(out).encode("utf-8")
    raise ValueError(f"unknown format {fmt!r} (expected 'xml' or 'json')")


def encrypted_envelope(
    crypto: MessageCrypto,
    token: str,
    plaintext: bytes,
    fmt: str,
    *,
    nonce: str,
    timestamp: int,
    random_prefix: bytes | None = None,
) -> bytes:
    """The encrypted passive-reply body (spec §2.4).

    ``MsgSignature = sha1(sort[token, TimeStamp, Nonce, Encrypt])``. The XML
    layout (one element per line) is the one of wechatpy and of the Open
    Platform doc, so the published reply vectors are reproduced byte for byte;
    the JSON layout reproduces the Mini Program doc's example byte for byte.
    """
    encrypt = crypto.encrypt(plaintext, random_prefix=random_prefix)
    signature = compute_signature(token, str(int(timestamp)), nonce, encrypt)
    if fmt == "json":
        return render_fields(
            {"Encrypt": encrypt, "MsgSignature": signature, "TimeStamp": int(timestamp), "Nonce": str(nonce)},
            "json",
        )
    if fmt == "xml":
        return (
            "<xml>\n"
            f"<Encrypt>{cdata(encrypt)}</Encrypt>\n"
            f"<MsgSignature>{cdata(signature)}</MsgSignature>\n"
            f"<TimeStamp>{int(timestamp)}</TimeStamp>\n"
            f"<Nonce>{cdata(str(nonce))}</Nonce>\n"
            "</xml>"
        ).encode("utf-8")
    raise ValueError(f"unknown format {fmt!r} (expected 'xml' or 'json')")
