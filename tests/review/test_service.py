"""Conversation behaviour: takeover, handback, the human timeout, close and reopen, tags, notes,
and a thread that shows everything the customer lived, in order."""

import asyncio
import time

import pytest
from sqlalchemy import update

from csbot.store import Conversation

from csbot.review.service import Invalid, NotFound, parse_time

from .support import review_of, start


async def test_a_taken_over_conversation_gets_no_bot_answer_but_its_pushes_are_kept(bot):
    review = review_of(bot)
    await bot.send_text("oAda", "怎么退款")
    await bot.wait_idle()
    assert len(bot.replies_to("oAda")) == 1  # the FAQ answered

    conv = await review.set_status("default", "oAda", "human", agent="alice")
    assert (conv["status"], conv["assigned_agent"]) == ("human", "alice")
    assert conv["human_since"] is not None

    await bot.send_text("oAda", "怎么退款 again")
    await bot.wait_idle()
    assert len(bot.replies_to("oAda")) == 1  # the bot stayed quiet
    thread = await review.thread("default", "oAda")
    assert thread["items"][-1]["text"] == "怎么退款 again"  # the agent sees the push
    assert thread["conversation"]["unanswered"] is True

    await review.reply("default", "oAda", "我来帮您处理", agent="alice")
    await bot.wait_idle()
    assert bot.replies_to("oAda")[-1] == "我来帮您处理"
    assert (await review.conversation("default", "oAda"))["unanswered"] is False

    conv = await review.set_status("default", "oAda", "bot", agent="alice")
    assert (conv["status"], conv["assigned_agent"], conv["human_since"]) == ("bot", None, None)
    await bot.send_text("oAda", "怎么退款")
    await bot.wait_idle()
    assert len(bot.replies_to("oAda")) == 3  # the bot answers again


async def test_an_agent_reply_takes_the_conversation_over_and_is_authored_by_the_agent(bot):
    review = review_of(bot)
    await bot.send_text("oBo", "hello")
    await bot.wait_idle()
    message_id = await review.reply("default", "oBo", "Hi, Bob here", agent="bob")
    await bot.wait_idle()
    conv = await review.conversation("default", "oBo")
    assert (conv["status"], conv["assigned_agent"]) == ("human", "bob")
    assert conv["last_agent_reply_at"] is not None
    [out] = [i for i in (await review.thread("default", "oBo"))["items"] if i.get("direction") == "out"]
    assert (out["id"], out["author"], out["status"]) == (message_id, "agent:bob", "sent")
    assert bot.fake.sent_to("oBo")[-1]["body"]["text"]["content"] == "Hi, Bob here"


async def test_a_human_conversation_without_agent_reply_returns_to_the_bot_after_the_timeout():
    async with start(human_timeout=0.6) as bot:
        review = review_of(bot)
        await bot.send_text("oCy", "hi")
        await bot.wait_idle()
        await review.set_status("default", "oCy", "human", agent="carol")
        deadline = time.monotonic() + 10
        while (await review.conversation("default", "oCy"))["status"] == "human":
            assert time.monotonic() < deadline, "the conversation never returned to the bot"
            await asyncio.sleep(0.1)
        thread = await review.thread("default", "oCy")
        events = [i for i in thread["items"] if i["kind"] == "event"]
        assert [e["event"] for e in events] == ["takeover", "timeout"]
        assert "no agent reply" in events[-1]["detail"]


async def test_an_agent_reply_keeps_a_human_conversation_from_timing_out():
    async with start() as bot:
        review = review_of(bot)
        for openid in ("oDi", "oDo"):
            await bot.send_text(openid, "hi")
        await bot.wait_idle()
        for openid in ("oDi", "oDo"):
            await review.set_status("default", openid, "human", agent="dan")
        async with bot.services.sessionmaker() as s, s.begin():  # both taken over 100 s ago
            await s.execute(update(Conversation).values(human_since=time.time() - 100))
        await review.reply("default", "oDi", "still here", agent="dan")
        assert await review.return_idle_to_bot(60) == [("default", "oDo")]  # oDi had a reply just now
        assert await review.return_idle_to_bot(60, now=time.time() + 61) == [("default", "oDi")]


async def test_a_closed_conversation_reopens_for_the_bot_when_the_customer_writes_again(bot):
    review = review_of(bot)
    await bot.send_text("oEv", "hi")
    await bot.wait_idle()
    conv = await review.set_status("default", "oEv", "closed", agent="eve")
    assert conv["status"] == "closed" and conv["closed_at"] is not None

    await bot.enter("oEv")  # opening the chat is not writing: stays closed
    await bot.wait_idle()
    assert (await review.conversation("default", "oEv"))["status"] == "closed"

    await bot.send_text("oEv", "怎么退款")
    await bot.wait_idle()
    assert (await review.conversation("default", "oEv"))["status"] == "bot"
    assert "退" in bot.replies_to("oEv")[-1]  # and the bot answered that message


async def test_tags_are_added_removed_and_replaced_and_notes_stay_private(bot):
    review = review_of(bot)
    await bot.send_text("oFi", "hi")
    await bot.wait_idle()
    assert await review.set_tags("default", "oFi", add=["refund", "vip", "refund"]) == ["refund", "vip"]
    assert await review.set_tags("default", "oFi", remove=["refund"]) == ["vip"]
    assert await review.set_tags("default", "oFi", tags=["a", "b"]) == ["a", "b"]
    with pytest.raises(Invalid):
        await review.set_tags("default", "oFi", add=["x" * 33])
    note = await review.add_note("default", "oFi", "customer is on holiday until Monday", author="fay")
    thread = await review.thread("default", "oFi")
    assert thread["conversation"]["tags"] == ["a", "b"]
    assert thread["items"][-1] == note and note["kind"] == "note" and note["author"] == "fay"
    assert bot.fake.sent_to("oFi") == []  # nothing of it reached the customer


async def test_the_thread_shows_pushes_replies_delivery_states_handler_errors_and_the_transfer():
    async with start(quota_replies_per_message=2) as bot:
        review = review_of(bot)
        await bot.enter("oGu", session_from="order-page")
        builder = bot.builder
        await bot.send(builder.miniprogrampage("oGu", title="订单 1234", pagepath="pages/order?id=1234"))
        await bot.send_text("oGu", "boom")
        await bot.send_text("oGu", "转人工")
        await bot.wait_idle()
        bot.fake.inject("/cgi-bin/message/custom/send", errcode=40003)  # permanent: invalid openid
        await review.reply("default", "oGu", "first", agent="gus")
        await review.reply("default", "oGu", "second", agent="gus")
        await review.reply("default", "oGu", "third", agent="gus")
        await bot.wait_idle()

        thread = await review.thread("default", "oGu")
        msgs = [i for i in thread["items"] if i["kind"] == "message"]
        inbound = [(m["type"], m["status"]) for m in msgs if m["direction"] == "in"]
        assert inbound == [("event", "done"), ("miniprogrampage", "done"), ("text", "failed"), ("text", "done")]
        card = next(m for m in msgs if m["type"] == "miniprogrampage")
        assert card["content"]["Title"] == "订单 1234" and card["content"]["PagePath"] == "pages/order?id=1234"
        failed = next(m for m in msgs if m.get("text") == "boom")
        assert failed["handler"] == "fragile" and "order number not understood" in failed["error"]
        transfer = next(m for m in msgs if m.get("text") == "转人工")
        assert transfer["transferred"] and transfer["handler"] == "human"
        assert thread["conversation"]["transferred_at"] is not None
        replies = {m["text"]: m for m in msgs if m["direction"] == "out" and m["author"] == "agent:gus"}
        assert (replies["first"]["status"], replies["first"]["errcode"]) == ("failed", 40003)
        assert replies["second"]["status"] == "sent"
        assert replies["third"]["status"] == "quota_exceeded" and "quota" in replies["third"]["error"]
        assert [m["id"] for m in msgs] == sorted(m["id"] for m in msgs)  # in order


async def test_unknown_conversations_apps_and_bad_input_are_refused_with_a_reason(bot):
    review = review_of(bot)
    with pytest.raises(NotFound):
        await review.thread("default", "oNobody")
    with pytest.raises(NotFound):
        await review.set_status("default", "oNobody", "human", agent="x")
    await bot.send_text("oHa", "hi")
    await bot.wait_idle()
    with pytest.raises(NotFound):
        await review.reply("otherapp", "oHa", "hi", agent="x")
    with pytest.raises(Invalid):
        await review.reply("default", "oHa", "   ", agent="x")
    with pytest.raises(Invalid):
        await review.set_status("default", "oHa", "asleep", agent="x")
    with pytest.raises(Invalid):
        await review.list_conversations(cursor="not-a-cursor!")


def test_times_are_iso_dates_date_times_or_relative():
    now = 1_800_000_000.0
    assert parse_time("2h", now=now) == now - 7200
    assert parse_time("3d", now=now) == now - 3 * 86400
    assert parse_time("30m", now=now) == now - 1800
    assert parse_time("2026-11-20T10:00:00+00:00") == 1795168800.0
    assert parse_time("2026-11-20") is not None
    assert parse_time("") is None
    with pytest.raises(Invalid):
        parse_time("yesterday-ish")


async def test_two_agents_answering_one_conversation_at_once_one_wins_and_the_other_is_told_who(bot):
    await two_agents_at_once(bot)


async def test_two_agents_at_once_on_postgresql(pg_url):
    async with start(database_url=pg_url) as bot:
        await two_agents_at_once(bot)


async def two_agents_at_once(bot):
    from csbot.review.audit import Actor
    from csbot.review.service import NotYours

    review = review_of(bot)
    for openid in ("oAnn", "oBen"):
        await bot.send_text(openid, "在吗")
    await bot.wait_idle()
    ada, bob = Actor("ada", role="agent", agent_id=1), Actor("bob", role="agent", agent_id=2)

    # both press "Send" on the same unassigned conversation
    results = await asyncio.gather(review.reply("default", "oAnn", "我来处理", agent="ada", by=ada),
                                   review.reply("default", "oAnn", "我来处理", agent="bob", by=bob),
                                   return_exceptions=True)
    won = [r for r in results if isinstance(r, int)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 1 and len(lost) == 1 and isinstance(lost[0], NotYours), results
    winner = (await review.conversation("default", "oAnn"))["assigned_agent"]
    assert winner in ("ada", "bob") and lost[0].params == {"agent": winner}
    sent = [m.author for m in await bot.messages("oAnn", direction="out") if (m.author or "").startswith("agent:")]
    assert sent == [f"agent:{winner}"]  # exactly one reply went out, the winner's

    # both press "Take over" at once
    results = await asyncio.gather(review.set_status("default", "oBen", "human", by=ada),
                                   review.set_status("default", "oBen", "human", by=bob), return_exceptions=True)
    assert sorted(type(r).__name__ for r in results) == ["NotYours", "dict"], results
    conv = await review.conversation("default", "oBen")
    assert conv["status"] == "human" and conv["assigned_agent"] in ("ada", "bob")
    events = [i for i in (await review.thread("default", "oBen"))["items"] if i["kind"] == "event"]
    assert [e["event"] for e in events] == ["takeover"]  # one takeover recorded, not two


async def test_the_same_reply_sent_twice_with_one_key_goes_out_once(bot):
    """A double click in the console, or an integration retrying after a timeout."""
    review = review_of(bot)
    await bot.send_text("oAnn", "在吗")
    await bot.wait_idle()
    first = await review.reply("default", "oAnn", "您好，在的", agent="ada", key="form-1")
    again = await asyncio.gather(*(review.reply("default", "oAnn", "您好，在的", agent="ada", key="form-1")
                                   for _ in range(3)))
    assert again == [first] * 3
    other_text = await review.reply("default", "oAnn", "请稍等", agent="ada", key="form-1")  # another reply
    no_key = await review.reply("default", "oAnn", "请稍等", agent="ada")
    assert len({first, other_text, no_key}) == 3
    await bot.wait_idle()
    assert [r for r in bot.replies_to("oAnn") if r in ("您好，在的", "请稍等")] == ["您好，在的", "请稍等", "请稍等"]
    with pytest.raises(Invalid):
        await review.reply("default", "oAnn", "x", agent="ada", key="k" * 201)
