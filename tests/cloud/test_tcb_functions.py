"""``POST /tcb/invokecloudfunction``: WeChat's HTTP trigger, with the server key (SOURCE wx_http, no user)."""

from __future__ import annotations

import json

import pytest

from csbot.testing.harness import Harness

from .conftest import FUNCTIONS_DIR

KEY = "server-key-for-functions"


@pytest.fixture
async def bot(fake):
    async with Harness.start(handlers_dir=FUNCTIONS_DIR, fake=fake, server_key=KEY) as b:
        yield b


async def invoke(bot, name: str | None, body=None, *, env: str | None = "default", key: str = KEY, raw: bytes | None = None):
    params = {k: v for k, v in (("env", env), ("name", name)) if v is not None}
    kwargs = {"data": raw} if raw is not None else {"json": body} if body is not None else {}
    async with bot.session.post(f"{bot.url}/tcb/invokecloudfunction", params=params,
                                headers={"Authorization": f"Bearer {key}"}, **kwargs) as resp:
        return resp.status, await resp.json()


async def test_the_body_is_the_event_and_resp_data_the_result_as_a_string(bot):
    status, body = await invoke(bot, "echo", {"a": 1, "中": "文"})
    assert status == 200
    assert body == {"errcode": 0, "errmsg": "ok", "resp_data": json.dumps({"a": 1, "中": "文"}, ensure_ascii=False)}


async def test_an_http_call_carries_no_user_and_says_wx_http(bot):
    status, body = await invoke(bot, "whoami", {})
    result = json.loads(body["resp_data"])
    assert (result["OPENID"], result["SOURCE"], result["ENV"]) == ("", "wx_http", "default")


async def test_server_only_functions_are_callable_with_the_server_key(bot):
    status, body = await invoke(bot, "server_only", {})
    assert status == 200 and json.loads(body["resp_data"]) == {"secret": 42, "source": "wx_http"}


async def test_an_empty_body_is_an_empty_event(bot):
    status, body = await invoke(bot, "echo", raw=b"")
    assert status == 200 and json.loads(body["resp_data"]) == {}


@pytest.mark.parametrize("name, body, raw, errcode, status", [
    ("missing", {}, None, 40097, 404),
    (None, {}, None, 40097, 400),
    ("echo", None, b"[1, 2]", 47001, 400),
    ("echo", None, b"{nope", 47001, 400),
    ("boom", {}, None, -1, 500),
    ("slow", {"seconds": 5}, None, -1, 504),
])
async def test_failures_use_wechats_codes_without_details(bot, name, body, raw, errcode, status):
    got_status, got = await invoke(bot, name, body, raw=raw)
    assert (got_status, got["errcode"]) == (status, errcode)
    assert "secret detail" not in got["errmsg"] and "resp_data" not in got


async def test_the_key_and_the_env_are_checked(bot):
    assert (await invoke(bot, "echo", {}, key="wrong"))[1]["errcode"] == 40014
    assert (await invoke(bot, "echo", {}, env=None))[1]["errcode"] == 40097
    assert (await invoke(bot, "echo", {}, env="nope"))[1]["errcode"] == 85088
