"""POST /cloud/functions/{name}: callable functions for the mini program, with every refusal."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from csbot import function
from csbot.cloud.functions import FunctionRegistry
from csbot.routing import HandlerLoadError, Router
from csbot.testing.harness import TEST_APPID, Harness

from tests.cloud.conftest import FUNCTIONS_DIR, MiniProgram


async def answer(resp) -> tuple[int, dict]:
    return resp.status, await resp.json()


class TestCalling:
    async def test_a_call_answers_result_and_request_id(self, user: MiniProgram) -> None:
        status, body = await answer(await user.call("echo", {"a": 12, "b": [19, "二十"]}))
        assert status == 200
        assert body["result"] == {"a": 12, "b": [19, "二十"]}
        assert isinstance(body["requestID"], str) and len(body["requestID"]) >= 16

    async def test_the_identity_comes_from_the_session_never_from_the_body(self, user: MiniProgram) -> None:
        forged = {"OPENID": "oSomeoneElse", "APPID": "wxForged", "UNIONID": "uForged", "openid": "oX"}
        status, body = await answer(await user.call("whoami", forged))
        result = body["result"]
        assert status == 200
        assert (result["OPENID"], result["APPID"], result["UNIONID"]) == (user.openid, TEST_APPID, user.unionid)
        assert result["SOURCE"] == "wx_client" and result["CLIENTIP"] == "127.0.0.1"
        assert result["event"] == forged and result["requestID"] == body["requestID"]
        assert result["isPush"] is False and result["OPEN_DATA_INFO"] == []

    async def test_absent_data_is_an_empty_event(self, user: MiniProgram) -> None:
        status, body = await answer(await user.call("echo", body={}))
        assert (status, body["result"]) == (200, {})

    async def test_handlers_call_functions_server_side_as_the_same_user(self, user: MiniProgram) -> None:
        status, body = await answer(await user.call("caller", {"name": "whoami", "data": {"x": 1}}))
        inner = body["result"]["inner"]
        assert status == 200 and body["result"]["source"] == "wx_client"
        assert inner["result"]["OPENID"] == user.openid and inner["result"]["SOURCE"] == "csbot"
        assert inner["result"]["event"] == {"x": 1} and inner["requestID"] != body["requestID"]

    async def test_server_only_functions_are_callable_from_handlers(self, user: MiniProgram) -> None:
        status, body = await answer(await user.call("caller", {"name": "server_only"}))
        assert status == 200 and body["result"]["inner"]["result"] == {"secret": 42, "source": "csbot"}

    async def test_a_push_handler_calls_a_function(self, bot: Harness) -> None:
        await bot.send_text("oPushUser", "call echo")
        await bot.wait_idle()
        assert bot.replies_to("oPushUser") == ["42 via csbot"]

    async def test_a_module_whose_main_is_a_function_is_not_the_push_fallback(self) -> None:
        router = Router.load(FUNCTIONS_DIR, use_entry_points=False)
        assert [r.name for r in router.routes] == ["pushes"]
        names = [spec.name for spec in FunctionRegistry.from_router(router)]
        assert names == ["boom", "caller", "decrypt", "echo", "loop", "nan", "not_json", "notify", "opened",
                         "own_timeout", "server_only", "server_reply", "signature", "slow", "whoami"]

    async def test_options_are_the_modules_handlers_table(self, fake, tmp_path) -> None:
        async with Harness.start(handlers_dir=FUNCTIONS_DIR, fake=fake,
                                 handler_options={"echo": {"greeting": "你好"}}) as bot:
            mp = MiniProgram(bot, "oOptions")
            await mp.login()
            status, body = await answer(await mp.call("whoami"))
            assert body["result"]["options"] == {"greeting": "你好"}

    async def test_concurrent_calls_do_not_mix_identities(self, bot: Harness) -> None:
        users = [MiniProgram(bot, f"oConcurrent{i:02d}") for i in range(8)]
        for mp in users:
            await mp.login()
        answers = await asyncio.gather(*(mp.call("whoami", {"i": i}) for i, mp in enumerate(users)))
        for i, (mp, resp) in enumerate(zip(users, answers)):
            body = await resp.json()
            assert body["result"]["OPENID"] == mp.openid and body["result"]["event"] == {"i": i}


async def _until(check, timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await check():
            return True
        await asyncio.sleep(0.05)
    return False


class TestReplies:
    """``context.reply`` in a function: to the caller, through the outbox, committed at once."""

    async def test_a_reply_is_committed_at_once_and_sent_to_the_caller(self, user: MiniProgram) -> None:
        bot = user.bot
        bot.fake.user_message(TEST_APPID, user.openid)  # within WeChat's reply window
        status, body = await answer(await user.call("notify", {"texts": ["收到", "处理中"], "then_fail": True}))
        assert status == 500  # the function failed after replying: what it replied still leaves

        assert await _until(lambda: _sent(bot, user.openid, 2))
        assert bot.replies_to(user.openid) == ["收到", "处理中"]
        out = await bot.messages(direction="out")
        assert [(m.author, m.openid, m.status) for m in out] == [("function:notify", user.openid, "sent")] * 2
        assert [m.dedup_key for m in out] == [f"out:fn:{body['requestID']}:0", f"out:fn:{body['requestID']}:1"]

    async def test_a_keyed_reply_is_sent_once_however_often_the_call_is_retried(self, user: MiniProgram) -> None:
        bot = user.bot
        other = MiniProgram(bot, "oCloudUser0002")
        await other.login()
        for mp in (user, other):
            bot.fake.user_message(TEST_APPID, mp.openid)
        for _ in range(3):  # the mini program retries (a new requestID each time)
            for mp in (user, other):
                status, _ = await answer(await mp.call("notify", {"texts": ["订单已发货"], "keys": ["order-7"]}))
                assert status == 200
        status, _ = await answer(await user.call("notify", {"texts": ["unkeyed"]}))
        status, _ = await answer(await user.call("notify", {"texts": ["unkeyed"]}))

        assert await _until(lambda: _sent(bot, user.openid, 3))
        await asyncio.sleep(0.3)
        assert bot.replies_to(user.openid) == ["订单已发货", "unkeyed", "unkeyed"]  # unkeyed calls are new each time
        assert bot.replies_to(other.openid) == ["订单已发货"]  # keys are per user

    async def test_a_call_with_no_caller_refuses_reply_but_sends_to_a_named_user(self, bot: Harness) -> None:
        bot.fake.user_message(TEST_APPID, "oNamed")
        invocation = await bot.services.functions.invoke("server_reply", {"to": "oNamed"}, app="default",
                                                         openid=None, source="wx_http")
        result = invocation.answer()["result"]

        assert "has no caller to reply to" in result["refused"] and "wx_http" in result["refused"]
        assert result["answer"] == {"errcode": 0, "errmsg": "ok", "queued": True}  # through the outbox
        assert await _until(lambda: _sent(bot, "oNamed", 1))
        assert bot.replies_to("oNamed") == ["to a named user"]
        [out] = await bot.messages(direction="out")
        assert out.author == "function:server_reply"

    async def test_a_function_called_by_a_push_handler_replies_once_when_the_handler_runs_again(
            self, bot: Harness) -> None:
        """Its replies are the handler's: keyed by the push, so a re-run after a crash adds none."""
        await bot.send_text("oPushUser", "call notify")
        await bot.wait_idle(timeout=10)

        assert bot.replies_to("oPushUser") == ["通知 from a function", "done"]
        [push] = await bot.messages(direction="in")
        assert push.status == "done" and push.attempts == 2
        assert [m.dedup_key for m in await bot.messages(direction="out")] == [
            f"out:{push.id}:push:0", f"out:{push.id}:push:1"]

    async def test_a_reply_key_must_be_a_short_string(self, user: MiniProgram) -> None:
        from csbot.context import Context

        context = Context(OPENID="oU", APPID=TEST_APPID, app="default")
        for key in ("", "k" * 201, 7):
            with pytest.raises(ValueError):
                await context.reply("hi", key=key)  # type: ignore[arg-type]
        await context.reply("kept", key="k" * 200)  # no outbox behind it (a unit test): kept in replies
        assert [r.describe() for r in context.replies] == ["kept"]


async def _sent(bot: Harness, openid: str, count: int) -> bool:
    return len([m for m in await bot.messages(direction="out") if m.openid == openid and m.status == "sent"]) >= count


class TestRefusals:
    async def test_unknown_function_is_404(self, user: MiniProgram) -> None:
        status, body = await answer(await user.call("nope"))
        assert status == 404 and body["errMsg"] == "function 'nope' not found"

    @pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer forged"}, {"Authorization": "Basic eDp5"}])
    async def test_no_or_unknown_session_is_401(self, bot: Harness, headers: dict) -> None:
        resp = await bot.session.post(f"{bot.url}/cloud/functions/echo", json={"data": {}}, headers=headers)
        status, body = await answer(resp)
        assert status == 401 and set(body) == {"errCode", "errMsg"}

    async def test_an_expired_session_is_401(self, user: MiniProgram) -> None:
        store = user.bot.services.sessions
        real_clock = store.clock
        store.clock = lambda: real_clock() + store.lifetime + 1
        status, _ = await answer(await user.call("echo"))
        assert status == 401

    async def test_a_function_that_raises_is_500_with_the_traceback_only_in_the_log(self, user: MiniProgram,
                                                                                    caplog) -> None:
        caplog.set_level(logging.INFO, logger="csbot")
        resp = await user.call("boom")
        status, body = await answer(resp)
        assert status == 500
        assert body == {"errCode": -1, "errMsg": "function failed", "requestID": body["requestID"]}
        assert "secret detail" not in await resp.text()
        [record] = [r for r in caplog.records if r.name == "csbot.cloud.functions" and r.exc_info]
        assert body["requestID"] in record.getMessage() and "secret detail" in caplog.text

    async def test_a_functions_own_timeout_error_is_a_failure_not_a_time_limit(self, user: MiniProgram) -> None:
        status, body = await answer(await user.call("own_timeout"))
        assert (status, body["errCode"]) == (500, -1)

    async def test_a_function_over_its_time_limit_is_504(self, user: MiniProgram) -> None:
        status, body = await answer(await user.call("slow", {"seconds": 5}))
        assert status == 504 and "requestID" in body and "timed out" in body["errMsg"]

    async def test_a_body_over_one_mebibyte_is_413(self, user: MiniProgram) -> None:
        status, body = await answer(await user.call("echo", {"blob": "x" * (1024 * 1024)}))
        assert status == 413 and body["errMsg"]

    async def test_a_chunked_body_over_one_mebibyte_is_413(self, user: MiniProgram) -> None:
        async def chunks():
            for _ in range(20):
                yield b"x" * 65536

        resp = await user.bot.session.post(f"{user.bot.url}/cloud/functions/echo", data=chunks(),
                                           headers=user.headers())
        assert resp.status == 413

    @pytest.mark.parametrize("payload", [
        {"data": [1, 2]}, {"data": "text"}, {"data": None}, {"data": 3}, [1], "just a string",
    ])
    async def test_data_that_is_not_a_json_object_is_400(self, user: MiniProgram, payload) -> None:
        status, body = await answer(await user.call("echo", body=payload))
        assert status == 400 and body["errMsg"]

    @pytest.mark.parametrize("raw", [b"{not json", b"\xff\xfe{}", b'{"data": {"x": "\\ud800"}}',
                                     b'{"data": {"x": NaN}}', b'{"data": {"x": -Infinity}}',
                                     b'{"data":' * 100_000 + b"{}" + b"}" * 100_000])
    async def test_malformed_bodies_are_400(self, user: MiniProgram, raw: bytes) -> None:
        resp = await user.bot.session.post(f"{user.bot.url}/cloud/functions/echo", data=raw, headers=user.headers())
        status, body = await answer(resp)
        assert status == 400 and set(body) == {"errCode", "errMsg"}

    @pytest.mark.parametrize("name", ["not_json", "nan"])
    async def test_a_result_that_is_not_json_is_500_naming_the_function(self, user: MiniProgram, name: str) -> None:
        status, body = await answer(await user.call(name))
        assert status == 500 and name in body["errMsg"] and body["requestID"]

    async def test_server_only_functions_are_403_to_the_mini_program(self, user: MiniProgram) -> None:
        status, body = await answer(await user.call("server_only"))
        assert status == 403 and "server-only" in body["errMsg"]

    async def test_functions_calling_themselves_are_stopped(self, user: MiniProgram) -> None:
        status, body = await answer(await user.call("loop"))
        assert (status, body["errCode"]) == (500, -1)

    async def test_rate_limit_per_openid_is_429_with_retry_after(self, fake) -> None:
        async with Harness.start(handlers_dir=FUNCTIONS_DIR, fake=fake, function_rate_per_second=1.0,
                                 function_rate_burst=3) as bot:
            greedy, other = MiniProgram(bot, "oGreedy"), MiniProgram(bot, "oPolite")
            await greedy.login()
            await other.login()
            statuses = [(await greedy.call("echo")).status for _ in range(5)]
            assert statuses == [200, 200, 200, 429, 429]
            resp = await greedy.call("echo")
            assert resp.status == 429 and resp.headers["Retry-After"] == "1"
            assert (await other.call("echo")).status == 200  # per openid
            await asyncio.sleep(1.1)
            assert (await greedy.call("echo")).status == 200  # the allowance refills


class TestMetrics:
    async def test_every_call_is_in_the_histogram_by_function_and_outcome(self, user: MiniProgram) -> None:
        await user.call("echo")
        await user.call("boom")
        await user.call("server_only")
        await user.call("slow", {"seconds": 5})
        text = await (await user.bot.session.get(f"{user.bot.url}/metrics")).text()
        for function_, outcome in [("echo", "ok"), ("boom", "error"), ("server_only", "forbidden"),
                                   ("slow", "timeout")]:
            assert f'csbot_function_seconds_count{{function="{function_}",outcome="{outcome}"}} 1.0' in text


class TestDecorator:
    def test_names_and_limits_are_checked(self) -> None:
        with pytest.raises(ValueError):
            function("has space")
        with pytest.raises(ValueError):
            function("ok", timeout=0)
        with pytest.raises(TypeError):
            function("sync")(lambda event, context: None)

    def test_a_name_defined_twice_is_refused_at_load(self, tmp_path: Path) -> None:
        for module in ("a", "b"):
            (tmp_path / f"{module}.py").write_text(
                "from csbot import function\n\n@function('same')\nasync def main(event, context):\n    return 1\n")
        with pytest.raises(HandlerLoadError, match="same"):
            FunctionRegistry.from_router(Router.load(tmp_path, use_entry_points=False))


class TestHostileInput:
    async def test_generated_bodies_never_get_a_500_or_a_non_json_answer(self, user: MiniProgram) -> None:
        """Hypothesis makes the bodies (bytes, JSON of every shape, CloudID look-alikes); each one
        must be answered 200 or a 4xx with the error shape, never a server error."""
        import json as json_

        from hypothesis import HealthCheck, given, settings, strategies as st

        scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
        values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                              | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
        markers = st.builds(lambda k, v: {k: v}, st.sampled_from(["__csbotCloudID", "__cloudID"]),
                            scalars | st.text(min_size=1, max_size=10))
        bodies = st.one_of(
            st.binary(max_size=200),
            values.map(lambda v: json_.dumps(v).encode()),
            st.dictionaries(st.text(max_size=8), values | markers, max_size=4)
            .map(lambda d: json_.dumps({"data": d}).encode()),
        )
        corpus: list[bytes] = []

        @settings(max_examples=150, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        @given(bodies)
        def collect(body: bytes) -> None:
            corpus.append(body)

        collect()
        user.bot.services.functions.rate_per_second = 0  # every body reaches the parser
        statuses = set()
        for body in corpus:
            resp = await user.bot.session.post(f"{user.bot.url}/cloud/functions/echo", data=body,
                                               headers=user.headers())
            assert resp.status < 500 or resp.status == 503, (body, resp.status)
            answer = await resp.json()
            assert ("result" in answer) if resp.status == 200 else set(answer) >= {"errCode", "errMsg"}
            statuses.add(resp.status)
        assert {200, 400} <= statuses
