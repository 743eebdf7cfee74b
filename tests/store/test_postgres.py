"""PostgreSQL: the same behaviour as SQLite, and several serving processes sharing one database.

Skipped (with the reason) when CSBOT_TEST_DATABASE_URL is unset; .ci/run sets it.
"""

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import aiohttp
from sqlalchemy import func, select

from csbot.routing import Route, Router
from csbot.store import Message
from csbot.testing.fake_wechat import FakeWeChat
from csbot.testing.harness import TEST_AES_KEY, TEST_APPID, TEST_SECRET, TEST_TOKEN, Harness
from csbot.testing.pushes import PushBuilder
from tests.test_recovery import free_port, wait_healthy


async def test_webhook_stores_dedups_and_answers_on_postgresql(pg_url):
    async def echo(event, context):
        return "echo " + event["Content"]

    router = Router([Route("echo", echo, fallback=True)])
    async with Harness.start(router=router, database_url=pg_url, fmt="json") as bot:
        assert bot.services.engine.dialect.name == "postgresql"
        push = bot.builder.build(bot.builder.text("oPg", "你好", msg_id=2**63 + 5))
        bot.fake.user_message(TEST_APPID, "oPg")
        results = await asyncio.gather(*(bot.post(push) for _ in range(20)))
        assert all(r == (200, b"success") for r in results)
        for n in range(5):
            await bot.send_text("oPg", str(n))
            await bot.wait_idle()
        rows = await bot.messages(direction="in")
        assert len(rows) == 6 and json.loads(rows[0].raw)["MsgId"] == str(2**63 + 5)
        assert bot.replies_to("oPg") == ["echo 你好"] + [f"echo {n}" for n in range(5)]


async def test_inline_transfer_on_postgresql(pg_url):
    async with Harness.start(handlers_dir="handlers", database_url=pg_url) as bot:
        status, body = await bot.send_text("oPg", "人工")
        assert status == 200 and b"transfer_customer_service" in bot.builder.decrypt_reply(body)


def _serve(port: int, db_url: str, api_base: str, handlers: str, log, **extra: str) -> subprocess.Popen:
    env = {**os.environ, "CSBOT_APPID": TEST_APPID, "CSBOT_APP_SECRET": TEST_SECRET, "CSBOT_TOKEN": TEST_TOKEN,
           "CSBOT_ENCODING_AES_KEY": TEST_AES_KEY, "CSBOT_DATABASE_URL": db_url,
           "CSBOT_WECHAT_API_BASE": api_base, "CSBOT_HANDLERS": handlers, "CSBOT_RETRY_BASE_DELAY": "0.05",
           "CSBOT_LEASE_SECONDS": "5", "CSBOT_QUOTA_REPLIES_PER_MESSAGE": "1000", **extra}
    return subprocess.Popen([sys.executable, "-m", "csbot", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=log)


def test_serve_refuses_an_unmigrated_postgresql(pg_url, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "csbot", "serve", "--port", str(free_port())],
        env={**os.environ, "CSBOT_APPID": TEST_APPID, "CSBOT_TOKEN": TEST_TOKEN, "CSBOT_DATABASE_URL": pg_url,
             "CSBOT_HANDLERS": str(tmp_path)},
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "csbot migrate" in proc.stderr and "Traceback" not in proc.stderr


HANDLER = '''
import asyncio, os, random

async def main(event, context):
    await asyncio.sleep(random.uniform(0, 0.01))
    return f"{os.getpid()}:{event['Content']}"
'''


async def test_two_serving_processes_never_handle_one_push_twice(pg_url, tmp_path):
    from csbot.store.migrate import upgrade_async

    await upgrade_async(pg_url)
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "echo.py").write_text(HANDLER)
    async with FakeWeChat(apps={TEST_APPID: TEST_SECRET}, enforce_reply_window=False) as fake, \
            aiohttp.ClientSession() as session:
        ports = [free_port(), free_port()]
        log = open(tmp_path / "serve.log", "ab")
        procs = [_serve(p, pg_url, fake.base_url, str(tmp_path / "h"), log) for p in ports]
        try:
            urls = [f"http://127.0.0.1:{p}" for p in ports]
            for url, proc in zip(urls, procs):
                await wait_healthy(session, url, proc, timeout=30)
            builder = PushBuilder(token=TEST_TOKEN, appid=TEST_APPID, encoding_aes_key=TEST_AES_KEY)
            users = [f"oTwo{i}" for i in range(24)]
            per_user = 6
            for n in range(per_user):
                pushes = [builder.build(builder.text(u, str(n))) for u in users]
                # each user's push reaches "its" process first, then the other one too, as
                # WeChat's retries may after a timeout
                first = await asyncio.gather(*(p.post(session, urls[i % 2]) for i, p in enumerate(pushes)))
                again = await asyncio.gather(*(p.post(session, urls[(i + 1) % 2]) for i, p in enumerate(pushes)))
                assert all(status == 200 for status, _ in first + again)
            # every user's last reply, not a count of sends: a repeat must not end the wait early
            # and show up as a missing reply (the machine may be loaded: wait long, fail clearly)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(
                    {m["body"]["text"]["content"].split(":", 1)[1] for m in fake.sent_to(u)}
                    >= {str(n) for n in range(per_user)} for u in users):
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # room for a late, repeated delivery to show up
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                p.wait(timeout=20)
        for u in users:
            contents = [m["body"]["text"]["content"].split(":", 1) for m in fake.sent_to(u)]
            assert [c for _, c in contents] == [str(n) for n in range(per_user)], (u, contents)  # once each, in order
        # one access token served both processes: no refetch, no ping-pong between them
        assert fake.token_fetches(TEST_APPID) == 1
        # which process handles a lane is a race (the first to lease it keeps it while the user
        # is active), so only the outcome is asserted: each push handled once, in order
    from csbot.store import make_engine

    engine = make_engine(pg_url)
    async with engine.connect() as conn:
        n_in = (await conn.execute(select(func.count()).select_from(Message).where(Message.direction == "in"))).scalar_one()
    await engine.dispose()
    assert n_in == len(users) * per_user


HANG_HANDLER = '''
import asyncio, os
from pathlib import Path

async def main(event, context):
    Path(os.environ["MARKER_DIR"], f"started-{os.getpid()}").write_text(event["Content"])
    if os.environ.get("HANG") == "1":
        await asyncio.sleep(3600)
    return f"{os.getpid()}:{event['Content']}"
'''


async def test_when_one_process_dies_another_takes_over_its_users_after_the_lease(pg_url, tmp_path):
    from csbot.store.migrate import upgrade_async
    from tests.test_recovery import wait_for

    await upgrade_async(pg_url)
    (tmp_path / "h").mkdir()
    (tmp_path / "m").mkdir()
    (tmp_path / "h" / "echo.py").write_text(HANG_HANDLER)
    async with FakeWeChat(apps={TEST_APPID: TEST_SECRET}, enforce_reply_window=False) as fake, \
            aiohttp.ClientSession() as session:
        log = open(tmp_path / "serve.log", "ab")
        port_a, port_b = free_port(), free_port()
        markers = str(tmp_path / "m")
        a = _serve(port_a, pg_url, fake.base_url, str(tmp_path / "h"), log, HANG="1", MARKER_DIR=markers)
        b = None
        try:
            await wait_healthy(session, f"http://127.0.0.1:{port_a}", a, timeout=30)
            builder = PushBuilder(token=TEST_TOKEN, appid=TEST_APPID, encoding_aes_key=TEST_AES_KEY)
            push = builder.build(builder.text("oFail", "order 7"))
            assert (await push.post(session, f"http://127.0.0.1:{port_a}"))[0] == 200
            await wait_for(lambda: any((tmp_path / "m").iterdir()))  # A is handling it, and hangs
            b = _serve(port_b, pg_url, fake.base_url, str(tmp_path / "h"), log, MARKER_DIR=markers)
            await wait_healthy(session, f"http://127.0.0.1:{port_b}", b, timeout=30)
            a.send_signal(signal.SIGKILL)
            a.wait()
            # B takes the user's lane once A's lease (5 s here) has expired, and answers once
            await wait_for(lambda: len(fake.sent_to("oFail")) >= 1, timeout=30)
            await asyncio.sleep(1.0)
            [sent] = fake.sent_to("oFail")
            assert sent["body"]["text"]["content"] == f"{b.pid}:order 7"
        finally:
            for p in (a, b):
                if p is not None and p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    p.wait(timeout=20)
