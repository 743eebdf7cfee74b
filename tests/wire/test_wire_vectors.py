"""Every published vector in crypto-vectors.json, checked by kind (spec §3)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from csbot.wire import (
    MessageCrypto,
    SignatureError,
    check_msg_signature,
    check_signature,
    compute_signature,
    decode_push,
    encrypted_envelope,
    verify_handshake,
)

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).with_name("crypto-vectors.json")).read_text(encoding="utf-8")
)


def of_kind(*kinds: str) -> list[Any]:
    return [pytest.param(v, id=v["id"]) for v in VECTORS if v["kind"] in kinds]


class VectorApp:
    def __init__(self, v: dict[str, Any]) -> None:
        self.appid = v["appid"]
        self.token = v["token"]
        self.require_encryption = False
        self._key = v["encoding_aes_key"]

    @property
    def aes_keys(self) -> list[str]:
        return [self._key]


def test_every_vector_kind_is_covered():
    assert {v["kind"] for v in VECTORS} == {
        "url_verify_plain",
        "signature_only",
        "decrypt",
        "encrypt",
        "encrypt_payload_only",
        "wecom_verify_url",
    }
    assert len(VECTORS) == 15


@pytest.mark.parametrize("v", of_kind("url_verify_plain"))
def test_url_verification_echoes_echostr_when_the_signature_is_right(v):
    assert compute_signature(v["token"], v["timestamp"], v["nonce"]) == v["signature"]
    app = type("A", (), {"token": v["token"], "appid": "x", "require_encryption": False, "aes_keys": []})()
    query = {k: v[k] for k in ("signature", "timestamp", "nonce", "echostr")}
    assert verify_handshake(app, query, now=int(v["timestamp"]), max_clock_skew=300) == v["expected_response_body"]


@pytest.mark.parametrize("v", of_kind("url_verify_plain"))
def test_url_verification_fails_when_one_nonce_digit_changes(v):
    nonce = v["nonce"][:-1] + ("0" if v["nonce"][-1] != "0" else "1")
    assert not check_signature(v["token"], v["timestamp"], nonce, v["signature"])
    app = type("A", (), {"token": v["token"], "appid": "x", "require_encryption": False, "aes_keys": []})()
    with pytest.raises(SignatureError) as err:
        verify_handshake(app, {"signature": v["signature"], "timestamp": v["timestamp"], "nonce": nonce, "echostr": "1"},
                         now=int(v["timestamp"]), max_clock_skew=300)
    assert err.value.status == 403


@pytest.mark.parametrize("v", of_kind("signature_only"))
def test_plaintext_post_is_authenticated_by_the_query_signature_only(v):
    assert check_signature(v["token"], v["timestamp"], v["nonce"], v["signature"])
    app = type("A", (), {"token": v["token"], "appid": "x", "require_encryption": False, "aes_keys": []})()
    query = {k: v[k] for k in ("signature", "timestamp", "nonce")}
    push = decode_push(app, query, v["post_body"].encode(), now=int(v["timestamp"]), max_clock_skew=300)
    assert (push.mode, push.fmt, push.event_name) == ("plaintext", v["format"], "debug_demo")
    assert push.event["debug_str"] == "hello world"


@pytest.mark.parametrize("v", of_kind("decrypt"))
def test_decrypt_vector_msg_signature_plaintext_and_receive_id(v):
    assert check_msg_signature(v["token"], v["timestamp"], v["nonce"], v["encrypt"], v["msg_signature"])
    crypto = MessageCrypto(v["encoding_aes_key"], v["appid"])
    message, receive_id = crypto.decrypt(v["encrypt"])
    assert message.decode("utf-8") == v["expected_plaintext"]
    assert len(message) == v["expected_msg_len"]
    assert receive_id == v["expected_receive_id"]
    assert crypto.decrypt_for_app(v["encrypt"]) == message


@pytest.mark.parametrize("v", of_kind("decrypt"))
def test_decrypt_vector_re_encrypts_to_the_same_ciphertext_with_its_random_prefix(v):
    """Proves the random prefix, length field, receive id and 32-byte padding layout."""
    crypto = MessageCrypto(v["encoding_aes_key"], v["appid"])
    again = crypto.encrypt(v["expected_plaintext"], random_prefix=v["expected_random"].encode())
    assert again == v["encrypt"]
    if "expected_ciphertext_bytes" in v:
        import base64

        assert len(base64.b64decode(again)) == v["expected_ciphertext_bytes"]
    if "expected_pkcs7_pad_byte" in v:
        assert 32 - v["expected_fullstr_bytes"] % 32 == v["expected_pkcs7_pad_byte"]


@pytest.mark.parametrize("v", of_kind("decrypt"))
def test_decrypt_vector_goes_through_decode_push(v):
    """The whole inbound path; the 3-field signature is computed where the source omits it
    (it does not cover the body, so this does not weaken the check)."""
    query = {
        "signature": v.get("signature") or compute_signature(v["token"], v["timestamp"], v["nonce"]),
        "timestamp": v["timestamp"],
        "nonce": v["nonce"],
        "encrypt_type": "aes",
        "msg_signature": v["msg_signature"],
    }
    push = decode_push(VectorApp(v), query, v["post_body"].encode(), now=int(v["timestamp"]), max_clock_skew=300)
    expected_mode = "compatible" if v["id"] == "oa-official-python-sample-decrypt" else "safe"
    assert push.mode == expected_mode
    assert push.fmt == v["format"]
    assert push.aes_key == v["encoding_aes_key"]
    assert push.openid == push.event["FromUserName"]


@pytest.mark.parametrize("v", of_kind("encrypt", "encrypt_payload_only"))
def test_encrypt_vector_with_fixed_random_prefix(v):
    crypto = MessageCrypto(v["encoding_aes_key"], v["appid"])
    encrypt = crypto.encrypt(v["plaintext"], random_prefix=v["random"].encode())
    assert encrypt == v["expected_encrypt"]
    assert crypto.decrypt(encrypt) == (v["plaintext"].encode("utf-8"), v["appid"])


@pytest.mark.parametrize("v", [p for p in of_kind("encrypt") if "expected_reply_body" in p.values[0]])
def test_encrypted_reply_envelope_is_reproduced_byte_for_byte(v):
    crypto = MessageCrypto(v["encoding_aes_key"], v["appid"])
    body = encrypted_envelope(
        crypto,
        v["token"],
        v["plaintext"].encode("utf-8"),
        v["format"],
        nonce=v["reply_nonce"],
        timestamp=int(v["reply_timestamp"]),
        random_prefix=v["random"].encode(),
    )
    assert body == v["expected_reply_body"].encode("utf-8")
    assert compute_signature(v["token"], v["reply_timestamp"], v["reply_nonce"], v["expected_encrypt"]) == v[
        "expected_msg_signature"
    ]


@pytest.mark.parametrize("v", of_kind("wecom_verify_url"))
def test_wecom_encrypted_echostr_msg_signature_and_decryption(v):
    """WeCom encrypts echostr and puts the corp id as receive id; MessageCrypto.decrypt handles it."""
    assert check_msg_signature(v["token"], v["timestamp"], v["nonce"], v["echostr"], v["msg_signature"])
    message, receive_id = MessageCrypto(v["encoding_aes_key"], v["appid"]).decrypt(v["echostr"])
    assert message.decode() == v["expected_plaintext"]
    assert receive_id == v["expected_receive_id"]
    if "negative_nonce" in v:
        assert not check_msg_signature(v["token"], v["timestamp"], v["negative_nonce"], v["echostr"], v["msg_signature"])
