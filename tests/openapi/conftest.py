"""Fixtures: a FakeWeChat over real HTTP, a migrated temp SQLite store, OpenAPI clients.

The fake's clock is frozen and only ``fake.advance()`` moves it; every OpenAPI here uses
``clock=fake.now`` so token and media expiry follow the same fake time.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from csbot.config import AppConfig, Settings
from csbot.openapi import OpenAPI
from csbot.store.engine import make_engine, make_sessionmaker
from csbot.store.migrate import upgrade_async
from csbot.testing.fake_wechat import FakeWeChat

APPID = "wxcsbotopenapi01"
SECRET = "s3cret-app-secret-value"
USER = "oUSER-openapi-0001"
T0 = 1_700_000_000.0

Sessionmaker = async_sessionmaker[AsyncSession]


def make_settings(fake: FakeWeChat, database_url: str, **overrides: Any) -> Settings:
    app = AppConfig(name="default", appid=APPID, secret=SECRET, token="push-token")
    values: dict[str, Any] = {
        "apps": {"default": app},
        "database_url": database_url,
        "wechat_api_base": fake.base_url,
        "api_rate_per_second": 10_000.0,
        "api_timeout": 5.0,
    }
    values.update(overrides)
    return Settings(**values)


async def start_fake(**kwargs: Any) -> FakeWeChat:
    fake = FakeWeChat(apps={APPID: SECRET}, **kwargs)
    fake.clock = lambda: T0  # frozen: only fake.advance() moves time
    await fake.start()
    return fake


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    """WeChat with the reply window enforced, as in production."""
    f = await start_fake(enforce_reply_window=True)
    try:
        yield f
    finally:
        await f.close()


@pytest_asyncio.fixture
async def open_fake() -> AsyncIterator[FakeWeChat]:
    """WeChat without the reply window, for bulk-send scenarios."""
    f = await start_fake(enforce_reply_window=False)
    try:
        yield f
    finally:
        await f.close()


@pytest_asyncio.fixture
async def database_url(tmp_path: Path) -> str:
    url = f"sqlite+aiosqlite:///{tmp_path / 'csbot.db'}"
    await upgrade_async(url)
    return url


@pytest_asyncio.fixture
async def sessionmaker(database_url: str) -> AsyncIterator[Sessionmaker]:
    engine = make_engine(database_url)
    try:
        yield make_sessionmaker(engine)
    finally:
        await engine.dispose()


MakeAPI = Callable[..., Awaitable[OpenAPI]]


@pytest_asyncio.fixture
async def make_api(database_url: str) -> AsyncIterator[MakeAPI]:
    """``await make_api(fake, **settings_overrides)``: an OpenAPI on its own engine.

    Each call gets a separate engine, like a separate process of one deployment.
    """
    made: list[Any] = []

    async def factory(fake: FakeWeChat, *, url: str | None = None, instance_id: str | None = None,
                      **overrides: Any) -> OpenAPI:
        db = url or database_url
        engine = make_engine(db)
        settings = make_settings(fake, db, **overrides)
        api = OpenAPI(settings.apps["default"], settings, make_sessionmaker(engine),
                      instance_id=instance_id, clock=fake.now)
        made.append((api, engine))
        return api

    try:
        yield factory
    finally:
        for api, engine in made:
            await api.close()
            await engine.dispose()


@pytest_asyncio.fixture
async def api(fake: FakeWeChat, make_api: MakeAPI) -> OpenAPI:
    return await make_api(fake)


@pytest.fixture
def user(fake: FakeWeChat) -> str:
    """A user who just wrote to the app: the reply window is open."""
    fake.user_message(APPID, USER)
    return USER
