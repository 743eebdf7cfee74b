"""The issue-9 store features on PostgreSQL: the undelivered flag and filter, retry, outbound
webhook deliveries (claimed with leases) and refused pushes kept for diagnosis."""

from csbot.refused import list_refused
from csbot.testing.harness import Harness

from tests.test_webhooks import Receiver, echo_router, hook, until


async def test_undelivered_retry_webhooks_and_refused_pushes_on_postgresql(pg_url):
    async with Receiver() as receiver, Harness.start(router=echo_router(), database_url=pg_url, keep_refused=1,
                                                     webhooks=hook(receiver.url)) as bot:
        bot.fake.inject("/cgi-bin/message/custom/send", errcode=40003, times=1)
        await bot.send_text("oAnn", "你好")
        await bot.wait_idle()
        review = bot.services.review
        page = await review.list_conversations(undelivered=True)
        assert [c["openid"] for c in page.conversations] == ["oAnn"]
        assert await review.undelivered_counts() == {"default": 1}
        [reply] = await bot.messages("oAnn", direction="out")
        await review.retry(reply.id, actor="ada")
        await bot.wait_idle()
        assert bot.replies_to("oAnn") == ["re: 你好"]
        assert (await review.list_conversations(undelivered=True)).conversations == []
        await until(lambda: {"message.received", "message.failed", "message.sent"} <= set(receiver.events()))

        for _ in range(2):
            async with bot.session.post(bot.url + "/wechat", params={"signature": "x", "timestamp": "1",
                                                                      "nonce": "1"}, data=b"<xml/>") as resp:
                assert resp.status >= 400
        await bot.services.refused.flush()
        assert len(await list_refused(bot.services.sessionmaker)) == 1
