"""Nothing a handler author gets wrong wedges a user (issue 7, items 1-3 and 17-23).

A raising predicate, a reply that cannot be sent, a push that kills its handler every time, a
transfer where none is possible: each ends as a recorded outcome, and the user's later pushes go on.
"""

import asyncio
import time
from decimal import Decimal
from pathlib import Path

from sqlalchemy import select, update

from csbot import Link, Text, TransferCustomerService
from csbot.inbox import OutcomeOp
from csbot.routing import Route, Router
from csbot.services import services_of
from csbot.store import Message, User
from csbot.testing.harness import Harness, test_app

SORRY = "抱歉，出错了"
APPS = {"default": test_app(apology_text=SORRY)}


async def echo(event, context):
    return "echo " + str(event.get("Content") or event.get("Event"))


# --------------------------------------------------------------------------- item 1


async def test_a_predicate_that_raises_counts_as_no_match_logged_once_and_the_user_goes_on(caplog):
    def starts_with_hash(event):
        return event["Content"].startswith("#")  # KeyError on events: they have no Content

    async def tagged(event, context):
        return "tagged"

    router = Router([Route("tagged_pred", tagged, predicate=starts_with_hash), Route("echo", echo, fallback=True)])
    async with Harness.start(router=router) as bot:
        await bot.enter("oP1")
        await bot.enter("oP2")
        await bot.send_text("oP1", "#1")
        await bot.wait_idle(timeout=10)
        assert bot.replies_to("oP1") == ["echo user_enter_tempsession", "tagged"]
        assert bot.replies_to("oP2") == ["echo user_enter_tempsession"]
        assert [m.status for m in await bot.messages(direction="in")] == ["done"] * 3
    logged = [r for r in caplog.records if "predicate of route tagged_pred raised" in r.getMessage()]
    assert len(logged) == 1 and logged[0].levelname == "WARNING"


async def test_an_inline_route_whose_predicate_raises_never_keeps_a_push_from_being_stored():
    async def never(event, context):
        return TransferCustomerService()

    router = Router([Route("inl", never, inline=True, predicate=lambda e: e["NoSuchField"]),
                     Route("echo", echo, fallback=True)])
    async with Harness.start(router=router) as bot:
        assert await bot.send_text("oI", "hi") == (200, b"success")
        await bot.wait_idle()
        assert bot.replies_to("oI") == ["echo hi"]


async def test_a_reply_that_cannot_be_sent_fails_the_push_with_the_error_and_the_apology():
    await _unsendable()


async def test_a_reply_that_cannot_be_sent_fails_the_push_on_postgresql(pg_url):
    await _unsendable(database_url=pg_url)


async def _unsendable(**db):
    async def shop(event, context):
        text = event["Content"]
        if text == "price":
            return Text(Decimal("9.90"))
        if text == "card":
            return Link(title="t", description="d", url=Path("/tmp/x"), thumb_url="u")
        if text == "wait":
            await context.reply(Text(Decimal("1")))
        if text == "surrogate":
            return "half an emoji \ud83d"  # a lone surrogate: no store can keep it
        return "ok " + text

    async with Harness.start(apps=APPS, router=Router([Route("shop", shop, fallback=True)]), **db) as bot:
        for text in ("price", "card", "wait", "surrogate", "after"):
            await bot.send_text("oS", text)
        await bot.wait_idle(timeout=10)
        rows = await bot.messages(direction="in")
        assert [r.status for r in rows] == ["failed", "failed", "failed", "failed", "done"]
        assert "Decimal" in rows[0].error and "PosixPath" in rows[1].error and "Decimal" in rows[2].error
        assert "surrogate" in rows[3].error
        assert all(r.handler == "shop" for r in rows)
        assert bot.replies_to("oS") == [SORRY, SORRY, SORRY, SORRY, "ok after"]


# --------------------------------------------------------------------------- item 2


async def test_a_push_that_kills_its_handler_every_time_is_failed_after_the_attempts_and_the_user_goes_on():
    await _poison()


async def test_a_poison_push_is_failed_after_the_attempts_on_postgresql(pg_url):
    await _poison(database_url=pg_url)


async def _poison(**db):
    runs = []

    async def doomed(event, context):
        if event["Content"] == "poison":
            runs.append(context.message.attempts)
            raise asyncio.CancelledError()  # the attempt dies without an outcome, like a crash
        return "ok " + event["Content"]

    async with Harness.start(apps=APPS, router=Router([Route("doomed", doomed, fallback=True)]),
                             max_handler_attempts=3, **db) as bot:
        await bot.send_text("oX", "poison")
        await bot.send_text("oX", "after")
        await bot.wait_idle(timeout=20)
        assert runs == [1, 2, 3]
        poison, after = await bot.messages(direction="in")
        assert (poison.status, after.status) == ("failed", "done")
        assert poison.attempts == 4 and "gave up after 3 attempts" in poison.error
        assert bot.replies_to("oX") == [SORRY, "ok after"]
        thread = await services_of(bot.app).review.thread("default", "oX")
        shown = next(i for i in thread["items"] if i.get("id") == poison.id)
        assert shown["status"] == "failed" and "gave up" in shown["error"]


async def test_an_outcome_the_store_refuses_is_retried_a_bounded_number_of_times_with_its_error_kept(monkeypatch):
    original = OutcomeOp.apply_many

    async def refusing(self, session, ops):
        if any(op.replies and op.replies[0].text == "ok poison" for op in ops):
            raise RuntimeError("value too long for type character varying(128)")
        return await original(self, session, ops)

    monkeypatch.setattr(OutcomeOp, "apply_many", refusing)
    async with Harness.start(apps=APPS, router=Router([Route("echo", lambda e, c: _ok(e), fallback=True)]),
                             max_handler_attempts=2) as bot:
        await bot.send_text("oR", "poison")
        await bot.send_text("oR", "next")
        await bot.wait_idle(timeout=20)
        poison, nxt = await bot.messages(direction="in")
        assert poison.status == "failed" and "gave up after 2 attempts" in poison.error
        assert "value too long" in poison.error  # the last attempt's error
        assert nxt.status == "done"
        assert bot.replies_to("oR") == [SORRY, "ok next"]


async def _ok(event):
    return "ok " + event["Content"]


# --------------------------------------------------------------------------- item 3


async def test_an_inline_outcome_that_was_not_applied_answers_success_not_the_passive_reply():
    holder = {}

    async def transfer_late(event, context):
        # meanwhile the push was given to the normal path (as the sweep does with a stuck inline run)
        async with holder["bot"].services.sessionmaker() as s, s.begin():
            await s.execute(update(Message).where(Message.id == context.message.id).values(status="pending"))
        return TransferCustomerService()

    router = Router([Route("transfer", transfer_late, inline=True, keywords=frozenset({"人工"})),
                     Route("echo", echo, fallback=True)])
    async with Harness.start(router=router) as bot:
        holder["bot"] = bot
        assert await bot.send_text("oT", "人工") == (200, b"success")
        await bot.wait_idle()
        [row] = await bot.messages(direction="in")
        assert row.status == "done" and row.handler == "echo" and row.passive_reply is None
        assert bot.replies_to("oT") == ["echo 人工"]


# --------------------------------------------------------------------------- item 17


async def test_a_takeover_while_pushes_wait_stops_the_bot_for_every_push_handled_afterwards():
    await _takeover()


async def test_a_takeover_stops_the_bot_on_postgresql(pg_url):
    await _takeover(database_url=pg_url)


async def _takeover(**db):
    gate, started = asyncio.Event(), asyncio.Event()

    async def slow(event, context):
        if event["Content"] == "A":
            started.set()
            await gate.wait()
        return "re " + event["Content"]

    async with Harness.start(router=Router([Route("slow", slow, fallback=True)]), **db) as bot:
        await bot.send_text("oK", "A")
        await bot.send_text("oK", "B")  # queued in the lane behind A, while the conversation is "bot"
        await asyncio.wait_for(started.wait(), 5)
        await services_of(bot.app).review.set_status("default", "oK", "human", agent="ann")
        gate.set()
        await bot.wait_idle()
        assert bot.replies_to("oK") == []
        a, b = await bot.messages(direction="in")
        assert a.status == b.status == "done"
        assert "withheld" in a.error  # A's answer came after the takeover
        assert await bot.messages(direction="out") == []


# --------------------------------------------------------------------------- item 18


async def test_an_inline_answer_never_overtakes_the_answer_to_an_earlier_push():
    async def slow(event, context):
        await asyncio.sleep(0.6)
        return "answer " + event["Content"]

    async def quick_inline(event, context):
        return "answer " + event["Content"]

    router = Router([Route("quick", quick_inline, inline=True, keywords=frozenset({"b"})),
                     Route("slow", slow, fallback=True)])
    async with Harness.start(router=router) as bot:
        await bot.send_text("oO", "A")
        await bot.send_text("oO", "B")
        await bot.wait_idle()
        assert bot.replies_to("oO") == ["answer A", "answer B"]
        assert [(m.status, m.handler) for m in await bot.messages(direction="in")] == [
            ("done", "slow"), ("done", "quick")]


async def test_an_inline_push_whose_earlier_push_is_not_done_within_the_budget_takes_the_normal_path():
    async def very_slow(event, context):
        await asyncio.sleep(1.0)
        return "answer " + event["Content"]

    async def quick_inline(event, context):
        return TransferCustomerService()

    router = Router([Route("quick", quick_inline, inline=True, keywords=frozenset({"b"}), budget=0.3),
                     Route("slow", very_slow, fallback=True)])
    async with Harness.start(router=router) as bot:
        await bot.send_text("oN", "A")
        assert await bot.send_text("oN", "B") == (200, b"success")
        await bot.wait_idle()
        assert bot.replies_to("oN") == ["answer A", "answer B"]  # in order, through the lane


# --------------------------------------------------------------------------- item 20


async def test_context_reply_reaches_the_customer_before_the_handler_ends():
    gate = asyncio.Event()
    holder = {}

    async def lookup(event, context):
        await context.reply("正在查询…")
        holder["seen_before_end"] = await _wait_for(lambda: holder["bot"].replies_to("oW") == ["正在查询…"])
        gate.set()
        return "查到了"

    async with Harness.start(router=Router([Route("lookup", lookup, fallback=True)])) as bot:
        holder["bot"] = bot
        await bot.send_text("oW", "查订单")
        await asyncio.wait_for(gate.wait(), 5)
        await bot.wait_idle()
        assert holder["seen_before_end"]
        assert bot.replies_to("oW") == ["正在查询…", "查到了"]


async def _wait_for(check, timeout=3.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_handler_run_again_after_a_crash_does_not_send_its_early_replies_twice():
    await _rerun()


async def test_a_handler_run_again_sends_its_early_replies_once_on_postgresql(pg_url):
    await _rerun(database_url=pg_url)


async def _rerun(**db):
    async def twice(event, context):
        await context.reply("please wait")
        await context.reply("still looking")
        if context.message.attempts == 1:
            raise asyncio.CancelledError()  # the first attempt dies after its interim replies
        return "found it"

    async with Harness.start(router=Router([Route("twice", twice, fallback=True)]), **db) as bot:
        await bot.send_text("oD", "where is my parcel")
        await bot.wait_idle(timeout=10)
        assert bot.replies_to("oD") == ["please wait", "still looking", "found it"]
        [push] = await bot.messages(direction="in")
        assert push.status == "done" and push.attempts == 2
        keys = [m.dedup_key for m in await bot.messages(direction="out")]
        assert keys == [f"out:{push.id}:push:0", f"out:{push.id}:push:1", f"out:{push.id}:push:2"]


# --------------------------------------------------------------------------- item 21


async def test_a_transfer_returned_outside_an_inline_route_fails_the_push_with_a_clear_error():
    async def transfer(event, context):
        return TransferCustomerService()

    async with Harness.start(apps=APPS, router=Router([Route("transfer", transfer, fallback=True)])) as bot:
        await bot.send_text("oF", "人工")
        await bot.wait_idle()
        [row] = await bot.messages(direction="in")
        assert row.status == "failed" and "inline=True" in row.error and row.handler == "transfer"
        assert bot.replies_to("oF") == [SORRY]


# --------------------------------------------------------------------------- item 22


async def test_a_send_through_context_openapi_goes_through_the_outbox_and_shows_on_the_thread():
    async def notify(event, context):
        answer = await context.openapi.customer_service_message.send(
            touser=context.OPENID, msgtype="text", text={"content": "sent through openapi"})
        assert answer["errcode"] == 0 and answer["queued"] is True
        await context.openapi.customer_service_message.set_typing(touser=context.OPENID)  # still the client
        return "and returned"

    async with Harness.start(router=Router([Route("notify", notify, fallback=True)])) as bot:
        await bot.send_text("oQ", "hi")
        await bot.wait_idle()
        assert bot.replies_to("oQ") == ["sent through openapi", "and returned"]
        out = await bot.messages(direction="out")
        assert [(m.text, m.author, m.status) for m in out] == [
            ("sent through openapi", "notify", "sent"), ("and returned", "notify", "sent")]
        thread = await services_of(bot.app).review.thread("default", "oQ")
        assert [i["text"] for i in thread["items"] if i.get("direction") == "out"] == [
            "sent through openapi", "and returned"]


# --------------------------------------------------------------------------- item 23


async def test_the_inline_budget_setting_caps_every_inline_route():
    async def slow_transfer(event, context):
        await asyncio.sleep(1.5)
        return TransferCustomerService()

    router = Router([Route("slow", slow_transfer, inline=True, budget=4.0), Route("echo", echo, fallback=True)])
    async with Harness.start(router=router, inline_budget=0.3) as bot:
        started = time.monotonic()
        assert await bot.send_text("oB", "hi") == (200, b"success")
        assert time.monotonic() - started < 1.2
        await bot.wait_idle()
        assert bot.replies_to("oB") == ["echo hi"]


async def test_a_unionid_carried_by_a_push_is_kept_and_given_to_handlers():
    await _unionid()


async def test_a_unionid_is_kept_on_postgresql(pg_url):
    await _unionid(database_url=pg_url)


async def _unionid(**db):
    seen = []

    async def look(event, context):
        seen.append(context.UNIONID)
        return None

    async with Harness.start(router=Router([Route("look", look, fallback=True)]), **db) as bot:
        await bot.send({**bot.builder.text("oU", "first"), "UnionId": "uBound1"})
        await bot.send_text("oU", "second")  # this push carries none: it is remembered
        await bot.wait_idle()
        assert seen == ["uBound1", "uBound1"]
        async with bot.services.sessionmaker() as s:
            assert (await s.execute(select(User.unionid).where(User.openid == "oU"))).scalar() == "uBound1"


async def test_conversations_have_no_write_only_columns():
    from csbot.store import Conversation

    async with Harness.start(handlers_dir=None) as bot:
        async with bot.services.engine.connect() as conn:
            columns = await conn.run_sync(lambda c: {col["name"] for col in
                                                     __import__("sqlalchemy").inspect(c).get_columns("conversations")})
    assert not any(c.startswith("last_user_action") for c in columns)
    assert not any(c.startswith("last_user_action") for c in Conversation.__table__.c.keys())

