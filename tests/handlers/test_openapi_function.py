"""The shipped ``openapi`` function: the seed's template/subscribe flow, end to end on FakeWeChat."""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest_asyncio

from csbot.messages import SubscribeFallback, Text
from csbot.store import Message
from csbot.subscriptions import consents_left
from csbot.testing.fake_wechat import FakeWeChat
from csbot.testing.harness import TEST_APPID, TEST_SECRET, Harness

from tests.cloud.conftest import MiniProgram

HANDLERS = Path(__file__).parents[2] / "handlers"
TEMPLATE = "tplOrderShipped"
DATA = {"thing1": {"value": "订单已发货"}, "time2": {"value": "2026-11-30 14:00"}}


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    f = FakeWeChat(apps={TEST_APPID: TEST_SECRET})
    await f.start()
    try:
        yield f
    finally:
        await f.close()


@pytest_asyncio.fixture
async def bot(fake: FakeWeChat) -> AsyncIterator[Harness]:
    async with Harness.start(handlers_dir=HANDLERS, fake=fake) as harness:
        yield harness


@pytest_asyncio.fixture
async def user(bot: Harness) -> MiniProgram:
    mp = MiniProgram(bot, "oSeedUser0001")
    assert (await mp.login()).status == 200
    return mp


async def openapi(user: MiniProgram, **data) -> dict:
    resp = await user.call("openapi", data)
    assert resp.status == 200, await resp.text()
    return (await resp.json())["result"]


async def consents(bot: Harness, openid: str, template: str = TEMPLATE) -> int | None:
    return await consents_left(bot.services.sessionmaker, "default", openid, template)


class TestSubscribeFlow:
    async def test_accepting_then_sending_reaches_the_caller_and_is_on_the_thread(self, bot: Harness,
                                                                                  user: MiniProgram) -> None:
        bot.fake.grant_subscription(TEST_APPID, user.openid, TEMPLATE)  # what WeChat knows
        answer = await openapi(user, action="subscribe",
                               result={"errMsg": "requestSubscribeMessage:ok", TEMPLATE: "accept", "tplOther": "reject"})
        assert answer == {"errCode": 0, "errMsg": "openapi.subscribe:ok", "accepted": [TEMPLATE],
                          "rejected": ["tplOther"]}
        assert await consents(bot, user.openid) == 1

        answer = await openapi(user, action="sendSubscribeMessage", templateId=TEMPLATE, page="pages/index/index",
                               data=DATA, touser="oVictim", openid="oVictim")
        assert answer["errCode"] == 0 and answer["errMsg"] == "openapi.subscribeMessage.send:ok"
        [sent] = bot.fake.sent
        assert sent["kind"] == "subscribe" and sent["touser"] == user.openid
        assert sent["body"]["template_id"] == TEMPLATE and sent["body"]["data"] == DATA
        [row] = await bot.messages(user.openid, direction="out")
        assert (row.id, row.msg_type, row.status, row.author) == (answer["messageId"], "subscribe", "sent",
                                                                 "function:openapi")
        assert "订单已发货" in row.text
        assert await consents(bot, user.openid) == 0

    async def test_a_send_without_consent_left_is_not_attempted(self, bot: Harness, user: MiniProgram) -> None:
        await openapi(user, action="subscribe", rejected=[TEMPLATE])
        answer = await openapi(user, action="sendSubscribeMessage", templateId=TEMPLATE, data=DATA)
        assert answer["errCode"] == 43101 and "consent" in answer["errMsg"]
        assert not bot.fake.calls_to("/cgi-bin/message/subscribe/send")

    async def test_wechats_43101_is_remembered(self, bot: Harness, user: MiniProgram) -> None:
        answer = await openapi(user, action="sendSubscribeMessage", templateId=TEMPLATE, data=DATA)
        assert answer["errCode"] == 43101  # csbot knew nothing, WeChat refused
        assert await consents(bot, user.openid) == 0

    async def test_bad_requests_are_answered_not_raised(self, user: MiniProgram) -> None:
        assert (await openapi(user, action="launchMissiles"))["errCode"] == 40097
        assert (await openapi(user, action="sendSubscribeMessage", data=DATA))["errCode"] == 40097
        assert (await openapi(user, action="sendSubscribeMessage", templateId=TEMPLATE, data=[]))["errCode"] == 47003
        assert (await openapi(user, action="subscribe", accepted="tpl"))["errCode"] == 40097
        assert (await openapi(user, action="subscribe", accepted=["t"] * 21))["errCode"] == 40097

    async def test_the_operator_can_limit_the_templates(self, fake) -> None:
        async with Harness.start(handlers_dir=HANDLERS, fake=fake,
                                 handler_options={"openapi": {"templates": ["tplAllowed"]}}) as bot:
            mp = MiniProgram(bot, "oLimited")
            await mp.login()
            answer = await openapi(mp, action="sendSubscribeMessage", templateId=TEMPLATE, data=DATA)
            assert answer["errCode"] == 40037
            assert not await bot.messages("oLimited", direction="out")


class TestTemplateFlow:
    async def test_the_seeds_legacy_template_message(self, bot: Harness, user: MiniProgram) -> None:
        form_id = bot.fake.add_form_id(TEST_APPID, user.openid)
        answer = await openapi(user, action="sendTemplateMessage", formId=form_id)
        assert answer["errMsg"] == "openapi.templateMessage.send:ok"
        [sent] = bot.fake.sent
        assert sent["kind"] == "template" and sent["touser"] == user.openid
        assert sent["body"]["data"]["keyword3"] == {"value": "拿铁"}
        assert bot.fake.calls_to("/cgi-bin/wxopen/template/del")  # the template is deleted afterwards
        [row] = await bot.messages(user.openid, direction="out")
        assert (row.msg_type, row.status) == ("template", "sent")

    async def test_a_used_form_id_fails_clearly(self, bot: Harness, user: MiniProgram) -> None:
        form_id = bot.fake.add_form_id(TEST_APPID, user.openid)
        await openapi(user, action="sendTemplateMessage", formId=form_id)
        answer = await openapi(user, action="sendTemplateMessage", formId=form_id)
        assert answer["errCode"] == 41029


class TestOutboxUsesConsents:
    async def fallback_reply(self, bot: Harness, openid: str) -> Message:
        """A reply outside the reply window (WeChat answers 45015) carrying a subscribe fallback."""
        reply = Text("您的订单已发货", subscribe_fallback=SubscribeFallback(TEMPLATE, DATA))
        message_id = await bot.services.outbox.enqueue("default", openid, reply, author="test")
        await bot.services.outbox.outcome(message_id, wait=5)
        [row] = [m for m in await bot.messages(openid, direction="out") if m.id == message_id]
        return row

    async def test_the_fallback_is_skipped_when_the_user_has_no_consent_left(self, bot: Harness,
                                                                             user: MiniProgram) -> None:
        bot.fake.grant_subscription(TEST_APPID, user.openid, TEMPLATE)
        await openapi(user, action="subscribe", rejected=[TEMPLATE])
        row = await self.fallback_reply(bot, user.openid)
        assert row.status == "quota_exceeded" and "no consent left" in row.error
        assert not bot.fake.calls_to("/cgi-bin/message/subscribe/send")

    async def test_the_fallback_spends_a_recorded_consent(self, bot: Harness, user: MiniProgram) -> None:
        bot.fake.grant_subscription(TEST_APPID, user.openid, TEMPLATE)
        await openapi(user, action="subscribe", accepted=[TEMPLATE])
        row = await self.fallback_reply(bot, user.openid)
        assert "sent subscribe message" in row.error
        assert bot.fake.sent_to(user.openid)[0]["kind"] == "subscribe"
        assert await consents(bot, user.openid) == 0
