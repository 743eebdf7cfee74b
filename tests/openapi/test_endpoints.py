"""Every wrapped endpoint sends WeChat's own fields to the right path and returns the answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from csbot.openapi import OpenAPI, WeChatAPIError
from csbot.testing.fake_wechat import FakeWeChat

from .conftest import APPID, SECRET

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


class TestCustomerServiceMessage:
    async def test_send_text_is_posted_to_custom_send_with_the_token(self, api: OpenAPI, fake: FakeWeChat,
                                                                       user: str) -> None:
        answer = await api.customer_service_message.send(touser=user, msgtype="text", text={"content": "Hello"})

        assert answer == {"errcode": 0, "errmsg": "ok"}
        [call] = fake.calls_to("/cgi-bin/message/custom/send")
        assert call.method == "POST"
        assert call.query["access_token"] == await api.tokens.get()
        assert call.json == {"touser": user, "msgtype": "text", "text": {"content": "Hello"}}
        assert fake.sent_to(user)[0]["body"]["text"] == {"content": "Hello"}

    async def test_non_ascii_text_goes_out_as_raw_utf8_not_escapes(self, api: OpenAPI, fake: FakeWeChat,
                                                                   user: str) -> None:
        await api.customer_service_message.send(touser=user, msgtype="text", text={"content": "你好，世界"})

        [call] = fake.calls_to("/cgi-bin/message/custom/send")
        assert "你好，世界".encode() in call.raw
        assert b"\\u" not in call.raw

    async def test_unused_message_kinds_are_not_sent_as_null(self, api: OpenAPI, fake: FakeWeChat,
                                                            user: str) -> None:
        await api.customer_service_message.send(touser=user, msgtype="text", text={"content": "x"},
                                                image=None, link=None)

        [call] = fake.calls_to("/cgi-bin/message/custom/send")
        assert set(call.json) == {"touser", "msgtype", "text"}

    async def test_send_link_and_miniprogrampage(self, api: OpenAPI, fake: FakeWeChat, user: str) -> None:
        thumb = fake.add_media(PNG, "image/png")
        link = {"title": "T", "description": "D", "url": "https://example.com", "thumb_url": "https://e/x.png"}
        page = {"title": "P", "pagepath": "pages/index/index?x=1", "thumb_media_id": thumb}

        await api.customer_service_message.send(touser=user, msgtype="link", link=link)
        await api.customer_service_message.send(touser=user, msgtype="miniprogrampage", miniprogrampage=page)

        assert [m["msgtype"] for m in fake.sent_to(user)] == ["link", "miniprogrampage"]
        assert fake.sent_to(user)[1]["body"]["miniprogrampage"] == page

    async def test_upload_bytes_then_send_the_image(self, api: OpenAPI, fake: FakeWeChat, user: str) -> None:
        answer = await api.customer_service_message.upload_temp_media(type="image", media=PNG)

        assert answer["type"] == "image"
        assert fake.media(answer["media_id"]) == PNG
        [upload] = fake.calls_to("/cgi-bin/media/upload")
        assert upload.query["type"] == "image"

        await api.customer_service_message.send(touser=user, msgtype="image", image={"media_id": answer["media_id"]})
        assert fake.sent_to(user)[0]["msgtype"] == "image"

    async def test_upload_from_a_path(self, api: OpenAPI, fake: FakeWeChat, tmp_path: Path) -> None:
        picture = tmp_path / "picture.png"
        picture.write_bytes(PNG)

        answer = await api.customer_service_message.upload_temp_media(media=str(picture))

        assert fake.media(answer["media_id"]) == PNG

    async def test_get_temp_media_returns_the_bytes(self, api: OpenAPI, fake: FakeWeChat) -> None:
        media_id = fake.add_media(b"\xff\xd8\xff jpeg bytes", "image/jpeg")

        assert await api.customer_service_message.get_temp_media(media_id=media_id) == b"\xff\xd8\xff jpeg bytes"

    async def test_get_temp_media_json_answer_is_an_error(self, api: OpenAPI) -> None:
        with pytest.raises(WeChatAPIError) as err:
            await api.customer_service_message.get_temp_media(media_id="no-such-media")
        assert err.value.errcode == 40007

    async def test_set_typing(self, api: OpenAPI, fake: FakeWeChat, user: str) -> None:
        await api.customer_service_message.set_typing(touser=user, command="Typing")

        assert fake.is_typing(APPID, user)
        await api.customer_service_message.set_typing(touser=user, command="CancelTyping")
        assert not fake.is_typing(APPID, user)
        assert [c.json["command"] for c in fake.calls_to("/cgi-bin/message/custom/typing")] == ["Typing", "CancelTyping"]

    async def test_send_outside_the_reply_window_raises_45015(self, api: OpenAPI) -> None:
        with pytest.raises(WeChatAPIError) as err:
            await api.customer_service_message.send(touser="oSTRANGER", msgtype="text", text={"content": "hi"})
        assert err.value.errcode == 45015
        assert not err.value.transient


class TestSubscribeMessage:
    async def test_send_posts_the_fields_given_and_omits_the_rest(self, api: OpenAPI, fake: FakeWeChat) -> None:
        fake.grant_subscription(APPID, "oSUB", "TPL-1")
        data = {"thing1": {"value": "订单已发货"}}

        answer = await api.subscribe_message.send(touser="oSUB", template_id="TPL-1", data=data,
                                                  page="pages/order?id=1", lang="zh_CN")

        assert answer["errcode"] == 0
        [call] = fake.calls_to("/cgi-bin/message/subscribe/send")
        assert call.json == {"touser": "oSUB", "template_id": "TPL-1", "page": "pages/order?id=1",
                             "data": data, "lang": "zh_CN"}

    async def test_without_consent_43101(self, api: OpenAPI) -> None:
        with pytest.raises(WeChatAPIError) as err:
            await api.subscribe_message.send(touser="oSUB", template_id="TPL-1", data={"thing1": {"value": "x"}},
                                             miniprogram_state="formal")
        assert err.value.errcode == 43101


class TestTemplateMessage:
    async def test_add_list_send_delete(self, api: OpenAPI, fake: FakeWeChat) -> None:
        added = await api.template_message.add_template(id="AT0002", keyword_id_list=[3, 4, 5])
        template_id = added["template_id"]

        listed = await api.template_message.get_template_list(offset=0, count=20)
        assert [t["template_id"] for t in listed["list"]] == [template_id]

        form_id = fake.add_form_id(APPID, "oTPL")
        await api.template_message.send(touser="oTPL", template_id=template_id, form_id=form_id,
                                        data={"keyword1": {"value": "x"}}, emphasis_keyword="keyword1.DATA")
        [call] = fake.calls_to("/cgi-bin/message/wxopen/template/send")
        assert call.json["form_id"] == form_id and "page" not in call.json

        await api.template_message.delete_template(template_id=template_id)
        assert (await api.template_message.get_template_list(offset=0, count=20))["list"] == []
        assert [c.path for c in fake.calls if "wxopen/template" in c.path] == [
            "/cgi-bin/wxopen/template/add", "/cgi-bin/wxopen/template/list",
            "/cgi-bin/message/wxopen/template/send", "/cgi-bin/wxopen/template/del",
            "/cgi-bin/wxopen/template/list",
        ]

    def test_docstring_says_it_is_retired(self) -> None:
        from csbot.openapi.services import TemplateMessage

        assert "2020-01-10" in (TemplateMessage.__doc__ or "")


class TestAuthAndOpenData:
    async def test_code2session_uses_appid_and_secret_not_a_token(self, api: OpenAPI, fake: FakeWeChat) -> None:
        fake.register_login_code(APPID, "CODE1", "oLOGIN", session_key="SK")

        answer = await api.auth.code2session(js_code="CODE1")

        assert answer["openid"] == "oLOGIN" and answer["session_key"] == "SK"
        [call] = fake.calls_to("/sns/jscode2session")
        assert call.method == "GET"
        assert call.query == {"appid": APPID, "secret": SECRET, "js_code": "CODE1",
                              "grant_type": "authorization_code"}
        assert fake.token_fetches() == 0

    async def test_code2session_is_not_retried_code_is_single_use(self, api: OpenAPI, fake: FakeWeChat) -> None:
        fake.register_login_code(APPID, "CODE2", "oLOGIN")
        fake.inject("/sns/jscode2session", errcode=-1)

        with pytest.raises(WeChatAPIError) as err:
            await api.auth.code2session(js_code="CODE2")
        assert err.value.errcode == -1
        assert len(fake.calls_to("/sns/jscode2session")) == 1

    async def test_open_data_decodes_the_json_strings(self, api: OpenAPI, fake: FakeWeChat) -> None:
        fake.register_cloud_id(APPID, "CLOUD1", {"phoneNumber": "13800000000"})

        answer = await api.open_data.get(cloudid_list=["CLOUD1"], openid="oOPEN")

        [item] = answer["data_list"]
        assert item["cloud_id"] == "CLOUD1"
        assert item["json"]["data"]["phoneNumber"] == "13800000000"
        [call] = fake.calls_to("/wxa/getopendata")
        assert call.query["openid"] == "oOPEN"
        assert call.json == {"cloudid_list": ["CLOUD1"]}

    async def test_open_data_without_openid_sends_no_openid(self, api: OpenAPI, fake: FakeWeChat) -> None:
        fake.register_cloud_id(APPID, "CLOUD2", {"x": 1})
        await api.open_data.get(cloudid_list=["CLOUD2"])
        assert "openid" not in fake.calls_to("/wxa/getopendata")[0].query


class TestGenericCall:
    async def test_call_reaches_any_endpoint_with_token_handling(self, api: OpenAPI, fake: FakeWeChat,
                                                                user: str) -> None:
        body = {"touser": user, "msgtype": "text", "text": {"content": "via call"}}

        answer = await api.call("POST", "/cgi-bin/message/custom/send", json=body)

        assert answer["errcode"] == 0
        assert json.loads(fake.calls_to("/cgi-bin/message/custom/send")[0].raw) == body

    async def test_call_raises_wechat_errors(self, api: OpenAPI) -> None:
        with pytest.raises(WeChatAPIError) as err:
            await api.call("POST", "cgi-bin/message/custom/business/send", json={"touser": "x"})
        assert err.value.errcode == 40101
        assert err.value.path == "cgi-bin/message/custom/business/send"
