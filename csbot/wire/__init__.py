"""Wire format of WeChat message pushes: bytes in, typed and verified ``Push`` out.

No I/O happens in this package (no network, database or logging).
"""

from .crypto import MessageCrypto
from .errors import BadPush, CryptoError, SignatureError, TooLarge, WireError
from .parse import dedup_key, describe, normalize_event, parse_fields, sniff_format
from .push import AppKeys, Push, decode_push, verify_handshake
from .render import encrypted_envelope, render_fields
from .signature import check_msg_signature, check_signature, compute_signature

__all__ = [
    "AppKeys",
    "BadPush",
    "CryptoError",
    "MessageCrypto",
    "Push",
    "SignatureError",
    "TooLarge",
    "WireError",
    "check_msg_signature",
    "check_signature",
    "compute_signature",
    "decode_push",
    "dedup_key",
    "describe",
    "encrypted_envelope",
    "normalize_event",
    "parse_fields",
    "render_fields",
    "sniff_format",
    "verify_handshake",
]
