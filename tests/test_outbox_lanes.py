"""Outbox lanes under faults: backoff costs nothing, ambiguous sends are in doubt, leases fence sends."""

import asyncio
import time

from sqlalchemy import update

from csbot.routing import Route, Router
from csbot.store import Conversation
from csbot.testing.harness import Harness

SEND = "/cgi-bin/message/custom/send"


def replies_router(*texts: str, slow: float = 0.0):
    async def answer(event, context):
        for text in texts[:-1]:
            await context.reply(text)
        return texts[-1]

    return Router([Route("answer", answer, fallback=True)])


async def outbound(bot, openid="oU"):
    return await bot.messages(openid=openid, direction="out")


async def test_a_user_whose_head_reply_waits_out_a_backoff_costs_nothing_until_it_is_due():
    async with Harness.start(router=replies_router("first", "second"), retry_base_delay=3.0) as bot:
        bot.fake.inject(SEND, errcode=-1, times=1)  # WeChat busy: the first reply backs off
        await bot.send_text("oU", "go")
        deadline = time.monotonic() + 5
        while not bot.fake.calls_to(SEND) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the failure is recorded, the lane let go
        rows = await outbound(bot)
        assert [r.status for r in rows] == ["queued", "queued"] and rows[0].next_attempt_at > time.time() + 0.5
        commits, cpu = bot.services.writer.commits, time.process_time()
        await asyncio.sleep(1.0)
        # measured before the fix: ~300 commits/s and most of a core, for the whole backoff
        assert bot.services.writer.commits - commits <= 2
        assert time.process_time() - cpu < 0.25
        assert len(bot.fake.calls_to(SEND)) == 1  # the second reply never overtakes the first
        await bot.wait_idle(timeout=15)
        assert bot.replies_to("oU") == ["first", "second"]


async def test_a_send_whose_answer_was_lost_is_in_doubt_and_sent_again_at_least_once():
    async with Harness.start(router=replies_router("only"), api_timeout=0.5) as bot:
        bot.fake.inject(SEND, delay=2.0, after_processing=True)  # WeChat got it; the answer never came
        await bot.send_text("oU", "go")
        await bot.wait_idle(timeout=20)
        [row] = await outbound(bot)
        assert row.status == "sent" and row.attempts == 2
        assert row.error.startswith("in doubt:") and "after the request was sent" in row.error
        assert bot.replies_to("oU") == ["only", "only"]  # the documented price of at_least_once


async def test_at_most_once_marks_an_ambiguous_send_failed_in_doubt_and_goes_on():
    async with Harness.start(router=replies_router("one", "two"), api_timeout=0.5,
                             ambiguous_sends="at_most_once") as bot:
        bot.fake.inject(SEND, status=502, times=1)  # a proxy's 502: WeChat may have it
        await bot.send_text("oU", "go")
        await bot.wait_idle(timeout=20)
        first, second = await outbound(bot)
        assert first.status == "failed" and first.error.startswith("in doubt:") and "502" in first.error
        assert "at_most_once" in first.error and first.attempts == 1
        assert second.status == "sent"
        assert len(bot.fake.calls_to(SEND)) == 2  # the first was never resent


async def test_a_send_refused_before_it_was_written_is_retried_plainly():
    async with Harness.start(router=replies_router("x")) as bot:
        bot.fake.inject(SEND, status=429, times=1)  # refused at the door: not delivered
        await bot.send_text("oU", "go")
        await bot.wait_idle(timeout=20)
        [row] = await outbound(bot)
        assert row.status == "sent" and row.attempts == 2 and row.error is None
        assert bot.replies_to("oU") == ["x"]


async def test_a_lane_whose_lease_was_taken_over_stops_before_its_next_send():
    async with Harness.start(router=replies_router("a", "b", "c")) as bot:
        bot.fake.inject(SEND, delay=1.0, times=1)
        await bot.send_text("oU", "go")
        deadline = time.monotonic() + 5
        while not bot.fake.calls_to(SEND) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        # meanwhile another process takes the user's send lane (as if ours had run out)
        async with bot.services.sessionmaker() as s, s.begin():
            await s.execute(update(Conversation).where(Conversation.openid == "oU")
                            .values(send_lease_owner="other-process", send_lease_until=time.time() + 60))
        await asyncio.sleep(2.0)
        rows = await outbound(bot)
        assert [r.status for r in rows] == ["sent", "queued", "queued"]
        assert bot.replies_to("oU") == ["a"]


async def test_a_send_longer_than_the_lease_is_never_taken_for_abandoned_by_its_own_process():
    async with Harness.start(router=replies_router("slow", "next"), lease_seconds=1.0, api_timeout=10) as bot:
        bot.fake.inject(SEND, delay=2.5, times=1)  # longer than the lease: renewals keep it
        await bot.send_text("oU", "go")
        await bot.wait_idle(timeout=20)
        rows = await outbound(bot)
        assert [(r.status, r.attempts, r.error) for r in rows] == [("sent", 1, None), ("sent", 1, None)]
        assert bot.replies_to("oU") == ["slow", "next"]


async def test_a_sending_mark_that_comes_back_after_the_lease_ran_out_sends_nothing():
    """The `sending` mark commits, but its answer reaches the lane late (a stalled writer) and
    the lease has been taken over meanwhile: the lane must not send, or its reply could go out
    after the new holder's later ones. The row goes back to `queued`, for the lane's holder."""
    from csbot.outbox import SENDING, MarkOp

    async with Harness.start(router=replies_router("a"), lease_seconds=1.0) as bot:
        outbox = bot.services.outbox
        run = outbox.writer.run
        stalled = []

        async def late_answer(op):
            result = await run(op)
            if isinstance(op, MarkOp) and op.values.get("status") == SENDING and not stalled:
                stalled.append(op.message_id)
                async with bot.services.sessionmaker() as s, s.begin():  # another process takes over
                    await s.execute(update(Conversation).where(Conversation.openid == "oU").values(
                        send_lease_owner="other-process", send_lease_until=time.time() + 60))
                await asyncio.sleep(1.2)  # longer than the lease: its renewal finds it taken
            return result

        outbox.writer = type("LateWriter", (), {"run": staticmethod(late_answer)})()
        await bot.send_text("oU", "go")
        deadline = time.monotonic() + 10
        while not stalled and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        await asyncio.sleep(2.0)
        [row] = await outbound(bot)
        assert stalled == [row.id]
        assert (row.status, row.attempts) == ("queued", 0)
        assert bot.fake.calls_to(SEND) == []
