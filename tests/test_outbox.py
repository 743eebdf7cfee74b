"""The outbox: exactly-once delivery through faults and token expiry, quota, dead letters, in-doubt sends."""

import asyncio
import signal
import time
from pathlib import Path

import aiohttp

from csbot.routing import Route, Router
from csbot.testing.fake_wechat import FakeWeChat
from csbot.testing.harness import TEST_AES_KEY, TEST_APPID, TEST_SECRET, TEST_TOKEN, Harness
from csbot.testing.pushes import PushBuilder
from tests.test_recovery import free_port, serve, wait_for, wait_healthy

SEND = "/cgi-bin/message/custom/send"


def echo_router(**route_kw):
    async def echo(event, context):
        return "re: " + event.get("Content", event.get("Event", ""))

    return Router([Route("echo", echo, fallback=True, **route_kw)])


async def outbound(bot, openid="oU"):
    return await bot.messages(openid=openid, direction="out")


async def test_transient_errors_are_retried_until_sent_exactly_once():
    async with Harness.start(router=echo_router()) as bot:
        bot.fake.inject(SEND, errcode=-1, times=1)
        bot.fake.inject(SEND, errcode=45011, times=1)
        bot.fake.inject(SEND, status=502, times=1)
        bot.fake.inject(SEND, drop=True, times=1)
        await bot.send_text("oU", "hello")
        await bot.wait_idle(timeout=30)
        assert bot.replies_to("oU") == ["re: hello"]
        [row] = await outbound(bot)
        assert row.status == "sent" and row.attempts == 5 and row.errcode == 0


async def test_a_reply_survives_token_expiry_and_rotation_and_is_sent_once():
    async with Harness.start(router=echo_router()) as bot:
        await bot.send_text("oU", "one")
        await bot.wait_idle()
        bot.fake.expire_tokens()
        await bot.send_text("oU", "two")
        await bot.wait_idle()
        bot.fake.revoke_tokens()  # 40001: "access_token is invalid or not latest"
        await bot.send_text("oU", "three")
        await bot.wait_idle()
        assert bot.replies_to("oU") == ["re: one", "re: two", "re: three"]


async def test_permanent_errors_are_recorded_and_not_retried():
    async with Harness.start(router=echo_router()) as bot:
        bot.fake.inject(SEND, errcode=48001, times=1)
        await bot.send_text("oU", "x")
        await bot.wait_idle()
        [row] = await outbound(bot)
        assert (row.status, row.errcode, row.attempts) == ("failed", 48001, 1)
        assert "unauthorized" in row.errmsg
        assert len(bot.fake.calls_to(SEND)) == 1


async def test_after_the_attempt_limit_a_reply_is_dead_lettered():
    async with Harness.start(router=echo_router(), max_send_attempts=3) as bot:
        bot.fake.inject(SEND, errcode=-1, times=10)
        await bot.send_text("oU", "x")
        await bot.wait_idle(timeout=20)
        [row] = await outbound(bot)
        assert (row.status, row.attempts, row.errcode) == ("dead", 3, -1)
        assert len(bot.fake.calls_to(SEND)) == 3


async def test_replies_to_one_user_stay_in_order_while_one_is_retried():
    async def three(event, context):
        await context.reply("a")
        await context.reply("b")
        return "c"

    async with Harness.start(router=Router([Route("three", three, fallback=True)])) as bot:
        bot.fake.inject(SEND, errcode=-1, times=2)
        await bot.send_text("oU", "go")
        await bot.wait_idle(timeout=20)
        assert bot.replies_to("oU") == ["a", "b", "c"]


async def test_quota_five_replies_per_user_message_is_never_exceeded_blindly():
    async def chatty(event, context):
        for i in range(7):
            await context.reply(f"part {i}")

    async with Harness.start(router=Router([Route("chatty", chatty, fallback=True)])) as bot:
        await bot.send_text("oU", "tell me everything")
        await bot.wait_idle()
        assert bot.replies_to("oU") == [f"part {i}" for i in range(5)]
        rows = await outbound(bot)
        assert [r.status for r in rows] == ["sent"] * 5 + ["quota_exceeded"] * 2
        assert "5 of 5" in rows[-1].error
        assert not [c for c in bot.fake.calls_to(SEND) if c.errcode]  # WeChat never had to refuse


async def test_a_new_user_message_renews_the_allowance():
    async with Harness.start(router=echo_router()) as bot:
        for n in range(7):
            await bot.send_text("oU", str(n))
            await bot.wait_idle()
        assert len(bot.replies_to("oU")) == 7


async def test_entering_the_chat_allows_two_replies():
    async def greet(event, context):
        for i in range(3):
            await context.reply(f"hello {i}")

    async with Harness.start(router=Router([Route("greet", greet, fallback=True)])) as bot:
        await bot.enter("oU")
        await bot.wait_idle()
        assert bot.replies_to("oU") == ["hello 0", "hello 1"]
        assert [r.status for r in await outbound(bot)][-1] == "quota_exceeded"


async def test_a_closed_reply_window_is_recorded_not_sent():
    async def late(event, context):
        await asyncio.sleep(1.2)
        return "too late"

    async with Harness.start(router=Router([Route("late", late, fallback=True)]), quota_window_seconds=1) as bot:
        await bot.send_text("oU", "x")
        await bot.wait_idle()
        [row] = await outbound(bot)
        assert row.status == "quota_exceeded" and "window closed" in row.error
        assert bot.fake.calls_to(SEND) == []


async def test_replies_to_many_users_through_a_token_expiry_arrive_exactly_once():
    async with Harness.start(router=echo_router()) as bot:
        users = [f"oMany{i}" for i in range(40)]
        await asyncio.gather(*(bot.send_text(u, "hi") for u in users))
        bot.fake.expire_tokens()
        await bot.wait_idle(timeout=30)
        for u in users:
            assert bot.replies_to(u) == ["re: hi"]


HANDLER = '''
async def main(event, context):
    return "reply to " + event["Content"]
'''


async def test_kill_9_during_a_send_loses_nothing_and_only_the_send_in_flight_may_repeat(tmp_path: Path):
    (tmp_path / "handlers").mkdir()
    (tmp_path / "markers").mkdir()
    (tmp_path / "handlers" / "echo.py").write_text(HANDLER)
    async with FakeWeChat(apps={TEST_APPID: TEST_SECRET}, enforce_reply_window=False) as fake, \
            aiohttp.ClientSession() as session:
        builder = PushBuilder(token=TEST_TOKEN, appid=TEST_APPID, encoding_aes_key=TEST_AES_KEY)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        first = serve(tmp_path, port, fake.base_url)
        try:
            await wait_healthy(session, url, first)
            await builder.build(builder.text("oA", "1")).post(session, url)
            await wait_for(lambda: len(fake.sent_to("oA")) == 1)
            # the next send hangs inside WeChat; the process dies while it is in flight
            fake.inject(SEND, delay=30, times=1)
            await builder.build(builder.text("oA", "2")).post(session, url)
            await wait_for(lambda: len(fake.calls_to(SEND)) == 2)
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        fake.clear_faults()
        second = serve(tmp_path, port, fake.base_url)
        try:
            await wait_healthy(session, url, second)
            await builder.build(builder.text("oA", "3")).post(session, url)
            await wait_for(lambda: [m["body"]["text"]["content"] for m in fake.sent_to("oA")][-1:] == ["reply to 3"])
            await asyncio.sleep(0.5)
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=15)
    texts = [m["body"]["text"]["content"] for m in fake.sent_to("oA")]
    # nothing lost; only the reply that was in flight at the kill may show twice
    assert texts in (["reply to 1", "reply to 2", "reply to 3"],
                     ["reply to 1", "reply to 2", "reply to 2", "reply to 3"]), texts
    import sqlite3

    db = sqlite3.connect(tmp_path / "csbot.db")
    rows = db.execute("select text, status, attempts, error from messages where direction='out' order by id").fetchall()
    assert [(t, s) for t, s, _, _ in rows] == [("reply to 1", "sent"), ("reply to 2", "sent"), ("reply to 3", "sent")]
    assert rows[1][2] == 2 and "in doubt" in rows[1][3]  # the thread shows the in-doubt resend


async def test_a_reply_over_quota_falls_back_to_the_subscribe_message_it_carries():
    from csbot import Text
    from csbot.messages import SubscribeFallback

    async def chatty(event, context):
        for i in range(6):
            await context.reply(Text(f"part {i}", subscribe_fallback=SubscribeFallback(
                template_id="TPL1", data={"thing1": {"value": "您的订单有更新"}}, page="pages/order/index")))

    async with Harness.start(router=Router([Route("chatty", chatty, fallback=True)])) as bot:
        bot.fake.grant_subscription(TEST_APPID, "oU", "TPL1")
        await bot.send_text("oU", "status?")
        await bot.wait_idle()
        assert bot.replies_to("oU")[:5] == [f"part {i}" for i in range(5)]
        subscribe = [m for m in bot.fake.sent_to("oU") if m["kind"] == "subscribe"]
        assert len(subscribe) == 1 and subscribe[0]["body"]["template_id"] == "TPL1"
        last = (await outbound(bot))[-1]
        assert last.status == "quota_exceeded" and "sent subscribe message TPL1 instead" in last.error
        # the fallback never leaks into the customer-service send
        assert all("_subscribe_fallback" not in (c.json or {}) for c in bot.fake.calls_to(SEND))


async def test_wechat_refusing_with_45015_is_recorded_as_quota_not_retried():
    async with Harness.start(router=echo_router()) as bot:
        bot.fake.inject(SEND, errcode=45015, times=1)
        await bot.send_text("oU", "x")
        await bot.wait_idle()
        [row] = await outbound(bot)
        assert (row.status, row.errcode, row.attempts) == ("quota_exceeded", 45015, 1)


async def test_typing_is_shown_and_its_failures_ignored():
    async def slow(event, context):
        await context.typing()
        bot.fake.inject("/cgi-bin/message/custom/typing", errcode=45081, times=1)
        await context.typing()  # "already typing": ignored
        return "done"

    async with Harness.start(router=Router([Route("slow", slow, fallback=True)])) as bot:
        await bot.send_text("oU", "x")
        await bot.wait_idle()
        assert bot.replies_to("oU") == ["done"]
        assert [c.json["command"] for c in bot.fake.calls_to("/cgi-bin/message/custom/typing")] == ["Typing", "Typing"]


async def test_faults_on_the_token_endpoint_delay_but_never_lose_or_double_a_reply():
    async with Harness.start(router=echo_router()) as bot:
        bot.fake.inject("/cgi-bin/stable_token", status=500, times=3)
        bot.fake.inject("/cgi-bin/stable_token", drop=True, times=1)
        await bot.send_text("oU", "hello")
        await bot.wait_idle(timeout=30)
        assert bot.replies_to("oU") == ["re: hello"]


async def test_an_image_reply_given_as_bytes_is_uploaded_once_and_its_media_id_reused():
    from csbot import Image

    png = b"\x89PNG\r\n\x1a\n" + b"chart" * 50

    async def chart(event, context):
        return Image(data=png)

    async with Harness.start(router=Router([Route("chart", chart, fallback=True)])) as bot:
        for n in range(2):
            await bot.send_text("oU", f"chart {n}")
            await bot.wait_idle()
        sent = bot.fake.sent_to("oU")
        assert [m["msgtype"] for m in sent] == ["image", "image"]
        media_ids = {m["body"]["image"]["media_id"] for m in sent}
        assert len(media_ids) == 1 and bot.fake.media(media_ids.pop()) == png
        assert len(bot.fake.calls_to("/cgi-bin/media/upload")) == 1


async def test_a_send_abandoned_by_a_dead_process_becomes_in_doubt_and_is_sent(monkeypatch):
    import json as _json

    from csbot import outbox
    from csbot.store import Conversation, Message

    monkeypatch.setattr(outbox, "SWEEP_SECONDS", 0.1)
    async with Harness.start(router=echo_router()) as bot:
        bot.fake.user_message(TEST_APPID, "oGone")
        now = time.time()
        async with bot.services.sessionmaker() as s, s.begin():
            # another process took the lane, marked the reply `sending`, and died
            s.add(Conversation(app="default", openid="oGone", status="bot", created_at=now, last_message_at=now,
                               send_lease_owner="dead-process", send_lease_until=now - 1))
            s.add(Message(app="default", openid="oGone", direction="out", msg_type="text", text="lost?",
                          raw=_json.dumps({"touser": "oGone", "msgtype": "text", "text": {"content": "lost?"}}),
                          created_at=now, received_at=now, status="sending", attempts=1, author="t"))
        await asyncio.sleep(1.5)
        await bot.wait_idle()
        assert bot.replies_to("oGone") == ["lost?"]
        [row] = await outbound(bot, "oGone")
        assert row.status == "sent" and row.attempts == 2 and "in doubt" in row.error


async def test_the_outbox_alone_makes_outbound_rows_and_a_key_queues_once():
    import pytest

    from csbot.outbox import ReplyNotSendable

    async with Harness.start(handlers_dir=None) as bot:
        outbox = bot.services.outbox
        bot.fake.user_message(bot.settings.apps["default"].appid, "oK")
        first = await outbox.enqueue("default", "oK", "hello", author="operator", key="campaign-1:oK")
        again = await outbox.enqueue("default", "oK", "hello", author="operator", key="campaign-1:oK")
        assert isinstance(first, int) and again is None
        with pytest.raises(ReplyNotSendable):
            await outbox.enqueue("default", "oK", object(), author="operator")
        await bot.wait_idle()
        assert bot.replies_to("oK") == ["hello"]
