"""pytest plugin (entry point ``pytest11``): fixtures to test handlers over real HTTP.

    async def test_refund_question_is_answered(csbot_bot):
        await csbot_bot.send_text("oCustomer1", "怎么退货？")
        await csbot_bot.wait_idle()
        assert "退货" in csbot_bot.replies_to("oCustomer1")[0]

Fixtures:
- ``fake_wechat``: a started :class:`FakeWeChat` on 127.0.0.1.
- ``csbot_handlers_dir``: the handlers directory under test (default ``./handlers``); override it
  in your conftest.py to point elsewhere.
- ``csbot_bot``: a running csbot (temporary SQLite store) wired to ``fake_wechat``, as a
  :class:`csbot.testing.harness.Harness`.

Async tests need an asyncio pytest plugin (pytest-asyncio with ``asyncio_mode = "auto"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import AsyncIterator

import pytest

from csbot.testing.fake_wechat import FakeWeChat
from csbot.testing.harness import TEST_APPID, TEST_SECRET, Harness

try:  # pytest-asyncio's fixture decorator when present, so strict mode works too
    import pytest_asyncio

    _async_fixture = pytest_asyncio.fixture
except ImportError:  # pragma: no cover
    _async_fixture = pytest.fixture


@pytest.fixture
def csbot_handlers_dir() -> Path:
    return Path("handlers")


@_async_fixture
async def fake_wechat() -> AsyncIterator[FakeWeChat]:
    fake = FakeWeChat(apps={TEST_APPID: TEST_SECRET})
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@_async_fixture
async def csbot_bot(fake_wechat: FakeWeChat, csbot_handlers_dir: Path) -> AsyncIterator[Harness]:
    async with Harness.start(handlers_dir=csbot_handlers_dir, fake=fake_wechat) as bot:
        yield bot
