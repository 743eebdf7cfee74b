"""The webhook over real HTTP: handshake, every mode and format, durability, bad input."""

import asyncio
import json

import pytest
from sqlalchemy import func, select

from csbot.config import AppConfig
from csbot.routing import Route, Router
from csbot.store import Message
from csbot.testing.harness import TEST_AES_KEY, TEST_APPID, TEST_TOKEN, Harness, test_app
from csbot.testing.pushes import PushBuilder
from csbot.wire import MessageCrypto, compute_signature

MODES = ["plaintext", "compatible", "safe"]
FORMATS = ["xml", "json"]


async def count_messages(bot, **where):
    async with bot.services.sessionmaker() as s:
        q = select(func.count()).select_from(Message)
        for k, v in where.items():
            q = q.where(getattr(Message, k) == v)
        return (await s.execute(q)).scalar_one()


# --------------------------------------------------------------------------- handshake


async def test_handshake_echoes_echostr_exactly_when_the_signature_is_right():
    async with Harness.start(handlers_dir=None) as bot:
        q = bot.builder.handshake_query("4375120948345356249")
        async with bot.session.get(bot.url + "/wechat", params=q) as resp:
            assert resp.status == 200 and await resp.text() == "4375120948345356249"
        q["signature"] = "0" * 40
        async with bot.session.get(bot.url + "/wechat", params=q) as resp:
            assert resp.status == 403 and "4375120948345356249" not in await resp.text()


async def test_handshake_of_the_official_example():
    """Token AAAAA, the doc's timestamp/nonce/signature: the body is the echostr."""
    app = AppConfig(name="default", appid="wxba5fad812f8e6fb9", token="AAAAA")
    async with Harness.start(handlers_dir=None, apps={"default": app}, max_clock_skew=0) as bot:
        q = {"signature": "f464b24fc39322e44b38aa78f5edd27bd1441696", "timestamp": "1714036504",
             "nonce": "1514711492", "echostr": "4375120948345356249"}
        async with bot.session.get(bot.url + "/wechat", params=q) as resp:
            assert await resp.read() == b"4375120948345356249"


# --------------------------------------------------------------------------- modes x formats


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mode", MODES)
async def test_every_mode_and_format_is_stored_and_acknowledged(mode, fmt):
    async with Harness.start(handlers_dir=None, mode=mode, fmt=fmt) as bot:
        fields = bot.builder.text("oUserA", "你好 <b>&amp;</b>", msg_id=6054768590064713728123)
        status, body = await bot.post(bot.builder.build(fields))
        assert (status, body) == (200, b"success")
        [row] = await bot.messages()
        event = json.loads(row.raw)
        assert event["Content"] == "你好 <b>&amp;</b>" and event["MsgType"] == "text"
        assert event["MsgId"] == "6054768590064713728123"  # exact, a string, beyond 2**53
        assert row.openid == "oUserA" and row.direction == "in"


async def test_xml_and_json_pushes_give_the_same_event_to_handlers():
    seen = []

    async def record(event, context):
        seen.append(event)

    router = Router([Route("rec", record, fallback=True)])
    async with Harness.start(router=router, fmt="xml") as bot:
        json_builder = PushBuilder.for_app(bot.settings.apps["default"], fmt="json")
        fields = bot.builder.miniprogrampage("oU", title="商品", pagepath="pages/a?id=1", msg_id=12345678901234567)
        await bot.post(bot.builder.build(fields))
        await bot.post(json_builder.build({**fields, "MsgId": 12345678901234568}))
        await bot.wait_idle()
    seen[1]["MsgId"] = seen[0]["MsgId"]
    assert seen[0] == seen[1]


async def test_content_type_is_never_trusted():
    async with Harness.start(handlers_dir=None, fmt="json") as bot:
        push = bot.builder.build(bot.builder.text("oU", "hi"))
        url = push.url(bot.url)
        async with bot.session.post(url, data=push.body, headers={"Content-Type": "text/xml"}) as resp:
            assert resp.status == 200
        assert await count_messages(bot) == 1


async def test_require_encryption_refuses_plaintext_pushes():
    apps = {"default": test_app(require_encryption=True)}
    async with Harness.start(handlers_dir=None, apps=apps, mode="plaintext") as bot:
        status, body = await bot.post(bot.builder.build(bot.builder.text("oU", "hi")))
        assert status == 400 and b"requires encryption" in body
        assert await count_messages(bot) == 0


async def test_apps_are_served_at_their_own_paths_and_deduplicated_per_app():
    other = AppConfig(name="shop", appid="wxshop000000001", token="shopToken", encoding_aes_key=TEST_AES_KEY)
    async with Harness.start(handlers_dir=None, apps={"default": test_app(), "shop": other}) as bot:
        fields = bot.builders["default"].text("oU", "same id", msg_id=42)
        assert (await bot.post(bot.builders["default"].build(fields)))[0] == 200
        assert (await bot.post(bot.builders["shop"].build(fields), app="shop"))[0] == 200
        # a push signed for one app is refused at the other's URL
        assert (await bot.post(bot.builders["default"].build(fields), app="shop"))[0] == 403
        async with bot.session.post(bot.url + "/wechat/nope", data=b"<xml/>") as resp:
            assert resp.status == 404
        rows = await bot.messages()
        assert sorted(r.app for r in rows) == ["default", "shop"]


# --------------------------------------------------------------------------- durability


async def test_a_retried_push_is_acknowledged_without_a_second_record():
    async with Harness.start(handlers_dir=None) as bot:
        push = bot.builder.build(bot.builder.text("oU", "once"))
        for _ in range(4):  # WeChat delivers the same push up to 4 times
            assert await bot.post(push) == (200, b"success")
        # a retry may come with a fresh timestamp and nonce
        again = bot.builder.build(push.fields)
        assert await bot.post(again) == (200, b"success")
        assert await count_messages(bot) == 1


async def test_events_are_deduplicated_by_sender_time_and_event():
    async with Harness.start(handlers_dir=None) as bot:
        enter = bot.builder.enter_session("oU", create_time=1700000000)
        for _ in range(3):
            await bot.post(bot.builder.build(enter))
        later = bot.builder.enter_session("oU", create_time=1700000001)
        await bot.post(bot.builder.build(later))
        assert await count_messages(bot, msg_type="event") == 2


async def test_concurrent_identical_pushes_yield_one_record():
    async with Harness.start(handlers_dir=None) as bot:
        push = bot.builder.build(bot.builder.text("oU", "race"))
        results = await asyncio.gather(*(bot.post(push) for _ in range(25)))
        assert all(r == (200, b"success") for r in results)
        assert await count_messages(bot) == 1


async def test_the_ack_does_not_wait_for_handlers():
    release = asyncio.Event()

    async def slow(event, context):
        await release.wait()
        return "done at last"

    async with Harness.start(router=Router([Route("slow", slow, fallback=True)])) as bot:
        status, _ = await asyncio.wait_for(bot.send_text("oU", "hello"), timeout=2)
        assert status == 200
        [row] = await bot.messages()
        assert row.status == "pending"  # stored, acknowledged, not yet handled
        release.set()
        await bot.wait_idle()
        assert bot.replies_to("oU") == ["done at last"]


async def test_a_store_that_cannot_commit_answers_503(monkeypatch):
    from csbot import inbox

    async def broken(self, session, ops):
        raise ConnectionError("database is down")

    async with Harness.start(handlers_dir=None) as bot:
        monkeypatch.setattr(inbox.IntakeOp, "apply_many", broken)
        status, body = await bot.post(bot.builder.build(bot.builder.text("oU", "x")))
        assert status == 503 and b"Traceback" not in body
        monkeypatch.undo()
        assert await count_messages(bot) == 0


# --------------------------------------------------------------------------- bad input


def _signed_query(token=TEST_TOKEN, ts="", nonce="123"):
    import time
    ts = ts or str(int(time.time()))
    return {"signature": compute_signature(token, ts, nonce), "timestamp": ts, "nonce": nonce}


async def _post_raw(bot, query, body):
    async with bot.session.post(bot.url + "/wechat", params=query, data=body) as resp:
        return resp.status, await resp.text()


@pytest.mark.parametrize("case", [
    "no signature", "wrong signature", "malformed xml", "malformed json", "doctype", "entity bomb",
    "xxe", "bad padding", "bad base64", "wrong appid", "wrong msg_signature", "stale timestamp",
    "json array",
])
async def test_bad_input_gets_a_short_4xx_and_stores_nothing(case, caplog):
    async with Harness.start(handlers_dir=None) as bot:
        crypto = MessageCrypto(TEST_AES_KEY, TEST_APPID)
        q = _signed_query()
        body = b"<xml><ToUserName>x</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType></xml>"
        expected = 400

        def encrypted(encrypt):
            q2 = dict(q, encrypt_type="aes",
                      msg_signature=compute_signature(TEST_TOKEN, q["timestamp"], q["nonce"], encrypt))
            return q2, f"<xml><ToUserName>gh</ToUserName><Encrypt><![CDATA[{encrypt}]]></Encrypt></xml>".encode()

        if case == "no signature":
            q, expected = {}, 403
        elif case == "wrong signature":
            q["signature"], expected = "f" * 40, 403
        elif case == "malformed xml":
            body = b"<xml><ToUserName>x</ToUser"
        elif case == "malformed json":
            body = b'{"ToUserName": '
        elif case == "json array":
            body = b"[1, 2]"
        elif case == "doctype":
            body = b'<?xml version="1.0"?><!DOCTYPE xml [<!ELEMENT xml ANY>]><xml/>'
        elif case == "entity bomb":
            body = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                    + b"".join(b'<!ENTITY lol%d "&lol%d;&lol%d;&lol%d;&lol%d;">' % (i, i - 1, i - 1, i - 1, i - 1) for i in range(1, 10))
                    + b"]><xml><Content>&lol9;</Content></xml>").replace(b"&lol0;", b"&lol;")
        elif case == "xxe":
            body = b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><Content>&e;</Content></xml>'
        elif case == "bad padding":
            raw = bytearray(__import__("base64").b64decode(crypto.encrypt(b"<xml/>")))
            raw[-1] ^= 0x55
            q, body = encrypted(__import__("base64").b64encode(bytes(raw)).decode())
        elif case == "bad base64":
            q, body = encrypted("!!!not base64!!!")
        elif case == "wrong appid":
            q, body = encrypted(MessageCrypto(TEST_AES_KEY, "wxSomeoneElse").encrypt(body))
        elif case == "wrong msg_signature":
            q, body = encrypted(crypto.encrypt(body))
            q["msg_signature"], expected = "0" * 40, 403
        elif case == "stale timestamp":
            q, expected = _signed_query(ts="1000000000"), 403
        status, text = await _post_raw(bot, q, body)
        assert status == expected, text
        assert 0 < len(text) < 200 and "Traceback" not in text
        assert await count_messages(bot) == 0
        assert any(r.levelname == "WARNING" and "refused" in r.getMessage() for r in caplog.records)
        assert TEST_AES_KEY not in caplog.text and TEST_TOKEN not in caplog.text


async def test_bodies_over_the_limit_get_413():
    async with Harness.start(handlers_dir=None) as bot:
        status, text = await _post_raw(bot, _signed_query(), b"<xml>" + b"a" * (1024 * 1024 + 10) + b"</xml>")
        assert status == 413 and "larger than" in text
    async with Harness.start(handlers_dir=None, max_body_size=1000) as bot:
        status, _ = await _post_raw(bot, _signed_query(), b"<xml>" + b"a" * 2000 + b"</xml>")
        assert status == 413


async def test_clock_skew_check_can_be_turned_off():
    async with Harness.start(handlers_dir=None, max_clock_skew=0) as bot:
        push = bot.builder.build(bot.builder.text("oU", "old"), timestamp=1000000000)
        assert (await bot.post(push))[0] == 200


async def test_unknown_types_are_stored_and_routed_to_the_fallback():
    seen = []

    async def fallback(event, context):
        seen.append(event["MsgType"])

    async with Harness.start(router=Router([Route("fb", fallback, fallback=True)])) as bot:
        fields = {**bot.builder.text("oU", "x"), "MsgType": "hologram"}
        fields.pop("Content")
        assert (await bot.post(bot.builder.build(fields)))[0] == 200
        await bot.wait_idle()
        assert seen == ["hologram"]
        [row] = await bot.messages()
        assert row.status == "done" and row.handler == "fb"


async def test_healthz_answers_once_the_service_takes_pushes():
    async with Harness.start(handlers_dir=None) as bot:
        async with bot.session.get(bot.url + "/healthz") as resp:
            assert resp.status == 200 and await resp.text() == "ok"


async def test_metrics_count_pushes_by_outcome_and_time_the_ack():
    async with Harness.start(handlers_dir=None) as bot:
        push = bot.builder.build(bot.builder.text("oU", "hi"))
        await bot.post(push)
        await bot.post(push)
        await _post_raw(bot, {}, b"<xml/>")
        await bot.wait_idle()
        async with bot.session.get(bot.url + "/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    assert 'csbot_pushes_total{app="default",outcome="stored"} 1.0' in text
    assert 'csbot_pushes_total{app="default",outcome="duplicate"} 1.0' in text
    assert 'csbot_pushes_total{app="default",outcome="refused_403"} 1.0' in text
    assert 'csbot_ack_seconds_count{app="default"} 2.0' in text
    assert 'csbot_handled_total{app="default",status="done"} 1.0' in text
