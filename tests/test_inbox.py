"""Handling after the ack: per-user order, parallel users, errors, replies, passive replies."""

import asyncio
import time
import json
import random
import re

from sqlalchemy import update

from csbot import Link, TransferCustomerService
from csbot.routing import NEXT, Route, Router
from csbot.store import Message, make_engine, make_sessionmaker
from csbot.testing.harness import Harness, test_app, test_settings


async def test_pushes_of_one_user_are_handled_in_order_one_at_a_time_and_users_in_parallel():
    log: list[tuple[str, str]] = []
    running: dict[str, int] = {}
    overlap = {"max_users": 0, "max_per_user": 0}

    async def handler(event, context):
        user = context.OPENID
        running[user] = running.get(user, 0) + 1
        overlap["max_per_user"] = max(overlap["max_per_user"], running[user])
        overlap["max_users"] = max(overlap["max_users"], sum(1 for v in running.values() if v))
        await asyncio.sleep(random.uniform(0.001, 0.02))
        log.append((user, event["Content"]))
        running[user] -= 1

    async with Harness.start(router=Router([Route("h", handler, fallback=True)])) as bot:
        users = [f"oUser{i}" for i in range(4)]
        sends = []
        for n in range(10):
            for u in users:
                sends.append(bot.send_text(u, f"{n}"))
        for s in sends:  # sequential per user; the webhook acks each before the next
            assert (await s)[0] == 200
        await bot.wait_idle(timeout=20)
    for u in users:
        assert [c for who, c in log if who == u] == [str(n) for n in range(10)]
    assert overlap["max_per_user"] == 1
    assert overlap["max_users"] > 1


async def test_a_returned_string_is_sent_once_as_a_text_message():
    async def echo(event, context):
        assert context.OPENID == event["FromUserName"] and context.APPID == bot.settings.apps["default"].appid
        return "you said " + event["Content"]

    async with Harness.start(router=Router([Route("echo", echo, fallback=True)])) as bot:
        push = bot.builder.build(bot.builder.text("oU", "hi"))
        bot.fake.user_message(bot.settings.apps["default"].appid, "oU")
        for _ in range(3):
            await bot.post(push)
        await bot.wait_idle()
        assert bot.replies_to("oU") == ["you said hi"]
        out = await bot.messages(direction="out")
        assert [(m.status, m.author, m.text) for m in out] == [("sent", "echo", "you said hi")]
        assert out[0].in_reply_to == (await bot.messages(direction="in"))[0].id


async def test_context_reply_and_message_objects_are_sent_in_order():
    async def many(event, context):
        await context.reply("first")
        await context.reply(Link(title="Docs", description="d", url="https://example.com", thumb_url="https://example.com/t.png"))
        return "last"

    async with Harness.start(router=Router([Route("many", many, fallback=True)])) as bot:
        await bot.send_text("oU", "go")
        await bot.wait_idle()
        assert bot.replies_to("oU") == ["first", "[link]", "last"]


async def test_returning_none_sends_nothing_and_next_passes_on():
    async def first(event, context):
        return NEXT

    async def second(event, context):
        return None

    async with Harness.start(router=Router([Route("first", first, priority=5), Route("second", second)])) as bot:
        await bot.send_text("oU", "x")
        await bot.wait_idle()
        [row] = await bot.messages(direction="in")
        assert row.status == "done" and row.handler == "second"
        assert bot.replies_to("oU") == []


async def test_a_handler_that_raises_is_recorded_apologised_for_and_the_next_pushes_go_on(caplog):
    async def fragile(event, context):
        if event["Content"] == "boom":
            raise ValueError("cannot parse order number")
        return "ok " + event["Content"]

    apps = {"default": test_app(apology_text="抱歉，出错了")}
    async with Harness.start(apps=apps, router=Router([Route("fragile", fragile, fallback=True)])) as bot:
        for t in ("a", "boom", "b"):
            await bot.send_text("oU", t)
        await bot.wait_idle()
        rows = await bot.messages(direction="in")
        assert [r.status for r in rows] == ["done", "failed", "done"]
        assert "cannot parse order number" in rows[1].error and rows[1].handler == "fragile"
        assert bot.replies_to("oU") == ["ok a", "抱歉，出错了", "ok b"]
    assert any(f"push {rows[1].id}" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


async def test_inline_transfer_answers_the_push_itself_in_every_format_and_mode():
    for mode, fmt in [("plaintext", "xml"), ("safe", "xml"), ("safe", "json"), ("compatible", "json")]:
        async with Harness.start(handlers_dir="handlers", mode=mode, fmt=fmt) as bot:
            push = bot.builder.build(bot.builder.text("oU", "转人工"))
            status, body = await bot.post(push)
            assert status == 200
            if mode != "plaintext":
                assert b"Encrypt" in body and b"MsgSignature" in body
            plain = bot.builder.decrypt_reply(body)
            if fmt == "json":
                reply = json.loads(plain)
            else:
                from csbot.wire import parse_fields
                reply = parse_fields(plain, "xml")
            assert reply["MsgType"] == "transfer_customer_service"
            assert reply["ToUserName"] == "oU" and reply["FromUserName"] == push.fields["ToUserName"]
            # WeChat's retry of the same push gets the same answer, and nothing is stored twice
            status2, body2 = await bot.post(push)
            assert bot.builder.decrypt_reply(body2) == plain
            [row] = await bot.messages()
            assert row.status == "done" and row.handler == "human"


async def test_inline_handler_over_budget_answers_success_and_the_push_goes_on():
    async def slow_inline(event, context):
        await asyncio.sleep(2)
        return TransferCustomerService()

    async def normal(event, context):
        return "handled normally"

    router = Router([Route("slow", slow_inline, inline=True, budget=0.2), Route("normal", normal, fallback=True)])
    async with Harness.start(router=router) as bot:
        status, body = await bot.send_text("oU", "hi")
        assert (status, body) == (200, b"success")
        await bot.wait_idle()
        assert bot.replies_to("oU") == ["handled normally"]


async def test_welcome_and_faq_replies_reach_wechat():
    async with Harness.start(handlers_dir="handlers") as bot:
        await bot.enter("oNew", session_from="product-page")
        await bot.send_text("oNew", "怎么退款")
        await bot.wait_idle()
        replies = bot.replies_to("oNew")
        assert len(replies) == 2 and "欢迎" in replies[0] and "退" in replies[1]


async def test_users_and_conversations_are_recorded():
    from sqlalchemy import select

    from csbot.store import Conversation, User

    async with Harness.start(handlers_dir=None) as bot:
        await bot.send_text("oA", "1")
        await bot.send_text("oA", "2")
        await bot.send_text("oB", "3")
        await bot.wait_idle()
        async with bot.services.sessionmaker() as s:
            users = (await s.execute(select(User).order_by(User.openid))).scalars().all()
            convs = (await s.execute(select(Conversation).order_by(Conversation.openid))).scalars().all()
        assert [u.openid for u in users] == ["oA", "oB"]
        assert users[0].first_seen <= users[0].last_seen
        assert [(c.openid, c.status) for c in convs] == [("oA", "bot"), ("oB", "bot")]


async def test_an_image_the_user_sends_is_kept_in_storage_by_file_id():
    seen = {}

    async def look(event, context):
        seen["file_id"] = context.message.file_id

    async with Harness.start(router=Router([Route("look", look, fallback=True)])) as bot:
        png = b"\x89PNG\r\n\x1a\n" + b"pixels" * 100
        media_id = bot.fake.add_media(png, "image/png", appid=bot.settings.apps["default"].appid)
        await bot.send(bot.builder.image("oImg", media_id))
        await bot.wait_idle()
        [row] = await bot.messages(direction="in")
        assert row.file_id == seen["file_id"] and row.media_path is None
        assert re.fullmatch(rf"cloud://default/inbox/oImg/{row.id}-[0-9a-f]{{16}}\.png", row.file_id)
        storage = bot.services.storage
        assert await storage.for_app("default").download(row.file_id) == png
        stored = await storage.for_app("default").stat(row.file_id)
        assert stored.owner_openid is None and stored.content_type == "image/png"
        # the customer cannot delete or overwrite what they sent (it is the server side's file)
        [denied] = await storage.delete_many([row.file_id], openid="oImg")
        assert denied["errMsg"].startswith("STORAGE_EXCEED_AUTHORITY")


async def test_images_kept_before_storage_are_moved_into_it_at_start(tmp_path):
    from csbot.media import LocalMediaStore

    settings = test_settings(tmp_path / "csbot.db", "http://127.0.0.1:9")
    async with Harness.start(router=Router([]), settings=settings) as bot:
        await bot.send_text("oOld", "placeholder")
        await bot.wait_idle()
        [row] = await bot.messages(direction="in")
    # as an older csbot left it: the image under data/media, its key in media_path
    legacy = LocalMediaStore(settings.data_dir / "media")
    await legacy.put(f"default/oOld/{row.id}.png", b"\x89PNG old")
    engine = make_engine(settings.database_url)
    async with make_sessionmaker(engine)() as s, s.begin():
        await s.execute(update(Message).where(Message.id == row.id).values(media_path=f"default/oOld/{row.id}.png"))
    await engine.dispose()
    async with Harness.start(router=Router([]), settings=settings) as bot:
        for _ in range(200):
            [row] = await bot.messages(direction="in")
            if row.file_id:
                break
            await asyncio.sleep(0.02)
        assert row.file_id and row.file_id.startswith(f"cloud://default/inbox/oOld/{row.id}-")
        assert await bot.services.storage.for_app("default").download(row.file_id) == b"\x89PNG old"


async def test_a_push_abandoned_inline_by_a_dead_process_is_handled_by_a_live_one(monkeypatch):
    from csbot import inbox

    monkeypatch.setattr(inbox, "SWEEP_SECONDS", 0.1)
    monkeypatch.setattr(inbox, "INLINE_ABANDONED_AFTER", 0.5)

    async def echo(event, context):
        return "answered " + event["Content"]

    async with Harness.start(router=Router([Route("echo", echo, fallback=True)])) as bot:
        # as a process that died between storing the push and running its inline handler left it
        bot.fake.user_message(bot.settings.apps["default"].appid, "oLost")
        push = bot.builder.build(bot.builder.text("oLost", "hello?"))
        from csbot.wire import decode_push
        decoded = decode_push(bot.settings.apps["default"], push.query, push.body, now=time.time(), max_clock_skew=0)
        await bot.services.inbox.accept("default", decoded, status="inline")
        await asyncio.sleep(1.5)
        await bot.wait_idle()
        assert bot.replies_to("oLost") == ["answered hello?"]


async def _inline_push(bot, openid: str, text: str) -> int:
    """A push stored ``inline``, as a process between storing it and answering leaves it."""
    from csbot.wire import decode_push

    push = bot.builder.build(bot.builder.text(openid, text))
    decoded = decode_push(bot.settings.apps["default"], push.query, push.body, now=time.time(), max_clock_skew=0)
    accepted = await bot.services.inbox.accept("default", decoded, status="inline")
    return accepted.message_id


async def _status_of(bot, message_id: int) -> str:
    [row] = [m for m in await bot.messages(direction="in") if m.id == message_id]
    return row.status


async def test_the_stale_inline_sweep_goes_by_the_database_clock_not_this_process_clock(monkeypatch):
    """received_at is written by the receiving process's clock; the sweeping process's clock may
    differ. A sweeper whose clock runs an hour fast leaves a live inline run alone; a push written
    by a process whose clock ran an hour fast (received_at in the future) is still recovered."""
    from csbot import inbox

    monkeypatch.setattr(inbox, "INLINE_ABANDONED_AFTER", 0.5)
    monkeypatch.setattr(inbox, "SWEEP_SECONDS", 3600)  # the test drives the sweeps itself
    real = time.time
    async with Harness.start(router=Router([])) as bot:
        sweep = bot.services.inbox._release_stale_inline
        live = await _inline_push(bot, "oLive", "still in its inline handler")
        monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this process's clock: an hour fast
        for _ in range(3):
            await sweep()
        assert await _status_of(bot, live) == "inline"  # a live run is not taken from its process

        future = await _inline_push(bot, "oFuture", "written by a fast clock, then its process died")
        monkeypatch.setattr(time, "time", real)  # the sweeper's clock is right again
        await sweep()  # first seen: stamped with the database's now + INLINE_ABANDONED_AFTER
        assert await _status_of(bot, future) == "inline"
        await asyncio.sleep(0.7)
        await sweep()
        # abandoned, by the database's clock: on the normal path (where the dispatcher may finish it)
        assert await _status_of(bot, future) in ("pending", "done")
        assert await _status_of(bot, live) in ("pending", "done")  # (by now this one was abandoned too)


async def test_a_reply_given_a_key_is_queued_once_per_push_whatever_its_place():
    async def keyed(event, context):
        await context.reply("收到", key="ack")
        await context.reply("收到", key="ack")  # the same key again: already queued
        await context.reply("numbered")  # numbering is not moved by keyed replies
        return "done"

    async with Harness.start(router=Router([Route("keyed", keyed, fallback=True)])) as bot:
        await bot.send_text("oK", "hi")
        await bot.wait_idle()
        assert bot.replies_to("oK") == ["收到", "numbered", "done"]
        [push] = await bot.messages(direction="in")
        assert [m.dedup_key for m in await bot.messages(direction="out")] == [
            f"out:{push.id}:push:key:ack", f"out:{push.id}:push:0", f"out:{push.id}:push:1"]
