"""On PostgreSQL the token fetch lease (csbot.store.leases) keeps separate processes to one fetch.

Runs only when CSBOT_TEST_DATABASE_URL points at a PostgreSQL server, e.g.
``postgresql+asyncpg://postgres@127.0.0.1:5432/test``; each test creates its own database
there (csbot_t_<random>) and drops it afterwards.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from sqlalchemy import select
from sqlalchemy.engine import make_url

from csbot.openapi import OpenAPI
from csbot.store.migrate import upgrade_async
from csbot.store.models import AccessToken
from csbot.testing.fake_wechat import FakeWeChat

from .conftest import MakeAPI

TEXT = {"msgtype": "text", "text": {"content": "hi"}}
ENV = "CSBOT_TEST_DATABASE_URL"


@pytest_asyncio.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh, migrated PostgreSQL database of this test's own."""
    base = os.environ.get(ENV)
    if not base:
        pytest.skip(f"{ENV} is not set (e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test)")
    asyncpg = pytest.importorskip("asyncpg")
    admin_dsn = make_url(base).set(drivername="postgresql").render_as_string(hide_password=False)
    name = f"csbot_t_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = make_url(base).set(drivername="postgresql+asyncpg", database=name).render_as_string(hide_password=False)
    try:
        await upgrade_async(url)
        yield url
    finally:
        admin = await asyncpg.connect(admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


async def test_two_instances_share_one_token(fake: FakeWeChat, make_api: MakeAPI, pg_url: str, user: str) -> None:
    first, second = await make_api(fake, url=pg_url), await make_api(fake, url=pg_url)

    await first.customer_service_message.send(touser=user, **TEXT)
    await second.customer_service_message.send(touser=user, **TEXT)

    assert second.tokens.fetches == 0
    assert fake.token_fetches() == 1
    async with first.sessionmaker() as s:
        row = (await s.execute(select(AccessToken))).scalar_one()
    assert row.token == await second.tokens.get()


async def test_concurrent_refresh_by_two_processes_fetches_once(fake: FakeWeChat, make_api: MakeAPI,
                                                                pg_url: str) -> None:
    """Plain tokens: a second fetch would invalidate the first, so exactly one must happen."""
    first = await make_api(fake, url=pg_url, token_source="plain", instance_id="proc-1")
    second = await make_api(fake, url=pg_url, token_source="plain", instance_id="proc-2")
    fake.latency = 0.05
    assert first.tokens.lock_kind.startswith("lease token:")

    tokens = await asyncio.gather(*(api.tokens.get() for api in (first, second) for _ in range(20)))

    assert len(set(tokens)) == 1
    assert fake.token_fetches() == 1
    assert first.tokens.fetches + second.tokens.fetches == 1


async def test_refresh_at_expiry_by_two_processes_fetches_once(open_fake: FakeWeChat, make_api: MakeAPI,
                                                               pg_url: str) -> None:
    fake = open_fake
    first = await make_api(fake, url=pg_url, token_source="plain")
    second = await make_api(fake, url=pg_url, token_source="plain")
    await first.tokens.get()
    await second.tokens.get()
    fake.advance(7200)
    fake.latency = 0.02

    await asyncio.gather(*(
        api.customer_service_message.send(touser=f"o{i}", **TEXT)
        for i in range(50) for api in (first, second)
    ))

    assert len(fake.sent) == 100
    assert fake.token_fetches() == 2  # the first token and one refresh
    assert [c.errcode for c in fake.calls_to("/cgi-bin/message/custom/send")].count(40001) == 0


async def test_token_refused_in_one_process_is_replaced_once_for_both(open_fake: FakeWeChat, make_api: MakeAPI,
                                                                      pg_url: str) -> None:
    fake = open_fake
    apis: list[OpenAPI] = [await make_api(fake, url=pg_url) for _ in range(2)]
    await asyncio.gather(*(api.tokens.get() for api in apis))
    fake.expire_tokens()

    await asyncio.gather(*(
        api.customer_service_message.send(touser=f"o{i}", **TEXT) for i in range(30) for api in apis
    ))

    assert len(fake.sent) == 60
    assert fake.token_fetches() == 2
    assert sum(api.tokens.fetches for api in apis) == 2
