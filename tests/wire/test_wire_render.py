"""render_fields and encrypted_envelope: WeChat-shaped XML/JSON bodies."""

from __future__ import annotations

import json

import pytest

from csbot.wire import MessageCrypto, check_msg_signature, encrypted_envelope, parse_fields, render_fields

KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def test_xml_puts_strings_in_cdata_and_integers_bare():
    body = render_fields({"ToUserName": "touser", "CreateTime": 1399197672, "MsgType": "transfer_customer_service"}, "xml")
    assert body == (
        b"<xml><ToUserName><![CDATA[touser]]></ToUserName><CreateTime>1399197672</CreateTime>"
        b"<MsgType><![CDATA[transfer_customer_service]]></MsgType></xml>"
    )


def test_xml_splits_a_cdata_terminator_inside_a_value_and_parses_back():
    value = "a]]>b]]]]>c"
    body = render_fields({"Content": value}, "xml")
    assert b"]]>b" not in body.replace(b"]]]]><![CDATA[>", b"")
    assert parse_fields(body, "xml") == {"Content": value}


def test_xml_nests_mappings_and_repeats_list_items():
    fields = {"SubscribeMsgPopupEvent": {"List": [{"TemplateId": "a"}, {"TemplateId": "b"}]}}
    body = render_fields(fields, "xml")
    assert body == (
        b"<xml><SubscribeMsgPopupEvent><List><TemplateId><![CDATA[a]]></TemplateId></List>"
        b"<List><TemplateId><![CDATA[b]]></TemplateId></List></SubscribeMsgPopupEvent></xml>"
    )
    assert parse_fields(body, "xml") == fields


def test_xml_refuses_keys_that_are_not_element_names():
    with pytest.raises(ValueError):
        render_fields({"a b": "x"}, "xml")


def test_json_is_compact_utf8():
    body = render_fields({"Content": "你好", "MsgId": 2**60}, "json")
    assert body == '{"Content":"你好","MsgId":1152921504606846976}'.encode()


def test_unknown_format_is_a_programming_error():
    with pytest.raises(ValueError):
        render_fields({}, "yaml")


@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_envelope_is_signed_over_its_own_timestamp_nonce_and_encrypt(fmt):
    crypto = MessageCrypto(KEY, "wxapp")
    body = encrypted_envelope(crypto, "tok", b"<xml/>", fmt, nonce="123", timestamp=1700000000)
    fields = parse_fields(body, fmt)
    assert set(fields) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
    assert check_msg_signature("tok", str(fields["TimeStamp"]), fields["Nonce"], fields["Encrypt"], fields["MsgSignature"])
    assert crypto.decrypt_for_app(fields["Encrypt"]) == b"<xml/>"


def test_json_envelope_has_numeric_timestamp_and_string_nonce():
    body = encrypted_envelope(MessageCrypto(KEY, "wxapp"), "tok", b"{}", "json", nonce="415670741", timestamp=1)
    data = json.loads(body)
    assert list(data) == ["Encrypt", "MsgSignature", "TimeStamp", "Nonce"]
    assert data["TimeStamp"] == 1 and data["Nonce"] == "415670741"
