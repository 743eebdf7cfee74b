"""WXBizMsgCrypt: AES-256-CBC with WeChat's framing (spec §2.1, §2.2).

    FullStr = random(16) || len(msg) as 4 bytes big-endian || msg || receive_id
    Encrypt = base64(AES-256-CBC(key, iv=key[:16], PKCS#7-to-32(FullStr)))

The padding block size is 32, not AES's 16, so a stock PKCS#7 unpadder must not
be used. Decryption is strict and every failure maps to the code used by the
official sample library, with a reason precise enough for an operator but free
of key material and plaintext.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import struct

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from .errors import CryptoError

__all__ = [
    "MessageCrypto",
    "ILLEGAL_AES_KEY",
    "VALIDATE_APPID_ERROR",
    "DECRYPT_AES_ERROR",
    "ILLEGAL_BUFFER",
    "DECODE_BASE64_ERROR",
]

ILLEGAL_AES_KEY = -40004
VALIDATE_APPID_ERROR = -40005
DECRYPT_AES_ERROR = -40007
ILLEGAL_BUFFER = -40008
DECODE_BASE64_ERROR = -40010

_BLOCK = 32  # WeChat's PKCS#7 block size
_HEADER = 20  # 16 random bytes + 4-byte length


def _decode_key(encoding_aes_key: str) -> bytes:
    """Lenient base64 of the 43-char key + "=".

    Real keys routinely have non-zero trailing bits in the 43rd character
    (e.g. the official sample key ``...ABCDEFG``), so a canonical-only decoder
    would wrongly reject them; Python's decoder ignores those bits, which is
    what every SDK does.
    """
    key = (encoding_aes_key or "").strip()
    try:
        raw = base64.b64decode(key + "=", validate=True)
    except (binascii.Error, ValueError):
        raise CryptoError("EncodingAESKey is not valid base64", code=ILLEGAL_AES_KEY) from None
    if len(raw) != 32:
        raise CryptoError(
            f"EncodingAESKey decodes to {len(raw)} bytes, expected 32 (it must be 43 characters)",
            code=ILLEGAL_AES_KEY,
        )
    return raw


class MessageCrypto:
    """Encrypts and decrypts WeChat message bodies for one EncodingAESKey + AppID."""

    __slots__ = ("_key", "_iv", "appid")

    def __init__(self, encoding_aes_key: str, appid: str) -> None:
        self._key = _decode_key(encoding_aes_key)
        self._iv = self._key[:16]
        self.appid = appid

    def __repr__(self) -> str:  # never show the key
        return f"MessageCrypto(appid={self.appid!r})"

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self._key), modes.CBC(self._iv))

    def encrypt(self, plaintext: bytes | str, *, random_prefix: bytes | None = None) -> str:
        """Return the base64 ``Encrypt`` value for ``plaintext`` (UTF-8 if str).

        ``random_prefix`` (16 bytes) is for reproducing published vectors; by
        default 16 random printable ASCII bytes are used, like the official samples.
        """
        msg = plaintext.encode("utf-8") if isinstance(plaintext, str) else bytes(plaintext)
        if random_prefix is None:
            random_prefix = secrets.token_hex(8).encode("ascii")
        if len(random_prefix) != 16:
            raise ValueError("random_prefix must be exactly 16 bytes")
        full = random_prefix + struct.pack(">I", len(msg)) + msg + self.appid.encode("utf-8")
        pad = _BLOCK - len(full) % _BLOCK  # 1..32, never 0
        full += bytes([pad]) * pad
        enc = self._cipher().encryptor()
        return base64.b64encode(enc.update(full) + enc.finalize()).decode("ascii")

    def decrypt(self, encrypt: str) -> tuple[bytes, str]:
        """Return ``(message bytes, receive_id)``; raises CryptoError with the sample-library code."""
        try:
            data = base64.b64decode((encrypt or "").strip(), validate=True)
        except (binascii.Error, ValueError):
            raise CryptoError("Encrypt is not valid base64", code=DECODE_BASE64_ERROR) from None
        if not data:
            raise CryptoError("Encrypt is empty", code=DECRYPT_AES_ERROR)
        if len(data) % 16:
            raise CryptoError(
                f"ciphertext is {len(data)} bytes, not a multiple of the 16-byte AES block",
                code=DECRYPT_AES_ERROR,
            )
        if len(data) % _BLOCK:
            raise CryptoError(
                f"ciphertext is {len(data)} bytes, not a multiple of WeChat's 32-byte padding block",
                code=ILLEGAL_BUFFER,
            )
        try:
            dec = self._cipher().decryptor()
            plain = dec.update(data) + dec.finalize()
        except ValueError:  # pragma: no cover - lengths are checked above
            raise CryptoError("AES decryption failed", code=DECRYPT_AES_ERROR) from None

        pad = plain[-1]
        if not 1 <= pad <= _BLOCK or plain[-pad:] != bytes([pad]) * pad:
            # Almost always the wrong key or a tampered ciphertext.
            raise CryptoError("padding is invalid (wrong EncodingAESKey or tampered ciphertext)", code=ILLEGAL_BUFFER)
        full = plain[:-pad]
        if len(full) < _HEADER:
            raise CryptoError(
                f"decrypted buffer is {len(full)} bytes, shorter than the {_HEADER}-byte header",
                code=ILLEGAL_BUFFER,
            )
        (msg_len,) = struct.unpack(">I", full[16:_HEADER])
        available = len(full) - _HEADER
        if msg_len > available:
            raise CryptoError(
                f"declared length {msg_len} exceeds the {available} bytes available",
                code=ILLEGAL_BUFFER,
            )
        msg = full[_HEADER : _HEADER + msg_len]
        try:
            receive_id = full[_HEADER + msg_len :].decode("utf-8")
        except UnicodeDecodeError:
            raise CryptoError("receive id after the message is not valid UTF-8", code=ILLEGAL_BUFFER) from None
        return msg, receive_id

    def decrypt_for_app(self, encrypt: str) -> bytes:
        """Decrypt and require the receive id to be this AppID (else -40005)."""
        msg, receive_id = self.decrypt(encrypt)
        if receive_id != self.appid:
            raise CryptoError(
                f"appid in the push is {_clip(receive_id)}, expected {self.appid}",
                code=VALIDATE_APPID_ERROR,
            )
        return msg


def _clip(value: str, limit: int = 64) -> str:
    """Keep attacker-controlled text in error reasons short and printable."""
    text = value.encode("unicode_escape").decode("ascii")
    return text if len(text) <= limit else text[:limit] + "..."
