"""Access tokens: shared through SQL, refreshed ahead of expiry, one fetch at a time, one retry.

The failure modes these guard against are the peers' bugs: processes that invalidate each
other's tokens (silenceper#516, WxJava#2998) and 40001 refresh loops (wechatpy#629,
WxJava#1481).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import web
from sqlalchemy import select

from csbot.openapi import OpenAPI, WeChatAPIError
from csbot.openapi.tokens import FORCE_MIN_INTERVAL, TokenState
from csbot.store.models import AccessToken, NamedLeaseRow
from csbot.testing.fake_wechat import FakeWeChat

from .conftest import APPID, SECRET, MakeAPI

TEXT = {"msgtype": "text", "text": {"content": "hi"}}


async def fetch_lease(api: OpenAPI) -> tuple[str | None, float | None, int]:
    """(owner, until, fence) of the app's token fetch lease."""
    async with api.sessionmaker() as s:
        row = (await s.execute(select(NamedLeaseRow).where(NamedLeaseRow.name == "token:default"))).scalar_one()
    return row.owner, row.until, row.fence


async def stored_token(api: OpenAPI) -> AccessToken | None:
    async with api.sessionmaker() as s:
        return (await s.execute(select(AccessToken).where(AccessToken.app == "default"))).scalar_one_or_none()


class TestCaching:
    async def test_stable_token_is_the_default_and_is_stored_in_sql(self, api: OpenAPI, fake: FakeWeChat) -> None:
        token = await api.tokens.get()

        [fetch] = fake.calls_to("/cgi-bin/stable_token")
        assert fetch.json == {"grant_type": "client_credential", "appid": APPID, "secret": SECRET,
                              "force_refresh": False}
        row = await stored_token(api)
        assert row is not None and row.token == token
        assert row.expires_at == pytest.approx(fake.now() + 7200, abs=2)
        assert (await fetch_lease(api))[0] is None

    async def test_token_is_fetched_once_for_many_calls(self, api: OpenAPI, fake: FakeWeChat, user: str) -> None:
        for _ in range(3):
            await api.customer_service_message.send(touser=user, **TEXT)

        assert fake.token_fetches() == 1
        assert api.tokens.fetches == 1

    async def test_two_instances_on_one_database_share_the_token(self, fake: FakeWeChat, make_api: MakeAPI,
                                                                 user: str) -> None:
        first, second = await make_api(fake), await make_api(fake)

        await first.customer_service_message.send(touser=user, **TEXT)
        await second.customer_service_message.send(touser=user, **TEXT)

        assert await first.tokens.get() == await second.tokens.get()
        assert second.tokens.fetches == 0
        assert len(fake.calls_to("/cgi-bin/stable_token")) == 1

    async def test_token_is_refreshed_ahead_of_expiry(self, api: OpenAPI, fake: FakeWeChat, user: str) -> None:
        old = await api.tokens.get()

        fake.advance(7200 - 400)  # 400 s left: still used
        assert await api.tokens.get() == old
        fake.advance(200)  # 200 s left: inside the 5-minute margin, refreshed before use

        await api.customer_service_message.send(touser=user, **TEXT)

        assert api.tokens.fetches == 2
        assert fake.token_fetches() == 2
        assert (await api.tokens.get()) != old
        assert fake.calls_to("/cgi-bin/message/custom/send")[0].errcode == 0  # no 42001 round trip

    async def test_the_refresh_margin_is_5_minutes_or_10_percent_of_a_short_life(self) -> None:
        assert TokenState("t", 7200.0, 0.0).refresh_at() == 6900.0
        assert TokenState("t", 1000.0, 0.0).refresh_at() == 900.0

    async def test_refresh_waits_for_nobody_when_the_row_was_refreshed_by_another_process(
        self, fake: FakeWeChat, make_api: MakeAPI
    ) -> None:
        first, second = await make_api(fake), await make_api(fake)
        await first.tokens.get()
        await second.tokens.get()
        fake.advance(7200 - 100)

        fresh = await first.tokens.get()  # first refreshes the shared row
        assert await second.tokens.get() == fresh  # second re-reads it instead of fetching
        assert (first.tokens.fetches, second.tokens.fetches) == (2, 0)


class TestTokenErrors:
    async def test_expired_token_is_refetched_once_and_the_call_retried(self, api: OpenAPI, fake: FakeWeChat,
                                                                        user: str) -> None:
        old = await api.tokens.get()
        fake.expire_tokens()  # WeChat answers 42001, our clock still thinks the token is fine

        await api.customer_service_message.send(touser=user, **TEXT)

        sends = fake.calls_to("/cgi-bin/message/custom/send")
        assert [c.errcode for c in sends] == [42001, 0]
        assert sends[1].query["access_token"] != old
        assert fake.token_fetches() == 2
        assert len(fake.sent_to(user)) == 1

    async def test_plain_token_rotated_by_someone_else_gives_one_refetch(self, fake: FakeWeChat,
                                                                         make_api: MakeAPI, user: str) -> None:
        api = await make_api(fake, token_source="plain")
        await api.tokens.get()
        # Another deployment calls cgi-bin/token: ours answers 40001 from now on.
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{fake.base_url}/cgi-bin/token",
                                params={"grant_type": "client_credential", "appid": APPID, "secret": SECRET}):
                pass

        await api.customer_service_message.send(touser=user, **TEXT)

        assert [c.errcode for c in fake.calls_to("/cgi-bin/message/custom/send")] == [40001, 0]
        assert api.tokens.fetches == 2

    async def test_a_new_token_failing_the_same_way_is_raised_not_looped(self, api: OpenAPI, fake: FakeWeChat,
                                                                         user: str) -> None:
        await api.tokens.get()
        fake.inject("/cgi-bin/message/custom/send", errcode=40001, times=5)

        with pytest.raises(WeChatAPIError) as err:
            await api.customer_service_message.send(touser=user, **TEXT)

        assert err.value.errcode == 40001
        assert len(fake.calls_to("/cgi-bin/message/custom/send")) == 2  # the call and one retry
        assert fake.sent == []

    async def test_stable_token_is_forced_only_when_wechat_keeps_handing_back_the_refused_token(
        self, api: OpenAPI, fake: FakeWeChat, user: str
    ) -> None:
        """stable_token (normal mode) returns the token just refused → one force_refresh."""
        refused = await api.tokens.get()
        fake.inject("/cgi-bin/message/custom/send", errcode=40001)

        await api.customer_service_message.send(touser=user, **TEXT)

        fetches = [c.json["force_refresh"] for c in fake.calls_to("/cgi-bin/stable_token")]
        assert fetches == [False, False, True]
        assert api.tokens.forced_fetches == 1
        assert await api.tokens.get() != refused
        assert len(fake.sent_to(user)) == 1

    async def test_forcing_is_rate_limited(self, api: OpenAPI, fake: FakeWeChat, user: str) -> None:
        await api.tokens.get()
        fake.inject("/cgi-bin/message/custom/send", errcode=40001)
        await api.customer_service_message.send(touser=user, **TEXT)
        assert api.tokens.forced_fetches == 1

        fake.inject("/cgi-bin/message/custom/send", errcode=40001, times=2)
        with pytest.raises(WeChatAPIError):
            await api.customer_service_message.send(touser=user, **TEXT)
        assert api.tokens.forced_fetches == 1  # not again within FORCE_MIN_INTERVAL
        assert FORCE_MIN_INTERVAL >= 30

    async def test_a_token_refused_by_another_process_is_not_refetched_when_the_row_already_moved_on(
        self, fake: FakeWeChat, make_api: MakeAPI, user: str
    ) -> None:
        first, second = await make_api(fake, token_source="plain"), await make_api(fake, token_source="plain")
        old = await first.tokens.get()
        assert await second.tokens.get() == old

        await first.tokens.invalidate(old)
        new = await first.tokens.get()  # first fetches; WeChat now rejects `old`

        await second.customer_service_message.send(touser=user, **TEXT)  # 40001 with `old`, then `new`

        assert second.tokens.fetches == 0
        assert [c.query["access_token"] for c in fake.calls_to("/cgi-bin/message/custom/send")] == [old, new]
        assert fake.token_fetches() == 2

    async def test_invalidating_a_token_that_is_no_longer_cached_changes_nothing(self, api: OpenAPI,
                                                                                 fake: FakeWeChat) -> None:
        token = await api.tokens.get()

        await api.tokens.invalidate("some-older-token")

        assert await api.tokens.get() == token
        assert api.tokens.fetches == 1

    async def test_bad_secret_is_raised_and_not_hammered(self, fake: FakeWeChat, make_api: MakeAPI) -> None:
        from csbot.config import AppConfig

        api = await make_api(fake)
        api.tokens.app = AppConfig(name="default", appid=APPID, secret="wrong", token="t")

        for _ in range(3):
            with pytest.raises(WeChatAPIError) as err:
                await api.tokens.get()
            assert err.value.errcode == 40125
        assert len(fake.calls_to("/cgi-bin/stable_token")) == 1

    async def test_token_fetch_is_retried_when_wechat_is_busy(self, api: OpenAPI, fake: FakeWeChat) -> None:
        fake.inject("/cgi-bin/stable_token", errcode=-1)

        assert await api.tokens.get()
        assert len(fake.calls_to("/cgi-bin/stable_token")) == 2


class TestConcurrency:
    async def test_200_concurrent_sends_at_expiry_make_one_fetch_and_all_deliver(
        self, open_fake: FakeWeChat, make_api: MakeAPI
    ) -> None:
        fake = open_fake
        api = await make_api(fake)
        await api.tokens.get()
        fake.advance(7200)  # the token is due by our clock too

        results = await asyncio.gather(*(
            api.customer_service_message.send(touser=f"oUSER{i:03}", **TEXT) for i in range(200)
        ))

        assert all(r["errcode"] == 0 for r in results)
        assert len(fake.sent) == 200
        assert fake.token_fetches() == 2  # the first token and exactly one refresh
        assert api.tokens.fetches == 2

    async def test_200_concurrent_sends_refused_at_once_make_one_fetch(self, open_fake: FakeWeChat,
                                                                       make_api: MakeAPI) -> None:
        fake = open_fake
        api = await make_api(fake)
        await api.tokens.get()
        fake.expire_tokens()  # WeChat refuses (42001) while our clock says the token is fine

        await asyncio.gather(*(
            api.customer_service_message.send(touser=f"oUSER{i:03}", **TEXT) for i in range(200)
        ))

        assert len(fake.sent) == 200
        assert fake.token_fetches() == 2
        assert api.tokens.fetches == 2

    async def test_two_processes_refreshing_at_once_fetch_once(self, fake: FakeWeChat, make_api: MakeAPI) -> None:
        """SQLite: the token fetch lease serialises separate engines."""
        first = await make_api(fake, token_source="plain", instance_id="proc-1")
        second = await make_api(fake, token_source="plain", instance_id="proc-2")
        fake.latency = 0.05  # a slow token endpoint widens the race
        assert first.tokens.lock_kind.startswith("lease token:")

        tokens = await asyncio.gather(*(api.tokens.get() for api in (first, second) for _ in range(20)))

        assert len(set(tokens)) == 1
        assert fake.token_fetches() == 1
        assert first.tokens.fetches + second.tokens.fetches == 1
        assert (await fetch_lease(first))[0] is None


async def hold_lease(api: OpenAPI, owner: str, until: float) -> None:
    """Pretend another process holds the token fetch lease."""
    from sqlalchemy import update

    async with api.sessionmaker() as s, s.begin():
        await s.execute(update(NamedLeaseRow).where(NamedLeaseRow.name == "token:default")
                        .values(owner=owner, until=until, fence=NamedLeaseRow.fence + 1))


class TestFetchLease:
    async def test_while_another_process_refreshes_the_still_valid_token_is_used(
        self, api: OpenAPI, fake: FakeWeChat
    ) -> None:
        old = await api.tokens.get()
        fake.advance(7200 - 100)  # due for refresh, but still valid for 100 s
        await hold_lease(api, "other-process", time.time() + 60)

        assert await api.tokens.get() == old
        assert api.tokens.fetches == 1

    async def test_a_lease_left_by_a_dead_process_is_taken_over(self, api: OpenAPI, fake: FakeWeChat) -> None:
        old = await api.tokens.get()
        fake.advance(7200)
        await hold_lease(api, "crashed-process", time.time() - 1)

        assert await api.tokens.get() != old
        assert api.tokens.fetches == 2
        assert (await fetch_lease(api))[0] is None


class TestTokenSources:
    async def test_plain_source_uses_cgi_bin_token(self, fake: FakeWeChat, make_api: MakeAPI, user: str) -> None:
        api = await make_api(fake, token_source="plain")

        await api.customer_service_message.send(touser=user, **TEXT)

        [fetch] = fake.calls_to("/cgi-bin/token")
        assert fetch.query == {"grant_type": "client_credential", "appid": APPID, "secret": SECRET}
        assert fake.calls_to("/cgi-bin/stable_token") == []
        assert fake.token_fetches(kind="plain") == 1

    async def test_url_source_asks_the_operators_token_service(self, fake: FakeWeChat, make_api: MakeAPI,
                                                               token_service: TokenService, user: str) -> None:
        api = await make_api(fake, token_source=token_service.url)

        await api.customer_service_message.send(touser=user, **TEXT)

        assert token_service.asked == [APPID]
        assert fake.calls_to("/cgi-bin/stable_token") and len(fake.sent_to(user)) == 1
        assert api.tokens.fetches == 1

    async def test_url_source_returning_the_refused_token_is_not_looped(
        self, fake: FakeWeChat, make_api: MakeAPI, token_service: TokenService, user: str
    ) -> None:
        api = await make_api(fake, token_source=token_service.url)
        await api.tokens.get()
        fake.inject("/cgi-bin/message/custom/send", errcode=40001)

        with pytest.raises(WeChatAPIError):
            await api.customer_service_message.send(touser=user, **TEXT)

        assert len(fake.calls_to("/cgi-bin/message/custom/send")) == 1
        assert token_service.asked == [APPID, APPID]


class TestSecrecy:
    async def test_no_token_or_secret_reaches_the_log(self, api: OpenAPI, fake: FakeWeChat, user: str,
                                                      caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG, logger="csbot")
        await api.customer_service_message.send(touser=user, **TEXT)
        token = await api.tokens.get()
        fake.expire_tokens()
        fake.inject("/cgi-bin/message/custom/send", status=502)
        with pytest.raises(Exception):
            await api.customer_service_message.send(touser=user, **TEXT)
        await api.customer_service_message.send(touser=user, **TEXT)

        ours = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("csbot"))
        assert "access_token=***" in ours and "refused token" in ours
        assert token not in ours
        assert SECRET not in ours


class TokenService:
    """An operator's token service (not WeChat): GET ?appid= → {access_token, expires_in}."""

    def __init__(self, fake: FakeWeChat) -> None:
        self.fake = fake
        self.asked: list[str] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        appid = request.query["appid"]
        self.asked.append(appid)
        body = {"grant_type": "client_credential", "appid": appid, "secret": SECRET}
        async with aiohttp.ClientSession() as http:
            async with http.post(f"{self.fake.base_url}/cgi-bin/stable_token", json=body) as r:
                answer: dict[str, Any] = await r.json()
        return web.json_response({"access_token": answer["access_token"], "expires_in": answer["expires_in"]})


@pytest_asyncio.fixture
async def token_service(fake: FakeWeChat) -> AsyncIterator[TokenService]:
    service = TokenService(fake)
    app = web.Application()
    app.router.add_get("/token", service.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    service.url = f"http://127.0.0.1:{port}/token"
    try:
        yield service
    finally:
        await runner.cleanup()



