"""Conversation state changes live in one module, and a user action commits in one transaction."""

import pytest

from csbot import conversations
from csbot.routing import Route, Router
from csbot.services import services_of
from csbot.store import Conversation
from csbot.testing.harness import Harness


async def echo(event, context):
    return "echo " + event["Content"]


async def test_an_agent_reply_that_cannot_be_queued_leaves_no_takeover_behind(monkeypatch):
    import csbot.review.service as service

    async def broken(*args, **kwargs):
        raise RuntimeError("store refused the reply")

    async with Harness.start(router=Router([Route("echo", echo, fallback=True)])) as bot:
        await bot.send_text("oA", "hi")
        await bot.wait_idle()
        review = services_of(bot.app).review
        monkeypatch.setattr(service, "queue_messages", broken)
        with pytest.raises(RuntimeError):
            await review.reply("default", "oA", "hello from a person", agent="ann")
        conv = await review.conversation("default", "oA")
        assert conv["status"] == "bot" and conv["assigned_agent"] is None  # all or nothing
        thread = await review.thread("default", "oA")
        assert not [i for i in thread["items"] if i["kind"] == "event"]
        monkeypatch.undo()
        await review.reply("default", "oA", "hello from a person", agent="ann")
        await bot.wait_idle()
        conv = await review.conversation("default", "oA")
        assert conv["status"] == "human" and conv["last_agent_reply_at"] is not None
        assert bot.replies_to("oA") == ["echo hi", "hello from a person"]


async def test_one_module_changes_status_for_review_and_inbox_alike():
    async with Harness.start(router=Router([Route("echo", echo, fallback=True)])) as bot:
        await bot.send_text("oB", "hi")
        await bot.wait_idle()
        review = services_of(bot.app).review
        await review.set_status("default", "oB", "closed", agent="ann")
        await bot.send_text("oB", "again")  # the inbox reopens it through the same module
        await bot.wait_idle()
        assert (await review.conversation("default", "oB"))["status"] == "bot"
        async with bot.services.sessionmaker() as s, s.begin():
            conv = (await s.execute(Conversation.__table__.select().where(Conversation.openid == "oB"))).first()
            row = await s.get(Conversation, conv.id)
            with pytest.raises(ValueError):
                await conversations.change(s, row, "sleeping", agent=None, actor="x", now=0.0)
            assert not await conversations.change(s, row, "bot", agent=None, actor="x", now=0.0)  # no-op


def test_the_bot_answers_unless_a_person_has_the_conversation():
    assert conversations.bot_may_answer("bot") and conversations.bot_may_answer("closed")
    assert not conversations.bot_may_answer("human")
    assert conversations.bot_may_answer("human", while_human=True)
