"""The console's live state: unread counts per agent and conversation, read marks that only move
forward, the waiting count, and changes made elsewhere found without a new message."""

from csbot.review.live import LiveState
from csbot.services import services_of

from .support import add_agent, agents_of, review_of, start


async def test_unread_counts_per_agent_read_marks_and_waiting():
    async with start() as bot:
        await bot.send_text("oAnn", "one")
        await bot.send_text("oAnn", "two")
        await bot.send_text("oBen", "hi")
        await bot.wait_idle()
        await add_agent(bot, "ada")
        await add_agent(bot, "bob")
        ada = (await agents_of(bot).sign_in("ada", "correct horse battery", address="1.2.3.4")).actor
        bob = (await agents_of(bot).sign_in("bob", "correct horse battery", address="1.2.3.4")).actor
        live = LiveState(review_of(bot))
        keys = [("default", "oAnn"), ("default", "oBen")]
        assert await live.unread(ada.agent_id, keys) == {("default", "oAnn"): 2, ("default", "oBen"): 1}
        thread = await review_of(bot).thread("default", "oAnn")
        last = max(i["id"] for i in thread["items"] if i["kind"] == "message")
        await live.mark_read(ada, "default", "oAnn", last)
        await live.mark_read(ada, "default", "oAnn", 1)  # never back
        assert await live.unread(ada.agent_id, keys) == {("default", "oBen"): 1}
        assert await live.unread(bob.agent_id, keys) == {("default", "oAnn"): 2, ("default", "oBen"): 1}

        await review_of(bot).assign("default", "oBen", "ada")
        assert await live.my_unread(ada) == 1 and await live.my_unread(bob) == 0
        # the shipped handlers answer "one"/"two"/"hi"? whatever they did, waiting counts what is unanswered
        convs = await review_of(bot).conversations_for(keys)
        assert await live.waiting(ada) == sum(c["unanswered"] for c in convs)
        assert await live.waiting(bob) == sum(c["unanswered"] for c in convs if c["openid"] == "oAnn")

        _m, after_event, after_audit = await live.marks()
        await review_of(bot).set_status("default", "oAnn", "closed", agent="cli-user")
        changed, e2, a2 = await live.changed(after_event, after_audit)
        assert changed == {("default", "oAnn")} and (e2, a2) > (after_event, after_audit)
        assert (await live.changed(e2, a2))[0] == set()
        assert services_of(bot.app).audit is not None
