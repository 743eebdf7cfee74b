"""A running csbot wired to a FakeWeChat over real HTTP on loopback, for tests.

    async with Harness.start(handlers_dir="handlers") as bot:
        await bot.send_text("oUser1", "退货")
        await bot.wait_idle()
        assert bot.replies_to("oUser1") == ["7 天内可无理由退货…"]

The harness plays the customer: each push it sends is signed (and encrypted) like WeChat's,
and it tells the fake that the user acted, so WeChat's reply window is open as in real life.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator, Mapping

import aiohttp
from aiohttp import web
from sqlalchemy import func, select

from csbot.app import create_app, services_of
from csbot.config import AppConfig, Settings
from csbot.routing import Router
from csbot.server import Runner, start_site
from csbot.statuses import INBOUND_UNSETTLED, OUTBOUND_UNSETTLED
from csbot.store import Message
from csbot.testing.fake_wechat import FakeWeChat
from csbot.testing.pushes import PushBuilder, SignedPush

TEST_APPID = "wx0123456789abcdef"
TEST_SECRET = "test-app-secret"
TEST_TOKEN = "csbotTestToken"
TEST_AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"


def test_app(**changes: Any) -> AppConfig:
    """The test app ``default`` (safe mode capable), with ``changes``."""
    app = AppConfig(name="default", appid=TEST_APPID, secret=TEST_SECRET, token=TEST_TOKEN,
                    encoding_aes_key=TEST_AES_KEY)
    return replace(app, **changes)


def test_settings(db_path: str | Path, api_base: str, **overrides: Any) -> Settings:
    """Settings for the test app on a SQLite file, talking to ``api_base``."""
    base = Settings(apps={"default": test_app()}, database_url=f"sqlite+aiosqlite:///{db_path}",
                    wechat_api_base=api_base, handlers_dir=Path("handlers"), host="127.0.0.1", port=0,
                    retry_base_delay=0.05, lease_seconds=5.0, data_dir=Path(db_path).parent / "data")
    return replace(base, **overrides)


class Harness:
    def __init__(self, settings: Settings, fake: FakeWeChat, runner: web.AppRunner, url: str,
                 app: web.Application, *, mode: str | None = None, fmt: str = "xml") -> None:
        self.settings = settings
        self.fake = fake
        self.runner = runner
        self.url = url
        self.app = app
        self.session = aiohttp.ClientSession()
        self.builders = {name: PushBuilder.for_app(cfg, mode=mode, fmt=fmt)
                         for name, cfg in settings.apps.items()}

    @property
    def builder(self) -> PushBuilder:
        return self.builders["default"]

    @property
    def services(self) -> Any:
        return services_of(self.app)

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls,
        *,
        handlers_dir: str | Path | None = "handlers",
        router: Router | None = None,
        settings: Settings | None = None,
        fake: FakeWeChat | None = None,
        apps: Mapping[str, AppConfig] | None = None,
        mode: str | None = None,
        fmt: str = "xml",
        **overrides: Any,
    ) -> AsyncIterator["Harness"]:
        own_fake = fake is None
        tmp = tempfile.TemporaryDirectory(prefix="csbot-test-")
        if fake is None:
            fake = FakeWeChat(apps={TEST_APPID: TEST_SECRET})
            await fake.start()
        try:
            if settings is None:
                settings = test_settings(Path(tmp.name) / "csbot.db", fake.base_url,
                                         handlers_dir=Path(handlers_dir) if handlers_dir else None,
                                         **overrides)
            if apps is not None:
                settings = replace(settings, apps=dict(apps))
            elif mode == "plaintext":  # playing a plaintext WeChat: the test app accepts plaintext
                settings = replace(settings, apps={
                    name: replace(cfg, require_encryption=False) for name, cfg in settings.apps.items()})
            if not settings.is_sqlite:  # `csbot serve` migrates only SQLite by itself
                from csbot.store.migrate import upgrade_async

                await upgrade_async(settings.database_url)
            app = create_app(settings, router=router)
            runner = Runner(app, access_log=None)
            await runner.setup()
            _site, port = await start_site(runner, "127.0.0.1", 0)
            harness = cls(settings, fake, runner, f"http://127.0.0.1:{port}", app, mode=mode, fmt=fmt)
            try:
                yield harness
            finally:
                await harness.session.close()
                await runner.cleanup()
        finally:
            if own_fake:
                await fake.close()
            tmp.cleanup()

    # ---- playing the customer

    def path_for(self, app: str) -> str:
        return "/wechat" if app == "default" else f"/wechat/{app}"

    async def post(self, push: SignedPush, *, app: str = "default") -> tuple[int, bytes]:
        return await push.post(self.session, self.url, self.path_for(app))

    async def send(self, fields: Mapping[str, Any], *, app: str = "default") -> tuple[int, bytes]:
        """Push ``fields`` as WeChat would, after telling the fake the user acted."""
        appid = self.settings.apps[app].appid
        openid = str(fields["FromUserName"])
        if fields.get("MsgType") == "event" and str(fields.get("Event")) == "user_enter_tempsession":
            self.fake.user_entered(appid, openid)
        elif fields.get("MsgType") != "event":
            self.fake.user_message(appid, openid)
        return await self.post(self.builders[app].build(fields), app=app)

    async def send_text(self, openid: str, text: str, *, app: str = "default") -> tuple[int, bytes]:
        return await self.send(self.builders[app].text(openid, text), app=app)

    async def enter(self, openid: str, *, app: str = "default", session_from: str = "") -> tuple[int, bytes]:
        return await self.send(self.builders[app].enter_session(openid, session_from=session_from), app=app)

    # ---- observing

    async def wait_idle(self, timeout: float = 10.0) -> None:
        """Wait until every stored push is handled and every due reply has left the outbox."""
        deadline = time.monotonic() + timeout
        sm = self.services.sessionmaker
        while True:
            async with sm() as s:
                busy = (await s.execute(select(func.count()).select_from(Message).where(
                    ((Message.direction == "in") & Message.status.in_(INBOUND_UNSETTLED))
                    | ((Message.direction == "out") & Message.status.in_(OUTBOUND_UNSETTLED))
                ))).scalar_one()
            if busy == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"csbot still has {busy} unfinished message(s) after {timeout}s")
            await asyncio.sleep(0.02)

    def replies_to(self, openid: str) -> list[str]:
        """Texts that reached the user (through the fake), in order; other types as [msgtype]."""
        out = []
        for sent in self.fake.sent_to(openid):
            body = sent.get("body", sent)
            if body.get("msgtype") == "text":
                out.append(body["text"]["content"])
            else:
                out.append(f"[{body.get('msgtype')}]")
        return out

    async def messages(self, openid: str | None = None, direction: str | None = None) -> list[Message]:
        async with self.services.sessionmaker() as s:
            q = select(Message).order_by(Message.id)
            if openid:
                q = q.where(Message.openid == openid)
            if direction:
                q = q.where(Message.direction == direction)
            return list((await s.execute(q)).scalars().all())


def env_database_url() -> str | None:
    return os.environ.get("CSBOT_TEST_DATABASE_URL") or None


# not tests, whatever pytest's name-based collection thinks
test_app.__test__ = False  # type: ignore[attr-defined]
test_settings.__test__ = False  # type: ignore[attr-defined]
