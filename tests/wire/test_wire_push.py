"""decode_push / verify_handshake: the whole inbound path the webhook calls."""

from __future__ import annotations

import base64

import pytest

from csbot.wire import (
    BadPush,
    CryptoError,
    MessageCrypto,
    SignatureError,
    WireError,
    compute_signature,
    encrypted_envelope,
    parse_fields,
    render_fields,
    verify_handshake,
)

# same values as conftest (the Mini Program doc's app)
APPID = "wxba5fad812f8e6fb9"
TOKEN = "AAAAA"
KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
OLD_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
NOW = 1714112445


def raises(exc_type, fn, *args, **kwargs) -> WireError:
    with pytest.raises(exc_type) as err:
        fn(*args, **kwargs)
    return err.value


# ------------------------------------------------------------------ handshake


def test_handshake_returns_echostr_unchanged(app):
    query = {"signature": compute_signature(TOKEN, "1", "2"), "timestamp": "1", "nonce": "2", "echostr": "e c h o"}
    assert verify_handshake(app, query, now=1, max_clock_skew=300) == "e c h o"


@pytest.mark.parametrize("now", [1 + 301, 1 - 301])
def test_handshake_outside_the_timestamp_window_is_403(app, now):
    query = {"signature": compute_signature(TOKEN, "1", "2"), "timestamp": "1", "nonce": "2", "echostr": "e"}
    err = raises(SignatureError, verify_handshake, app, query, now=now, max_clock_skew=300)
    assert (err.status, err.reason) == (403, "timestamp outside the allowed clock skew")
    assert verify_handshake(app, query, now=now, max_clock_skew=0) == "e"  # the check can be turned off


def test_handshake_with_a_timestamp_that_is_not_a_number_is_403(app):
    query = {"signature": compute_signature(TOKEN, "x1", "2"), "timestamp": "x1", "nonce": "2", "echostr": "e"}
    err = raises(SignatureError, verify_handshake, app, query, now=1, max_clock_skew=300)
    assert err.reason == "timestamp is not an integer"


@pytest.mark.parametrize("drop", ["signature", "timestamp", "nonce"])
def test_handshake_without_a_signature_parameter_is_403(app, drop):
    query = {"signature": compute_signature(TOKEN, "1", "2"), "timestamp": "1", "nonce": "2", "echostr": "e"}
    del query[drop]
    err = raises(SignatureError, verify_handshake, app, query, now=1, max_clock_skew=300)
    assert (err.status, err.reason) == (403, "missing signature")


def test_handshake_with_a_wrong_signature_is_403(app):
    err = raises(SignatureError, verify_handshake, app, {"signature": "0" * 40, "timestamp": "1", "nonce": "2", "echostr": "e"},
                 now=1, max_clock_skew=300)
    assert err.status == 403 and err.code == -40001


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("fmt", ["xml", "json"])
@pytest.mark.parametrize("mode", ["plaintext", "compatible", "safe"])
def test_round_trip_in_every_format_and_mode(wechat, decode, app, text_fields, fmt, mode):
    query, body = wechat.push(text_fields, fmt=fmt, mode=mode)
    push = decode(app, query, body)
    assert (push.fmt, push.mode) == (fmt, mode)
    assert push.aes_key == (None if mode == "plaintext" else KEY)
    # ids become strings, CreateTime an int, everything else as sent
    assert push.event == {**text_fields, "MsgId": "24526813564466601"}
    assert push.create_time == NOW
    assert push.openid == text_fields["FromUserName"]
    assert push.msg_type == "text" and push.event_name is None
    assert push.text == text_fields["Content"]
    assert push.dedup_key == "msg:24526813564466601"
    assert push.is_message()
    assert "Encrypt" not in push.event


def test_xml_and_json_round_trips_give_the_same_event(wechat, decode, app, text_fields):
    from_xml, from_json = (decode(app, *wechat.push(text_fields, fmt=fmt)).event for fmt in ("xml", "json"))
    assert from_xml == from_json


def test_event_push_is_not_a_message(wechat, decode, app):
    fields = {"ToUserName": "gh_1", "FromUserName": "oU", "CreateTime": NOW, "MsgType": "event",
              "Event": "user_enter_tempsession", "SessionFrom": "home"}
    push = decode(app, *wechat.push(fields, fmt="json"))
    assert not push.is_message()
    assert push.event_name == "user_enter_tempsession"
    assert push.dedup_key == f"evt:oU:{NOW}:user_enter_tempsession"
    assert push.text == "[event] user_enter_tempsession home"


def test_compatible_mode_trusts_the_decrypted_fields_not_the_outer_copy(wechat, decode, app, text_fields):
    query, body = wechat.push(text_fields, fmt="xml", mode="compatible")
    forged = body.replace("你好".encode(), "FORGED".encode())
    assert forged != body
    push = decode(app, query, forged)
    assert push.mode == "compatible"
    assert push.event["Content"] == text_fields["Content"]


def test_a_retried_push_with_the_same_nonce_is_accepted_again_with_the_same_dedup_key(wechat, decode, app, text_fields):
    query, body = wechat.push(text_fields)
    assert decode(app, query, body).dedup_key == decode(app, query, body).dedup_key


def test_plaintext_push_with_a_stray_encrypt_field_ignores_it(wechat, decode, app, text_fields):
    query, body = wechat.push({**text_fields, "Encrypt": "not-even-base64"}, mode="plaintext")
    push = decode(app, query, body)
    assert push.mode == "plaintext" and "Encrypt" not in push.event


def test_encrypt_type_raw_is_treated_as_plaintext(wechat, decode, app, text_fields):
    """UNCONFIRMED whether WeChat sends it; co-wechat treats raw as plaintext."""
    query, body = wechat.push(text_fields, mode="plaintext")
    assert decode(app, {**query, "encrypt_type": "raw"}, body).mode == "plaintext"


def test_an_app_without_keys_accepts_plaintext(wechat, decode, make_app, text_fields):
    assert decode(make_app(keys=()), *wechat.push(text_fields, mode="plaintext")).mode == "plaintext"


def test_the_reply_envelope_for_a_push_uses_the_key_that_decrypted_it(wechat, decode, make_app, text_fields):
    app = make_app(keys=(KEY, OLD_KEY))
    query, body = wechat.push(text_fields, key=OLD_KEY, fmt="json")
    push = decode(app, query, body)
    reply = render_fields({"ToUserName": push.openid, "FromUserName": push.event["ToUserName"], "CreateTime": NOW,
                           "MsgType": "transfer_customer_service"}, push.fmt)
    envelope = parse_fields(
        encrypted_envelope(MessageCrypto(push.aes_key, app.appid), app.token, reply, push.fmt, nonce=query["nonce"], timestamp=NOW),
        push.fmt,
    )
    assert MessageCrypto(OLD_KEY, APPID).decrypt_for_app(envelope["Encrypt"]) == reply


# ------------------------------------------------------------------ key rotation


def test_previous_key_still_decrypts_and_aes_key_reports_it(wechat, decode, make_app, text_fields):
    app = make_app(keys=(KEY, OLD_KEY))
    assert decode(app, *wechat.push(text_fields, key=OLD_KEY)).aes_key == OLD_KEY
    assert decode(app, *wechat.push(text_fields, key=KEY)).aes_key == KEY


def test_a_push_no_configured_key_decrypts_is_a_crypto_error(wechat, decode, make_app, text_fields):
    app = make_app(keys=(KEY,))
    err = raises(CryptoError, decode, app, *wechat.push(text_fields, key=OLD_KEY))
    assert err.status == 400 and err.code in (-40008, -40005)


def test_appid_mismatch_is_reported_as_such_even_with_two_keys(wechat, decode, make_app, text_fields):
    app = make_app(keys=(OLD_KEY, KEY))
    err = raises(CryptoError, decode, app, *wechat.push(text_fields, key=KEY, appid="wxSOMEONEELSE"))
    assert err.code == -40005
    assert err.reason == f"appid in the push is wxSOMEONEELSE, expected {APPID}"


def test_config_app_config_satisfies_app_keys(wechat, decode, text_fields):
    config = pytest.importorskip("csbot.config")
    app = config.AppConfig(name="main", appid=APPID, token=TOKEN, encoding_aes_key=OLD_KEY, previous_aes_key=KEY)
    assert decode(app, *wechat.push(text_fields, key=KEY)).aes_key == KEY


# ------------------------------------------------------------------ refusals


def test_wrong_signature_is_403(wechat, decode, app, text_fields):
    query, body = wechat.push(text_fields)
    err = raises(SignatureError, decode, app, {**query, "signature": "f" * 40}, body)
    assert (err.status, err.reason, err.code) == (403, "signature mismatch", -40001)


def test_missing_signature_is_403(wechat, decode, app, text_fields):
    query, body = wechat.push(text_fields)
    del query["signature"]
    assert raises(SignatureError, decode, app, query, body).reason == "missing signature"


def test_wrong_msg_signature_is_403(wechat, decode, app, text_fields):
    query, body = wechat.push(text_fields)
    err = raises(SignatureError, decode, app, {**query, "msg_signature": "0" * 40}, body)
    assert (err.status, err.reason) == (403, "msg_signature mismatch")


def test_missing_msg_signature_is_403(wechat, decode, app, text_fields):
    query, body = wechat.push(text_fields)
    del query["msg_signature"]
    assert raises(SignatureError, decode, app, query, body).status == 403


def test_tampered_encrypt_fails_the_msg_signature(wechat, decode, app, text_fields):
    query, body = wechat.push(text_fields, fmt="json")
    fields = parse_fields(body, "json")
    raw = bytearray(base64.b64decode(fields["Encrypt"]))
    raw[-20] ^= 1
    fields["Encrypt"] = base64.b64encode(bytes(raw)).decode()
    assert raises(SignatureError, decode, app, query, render_fields(fields, "json")).status == 403


def test_tampered_ciphertext_with_a_matching_msg_signature_is_a_crypto_error(wechat, decode, app, text_fields):
    """Only an attacker knowing the token can do this; decryption still fails closed."""
    query, body = wechat.push(text_fields, fmt="json")
    fields = parse_fields(body, "json")
    raw = bytearray(base64.b64decode(fields["Encrypt"]))
    raw[-1] ^= 1
    fields["Encrypt"] = base64.b64encode(bytes(raw)).decode()
    query["msg_signature"] = compute_signature(TOKEN, query["timestamp"], query["nonce"], fields["Encrypt"])
    err = raises(CryptoError, decode, app, query, render_fields(fields, "json"))
    assert (err.status, err.code) == (400, -40008)


def test_bad_base64_with_a_matching_msg_signature_is_error_40010(wechat, decode, app, text_fields):
    query, _ = wechat.push(text_fields, fmt="json")
    encrypt = "***"
    query["msg_signature"] = compute_signature(TOKEN, query["timestamp"], query["nonce"], encrypt)
    body = render_fields({"ToUserName": "gh_1", "Encrypt": encrypt}, "json")
    assert raises(CryptoError, decode, app, query, body).code == -40010


def test_encrypted_push_without_encrypt_field_is_400(wechat, decode, app, text_fields):
    query, _ = wechat.push(text_fields)
    err = raises(BadPush, decode, app, query, render_fields(text_fields, "xml"))
    assert (err.status, err.reason) == (400, "encrypted push has no Encrypt field")


def test_encrypted_push_to_an_app_without_keys_is_400(wechat, decode, make_app, text_fields):
    err = raises(BadPush, decode, make_app(keys=()), *wechat.push(text_fields))
    assert err.reason == "encrypted push but no EncodingAESKey configured"


def test_unknown_encrypt_type_is_400(wechat, decode, app, text_fields):
    query, body = wechat.push(text_fields)
    assert raises(BadPush, decode, app, {**query, "encrypt_type": "rsa"}, body).status == 400


def test_plaintext_is_refused_when_the_app_requires_encryption(wechat, decode, make_app, text_fields):
    app = make_app(require_encryption=True)
    err = raises(BadPush, decode, app, *wechat.push(text_fields, mode="plaintext"))
    assert (err.status, err.reason) == (400, "plaintext pushes are refused: this app requires encryption")
    assert decode(app, *wechat.push(text_fields, mode="safe")).mode == "safe"


@pytest.mark.parametrize("offset", [-301, 301, 10_000])
def test_timestamp_outside_the_skew_window_is_403(wechat, decode, app, text_fields, offset):
    query, body = wechat.push(text_fields, timestamp=NOW + offset)
    err = raises(SignatureError, decode, app, query, body)
    assert (err.status, err.reason) == (403, "timestamp outside the allowed clock skew")


def test_timestamp_inside_the_window_or_with_the_check_disabled_is_fine(wechat, decode, app, text_fields):
    assert decode(app, *wechat.push(text_fields, timestamp=NOW - 300)).create_time == NOW
    assert decode(app, *wechat.push(text_fields, timestamp=NOW - 10_000), skew=0).mode == "safe"


@pytest.mark.parametrize("timestamp", ["", "abc", "1.5", "-5", "１２３"])
def test_non_integer_timestamp_is_403(decode, app, text_fields, timestamp):
    query = {"signature": compute_signature(TOKEN, timestamp, "n"), "timestamp": timestamp, "nonce": "n"}
    err = raises(SignatureError, decode, app, query, render_fields(text_fields, "xml"), skew=0)
    assert err.status == 403


@pytest.mark.parametrize(
    "body, reason",
    [
        (b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><a>&e;</a></xml>', "DTD and entity declarations are not accepted"),
        (b"<xml><ToUserName>gh</ToUserName>", "malformed XML"),
        (b"[1]", "body is neither XML nor JSON"),
        (b"{\"a\":", "malformed JSON"),
        (b"{\"ToUserName\":\"gh\"}", "push has no FromUserName"),
    ],
)
def test_malformed_plaintext_bodies_are_400(decode, app, body, reason):
    query = {"signature": compute_signature(TOKEN, str(NOW), "n"), "timestamp": str(NOW), "nonce": "n"}
    err = raises(BadPush, decode, app, query, body)
    assert (err.status, err.reason) == (400, reason)


def test_xxe_inside_the_encrypted_payload_is_refused_too(wechat, decode, app):
    crypto = MessageCrypto(KEY, APPID)
    encrypt = crypto.encrypt(b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><a>&e;</a></xml>')
    ts = str(NOW)
    query = {"signature": compute_signature(TOKEN, ts, "n"), "timestamp": ts, "nonce": "n", "encrypt_type": "aes",
             "msg_signature": compute_signature(TOKEN, ts, "n", encrypt)}
    body = render_fields({"ToUserName": "gh", "Encrypt": encrypt}, "xml")
    assert raises(BadPush, decode, app, query, body).reason == "DTD and entity declarations are not accepted"


def test_error_reasons_never_contain_the_token_or_key(wechat, decode, make_app, text_fields):
    app = make_app(keys=(KEY,))
    for query, body in [wechat.push(text_fields, key=OLD_KEY), wechat.push(text_fields, appid="wxX")]:
        err = raises(CryptoError, decode, app, query, body)
        assert KEY not in str(err) and TOKEN not in err.reason and OLD_KEY not in str(err)
