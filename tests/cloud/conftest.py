"""Fixtures: a Storage on a migrated store (SQLite, and PostgreSQL when configured); a running
csbot (real HTTP on loopback) with a FakeWeChat, and a mini-program user."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import aiohttp
import pytest
import pytest_asyncio

from csbot.cloud.storage import LocalBackend, Storage
from csbot.store.engine import make_engine, make_sessionmaker
from csbot.store.migrate import upgrade_async
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


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path) -> str:
    """An empty store of each kind (PostgreSQL: skipped without CSBOT_TEST_DATABASE_URL)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'csbot.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def storage(store_url: str, tmp_path: Path):
    await upgrade_async(store_url)
    engine = make_engine(store_url)
    store = Storage(make_sessionmaker(engine), LocalBackend(tmp_path / "storage"), signing_key=b"k" * 32,
                    max_file_size=1024 * 1024, public_url="https://csbot.example", apps=["default", "shop"])
    yield store
    await engine.dispose()


def blobs(storage: Storage) -> list[Path]:
    """Every file the backend holds (finished blobs and leftovers alike)."""
    root = storage.backend.root  # type: ignore[attr-defined]
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
