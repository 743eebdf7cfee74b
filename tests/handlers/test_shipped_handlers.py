"""The handlers shipped in handlers/: welcome, FAQ, human hand-off (unit level)."""

import logging
from pathlib import Path

from csbot import NEXT, TransferCustomerService
from csbot.context import Context, ConversationInfo, MessageInfo
from csbot.routing import Router

HANDLERS = Path(__file__).resolve().parents[2] / "handlers"


def ctx(options=None):
    info = MessageInfo(id=1, app="default", openid="o1", msg_type="text", event=None, text=None,
                       dedup_key="k", status="pending")
    return Context(OPENID="o1", APPID="wx1", app="default", message=info,
                   conversation=ConversationInfo(id=1), logger=logging.LoggerAdapter(logging.getLogger("t"), {}),
                   options=options or {})


def routes():
    return {r.name: r for r in Router.load(HANDLERS, use_entry_points=False).routes}


def text(content):
    return {"MsgType": "text", "Content": content, "FromUserName": "o1", "ToUserName": "gh_1",
            "CreateTime": 1, "MsgId": "1"}


async def test_welcome_greets_on_entering_the_chat_with_configured_text():
    welcome = routes()["welcome"]
    event = {"MsgType": "event", "Event": "user_enter_tempsession", "SessionFrom": "btn"}
    assert welcome.matches(event) and not welcome.matches(text("hi"))
    assert await welcome.func(event, ctx({"text": "Welcome to the shop"})) == "Welcome to the shop"
    assert "欢迎" in await welcome.func(event, ctx())
    assert welcome.while_human  # greets even while a person has the conversation


async def test_faq_answers_from_its_data_file_and_passes_on_otherwise():
    faq = routes()["faq"]
    assert "退货" in await faq.func(text("请问怎么退货？"), ctx())
    assert "9:00" in await faq.func(text("What are your OPENING HOURS?"), ctx())
    assert "订单号" in await faq.func(text("订单号 12345678 还没到"), ctx())
    assert await faq.func(text("今天天气怎么样"), ctx()) is NEXT


async def test_faq_reads_another_file_and_sees_edits(tmp_path):
    data = tmp_path / "qa.toml"
    data.write_text('[[faq]]\nkeywords = ["ping"]\nanswer = "pong"\n')
    faq = routes()["faq"]
    assert await faq.func(text("ping?"), ctx({"file": str(data)})) == "pong"
    import os
    data.write_text('[[faq]]\nkeywords = ["ping"]\nanswer = "PONG v2"\n')
    os.utime(data, (1e9, 2e9))
    assert await faq.func(text("ping?"), ctx({"file": str(data)})) == "PONG v2"


async def test_human_transfers_when_the_customer_asks_for_a_person():
    human = routes()["human"]
    assert human.inline and human.priority > routes()["faq"].priority
    for ask in ("人工", "转人工", "我要人工客服", "人工！", " 转人工吧 ", "真人", "Human please",
                "can I talk to an agent", "AGENT", "I want a real person."):
        assert human.matches(text(ask)), ask
        assert isinstance(await human.func(text(ask), ctx()), TransferCustomerService), ask
    # anything else never reaches it, so ordinary pushes do not wait for an inline handler
    assert not human.matches(text("退货")) and not human.matches({"MsgType": "image"})


def test_human_does_not_transfer_words_that_only_contain_a_phrase():
    human = routes()["human"]
    for not_asking in ("the reagent arrived", "human-readable labels, please", "真人秀几点开始", "真人秀",
                       "人工智能有什么用", "我不需要人工，谢谢你帮我查一下订单", "agents' fees", "humane treatment",
                       "请问你们的人工客服几点上班？我明天再来"):
        assert not human.matches(text(not_asking)), not_asking


def test_human_phrases_come_from_configuration():
    custom = {r.name: r for r in Router.load(HANDLERS, {"human": {"phrases": ["operator"]}},
                                             use_entry_points=False).routes}["human"]
    assert custom.matches(text("operator please")) and not custom.matches(text("人工"))
    assert routes()["human"].matches(text("人工"))  # loading again with defaults restores them
