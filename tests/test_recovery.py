"""Crash safety of the real ``csbot serve`` process: kill -9 after the ack, before the handler ends."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from csbot.testing.fake_wechat import FakeWeChat
from csbot.testing.harness import TEST_AES_KEY, TEST_APPID, TEST_SECRET, TEST_TOKEN
from csbot.testing.pushes import PushBuilder

HANDLER = '''
import asyncio, os
from pathlib import Path

async def main(event, context):
    Path(os.environ["MARKER_DIR"], f"started-{os.getpid()}").write_text(event.get("Content", ""))
    if os.environ.get("HANG") == "1":
        await asyncio.sleep(3600)
    return "handled " + event["Content"]
'''


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(tmp: Path, port: int, api_base: str, **extra: str) -> subprocess.Popen:
    env = {**os.environ, "CSBOT_APPID": TEST_APPID, "CSBOT_APP_SECRET": TEST_SECRET,
           "CSBOT_TOKEN": TEST_TOKEN, "CSBOT_ENCODING_AES_KEY": TEST_AES_KEY,
           "CSBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp / 'csbot.db'}",
           "CSBOT_WECHAT_API_BASE": api_base, "CSBOT_HANDLERS": str(tmp / "handlers"),
           "CSBOT_RETRY_BASE_DELAY": "0.05", "MARKER_DIR": str(tmp / "markers"), **extra}
    return subprocess.Popen([sys.executable, "-m", "csbot", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=open(tmp / f"serve-{port}.log", "ab"))


async def wait_healthy(session: aiohttp.ClientSession, url: str, proc: subprocess.Popen, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "csbot serve exited early"
        try:
            async with session.get(url + "/healthz") as resp:
                if resp.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.1)
    raise TimeoutError("csbot serve did not become healthy")


async def wait_for(predicate, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError
        await asyncio.sleep(0.05)


async def test_acknowledged_push_is_answered_exactly_once_after_kill_9(tmp_path):
    (tmp_path / "handlers").mkdir()
    (tmp_path / "markers").mkdir()
    (tmp_path / "handlers" / "echo.py").write_text(HANDLER)
    async with FakeWeChat(apps={TEST_APPID: TEST_SECRET}) as fake, aiohttp.ClientSession() as session:
        builder = PushBuilder(token=TEST_TOKEN, appid=TEST_APPID, encoding_aes_key=TEST_AES_KEY)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        first = serve(tmp_path, port, fake.base_url, HANG="1")
        try:
            await wait_healthy(session, url, first)
            fake.user_message(TEST_APPID, "oCrash")
            push = builder.build(builder.text("oCrash", "order 1"))
            status, body = await push.post(session, url)
            assert (status, body) == (200, b"success")
            await wait_for(lambda: any((tmp_path / "markers").iterdir()))  # the handler is running
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        assert fake.sent_to("oCrash") == []

        second = serve(tmp_path, port, fake.base_url)
        try:
            await wait_healthy(session, url, second)
            # WeChat's retry of the acknowledged push arrives after the restart too
            assert await push.post(session, url) == (200, b"success")
            await wait_for(lambda: len(fake.sent_to("oCrash")) >= 1)
            await asyncio.sleep(1.0)  # room for a wrong second delivery to show up
            sent = fake.sent_to("oCrash")
            assert [m["body"]["text"]["content"] for m in sent] == ["handled order 1"]
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=15)
