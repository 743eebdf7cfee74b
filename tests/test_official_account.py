"""Official Account apps: inline routes answer with passive replies (text, image, voice, video,
music, news) in the push's format, encrypted in safe mode; Mini Program apps only transfer."""

import pytest

from csbot import Article, Image, Music, News, Text, Video, Voice, route
from csbot.config import ConfigError, load_settings
from csbot.routing import Route, Router
from csbot.testing.harness import Harness, test_app
from csbot.wire import parse_fields, sniff_format

REPLIES = {
    "text": Text("您好，欢迎关注"),
    "image": Image(media_id="IMG_MEDIA_1"),
    "voice": Voice(media_id="VOICE_1"),
    "video": Video(media_id="VIDEO_1", title="开箱", description="新品开箱"),
    "music": Music(title="歌", description="一首歌", music_url="https://m.example.com/a.mp3",
                   hq_music_url="https://m.example.com/a-hq.mp3", thumb_media_id="THUMB_1"),
    "news": News([Article(title="新品", description="秋季新品", url="https://shop.example.com/n",
                          pic_url="https://shop.example.com/n.jpg")]),
}


def router_answering(value, *, inline=True):
    async def answer(event, context):
        return value(event) if callable(value) else value

    return Router([Route("answer", answer, inline=inline, msg_types=frozenset({"text", "event"}))])


def oa(**kw):
    return {"default": test_app(kind="official_account", **kw)}


@pytest.mark.parametrize("fmt", ["xml", "json"])
@pytest.mark.parametrize("mode", ["safe", "plaintext"])
async def test_an_official_accounts_inline_route_answers_with_a_passive_reply(fmt, mode):
    keys = {"require_encryption": False} if mode == "plaintext" else {}  # with a key, plaintext is refused
    async with Harness.start(router=router_answering(lambda e: REPLIES[e["Content"]]), apps=oa(**keys),
                             fmt=fmt, mode=mode) as bot:
        for kind, reply in REPLIES.items():
            push = bot.builder.text("oFan", kind)
            status, body = await bot.send(push)
            assert status == 200
            if mode == "safe":
                assert b"Encrypt" in body and b"MsgSignature" in body
            plain = bot.builder.decrypt_reply(body)
            assert sniff_format(plain) == fmt
            fields = parse_fields(plain, fmt)
            assert fields["MsgType"] == kind
            assert (fields["ToUserName"], fields["FromUserName"]) == ("oFan", push["ToUserName"])
            if kind == "text":
                assert fields["Content"] == "您好，欢迎关注"
            elif kind in ("image", "voice"):
                assert fields[kind.capitalize()]["MediaId"] == reply.media_id
            elif kind == "video":
                assert fields["Video"] == {"MediaId": "VIDEO_1", "Title": "开箱", "Description": "新品开箱"}
            elif kind == "music":
                assert fields["Music"]["HQMusicUrl"] == "https://m.example.com/a-hq.mp3"
            else:
                assert int(fields["ArticleCount"]) == 1
                item = fields["Articles"]["item"]
                item = item[0] if isinstance(item, list) else item
                assert item["Url"] == "https://shop.example.com/n" and item["PicUrl"].endswith("n.jpg")
            # WeChat's retry of the same push gets the same answer
            again_status, again = await bot.post(bot.builder.build(push))
            assert again_status == 200 and parse_fields(bot.builder.decrypt_reply(again), fmt)["MsgType"] == kind
        await bot.wait_idle()
        assert bot.fake.sent == []  # answered in the webhook's response, not through the send API
        pushes = await bot.messages("oFan", direction="in")
        assert all(p.status == "done" and p.passive_reply for p in pushes)
        conv = await bot.services.review.conversation("default", "oFan")
        assert conv["transferred_at"] is None  # a passive reply is not a transfer


async def test_an_official_account_greets_a_subscriber_passively():
    @route(event="subscribe", inline=True)
    async def greet(event, context):
        return "感谢关注！"

    router = Router([Route("greet", greet, **{k: v for k, v in greet.__csbot_route__.items()})])
    async with Harness.start(router=router, apps=oa()) as bot:
        status, body = await bot.send(bot.builder.event("oFan", "subscribe"))
        fields = parse_fields(bot.builder.decrypt_reply(body), "xml")
        assert status == 200 and fields["Content"] == "感谢关注！"


async def test_a_mini_program_passes_a_text_through_the_send_api_and_refuses_oa_only_types():
    async with Harness.start(router=router_answering(lambda e: REPLIES[e["Content"]])) as bot:
        status, body = await bot.send_text("oUser", "text")
        assert (status, body) == (200, b"success")
        await bot.wait_idle()
        assert bot.replies_to("oUser") == ["您好，欢迎关注"]  # sent through the outbox, as today
    async with Harness.start(router=router_answering(lambda e: REPLIES[e["Content"]], inline=False)) as bot:
        status, body = await bot.send_text("oUser", "voice")
        assert (status, body) == (200, b"success")
        await bot.wait_idle()
        push = (await bot.messages("oUser", direction="in"))[-1]
        assert push.status == "failed" and "Official Account apps only" in push.error
        assert bot.fake.sent == []


def test_the_app_kind_is_configured_and_validated(tmp_path):
    env = {"CSBOT_APPID": "wx1", "CSBOT_TOKEN": "t"}
    assert load_settings(env=env).apps["default"].kind == "miniprogram"
    assert load_settings(env={**env, "CSBOT_APP_KIND": "official_account"}).apps["default"].is_official_account
    with pytest.raises(ConfigError, match="CSBOT_APP_KIND must be one of miniprogram, official_account"):
        load_settings(env={**env, "CSBOT_APP_KIND": "oa"})
    config = tmp_path / "csbot.toml"
    config.write_text('[apps.news]\nappid = "wx2"\ntoken = "t"\nkind = "official_account"\n')
    assert load_settings(env={}, config_file=config).apps["news"].kind == "official_account"
    with pytest.raises(ValueError):
        News([])
    with pytest.raises(ValueError):
        News([Article("t", "d", "https://x")] * 9)
