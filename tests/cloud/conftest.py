"""Fixtures: a running csbot (real HTTP on loopback) with a FakeWeChat, and a mini-program user.

(The storage tests' fixtures are in ``storage_fixtures``.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from csbot.testing.fake_wechat import FakeWeChat
from csbot.testing.harness import TEST_APPID, TEST_SECRET, Harness

HERE = Path(__file__).parent
FUNCTIONS_DIR = HERE / "functions"


class MiniProgram:
    """A mini program's user: logs in through the fake's wx.login codes and calls /cloud."""

    def __init__(self, bot: Harness, openid: str, unionid: str | None = None) -> None:
        self.bot = bot
        self.openid = openid
        self.unionid = unionid
        self.token: str | None = None

    async def login(self, **extra: Any) -> aiohttp.ClientResponse:
        code = self.bot.fake.issue_login_code(TEST_APPID, self.openid, unionid=self.unionid)
        resp = await self.bot.session.post(f"{self.bot.url}/cloud/login", json={"code": code, **extra})
        if resp.status == 200:
            self.token = (await resp.json())["token"]
        return resp

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def call(self, name: str, data: Any = None, *, body: Any = ..., **kwargs: Any) -> aiohttp.ClientResponse:
        payload = {"data": data if data is not None else {}} if body is ... else body
        if isinstance(payload, (bytes, str)):
            kwargs["data"] = payload
        else:
            kwargs["json"] = payload
        return await self.bot.session.post(f"{self.bot.url}/cloud/functions/{name}",
                                           headers={**self.headers(), **kwargs.pop("headers", {})}, **kwargs)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeWeChat]:
    f = FakeWeChat(apps={TEST_APPID: TEST_SECRET})
    await f.start()
    try:
        yield f
    finally:
        await f.close()


@pytest.fixture
def handlers_dir() -> Path:
    """The handlers directory of the service under test (override per module)."""
    return FUNCTIONS_DIR


@pytest_asyncio.fixture
async def bot(fake: FakeWeChat, handlers_dir: Path) -> AsyncIterator[Harness]:
    async with Harness.start(handlers_dir=handlers_dir, fake=fake) as harness:
        yield harness


@pytest_asyncio.fixture
async def user(bot: Harness) -> MiniProgram:
    """A user of the mini program, logged in."""
    mp = MiniProgram(bot, "oCloudUser0001", unionid="uUnion0001")
    resp = await mp.login()
    assert resp.status == 200, await resp.text()
    return mp
