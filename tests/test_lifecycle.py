"""Stopping and starting: SIGTERM drains work in flight, one process per SQLite file."""

import asyncio
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import aiohttp

from csbot.routing import Route, Router
from csbot.testing.fake_wechat import FakeWeChat
from csbot.testing.harness import TEST_AES_KEY, TEST_APPID, TEST_SECRET, TEST_TOKEN, Harness, test_settings
from csbot.testing.pushes import PushBuilder
from tests.test_recovery import free_port, serve, wait_for, wait_healthy

SEND = "/cgi-bin/message/custom/send"


def rows(db: Path, direction: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("select text, status, attempts from messages where direction=? order by id",
                           (direction,)).fetchall()
    finally:
        con.close()


async def test_stopping_lets_a_running_handler_finish_and_record_its_outcome(tmp_path):
    started = asyncio.Event()

    async def slow(event, context):
        started.set()
        await asyncio.sleep(0.8)
        return "done"

    async with FakeWeChat(apps={TEST_APPID: TEST_SECRET}) as fake:
        settings = test_settings(tmp_path / "csbot.db", fake.base_url, handlers_dir=None, drain_seconds=5.0)
        async with Harness.start(router=Router([Route("slow", slow, fallback=True)]), settings=settings,
                                 fake=fake) as bot:
            await bot.send_text("oU", "go")
            await asyncio.wait_for(started.wait(), 5)
        # the harness stopped the service the way SIGTERM does, while the handler ran
    assert rows(tmp_path / "csbot.db", "in") == [("go", "done", 1)]
    assert rows(tmp_path / "csbot.db", "out") == [("done", "queued", 0)]  # no new send once stopping


async def test_stopping_lets_a_send_in_flight_finish_instead_of_leaving_it_in_doubt(tmp_path):
    async def answer(event, context):
        return "reply"

    async with FakeWeChat(apps={TEST_APPID: TEST_SECRET}) as fake:
        settings = test_settings(tmp_path / "csbot.db", fake.base_url, handlers_dir=None, drain_seconds=5.0)
        async with Harness.start(router=Router([Route("a", answer, fallback=True)]), settings=settings,
                                 fake=fake) as bot:
            fake.inject(SEND, delay=0.8, times=1)
            await bot.send_text("oU", "go")
            await wait_for(lambda: len(fake.calls_to(SEND)) == 1)
        assert len(fake.sent_to("oU")) == 1
    assert rows(tmp_path / "csbot.db", "out") == [("reply", "sent", 1)]


async def test_a_drain_is_bounded_by_drain_seconds(tmp_path):
    async def stuck(event, context):
        await asyncio.sleep(3600)

    async with FakeWeChat(apps={TEST_APPID: TEST_SECRET}) as fake:
        settings = test_settings(tmp_path / "csbot.db", fake.base_url, handlers_dir=None, drain_seconds=0.5)
        async with Harness.start(router=Router([Route("s", stuck, fallback=True)]), settings=settings,
                                 fake=fake) as bot:
            await bot.send_text("oU", "go")
            await asyncio.sleep(0.3)
            stopping = time.monotonic()
        assert time.monotonic() - stopping < 3
    assert rows(tmp_path / "csbot.db", "in") == [("go", "pending", 1)]  # handled again after the restart


async def test_a_second_serve_on_the_same_sqlite_file_refuses_to_start(tmp_path):
    (tmp_path / "handlers").mkdir()
    async with FakeWeChat(apps={TEST_APPID: TEST_SECRET}) as fake, aiohttp.ClientSession() as session:
        port = free_port()
        first = serve(tmp_path, port, fake.base_url)
        try:
            await wait_healthy(session, f"http://127.0.0.1:{port}", first)
            second = serve(tmp_path, free_port(), fake.base_url)
            code = await asyncio.to_thread(second.wait, 30)
            log = (tmp_path / "serve-{}.log".format(second.args[-1])).read_text()
            assert code == 2
            assert "already served by csbot serve (pid %d)" % first.pid in log and "Traceback" not in log
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200  # the first one goes on, its leases untouched
        finally:
            first.send_signal(signal.SIGTERM)
            first.wait(timeout=20)
        # once it stopped, the file is free again (the lock dies with its holder, even on SIGKILL)
        from csbot.store.engine import hold_sqlite_file

        hold_sqlite_file(f"sqlite+aiosqlite:///{tmp_path / 'csbot.db'}").close()


RESTART_HANDLER = '''
import asyncio, random

async def main(event, context):
    await asyncio.sleep(random.uniform(0.05, 0.3))
    return "re " + event["Content"]
'''


async def _post_until_acked(session, builder, url_of, openid, text) -> None:
    push = builder.build(builder.text(openid, text))
    while True:  # as WeChat does: resend until answered
        try:
            status, body = await push.post(session, url_of())
            if status == 200:
                return
        except (aiohttp.ClientError, asyncio.TimeoutError):
            pass
        await asyncio.sleep(0.1)


async def test_a_rolling_restart_under_traffic_sends_no_reply_twice(tmp_path):
    (tmp_path / "handlers").mkdir()
    (tmp_path / "handlers" / "echo.py").write_text(RESTART_HANDLER)
    users, per_user = [f"oR{i}" for i in range(12)], 8
    async with FakeWeChat(apps={TEST_APPID: TEST_SECRET}, enforce_reply_window=False) as fake, \
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:
        fake.latency = 0.05  # sends take a while: some are in flight at the SIGTERM
        builder = PushBuilder(token=TEST_TOKEN, appid=TEST_APPID, encoding_aes_key=TEST_AES_KEY)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        procs = [serve(tmp_path, port, fake.base_url, CSBOT_QUOTA_REPLIES_PER_MESSAGE="100")]

        async def customer(openid: str) -> None:
            for n in range(per_user):
                await _post_until_acked(session, builder, lambda: url, openid, str(n))
                await asyncio.sleep(0.05)

        try:
            await wait_healthy(session, url, procs[0])
            traffic = asyncio.gather(*(customer(u) for u in users))
            await wait_for(lambda: len(fake.sent) >= 20, timeout=30)
            procs[0].send_signal(signal.SIGTERM)  # a deploy: stop the old process ...
            assert await asyncio.to_thread(procs[0].wait, 30) == 0
            procs.append(serve(tmp_path, port, fake.base_url, CSBOT_QUOTA_REPLIES_PER_MESSAGE="100"))
            await wait_healthy(session, url, procs[1])  # ... and start the new one
            await asyncio.wait_for(traffic, 60)
            await wait_for(lambda: len(fake.sent) >= len(users) * per_user, timeout=30)
            await asyncio.sleep(0.5)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
                    p.wait(timeout=20)
        for u in users:
            texts = [m["body"]["text"]["content"] for m in fake.sent_to(u)]
            assert texts == [f"re {n}" for n in range(per_user)], (u, texts)
    assert {s for _, s, _ in rows(tmp_path / "csbot.db", "out")} == {"sent"}
