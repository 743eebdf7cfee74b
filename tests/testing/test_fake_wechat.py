"""FakeWeChat behaves like WeChat's server API where csbot's client can get hurt.

Every test talks to a started fake over real HTTP on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from csbot.testing.fake_wechat import FakeWeChat, main

APPID = "wxtestappid0001"
SECRET = "testsecret"
USER = "oUSER-0001"
CUSTOM_SEND = "/cgi-bin/message/custom/send"


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    async with FakeWeChat() as f:
        f.clock = lambda: 1_700_000_000.0  # frozen: only fake.advance() moves time
        yield f


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


class Api:
    """A tiny client: just enough to exercise the fake, deliberately naive."""

    def __init__(self, fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
        self.fake, self.http = fake, http

    async def get(self, path: str, **params: Any) -> dict[str, Any]:
        async with self.http.get(self.fake.base_url + path, params=params) as r:
            assert r.status == 200
            return await r.json()

    async def post(self, path: str, body: Any, **params: Any) -> dict[str, Any]:
        data = json.dumps(body, ensure_ascii=False).encode()
        async with self.http.post(self.fake.base_url + path, params=params, data=data) as r:
            assert r.status == 200
            return await r.json()

    async def plain_token(self) -> str:
        answer = await self.get("/cgi-bin/token", grant_type="client_credential", appid=APPID, secret=SECRET)
        return answer["access_token"]

    async def stable_token(self, force_refresh: bool = False) -> dict[str, Any]:
        body = {"grant_type": "client_credential", "appid": APPID, "secret": SECRET, "force_refresh": force_refresh}
        return await self.post("/cgi-bin/stable_token", body)

    async def token(self) -> str:
        return (await self.stable_token())["access_token"]

    async def send_text(self, token: str, content: str = "hello", touser: str = USER) -> dict[str, Any]:
        body = {"touser": touser, "msgtype": "text", "text": {"content": content}}
        return await self.post(CUSTOM_SEND, body, access_token=token)


@pytest.fixture
def api(fake: FakeWeChat, http: aiohttp.ClientSession) -> Api:
    return Api(fake, http)


# --------------------------------------------------------------------- lifecycle
async def test_start_returns_a_loopback_base_url_and_close_stops_serving() -> None:
    fake = FakeWeChat()
    url = await fake.start()
    assert url.startswith("http://127.0.0.1:") and url == fake.base_url
    await fake.close()
    with pytest.raises(RuntimeError):
        fake.base_url
    async with aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.ClientConnectionError):
            await s.get(url + "/cgi-bin/token")


# -------------------------------------------------------------------- tokens
async def test_stable_token_is_reused_while_valid(api: Api, fake: FakeWeChat) -> None:
    first = await api.stable_token()
    fake.advance(3600)
    second = await api.stable_token()
    assert second["access_token"] == first["access_token"]
    assert first["expires_in"] == 7200 and second["expires_in"] == 3600
    assert fake.token_fetches(APPID) == 1


async def test_stable_token_rotates_in_its_last_5_minutes_and_old_one_keeps_working(api: Api, fake: FakeWeChat) -> None:
    old = (await api.stable_token())["access_token"]
    fake.advance(7200 - 240)  # 4 minutes left: inside the 5-minute handover
    rotated = await api.stable_token()
    assert rotated["access_token"] != old and rotated["expires_in"] == 7200
    assert (await api.send_text(old))["errcode"] != 40001  # old still valid during the overlap
    fake.advance(240)
    assert (await api.send_text(old))["errcode"] == 42001
    fake.user_message(APPID, USER)
    assert (await api.send_text(rotated["access_token"]))["errcode"] == 0


async def test_stable_token_force_refresh_mints_a_new_token_and_invalidates_the_old(api: Api, fake: FakeWeChat) -> None:
    fake.user_message(APPID, USER)
    old = await api.token()
    new = (await api.stable_token(force_refresh=True))["access_token"]
    assert new != old
    assert (await api.send_text(old))["errcode"] == 40001
    assert (await api.send_text(new))["errcode"] == 0


async def test_plain_token_fetch_invalidates_the_previous_token_immediately(api: Api, fake: FakeWeChat) -> None:
    fake.user_message(APPID, USER)
    first = await api.plain_token()
    second = await api.plain_token()
    assert first != second
    assert (await api.send_text(first))["errcode"] == 40001
    assert (await api.send_text(second))["errcode"] == 0
    assert fake.token_fetches(APPID, kind="plain") == 2


async def test_plain_and_stable_tokens_are_independent(api: Api, fake: FakeWeChat) -> None:
    fake.user_message(APPID, USER)
    stable = await api.token()
    await api.plain_token()
    await api.plain_token()
    assert (await api.send_text(stable))["errcode"] == 0


async def test_plain_token_overlap_is_configurable() -> None:
    async with FakeWeChat(plain_token_overlap=300) as fake, aiohttp.ClientSession() as http:
        api = Api(fake, http)
        fake.user_message(APPID, USER)
        first = await api.plain_token()
        await api.plain_token()
        assert (await api.send_text(first))["errcode"] == 0
        fake.advance(300)
        assert (await api.send_text(first))["errcode"] == 40001


async def test_tokens_expire_after_token_ttl_with_42001(api: Api, fake: FakeWeChat) -> None:
    fake.user_message(APPID, USER)
    token = await api.plain_token()
    fake.advance(7199)
    assert (await api.send_text(token))["errcode"] == 0
    fake.advance(1)
    answer = await api.send_text(token)
    assert answer["errcode"] == 42001 and "rid:" in answer["errmsg"]


async def test_expire_tokens_expires_current_tokens_now(api: Api, fake: FakeWeChat) -> None:
    token = await api.token()
    fake.expire_tokens(APPID)
    assert (await api.send_text(token))["errcode"] == 42001
    assert (await api.token()) != token  # an expired stable token is replaced


async def test_token_ttl_is_configurable() -> None:
    async with FakeWeChat(token_ttl=600) as fake, aiohttp.ClientSession() as http:
        assert (await Api(fake, http).stable_token())["expires_in"] == 600


@pytest.mark.parametrize(
    ("appid", "secret", "grant_type", "errcode"),
    [("wxnotanapp", SECRET, "client_credential", 40013), (APPID, "wrong", "client_credential", 40125), (APPID, SECRET, "password", 40002)],
)
async def test_token_fetch_rejects_bad_credentials(api: Api, appid: str, secret: str, grant_type: str, errcode: int) -> None:
    plain = await api.get("/cgi-bin/token", grant_type=grant_type, appid=appid, secret=secret)
    stable = await api.post("/cgi-bin/stable_token", {"grant_type": grant_type, "appid": appid, "secret": secret})
    assert plain["errcode"] == stable["errcode"] == errcode


async def test_apis_need_a_known_access_token(api: Api, fake: FakeWeChat) -> None:
    body = {"touser": USER, "msgtype": "text", "text": {"content": "x"}}
    assert (await api.post(CUSTOM_SEND, body))["errcode"] == 41001
    assert (await api.post(CUSTOM_SEND, body, access_token="forged"))["errcode"] == 40001


async def test_tokens_are_long_like_wechats(api: Api) -> None:
    assert len(await api.token()) > 150  # clients must store >= 512 chars


# ----------------------------------------------------------- custom/send window
async def test_send_without_a_user_action_is_45015(api: Api, fake: FakeWeChat) -> None:
    answer = await api.send_text(await api.token())
    assert answer["errcode"] == 45015
    assert fake.sent == []


async def test_a_user_message_allows_5_replies_within_48_hours(api: Api, fake: FakeWeChat) -> None:
    token = await api.token()
    fake.user_message(APPID, USER)
    for i in range(5):
        assert (await api.send_text(token, f"reply {i}"))["errcode"] == 0
    assert (await api.send_text(token, "one too many"))["errcode"] == 45047
    assert [m["body"]["text"]["content"] for m in fake.sent_to(USER)] == [f"reply {i}" for i in range(5)]


async def test_the_48_hour_window_closes(api: Api, fake: FakeWeChat) -> None:
    fake.user_message(APPID, USER)
    fake.advance(48 * 3600)
    fake.expire_tokens()
    assert (await api.send_text(await api.token()))["errcode"] == 45015


async def test_entering_the_chat_allows_2_replies_within_1_minute(api: Api, fake: FakeWeChat) -> None:
    token = await api.token()
    fake.user_entered(APPID, USER)
    assert (await api.send_text(token))["errcode"] == 0
    assert (await api.send_text(token))["errcode"] == 0
    assert (await api.send_text(token))["errcode"] == 45047
    fake.user_entered(APPID, USER)
    fake.advance(60)
    assert (await api.send_text(token))["errcode"] == 45015


async def test_each_new_user_action_resets_the_allowance(api: Api, fake: FakeWeChat) -> None:
    token = await api.token()
    fake.user_message(APPID, USER)
    for _ in range(5):
        await api.send_text(token)
    assert (await api.send_text(token))["errcode"] == 45047
    fake.user_message(APPID, USER)
    assert (await api.send_text(token))["errcode"] == 0
    assert fake.reply_allowance(APPID, USER) == (4, 172800)


async def test_reply_window_numbers_are_constructor_args() -> None:
    async with FakeWeChat(replies_per_message=1, reply_window=10) as fake, aiohttp.ClientSession() as http:
        api = Api(fake, http)
        token = await api.token()
        fake.user_message(APPID, USER)
        assert (await api.send_text(token))["errcode"] == 0
        assert (await api.send_text(token))["errcode"] == 45047


async def test_reply_window_can_be_disabled() -> None:
    async with FakeWeChat(enforce_reply_window=False) as fake, aiohttp.ClientSession() as http:
        api = Api(fake, http)
        assert (await api.send_text(await api.token()))["errcode"] == 0


async def test_strict_users_rejects_unknown_openids_with_40003() -> None:
    async with FakeWeChat(strict_users=True, enforce_reply_window=False) as fake, aiohttp.ClientSession() as http:
        api = Api(fake, http)
        token = await api.token()
        assert (await api.send_text(token, touser="oSTRANGER"))["errcode"] == 40003
        fake.add_user(APPID, "oSTRANGER")
        assert (await api.send_text(token, touser="oSTRANGER"))["errcode"] == 0


async def test_sent_records_appid_touser_msgtype_body_and_time(api: Api, fake: FakeWeChat) -> None:
    fake.clock = lambda: 1_700_000_000.0
    fake.user_message(APPID, USER)
    await api.send_text(await api.token(), "你好")
    assert fake.sent == [
        {
            "appid": APPID,
            "touser": USER,
            "msgtype": "text",
            "body": {"touser": USER, "msgtype": "text", "text": {"content": "你好"}},
            "time": 1_700_000_000.0,
            "kind": "custom",
        }
    ]


async def test_all_four_mini_program_message_types_are_accepted(api: Api, fake: FakeWeChat) -> None:
    token = await api.token()
    fake.user_message(APPID, USER)
    media_id = fake.add_media(b"\xff\xd8jpeg")
    bodies = [
        {"msgtype": "text", "text": {"content": "hi"}},
        {"msgtype": "image", "image": {"media_id": media_id}},
        {"msgtype": "link", "link": {"title": "t", "description": "d", "url": "https://x", "thumb_url": "https://x/t.png"}},
        {"msgtype": "miniprogrampage", "miniprogrampage": {"title": "t", "pagepath": "pages/index/index?a=1", "thumb_media_id": media_id}},
    ]
    for body in bodies:
        assert (await api.post(CUSTOM_SEND, {"touser": USER, **body}, access_token=token))["errcode"] == 0
    assert [m["msgtype"] for m in fake.sent] == ["text", "image", "link", "miniprogrampage"]


@pytest.mark.parametrize(
    ("body", "errcode"),
    [
        ({"touser": USER, "msgtype": "voice", "voice": {"media_id": "x"}}, 40008),
        ({"touser": USER, "msgtype": "text"}, 47001),
        ({"touser": USER, "msgtype": "text", "text": {"content": ""}}, 44004),
        ({"touser": USER, "msgtype": "image", "image": {"media_id": "unknown"}}, 40007),
        ({"touser": USER, "msgtype": "link", "link": {"title": "t"}}, 47001),
        ({"touser": "", "msgtype": "text", "text": {"content": "x"}}, 40003),
        ([1, 2], 47001),
    ],
)
async def test_malformed_sends_are_rejected_like_wechat(api: Api, fake: FakeWeChat, body: Any, errcode: int) -> None:
    fake.user_message(APPID, USER)
    assert (await api.post(CUSTOM_SEND, body, access_token=await api.token()))["errcode"] == errcode
    assert fake.sent == []


async def test_empty_and_non_json_bodies(api: Api, fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    url = f"{fake.base_url}{CUSTOM_SEND}?access_token={await api.token()}"
    async with http.post(url, data=b"") as r:
        assert (await r.json())["errcode"] == 44002
    async with http.post(url, data=b"{not json") as r:
        assert (await r.json())["errcode"] == 47001


async def test_json_is_utf8_both_ways(api: Api, fake: FakeWeChat, http: aiohttp.ClientSession) -> None:
    fake.user_message(APPID, USER)
    token = await api.token()
    raw = json.dumps({"touser": USER, "msgtype": "text", "text": {"content": "客服"}}, ensure_ascii=False).encode()
    async with http.post(f"{fake.base_url}{CUSTOM_SEND}?access_token={token}", data=raw) as r:
        assert await r.json() == {"errcode": 0, "errmsg": "ok"}
    assert fake.calls[-1].raw == raw and fake.sent[0]["body"]["text"]["content"] == "客服"
    async with http.post(f"{fake.base_url}{CUSTOM_SEND}?access_token=bad", data=raw) as r:
        assert r.content_type == "application/json" and r.charset == "utf-8"


async def test_the_business_send_path_answers_40101_like_reported(api: Api) -> None:
    body = {"touser": USER, "msgtype": "text", "text": {"content": "x"}}
    answer = await api.post("/cgi-bin/message/custom/business/send", body, access_token=await api.token())
    assert answer["errcode"] == 40101


async def test_wrong_http_method_is_43002(api: Api, fake: FakeWeChat) -> None:
    assert (await api.get(CUSTOM_SEND, access_token=await api.token()))["errcode"] == 43002


# -------------------------------------------------------------------- typing
async def test_typing_accepts_typing_and_cancel_and_rejects_other_commands(api: Api, fake: FakeWeChat) -> None:
    token = await api.token()
    fake.user_message(APPID, USER)
    path = "/cgi-bin/message/custom/typing"
    assert (await api.post(path, {"touser": USER, "command": "Typing"}, access_token=token))["errcode"] == 0
    assert fake.is_typing(APPID, USER)
    assert (await api.post(path, {"touser": USER, "command": "Typing"}, access_token=token))["errcode"] == 45081
    assert (await api.post(path, {"touser": USER, "command": "CancelTyping"}, access_token=token))["errcode"] == 0
    assert (await api.post(path, {"touser": USER, "command": "Dance"}, access_token=token))["errcode"] == 45072
    fake.advance(31)
    assert (await api.post(path, {"touser": USER, "command": "Typing"}, access_token=token))["errcode"] == 45080


# --------------------------------------------------------------------- media
async def upload(api: Api, token: str, data: bytes, content_type: str = "image/png") -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("media", data, filename="a.png", content_type=content_type)
    async with api.http.post(f"{api.fake.base_url}/cgi-bin/media/upload", params={"access_token": token, "type": "image"}, data=form) as r:
        return await r.json()


async def test_uploaded_media_can_be_downloaded_for_3_days(api: Api, fake: FakeWeChat) -> None:
    token = await api.token()
    up = await upload(api, token, b"\x89PNG fake image")
    assert up["type"] == "image" and up["media_id"] and isinstance(up["created_at"], int)
    url = f"{fake.base_url}/cgi-bin/media/get"
    async with api.http.get(url, params={"access_token": token, "media_id": up["media_id"]}) as r:
        assert r.content_type == "image/png"
        assert await r.read() == b"\x89PNG fake image"
    fake.advance(3 * 86400)
    fake.expire_tokens()
    token = await api.token()
    async with api.http.get(url, params={"access_token": token, "media_id": up["media_id"]}) as r:
        assert r.content_type == "application/json"
        assert (await r.json())["errcode"] == 40007


async def test_seeded_media_is_readable_and_unknown_media_is_40007(api: Api, fake: FakeWeChat) -> None:
    token = await api.token()
    media_id = fake.add_media(b"\xff\xd8user photo")
    async with api.http.get(f"{fake.base_url}/cgi-bin/media/get", params={"access_token": token, "media_id": media_id}) as r:
        assert (r.content_type, await r.read()) == ("image/jpeg", b"\xff\xd8user photo")
    assert (await api.get("/cgi-bin/media/get", access_token=token, media_id="nope"))["errcode"] == 40007


async def test_upload_needs_type_image(api: Api, fake: FakeWeChat) -> None:
    form = aiohttp.FormData()
    form.add_field("media", b"x", filename="a.mp3", content_type="audio/mpeg")
    async with api.http.post(f"{fake.base_url}/cgi-bin/media/upload", params={"access_token": await api.token(), "type": "voice"}, data=form) as r:
        assert (await r.json())["errcode"] == 40004


# ----------------------------------------------------------------- subscribe
SUBSCRIBE = "/cgi-bin/message/subscribe/send"
TEMPLATE = "tmpl-order-shipped"
DATA = {"thing1": {"value": "您的订单已发货"}, "number2": {"value": "339208499"}}


async def test_subscribe_send_needs_one_consent_per_message(api: Api, fake: FakeWeChat) -> None:
    token = await api.token()
    body = {"touser": USER, "template_id": TEMPLATE, "page": "pages/order?id=1", "data": DATA, "miniprogram_state": "formal", "lang": "zh_CN"}
    assert (await api.post(SUBSCRIBE, body, access_token=token))["errcode"] == 43101
    fake.grant_subscription(APPID, USER, TEMPLATE)
    assert (await api.post(SUBSCRIBE, body, access_token=token))["errcode"] == 0
    assert (await api.post(SUBSCRIBE, body, access_token=token))["errcode"] == 43101
    assert [m["kind"] for m in fake.sent_to(USER)] == ["subscribe"]


async def test_subscribe_send_checks_data_and_known_templates(api: Api, fake: FakeWeChat) -> None:
    token = await api.token()
    fake.grant_subscription(APPID, USER, TEMPLATE, count=5)
    bad = await api.post(SUBSCRIBE, {"touser": USER, "template_id": TEMPLATE, "data": {"thing1": "not an object"}}, access_token=token)
    assert bad["errcode"] == 47003 and "thing1" in bad["errmsg"]
    fake.templates = {"some-other-template"}
    assert (await api.post(SUBSCRIBE, {"touser": USER, "template_id": TEMPLATE, "data": DATA}, access_token=token))["errcode"] == 40037
    assert fake.subscriptions_left(APPID, USER, TEMPLATE) == 5


# ---------------------------------------------------------- legacy templates
async def test_legacy_template_lifecycle_and_single_use_form_id(api: Api, fake: FakeWeChat) -> None:
    token = await api.token()
    added = await api.post("/cgi-bin/wxopen/template/add", {"id": "AT0002", "keyword_id_list": [3, 4, 5]}, access_token=token)
    template_id = added["template_id"]
    listed = await api.post("/cgi-bin/wxopen/template/list", {"offset": 0, "count": 20}, access_token=token)
    assert [t["template_id"] for t in listed["list"]] == [template_id]

    form_id = fake.add_form_id(APPID, USER)
    body = {"touser": USER, "template_id": template_id, "form_id": form_id, "data": {"keyword1": {"value": "x"}}}
    send = "/cgi-bin/message/wxopen/template/send"
    assert (await api.post(send, body, access_token=token))["errcode"] == 0
    assert (await api.post(send, body, access_token=token))["errcode"] == 41029
    assert (await api.post(send, {**body, "form_id": "never-issued"}, access_token=token))["errcode"] == 41028
    assert (await api.post(send, {**body, "form_id": ""}, access_token=token))["errcode"] == 41028

    assert (await api.post("/cgi-bin/wxopen/template/del", {"template_id": template_id}, access_token=token))["errcode"] == 0
    assert (await api.post(send, {**body, "form_id": fake.add_form_id(APPID)}, access_token=token))["errcode"] == 40037


# --------------------------------------------------------- login / open data
async def test_code2session_exchanges_a_registered_code_once(api: Api, fake: FakeWeChat) -> None:
    fake.register_login_code(APPID, "code-1", USER, session_key="sk==", unionid="uUNION")
    params = {"appid": APPID, "secret": SECRET, "js_code": "code-1", "grant_type": "authorization_code"}
    assert await api.get("/sns/jscode2session", **params) == {"openid": USER, "session_key": "sk==", "unionid": "uUNION"}
    assert (await api.get("/sns/jscode2session", **params))["errcode"] == 40029
    assert (await api.get("/sns/jscode2session", **{**params, "js_code": "never"}))["errcode"] == 40029
    assert fake.calls_to("/sns/jscode2session")[0].appid == APPID


async def test_getopendata_returns_the_registered_data_as_a_json_string(api: Api, fake: FakeWeChat) -> None:
    fake.register_cloud_id(APPID, "cloud-1", {"stepInfoList": [{"timestamp": 1, "step": 100}]})
    answer = await api.post("/wxa/getopendata", {"cloudid_list": ["cloud-1"]}, access_token=await api.token(), openid=USER)
    assert answer["errcode"] == 0 and answer["errmsg"] == "ok"
    [item] = answer["data_list"]
    assert item["cloud_id"] == "cloud-1" and isinstance(item["json"], str)
    opened = json.loads(item["json"])
    assert opened["cloudID"] == "cloud-1"
    assert opened["data"]["stepInfoList"] == [{"timestamp": 1, "step": 100}]
    assert opened["data"]["watermark"]["appid"] == APPID


# -------------------------------------------------------------------- faults
async def test_injected_errcode_answers_http_200_with_a_wechat_error(api: Api, fake: FakeWeChat) -> None:
    fake.user_message(APPID, USER)
    token = await api.token()
    fake.inject(CUSTOM_SEND, errcode=-1, times=2)
    for _ in range(2):
        answer = await api.send_text(token)
        assert answer["errcode"] == -1 and answer["errmsg"].startswith("system error rid: ") and answer["rid"]
    assert (await api.send_text(token))["errcode"] == 0
    assert len(fake.sent) == 1  # the faulted calls were not processed


@pytest.mark.parametrize("status", [500, 502])
async def test_injected_http_status(api: Api, fake: FakeWeChat, status: int) -> None:
    fake.user_message(APPID, USER)
    token = await api.token()
    fake.inject("*", status=status)
    async with api.http.post(f"{fake.base_url}{CUSTOM_SEND}", params={"access_token": token}, json={"touser": USER, "msgtype": "text", "text": {"content": "x"}}) as r:
        assert r.status == status
        assert str(status) in await r.text()
    assert fake.sent == [] and fake.calls[-1].status == status


async def test_injected_delay_slows_the_answer(api: Api, fake: FakeWeChat) -> None:
    token = await api.token()
    fake.inject(CUSTOM_SEND, delay=0.3)
    started = time.monotonic()
    await api.send_text(token)
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    await api.send_text(token)
    assert time.monotonic() - started < 0.3


async def test_a_delay_beyond_the_client_timeout_is_a_timeout(api: Api, fake: FakeWeChat) -> None:
    fake.inject("/cgi-bin/stable_token", delay=5)
    with pytest.raises(asyncio.TimeoutError):
        async with api.http.post(f"{fake.base_url}/cgi-bin/stable_token", json={}, timeout=aiohttp.ClientTimeout(total=0.2)):
            pass


async def test_latency_applies_to_every_call(api: Api, fake: FakeWeChat) -> None:
    fake.latency = 0.2
    started = time.monotonic()
    await api.token()
    assert time.monotonic() - started >= 0.2


async def test_injected_drop_closes_the_connection_without_an_answer(api: Api, fake: FakeWeChat) -> None:
    fake.user_message(APPID, USER)
    token = await api.token()
    fake.inject(CUSTOM_SEND, drop=True)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await api.send_text(token)
    assert fake.sent == []
    assert fake.calls[-1].status is None and fake.calls[-1].response is None
    assert (await api.send_text(token))["errcode"] == 0  # the next call goes through


async def test_after_processing_drop_delivers_the_message_but_loses_the_answer(api: Api, fake: FakeWeChat) -> None:
    fake.user_message(APPID, USER)
    token = await api.token()
    fake.inject(CUSTOM_SEND, drop=True, after_processing=True)
    with pytest.raises(aiohttp.ClientConnectionError):
        await api.send_text(token, "did it arrive?")
    assert [m["body"]["text"]["content"] for m in fake.sent] == ["did it arrive?"]  # WeChat delivered it
    assert fake.reply_allowance(APPID, USER)[0] == 4  # and it counted against the quota


async def test_after_processing_errcode_reports_failure_for_a_delivered_message(api: Api, fake: FakeWeChat) -> None:
    fake.user_message(APPID, USER)
    token = await api.token()
    fake.inject(CUSTOM_SEND, errcode=-1, after_processing=True)
    assert (await api.send_text(token, "sent twice?"))["errcode"] == -1
    assert len(fake.sent) == 1  # a blind retry would now deliver a duplicate


async def test_after_processing_status_and_delay_model_a_slow_gateway_error(api: Api, fake: FakeWeChat) -> None:
    fake.user_message(APPID, USER)
    token = await api.token()
    fake.inject(CUSTOM_SEND, status=502, delay=0.1, after_processing=True)
    body = {"touser": USER, "msgtype": "text", "text": {"content": "x"}}
    async with api.http.post(f"{fake.base_url}{CUSTOM_SEND}", params={"access_token": token}, json=body) as r:
        assert r.status == 502
    assert len(fake.sent) == 1


async def test_close_does_not_wait_for_an_injected_delay() -> None:
    fake = FakeWeChat()
    await fake.start()
    fake.inject("*", delay=30)
    async with aiohttp.ClientSession() as http:
        with pytest.raises(asyncio.TimeoutError):
            await http.get(fake.base_url + "/cgi-bin/token", timeout=aiohttp.ClientTimeout(total=0.1))
    started = time.monotonic()
    await fake.close()
    assert time.monotonic() - started < 2


async def test_a_wildcard_fault_hits_the_next_call_whatever_its_path(api: Api, fake: FakeWeChat) -> None:
    fake.inject("*", errcode=45009)
    assert (await api.stable_token())["errcode"] == 45009
    assert "access_token" in await api.stable_token()


# --------------------------------------------------------------- call record
async def test_every_call_is_recorded(api: Api, fake: FakeWeChat) -> None:
    fake.clock = lambda: 1_000.0
    fake.user_message(APPID, USER)
    token = await api.token()
    await api.send_text(token, "hi")
    token_call, send_call = fake.calls
    assert (token_call.method, token_call.path, token_call.appid, token_call.status) == ("POST", "/cgi-bin/stable_token", APPID, 200)
    assert token_call.response is not None and token_call.response["access_token"] == token
    assert send_call.method == "POST" and send_call.path == CUSTOM_SEND
    assert send_call.query == {"access_token": token}
    assert send_call.json == {"touser": USER, "msgtype": "text", "text": {"content": "hi"}}
    assert send_call.appid == APPID and send_call.status == 200 and send_call.time == 1_000.0
    assert send_call.response == {"errcode": 0, "errmsg": "ok"} and send_call.errcode == 0
    assert fake.calls_to(CUSTOM_SEND) == [send_call]
    assert fake.token_fetches() == 1
    fake.reset_calls()
    assert fake.calls == [] and fake.sent == [] and fake.token_fetches() == 0


async def test_calls_to_unknown_paths_are_404_and_recorded(api: Api, fake: FakeWeChat) -> None:
    async with api.http.get(f"{fake.base_url}/cgi-bin/nope") as r:
        assert r.status == 404
    assert fake.calls_to("/cgi-bin/nope")[0].status == 404


async def test_a_stable_cached_token_is_not_counted_as_a_fetch(api: Api, fake: FakeWeChat) -> None:
    for _ in range(3):
        await api.token()
    assert fake.token_fetches(APPID) == 1 and len(fake.calls_to("/cgi-bin/stable_token")) == 3


# ------------------------------------------------------------------ control
async def test_a_standalone_fake_can_be_driven_over_http(api: Api, fake: FakeWeChat) -> None:
    token = await api.token()
    async with api.http.post(f"{fake.base_url}/_fake/user_message", json={"appid": APPID, "openid": USER}) as r:
        assert r.status == 200
    assert (await api.send_text(token))["errcode"] == 0
    async with api.http.get(f"{fake.base_url}/_fake/sent") as r:
        assert [m["touser"] for m in await r.json()] == [USER]
    assert all(not c.path.startswith("/_fake") for c in fake.calls)


def test_main_rejects_a_malformed_app_argument() -> None:
    with pytest.raises(SystemExit):
        main(["--app", "no-secret-here"])
