"""Open data: CloudIDs resolved through ``wxa/getopendata``, ``encryptedData`` decrypted with the
user's ``session_key``, ``rawData`` signatures checked.

Decryption follows WeChat's published algorithm with the strictness its demos lack: AES-128-CBC,
key = base64(session_key) (16 bytes), iv = base64(iv) (16 bytes, 24 characters), strict PKCS#7,
UTF-8 JSON, and ``watermark.appid`` must be this app's AppID. Every failure is one
``OpenDataError`` whose ``code`` is the official demo's (-41001 key, -41002 iv, -41003 buffer,
-41004 base64) and whose message says which step failed.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
from typing import Any, Mapping

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from csbot.openapi import WeChatAPIError

__all__ = ["OpenDataError", "decrypt_open_data", "raw_data_signature_ok", "cloud_id_markers",
           "resolve_cloud_ids", "CLOUD_ID_MARKER_KEYS", "MAX_CLOUD_IDS", "CLOUD_ID_EXPIRED"]

log = logging.getLogger("csbot.cloud.opendata")

ILLEGAL_AES_KEY, ILLEGAL_IV, ILLEGAL_BUFFER, DECODE_BASE64_ERROR = -41001, -41002, -41003, -41004

#: the client's marker (``cloud.CloudID(id)`` of csbot-cloud.js), and the ``__cloudID`` shape
CLOUD_ID_MARKER_KEYS = ("__csbotCloudID", "__cloudID")
#: at most this many CloudIDs are replaced per call (WeChat's limit)
MAX_CLOUD_IDS = 5
#: WeChat's answer in place of an invalid or expired CloudID
CLOUD_ID_EXPIRED = -601006
#: errcodes of getopendata that mean "this CloudID is not valid (any more)"
_INVALID_CLOUD_ID = frozenset({40097, 47001, -601006})


class OpenDataError(ValueError):
    """Open data could not be decrypted or verified; ``code`` is WeChat's demo error code."""

    def __init__(self, code: int, message: str) -> None:
        self.code = code
        super().__init__(message)


def _b64(value: Any, what: str, code: int) -> bytes:
    if not isinstance(value, str) or not value:
        raise OpenDataError(code, f"{what} is missing")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise OpenDataError(code, f"{what} is not valid base64 (a '+' sent as a space?)") from None


def decrypt_open_data(encrypted_data: str, iv: str, session_key: str, appid: str) -> dict[str, Any]:
    """The decrypted open data (userInfo, WeRun, share info, phone…) or ``OpenDataError``."""
    key = _b64(session_key, "session_key", ILLEGAL_AES_KEY)
    if len(key) != 16:
        raise OpenDataError(ILLEGAL_AES_KEY, "session_key is not 16 bytes")
    if not isinstance(iv, str) or len(iv) != 24:
        raise OpenDataError(ILLEGAL_IV, "iv must be 24 base64 characters")
    iv_bytes = _b64(iv, "iv", ILLEGAL_IV)
    if len(iv_bytes) != 16:
        raise OpenDataError(ILLEGAL_IV, "iv is not 16 bytes")
    cipher = _b64(encrypted_data, "encryptedData", DECODE_BASE64_ERROR)
    if len(cipher) % 16:
        raise OpenDataError(ILLEGAL_BUFFER, "encryptedData is not a whole number of AES blocks")
    decryptor = Cipher(algorithms.AES(key), modes.CBC(iv_bytes)).decryptor()
    padded = decryptor.update(cipher) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        plain = unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise OpenDataError(ILLEGAL_BUFFER, "bad padding: wrong session_key or iv, or altered data") from None
    try:
        data = json.loads(plain.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise OpenDataError(ILLEGAL_BUFFER, "decrypted data is not UTF-8 JSON: wrong session_key or iv") from None
    if not isinstance(data, dict):
        raise OpenDataError(ILLEGAL_BUFFER, "decrypted data is not a JSON object")
    watermark = data.get("watermark")
    if not isinstance(watermark, dict) or watermark.get("appid") != appid:
        raise OpenDataError(ILLEGAL_BUFFER, "watermark.appid is not this app's AppID")
    return data


def raw_data_signature_ok(raw_data: str, signature: str, session_key: str) -> bool:
    """``signature == sha1(rawData + session_key)`` (hex), compared in constant time."""
    if not isinstance(raw_data, str) or not isinstance(signature, str) or not session_key:
        return False
    expected = hashlib.sha1((raw_data + session_key).encode("utf-8")).hexdigest()
    return hmac.compare_digest(expected.encode("ascii"), signature.strip().lower().encode("utf-8", "replace"))


# --------------------------------------------------------------------------- CloudID


def _marker_id(value: Any) -> str | None:
    if isinstance(value, dict) and len(value) == 1:
        (key, cloud_id), = value.items()
        if key in CLOUD_ID_MARKER_KEYS and isinstance(cloud_id, str) and cloud_id:
            return cloud_id
    return None


def cloud_id_markers(data: Mapping[str, Any]) -> dict[str, str]:
    """Top-level keys of ``data`` holding a CloudID marker → the CloudID. Nested ones are left."""
    found: dict[str, str] = {}
    for key, value in data.items():
        cloud_id = _marker_id(value)
        if cloud_id is not None:
            found[key] = cloud_id
    return found


def _expired(cloud_id: str) -> dict[str, Any]:
    return {"cloudID": cloud_id, "errCode": CLOUD_ID_EXPIRED, "errMsg": "cloudID expired."}


def _opened(cloud_id: str, item: Mapping[str, Any]) -> dict[str, Any]:
    decoded = item.get("json")
    if isinstance(decoded, dict) and "data" in decoded:
        return {"cloudID": cloud_id, "data": decoded["data"]}
    return {"cloudID": cloud_id, "data": decoded}


async def _open_batch(openapi: Any, ids: list[str], openid: str | None) -> dict[str, dict[str, Any]]:
    answer = await openapi.open_data.get(cloudid_list=ids, openid=openid)
    out: dict[str, dict[str, Any]] = {}
    for item in answer.get("data_list") or []:
        if isinstance(item, dict) and isinstance(item.get("cloud_id"), str):
            out[item["cloud_id"]] = _opened(item["cloud_id"], item)
    return out


async def resolve_cloud_ids(openapi: Any, markers: Mapping[str, str], openid: str | None) -> dict[str, dict[str, Any]]:
    """Each marked key → ``{"cloudID", "data"}``, or ``{"cloudID", "errCode", "errMsg"}``.

    One ``wxa/getopendata`` call for all of them; when WeChat refuses the batch because one is
    invalid, each is asked alone so the valid ones still open. Transport failures (and WeChat
    being busy) raise ``csbot.openapi.APITransportError``/``WeChatAPIError``: the caller answers 503.
    """
    ids = list(dict.fromkeys(markers.values()))
    try:
        opened = await _open_batch(openapi, ids, openid)
    except WeChatAPIError as exc:
        if exc.transient:
            raise
        opened = {}
        for cloud_id in ids:
            try:
                opened.update(await _open_batch(openapi, [cloud_id], openid))
            except WeChatAPIError as one:
                if one.transient:
                    raise
                if one.errcode in _INVALID_CLOUD_ID:
                    opened[cloud_id] = _expired(cloud_id)
                else:  # the app's problem (cloud development not enabled, no permission…)
                    log.error("getopendata refused CloudID (errcode %s: %s)", one.errcode, one.errmsg)
                    opened[cloud_id] = {"cloudID": cloud_id, "errCode": one.errcode, "errMsg": one.errmsg}
    return {key: opened.get(cloud_id) or _expired(cloud_id) for key, cloud_id in markers.items()}

