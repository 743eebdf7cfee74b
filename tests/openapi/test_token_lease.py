"""The token fetch runs under the shared lease of csbot.store.leases, on SQLite and PostgreSQL.

Two managers on one store (separate engines, or separate processes) never fetch at the same
time; a fetcher cancelled mid-fetch gives the lease back at once, one killed mid-fetch leaves a
lease that runs out by the database's clock; and a holder that stalled past its lease cannot
write its token over the one fetched by the process that took over.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import select

from csbot.openapi import OpenAPI
from csbot.openapi.tokens import TokenManager
from csbot.store.migrate import upgrade_async
from csbot.store.models import AccessToken, NamedLeaseRow
from csbot.testing.fake_wechat import FakeWeChat

from .conftest import APPID, SECRET, MakeAPI

LEASE = "token:default"


@pytest_asyncio.fixture(params=["sqlite", "postgresql"])
async def store_url(request: Any, tmp_path: Path) -> AsyncIterator[str]:
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'tokens.db'}"
        await upgrade_async(url)
        yield url
        return
    from tests.conftest import create_test_database

    url, drop = await create_test_database()
    try:
        await upgrade_async(url)
        yield url
    finally:
        await drop()  # type: ignore[operator]


async def lease_row(api: OpenAPI) -> NamedLeaseRow:
    async with api.sessionmaker() as s:
        return (await s.execute(select(NamedLeaseRow).where(NamedLeaseRow.name == LEASE))).scalar_one()


async def stored(api: OpenAPI) -> str | None:
    async with api.sessionmaker() as s:
        return (await s.execute(select(AccessToken.token).where(AccessToken.app == "default"))).scalar_one()


@pytest.fixture
def in_flight(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts token requests in flight across every manager of this process (and the most at once)."""
    seen = {"now": 0, "most": 0}
    real = TokenManager._fetch_once

    async def counted(self: TokenManager, *, force: bool) -> tuple[str, float]:
        seen["now"] += 1
        seen["most"] = max(seen["most"], seen["now"])
        try:
            return await real(self, force=force)
        finally:
            seen["now"] -= 1

    monkeypatch.setattr(TokenManager, "_fetch_once", counted)
    return seen


async def test_two_managers_on_one_store_never_fetch_at_the_same_time(
        fake: FakeWeChat, make_api: MakeAPI, store_url: str, in_flight: dict[str, int]) -> None:
    first = await make_api(fake, url=store_url, token_source="plain", instance_id="proc-1")
    second = await make_api(fake, url=store_url, token_source="plain", instance_id="proc-2")
    fake.latency = 0.05  # a slow token endpoint widens the race
    for _ in range(3):  # three refresh rounds, each raced by 20 callers in each manager
        tokens = await asyncio.gather(*(api.tokens.get() for api in (first, second) for _ in range(20)))
        assert len(set(tokens)) == 1
        fake.advance(7200)

    assert in_flight["most"] == 1
    assert fake.token_fetches() == 3
    row = await lease_row(first)
    assert row.owner is None and row.fence == 3  # taken once per refresh (only by the fetcher), given back


async def test_two_managers_of_one_process_do_not_share_a_lease(
        fake: FakeWeChat, make_api: MakeAPI, store_url: str, in_flight: dict[str, int]) -> None:
    """One instance identity per process, but a lease is one holder: not re-entrant."""
    first = await make_api(fake, url=store_url, token_source="plain", instance_id="same-process")
    second = await make_api(fake, url=store_url, token_source="plain", instance_id="same-process")
    fake.latency = 0.05

    tokens = await asyncio.gather(first.tokens.get(), second.tokens.get())

    assert tokens[0] == tokens[1]
    assert in_flight["most"] == 1 and fake.token_fetches() == 1


async def test_a_fetcher_cancelled_mid_fetch_lets_another_take_over_at_once(
        fake: FakeWeChat, make_api: MakeAPI, store_url: str) -> None:
    first = await make_api(fake, url=store_url, token_source="plain", instance_id="proc-1")
    second = await make_api(fake, url=store_url, token_source="plain", instance_id="proc-2")
    assert first.tokens.lease_seconds >= 30  # an abandoned lease would block the second for that long
    fake.inject("/cgi-bin/token", delay=5)
    stuck = asyncio.create_task(first.tokens.get())
    while not fake.calls_to("/cgi-bin/token"):
        await asyncio.sleep(0.01)

    stuck.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stuck
    started = time.monotonic()
    token = await second.tokens.get()

    assert time.monotonic() - started < 2.0
    assert await stored(second) == token
    row = await lease_row(second)
    assert row.owner is None and row.fence == 2


async def test_a_stale_holder_fenced_out_cannot_write_over_the_newer_token(
        fake: FakeWeChat, make_api: MakeAPI, store_url: str) -> None:
    """The first holder's fetch outlives its lease; the second takes over and writes its token;
    the first's answer then arrives and is not written: both end on the second's token."""
    stale = await make_api(fake, url=store_url, token_source="plain", instance_id="proc-stale")
    newer = await make_api(fake, url=store_url, token_source="plain", instance_id="proc-newer")
    stale.tokens.lease_seconds = 0.6
    fake.inject("/cgi-bin/token", delay=2.5)  # the stale holder's request answers late
    slow = asyncio.create_task(stale.tokens.get())
    while not fake.calls_to("/cgi-bin/token"):
        await asyncio.sleep(0.01)

    taken_over = await newer.tokens.get()  # waits for the stale lease to run out, then fetches
    assert (await lease_row(newer)).fence == 2
    final = await slow

    [late, _] = [c.response["access_token"] for c in fake.calls_to("/cgi-bin/token")]
    assert late != taken_over
    assert await stored(newer) == taken_over  # the late answer was fenced out
    assert final == taken_over  # the stale holder adopted the row's token, not its own
    assert stale.tokens.fetches == 1 and newer.tokens.fetches == 1


async def test_a_fetcher_killed_mid_fetch_lets_another_take_over_after_its_lease_runs_out(
        fake: FakeWeChat, make_api: MakeAPI, store_url: str) -> None:
    """A separate process takes the lease, hangs in the fetch and is SIGKILLed."""
    child_code = textwrap.dedent(f"""
        import asyncio, sys
        from csbot.config import AppConfig, Settings
        from csbot.openapi import OpenAPI
        from csbot.store.engine import make_engine, make_sessionmaker

        async def main(url, base):
            app = AppConfig(name="default", appid={APPID!r}, secret={SECRET!r}, token="push-token")
            settings = Settings(apps={{"default": app}}, database_url=url, wechat_api_base=base,
                                token_source="plain", api_timeout=60.0)
            api = OpenAPI(app, settings, make_sessionmaker(make_engine(url)), instance_id="child-process")
            api.tokens.lease_seconds = 2.0
            await api.tokens.get()

        asyncio.run(main(sys.argv[1], sys.argv[2]))
    """)
    fake.inject("/cgi-bin/token", delay=4)  # the child's fetch hangs
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", child_code, store_url, fake.base_url,
                                                 env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.monotonic() + 30
        while not fake.calls_to("/cgi-bin/token"):
            assert time.monotonic() < deadline and child.returncode is None, "the child never fetched"
            await asyncio.sleep(0.02)
    finally:
        if child.returncode is None:
            child.send_signal(signal.SIGKILL)
        await child.wait()
    survivor = await make_api(fake, url=store_url, token_source="plain", instance_id="survivor")
    held = await lease_row(survivor)
    assert held.owner == "child-process" and held.until is not None
    fetched_at: list[float] = []
    real = survivor.tokens._fetch_once

    async def timed(*, force: bool) -> tuple[str, float]:
        fetched_at.append(time.time())
        return await real(force=force)

    survivor.tokens._fetch_once = timed  # type: ignore[method-assign]

    token = await survivor.tokens.get()

    assert fetched_at and fetched_at[0] >= held.until - 0.05  # not before the dead holder's lease ran out
    assert await stored(survivor) == token
    row = await lease_row(survivor)
    assert row.owner is None and row.fence == 2


async def test_a_restarted_sqlite_csbot_does_not_wait_out_its_dead_predecessors_token_lease(tmp_path: Path) -> None:
    """SQLite serves one process: a token lease found at start is a dead process's, cleared."""
    from sqlalchemy import text

    from csbot.routing import Router
    from csbot.store import make_engine
    from csbot.testing.harness import TEST_APPID, TEST_SECRET, Harness, test_settings

    db = tmp_path / "csbot.db"
    url = f"sqlite+aiosqlite:///{db}"
    await upgrade_async(url)
    engine = make_engine(url)
    async with engine.begin() as conn:  # as a csbot killed during a token fetch left it
        await conn.execute(text("INSERT INTO leases (name, owner, until, fence) "
                                "VALUES ('token:default', 'host:1:dead', :until, 4)"), {"until": time.time() + 600})
    await engine.dispose()

    wechat = FakeWeChat(apps={TEST_APPID: TEST_SECRET})
    await wechat.start()
    try:
        async with Harness.start(router=Router([]), fake=wechat, settings=test_settings(db, wechat.base_url)) as bot:
            started = time.monotonic()
            await bot.services.openapi.get("default").tokens.get()
            assert time.monotonic() - started < 5
            async with bot.services.engine.connect() as conn:
                owner, fence = (await conn.execute(text("SELECT owner, fence FROM leases"))).one()
            assert owner is None and fence == 5  # cleared at start, then taken (and given back) once
    finally:
        await wechat.close()
