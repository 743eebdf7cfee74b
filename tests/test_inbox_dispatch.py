"""The inbox dispatcher keeps each user's order even when it could not take a lane at first."""

import asyncio
import time

from sqlalchemy import update

from csbot.inbox import StatusOp
from csbot.routing import Route, Router
from csbot.store import Conversation
from csbot.testing.harness import Harness


def recording_router(log: list[str]):
    async def record(event, context):
        log.append(event["Content"])
        return None

    return Router([Route("record", record, fallback=True)])


async def test_a_push_whose_lane_was_held_elsewhere_is_handled_before_the_users_next_one():
    log: list[str] = []
    async with Harness.start(router=recording_router(log)) as bot:
        await bot.send_text("oU", "warm-up")  # creates the conversation row
        await bot.wait_idle()
        await asyncio.sleep(1.2)  # the lane let go
        async with bot.services.sessionmaker() as s, s.begin():  # another process holds the lane ...
            await s.execute(update(Conversation).where(Conversation.openid == "oU")
                            .values(lease_owner="other-process", lease_until=time.time() + 60))
        await bot.send_text("oU", "first")
        await asyncio.sleep(0.3)  # ... so this scan could not take it
        async with bot.services.sessionmaker() as s, s.begin():  # ... then it let go
            await s.execute(update(Conversation).where(Conversation.openid == "oU")
                            .values(lease_owner=None, lease_until=None))
        await bot.send_text("oU", "second")
        await bot.wait_idle(timeout=10)
        # before: the cursor had moved past "first", the lane started with "second" and then
        # refused the lower-numbered push until it ended: handled out of order
        assert log == ["warm-up", "first", "second"]


async def test_a_lane_never_starts_with_a_later_push_while_an_earlier_one_is_in_an_inline_handler():
    log: list[str] = []
    async with Harness.start(router=recording_router(log)) as bot:
        bot.fake.user_message(bot.settings.apps["default"].appid, "oU")
        earlier = await bot.services.inbox.accept(
            "default", _push(bot, "oU", "earlier"), status="inline")  # as if an inline route ran now
        await bot.send_text("oU", "later")
        await asyncio.sleep(1.5)
        assert log == []  # "later" waits: its lane may not start while "earlier" is unsettled
        await bot.services.writer.run(StatusOp(earlier.message_id, "inline", "pending"))
        bot.services.inbox.wake()
        await bot.wait_idle(timeout=10)
        assert log == ["earlier", "later"]
        rows = await bot.messages(direction="in")
        assert [r.status for r in rows] == ["done", "done"]


def _push(bot, openid: str, text: str):
    """A verified push as the webhook hands it to the inbox."""
    from csbot.wire.push import decode_push

    signed = bot.builder.build(bot.builder.text(openid, text))
    return decode_push(bot.settings.apps["default"], signed.query, signed.body, now=time.time(),
                       max_clock_skew=0)
