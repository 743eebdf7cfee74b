"""Fuzzing the wire: whatever bytes, query, mode and format reach the webhook, the answer is 200
with the push stored, or a 4xx. Never a 5xx, never an exception escaping ``receive``.

Bounded to stay fast (a few hundred examples, derandomised so CI is reproducible). Most examples
are correctly signed, so they get past the signature gate into decryption, parsing and storage.
"""

from __future__ import annotations

import base64
import json
import logging
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from csbot.store import Message
from csbot.testing.harness import TEST_AES_KEY, TEST_APPID, TEST_TOKEN, Harness, test_app
from csbot.wire import MessageCrypto, WireError, compute_signature, decode_push, render_fields

FUZZ = settings(max_examples=int(__import__("os").environ.get("CSBOT_FUZZ_EXAMPLES", "150")), deadline=None,
                derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large])

#: text as customers and attackers write it: any code point, surrogates and NUL included
TEXT = st.text(st.one_of(st.characters(), st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
                         st.sampled_from("\x00\x1b\n<>&]]>")), max_size=40)
KEYS = st.one_of(st.sampled_from(["Content", "MsgId", "Event", "PicUrl", "MediaId", "List", "Encrypt",
                                  "CreateTime", "FromUserName", "MsgType", "EventKey", "SessionFrom"]),
                 st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True), TEXT)
SCALARS = st.one_of(TEXT, st.integers(min_value=-(2**70), max_value=2**70), st.booleans(), st.none(),
                    st.floats(allow_nan=False))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                       st.dictionaries(KEYS, inner, max_size=4)), max_leaves=12)


@st.composite
def fields(draw) -> dict:
    def usually(value, otherwise):  # the valid value 4 times in 5, so most pushes get to the store
        return value if draw(st.integers(min_value=0, max_value=4)) < 4 else draw(otherwise)

    base = {"ToUserName": "gh_fuzz", "FromUserName": usually("oFuzz", TEXT),
            "CreateTime": usually(int(time.time()), SCALARS),
            "Content": draw(TEXT),
            "MsgType": usually(draw(st.sampled_from(["text", "image", "event", "voice", "miniprogrampage"])), TEXT)}
    for key in draw(st.lists(st.sampled_from(sorted(base)), max_size=2)) if draw(st.integers(0, 5)) == 5 else ():
        base.pop(key, None)  # sometimes a required field is missing
    base.update(draw(st.dictionaries(KEYS, VALUES, max_size=5)))
    return base


def _render(data: dict, fmt: str) -> bytes:
    """WeChat's rendering; where it cannot (a key XML cannot name, a lone surrogate UTF-8 cannot
    carry), JSON with \\u escapes, which can say anything."""
    try:
        return render_fields(data, fmt)
    except (ValueError, TypeError, UnicodeError):
        return json.dumps(data, ensure_ascii=True).encode()


@st.composite
def pushes(draw) -> tuple[dict[str, str], bytes]:
    """(query, body): signed pushes in any mode and format around fuzzed fields, or raw junk."""
    mode = draw(st.sampled_from(["plaintext"] * 3 + ["compatible"] * 2 + ["safe"] * 4 + ["junk"]))
    fmt = draw(st.sampled_from(["xml", "json"]))
    ts = str(draw(st.one_of(st.just(int(time.time())), st.integers(min_value=0, max_value=2**40))))
    nonce = draw(st.one_of(st.from_regex(r"[0-9]{1,10}", fullmatch=True),
                           st.text(st.characters(exclude_categories=["Cs"]), max_size=20)))  # a URL carries no surrogate
    query = {"signature": compute_signature(TEST_TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce}
    if mode == "junk":
        body = draw(st.one_of(st.binary(max_size=300),
                              st.sampled_from([b"<xml>", b"{", b"<!DOCTYPE x [<!ENTITY a 'b'>]><xml>&a;</xml>",
                                               b'{"a":' * 200, b"\xef\xbb\xbf<xml/>"])))
        query.update(draw(st.dictionaries(st.sampled_from(["encrypt_type", "msg_signature", "signature",
                                                           "timestamp", "openid"]), TEXT, max_size=3)))
        return query, body
    plain = _render(draw(fields()), fmt)
    if draw(st.integers(min_value=0, max_value=9)) == 9:  # a damaged plaintext
        plain = draw(st.sampled_from([b"", b"\x00", b"<", b"{}", b"<xml></xml>"])) + plain[: draw(
            st.integers(min_value=0, max_value=len(plain)))]
    if mode == "plaintext":
        return query, plain
    encrypt = MessageCrypto(TEST_AES_KEY, draw(st.sampled_from([TEST_APPID] * 9 + ["wxOther"]))).encrypt(plain)
    if draw(st.integers(min_value=0, max_value=9)) == 9:  # a damaged ciphertext
        raw = bytearray(base64.b64decode(encrypt))
        raw[draw(st.integers(min_value=0, max_value=len(raw) - 1))] ^= 0xFF
        encrypt = base64.b64encode(bytes(raw)).decode()
    outer = {"ToUserName": "gh_fuzz", "Encrypt": encrypt}
    if mode == "compatible":
        outer = {**draw(fields()), "Encrypt": encrypt}
    query.update(encrypt_type="aes", msg_signature=compute_signature(TEST_TOKEN, ts, nonce, encrypt))
    return query, _render(outer, fmt)


@pytest.fixture
async def bot():
    # plaintext accepted too (the widest surface), no clock window so old timestamps reach the parser
    async with Harness.start(handlers_dir=None, apps={"default": test_app(require_encryption=False)},
                             max_clock_skew=0) as b:
        yield b


@FUZZ
@given(push=pushes())
async def test_any_push_gets_200_and_is_stored_or_gets_a_4xx(bot, push, caplog):
    query, body = push
    async with bot.session.post(bot.url + "/wechat", params=query, data=body) as resp:
        status, text = resp.status, await resp.text()
    assert status == 200 or 400 <= status < 500, (status, text)
    assert "Traceback" not in text and len(text) < 300
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], "an unexpected error was logged"
    if status == 200:
        app = bot.settings.apps["default"]
        try:
            key = decode_push(app, query, body, now=time.time(), max_clock_skew=0).dedup_key
        except WireError:  # only a plaintext claim's refusal can differ, and it is a 403
            pytest.fail("the webhook accepted a push the wire layer refuses")
        async with bot.services.sessionmaker() as s:
            stored = (await s.execute(select(func.count()).select_from(Message).where(
                Message.dedup_key == key))).scalar_one()
        assert stored == 1


@FUZZ
@given(body=st.binary(max_size=2000), query=st.dictionaries(TEXT, TEXT, max_size=6),
       fmt_mode=st.sampled_from([(None, None), ("aes", None)]))
def test_decode_push_raises_nothing_but_wire_errors(body, query, fmt_mode):
    """The pure layer, many more examples: any bytes and query give a Push or a WireError."""
    ts = str(int(time.time()))
    signed = {**query, "signature": compute_signature(TEST_TOKEN, ts, "1"), "timestamp": ts, "nonce": "1"}
    if fmt_mode[0]:
        signed["encrypt_type"] = fmt_mode[0]
    for q in (query, signed):
        try:
            decode_push(test_app(require_encryption=False), q, body, now=time.time(), max_clock_skew=300)
        except WireError as exc:
            assert 400 <= exc.status < 500 and exc.reason
