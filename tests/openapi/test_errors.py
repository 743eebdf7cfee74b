"""Failures are classified so callers know what a retry can do, and only safe calls are retried."""

from __future__ import annotations

import asyncio
import pickle
import time

import aiohttp
import pytest

from csbot.openapi import (
    PERMANENT_ERRCODES,
    TOKEN_ERRCODES,
    APITransportError,
    OpenAPI,
    OpenAPIRegistry,
    WeChatAPIError,
    is_transient,
    redact_url,
)
from csbot.testing.fake_wechat import FakeWeChat

from .conftest import APPID, SECRET, MakeAPI, make_settings

TEXT = {"msgtype": "text", "text": {"content": "hi"}}
SEND = "/cgi-bin/message/custom/send"


class TestWeChatAPIError:
    async def test_carries_errcode_errmsg_rid_and_path(self, api: OpenAPI, fake: FakeWeChat, user: str) -> None:
        fake.inject(SEND, errcode=45047)

        with pytest.raises(WeChatAPIError) as err:
            await api.customer_service_message.send(touser=user, **TEXT)

        exc = err.value
        assert exc.errcode == 45047
        assert exc.errmsg.startswith("out of response count limit rid: ")
        assert exc.rid and exc.errmsg.endswith(exc.rid)
        assert exc.path == "cgi-bin/message/custom/send"
        assert "45047" in str(exc)

    def test_rid_is_parsed_from_errmsg_when_there_is_no_field(self) -> None:
        exc = WeChatAPIError(40003, "invalid openid rid: 6625f1a2-3b4c5d6e-7f809102")
        assert exc.rid == "6625f1a2-3b4c5d6e-7f809102"
        assert WeChatAPIError(40003, "invalid openid").rid is None
        assert WeChatAPIError(40003, "x rid: a", rid="field-wins").rid == "field-wins"

    def test_survives_pickling(self) -> None:
        exc = pickle.loads(pickle.dumps(WeChatAPIError(-1, "system error rid: r1", None, "p")))
        assert (exc.errcode, exc.rid, exc.path) == (-1, "r1", "p")

    @pytest.mark.parametrize("errcode", [-1, 45011])
    def test_busy_and_minute_quota_are_transient(self, errcode: int) -> None:
        assert WeChatAPIError(errcode, "x").transient
        assert is_transient(WeChatAPIError(errcode, "x"))

    @pytest.mark.parametrize("errcode", sorted(PERMANENT_ERRCODES | TOKEN_ERRCODES | {40007, 40101}))
    def test_everything_else_is_not_transient(self, errcode: int) -> None:
        assert not WeChatAPIError(errcode, "x").transient

    def test_daily_quota_45009_is_permanent_not_transient(self) -> None:
        assert 45009 in PERMANENT_ERRCODES
        assert not WeChatAPIError(45009, "reach max api daily quota limit").transient

    def test_the_published_code_sets(self) -> None:
        assert TOKEN_ERRCODES == frozenset({40001, 40014, 42001})
        assert PERMANENT_ERRCODES == frozenset({45015, 45047, 40003, 43101, 48001, 47003, 40037, 41030,
                                                45009, 40013, 40125, 40164, 89503, 41001})
        assert isinstance(PERMANENT_ERRCODES, frozenset) and isinstance(TOKEN_ERRCODES, frozenset)

    def test_other_exceptions(self) -> None:
        assert is_transient(asyncio.TimeoutError())
        assert is_transient(aiohttp.ClientConnectionError())
        assert not is_transient(ValueError("bug"))


class TestTransportErrors:
    async def test_http_5xx_is_a_transient_transport_error(self, api: OpenAPI, fake: FakeWeChat, user: str) -> None:
        fake.inject(SEND, status=502)

        with pytest.raises(APITransportError) as err:
            await api.customer_service_message.send(touser=user, **TEXT)

        assert err.value.status == 502
        assert err.value.transient and is_transient(err.value)
        assert err.value.maybe_delivered

    async def test_dropped_connection_means_maybe_delivered(self, api: OpenAPI, fake: FakeWeChat, user: str) -> None:
        await api.tokens.get()
        fake.inject(SEND, drop=True, after_processing=True)

        with pytest.raises(APITransportError) as err:
            await api.customer_service_message.send(touser=user, **TEXT)

        assert err.value.transient and err.value.maybe_delivered
        assert len(fake.sent_to(user)) == 1  # WeChat did deliver it: the caller must not assume otherwise

    async def test_timeout(self, fake: FakeWeChat, make_api: MakeAPI, user: str) -> None:
        api = await make_api(fake, api_timeout=0.3)
        await api.tokens.get()
        fake.inject(SEND, delay=2.0)

        started = time.monotonic()
        with pytest.raises(APITransportError) as err:
            await api.customer_service_message.send(touser=user, **TEXT)

        assert time.monotonic() - started < 1.5
        assert err.value.status is None and err.value.transient

    async def test_non_json_answer(self, api: OpenAPI, fake: FakeWeChat, user: str) -> None:
        fake.json_content_type = "text/plain"  # tolerated: JSON labelled as text
        await api.customer_service_message.send(touser=user, **TEXT)

        with pytest.raises(APITransportError) as err:
            await api.call("GET", "cgi-bin/no-such-endpoint")
        assert err.value.status == 404
        assert not err.value.transient  # a wrong URL does not fix itself

    async def test_connection_refused_is_not_delivered(self, fake: FakeWeChat, make_api: MakeAPI) -> None:
        api = await make_api(fake)
        await api.tokens.get()
        api.base_url = "http://127.0.0.1:9"  # nothing listens on the discard port

        with pytest.raises(APITransportError) as err:
            await api.customer_service_message.send(touser="o", **TEXT)
        assert err.value.transient and not err.value.maybe_delivered

    async def test_error_messages_never_contain_the_token(self, api: OpenAPI, fake: FakeWeChat, user: str) -> None:
        token = await api.tokens.get()
        for fault in ({"status": 500}, {"drop": True}, {"errcode": 45015}):
            fake.inject(SEND, **fault)  # type: ignore[arg-type]
            with pytest.raises(Exception) as err:
                await api.customer_service_message.send(touser=user, **TEXT)
            assert token not in repr(err.value) and token not in str(err.value)
            assert err.value.__cause__ is None or token not in str(err.value.__cause__)


class TestRetries:
    async def test_sends_are_never_retried_by_the_client(self, api: OpenAPI, fake: FakeWeChat, user: str) -> None:
        fake.inject(SEND, errcode=-1)

        with pytest.raises(WeChatAPIError):
            await api.customer_service_message.send(touser=user, **TEXT)
        fake.inject("/cgi-bin/message/subscribe/send", status=503)
        with pytest.raises(APITransportError):
            await api.subscribe_message.send(touser=user, template_id="T", data={"a": {"value": "b"}})
        fake.inject("/cgi-bin/media/upload", errcode=45011)
        with pytest.raises(WeChatAPIError):
            await api.customer_service_message.upload_temp_media(media=b"\xff\xd8\xff")

        assert len(fake.calls_to(SEND)) == 1
        assert len(fake.calls_to("/cgi-bin/message/subscribe/send")) == 1
        assert len(fake.calls_to("/cgi-bin/media/upload")) == 1

    async def test_idempotent_calls_are_retried_twice(self, api: OpenAPI, fake: FakeWeChat, user: str) -> None:
        fake.inject("/cgi-bin/message/custom/typing", errcode=-1, times=2)

        await api.customer_service_message.set_typing(touser=user, command="Typing")

        assert [c.errcode for c in fake.calls_to("/cgi-bin/message/custom/typing")] == [-1, -1, 0]

    async def test_idempotent_calls_give_up_after_two_retries(self, api: OpenAPI, fake: FakeWeChat) -> None:
        media_id = fake.add_media(b"img")
        fake.inject("/cgi-bin/media/get", status=500, times=3)

        with pytest.raises(APITransportError):
            await api.customer_service_message.get_temp_media(media_id=media_id)
        assert len(fake.calls_to("/cgi-bin/media/get")) == 3

    async def test_permanent_errors_are_not_retried_even_when_idempotent(self, api: OpenAPI,
                                                                         fake: FakeWeChat) -> None:
        with pytest.raises(WeChatAPIError):
            await api.open_data.get(cloudid_list=["unknown"])
        assert len(fake.calls_to("/wxa/getopendata")) == 1


class TestRedaction:
    def test_redact_url_hides_token_secret_and_login_code(self) -> None:
        url = ("https://api.weixin.qq.com/sns/jscode2session?appid=wx1&secret=S3CRET&js_code=C0DE"
               "&grant_type=authorization_code")
        assert redact_url(url) == ("https://api.weixin.qq.com/sns/jscode2session?appid=wx1&secret=***"
                                   "&js_code=***&grant_type=authorization_code")
        assert redact_url("https://x/cgi-bin/media/get?access_token=TOKEN&media_id=M") == (
            "https://x/cgi-bin/media/get?access_token=***&media_id=M")
        assert redact_url("https://x/a?ACCESS_TOKEN=t#frag") == "https://x/a?ACCESS_TOKEN=***#frag"
        assert redact_url("https://x/a?my_access_token_id=1") == "https://x/a?my_access_token_id=1"

    def test_redact_url_accepts_yarl_urls(self) -> None:
        from yarl import URL

        assert redact_url(URL("https://x/a").with_query(access_token="T0K3N")) == "https://x/a?access_token=***"


class TestRateLimitAndWiring:
    async def test_each_app_has_a_limiter_at_the_configured_rate(self, fake: FakeWeChat, make_api: MakeAPI) -> None:
        api = await make_api(fake, api_rate_per_second=5.0)

        assert api.limiter is not None
        assert api.limiter.max_rate == 5.0 and api.limiter.time_period == 1.0

    async def test_calls_beyond_the_rate_wait(self, open_fake: FakeWeChat, make_api: MakeAPI) -> None:
        api = await make_api(open_fake, api_rate_per_second=10.0)
        await api.tokens.get()

        started = time.monotonic()
        await asyncio.gather(*(api.customer_service_message.send(touser=f"o{i}", **TEXT) for i in range(20)))

        assert time.monotonic() - started >= 0.8  # 10 burst, then 10 more at 10/s

    async def test_slow_rates_and_no_limit(self, fake: FakeWeChat, make_api: MakeAPI) -> None:
        slow = await make_api(fake, api_rate_per_second=0.5)
        assert slow.limiter is not None and (slow.limiter.max_rate, slow.limiter.time_period) == (1, 2.0)
        assert (await make_api(fake, api_rate_per_second=0)).limiter is None

    async def test_timeout_comes_from_settings(self, fake: FakeWeChat, make_api: MakeAPI) -> None:
        api = await make_api(fake, api_timeout=7.5)
        assert api.transport.timeout == 7.5

    async def test_registry_makes_one_client_per_app_lazily(self, fake: FakeWeChat, sessionmaker) -> None:  # type: ignore[no-untyped-def]
        settings = make_settings(fake, "sqlite+aiosqlite:///unused.db")
        registry = OpenAPIRegistry(settings, sessionmaker, clock=fake.now)
        try:
            api = registry.get("default")
            assert registry.get("default") is api
            assert api.app.appid == APPID and api.base_url == fake.base_url
            assert {api.customer_service_message, api.subscribe_message, api.template_message,
                    api.auth, api.open_data}
            fake.user_message(APPID, "oREG")
            await api.customer_service_message.send(touser="oREG", **TEXT)
            with pytest.raises(KeyError, match="no app named 'nope'"):
                registry.get("nope")
        finally:
            await registry.close()
        with pytest.raises(RuntimeError):
            api.transport.session()

    def test_secret_is_not_in_the_clients_repr(self, api: OpenAPI) -> None:
        assert SECRET not in repr(api)


class TestWrittenOrNot:
    """A send either never left (safe to resend) or was written and its answer lost (in doubt)."""

    async def test_read_timeout_after_the_request_was_written_is_answer_lost(
            self, fake: FakeWeChat, make_api: MakeAPI, user: str) -> None:
        from csbot.openapi import AnswerLost

        api = await make_api(fake, api_timeout=0.3)
        await api.tokens.get()
        fake.inject(SEND, delay=2.0, after_processing=True)
        with pytest.raises(AnswerLost) as err:
            await api.customer_service_message.send(touser=user, **TEXT)
        assert err.value.maybe_delivered and "after the request was sent" in str(err.value)
        assert len(fake.sent_to(user)) == 1

    async def test_a_5xx_from_a_proxy_is_answer_lost(self, api: OpenAPI, fake: FakeWeChat, user: str) -> None:
        from csbot.openapi import AnswerLost

        fake.inject(SEND, status=504)
        with pytest.raises(AnswerLost):
            await api.customer_service_message.send(touser=user, **TEXT)

    async def test_connection_refused_and_dns_failures_are_request_not_sent(
            self, fake: FakeWeChat, make_api: MakeAPI) -> None:
        from csbot.openapi import RequestNotSent

        api = await make_api(fake)
        await api.tokens.get()
        for base in ("http://127.0.0.1:9", "http://no-such-host.invalid"):
            api.base_url = base
            with pytest.raises(RequestNotSent) as err:
                await api.customer_service_message.send(touser="o", **TEXT)
            assert err.value.transient and not err.value.maybe_delivered
