"""WeChat's SHA-1 signatures (spec §1.2, §2.3).

``signature`` = sha1(sorted[token, timestamp, nonce]) authenticates only the
query; ``msg_signature`` = sha1(sorted[token, timestamp, nonce, Encrypt]) is the
one that authenticates an encrypted body.
"""

from __future__ import annotations

import hashlib
import hmac

__all__ = ["compute_signature", "check_signature", "check_msg_signature"]


def compute_signature(*parts: str) -> str:
    """Lower-case hex SHA-1 of the parts sorted by code point and concatenated."""
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()


def _equal(expected: str, given: str | None) -> bool:
    if not given:
        return False
    # WeChat sends lower-case hex; accept upper-case too, compare in constant time.
    return hmac.compare_digest(expected.encode("ascii"), given.strip().lower().encode("utf-8", "replace"))


def check_signature(token: str, timestamp: str, nonce: str, signature: str | None) -> bool:
    """True when the 3-field query ``signature`` is right (constant-time compare)."""
    return _equal(compute_signature(token, timestamp, nonce), signature)


def check_msg_signature(
    token: str, timestamp: str, nonce: str, encrypt: str, msg_signature: str | None
) -> bool:
    """True when the 4-field ``msg_signature`` over the body's ``Encrypt`` is right."""
    return _equal(compute_signature(token, timestamp, nonce, encrypt), msg_signature)
