"""MessageCrypto: lenient key decoding, strict decryption with WXBizMsgCrypt codes."""

from __future__ import annotations

import base64
import struct

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from csbot.wire import BadPush, CryptoError, MessageCrypto

KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
SAMPLE_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
APPID = "wxba5fad812f8e6fb9"


def raw_encrypt(key: str, padded: bytes) -> str:
    """AES-256-CBC of an already padded buffer, to craft malformed plaintexts."""
    k = base64.b64decode(key + "=")
    enc = Cipher(algorithms.AES(k), modes.CBC(k[:16])).encryptor()
    return base64.b64encode(enc.update(padded) + enc.finalize()).decode()


def framed(msg: bytes, appid: str = APPID, declared: int | None = None) -> bytes:
    return b"R" * 16 + struct.pack(">I", len(msg) if declared is None else declared) + msg + appid.encode()


def pad32(buf: bytes) -> bytes:
    k = 32 - len(buf) % 32
    return buf + bytes([k]) * k


def code_of(encrypt: str, key: str = KEY) -> CryptoError:
    with pytest.raises(CryptoError) as err:
        MessageCrypto(key, APPID).decrypt(encrypt)
    return err.value


# ------------------------------------------------------------------ keys


def test_key_with_non_canonical_trailing_bits_is_accepted():
    """The official sample key re-encodes as ...ABCDEFE; strict decoders wrongly reject it."""
    crypto = MessageCrypto(SAMPLE_KEY, "wx2c2769f8efd9abc2")
    assert crypto.decrypt(crypto.encrypt("x")) == (b"x", "wx2c2769f8efd9abc2")


@pytest.mark.parametrize("bad_key", ["", "short", KEY + "AAAA", KEY[:-1] + "!", KEY[:42]])
def test_key_that_does_not_decode_to_32_bytes_is_error_40004(bad_key):
    with pytest.raises(CryptoError) as err:
        MessageCrypto(bad_key, APPID)
    assert err.value.code == -40004
    assert err.value.status == 400
    assert bad_key[:10] not in err.value.reason or not bad_key  # the key is not echoed


def test_repr_never_shows_the_key():
    assert KEY not in repr(MessageCrypto(KEY, APPID))


# ------------------------------------------------------------------ round trips


def test_round_trip_counts_message_length_in_utf8_bytes():
    crypto = MessageCrypto(KEY, APPID)
    text = "我是中文abcd123"
    encrypt = crypto.encrypt(text, random_prefix=b"aaaabbbbccccdddd")
    full = base64.b64decode(encrypt)
    assert len(full) % 32 == 0
    assert crypto.decrypt(encrypt) == (text.encode("utf-8"), APPID)


def test_default_random_prefix_is_fresh_each_time():
    crypto = MessageCrypto(KEY, APPID)
    assert crypto.encrypt("same") != crypto.encrypt("same")


def test_random_prefix_must_be_16_bytes():
    with pytest.raises(ValueError):
        MessageCrypto(KEY, APPID).encrypt("x", random_prefix=b"short")


@pytest.mark.parametrize("size", [0, 11, 12, 13, 43, 44, 45, 1000])
def test_every_padding_length_round_trips(size):
    """FullStr lengths hitting every pad value, including a full 32-byte pad block."""
    crypto = MessageCrypto(KEY, APPID)
    msg = b"m" * size
    assert crypto.decrypt(crypto.encrypt(msg)) == (msg, APPID)


# ------------------------------------------------------------------ failures


def test_crypto_error_is_a_bad_push_with_status_400():
    assert issubclass(CryptoError, BadPush)
    assert code_of("!!!notbase64!!!").status == 400


def test_invalid_base64_is_error_40010():
    err = code_of("abc$def")
    assert err.code == -40010
    assert err.reason == "Encrypt is not valid base64"


def test_empty_ciphertext_is_error_40007():
    assert code_of("").code == -40007


def test_ciphertext_not_a_multiple_of_16_is_error_40007():
    err = code_of(base64.b64encode(b"x" * 40).decode())
    assert err.code == -40007
    assert "40 bytes" in err.reason


def test_ciphertext_multiple_of_16_but_not_32_is_error_40008():
    err = code_of(base64.b64encode(b"x" * 48).decode())
    assert err.code == -40008


def test_tampered_ciphertext_fails_with_invalid_padding():
    """Flipping a bit of the last block scrambles the padding (the MAC-less scheme's only check)."""
    crypto = MessageCrypto(KEY, APPID)
    raw = bytearray(base64.b64decode(crypto.encrypt("hello", random_prefix=b"0" * 16)))
    raw[-1] ^= 0x01
    err = code_of(base64.b64encode(bytes(raw)).decode())
    assert err.code == -40008
    assert "padding is invalid" in err.reason


@pytest.mark.parametrize(
    "tail",
    [b"\x00", b"\x21", b"\x05\x05\x05\x04\x05"],
    ids=["pad-byte-0", "pad-byte-33", "pad-bytes-differ"],
)
def test_bad_padding_is_error_40008(tail):
    body = framed(b"hello")
    buf = body + b"\x07" * (32 - (len(body) + len(tail)) % 32) + tail
    assert len(buf) % 32 == 0
    err = code_of(raw_encrypt(KEY, buf))
    assert err.code == -40008
    assert "padding is invalid" in err.reason


def test_declared_length_beyond_the_buffer_is_error_40008_with_numbers():
    body = framed(b"x" * 162, declared=500)  # 162 + 18-byte appid = 180 bytes after the header
    err = code_of(raw_encrypt(KEY, pad32(body)))
    assert err.code == -40008
    assert err.reason == "declared length 500 exceeds the 180 bytes available"


def test_buffer_shorter_than_the_header_is_error_40008():
    err = code_of(raw_encrypt(KEY, pad32(b"R" * 10)))
    assert err.code == -40008
    assert "shorter than the 20-byte header" in err.reason


def test_wrong_key_fails_instead_of_returning_garbage():
    encrypt = MessageCrypto(SAMPLE_KEY, APPID).encrypt("secret")
    assert code_of(encrypt).code in (-40008, -40005)


def test_wrong_appid_is_error_40005_naming_both_ids():
    encrypt = MessageCrypto(KEY, "wxOTHER").encrypt("hi")
    with pytest.raises(CryptoError) as err:
        MessageCrypto(KEY, APPID).decrypt_for_app(encrypt)
    assert err.value.code == -40005
    assert err.value.reason == f"appid in the push is wxOTHER, expected {APPID}"


def test_decrypt_without_app_check_returns_the_receive_id():
    """WeCom puts the corp id there; callers that need it use decrypt()."""
    encrypt = MessageCrypto(KEY, "ww_corp").encrypt("hi")
    assert MessageCrypto(KEY, APPID).decrypt(encrypt) == (b"hi", "ww_corp")
