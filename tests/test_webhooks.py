"""Outbound webhooks: configuration, signatures, delivery from the durable queue to a local
receiver, retries with backoff, failed deliveries re-driven, private addresses refused, and
neither the ack nor a reply ever waiting for a receiver."""

import asyncio
import json
import time

import pytest
from aiohttp import web

from csbot import outbound_webhooks as wh
from csbot.config import ConfigError, load_settings
from csbot.routing import Route, Router
from csbot.testing.harness import Harness
from csbot.outbound_webhooks import WebhookConfig, parse_webhooks, sign, verify

SECRET = "whsec-0123456789abcdef"
SEND = "/cgi-bin/message/custom/send"


class Receiver:
    """A local HTTP endpoint that records what it gets and answers as told."""

    def __init__(self) -> None:
        self.got: list[tuple[dict, bytes, dict]] = []
        self.answers: list[int] = []
        self.hang = False
        self.released = asyncio.Event()  # set on exit: a hanging answer ends with the test, not 30 s later
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        if self.hang:
            try:
                await asyncio.wait_for(self.released.wait(), 30)
            except asyncio.TimeoutError:
                pass
        self.got.append((dict(request.headers), body, json.loads(body)))
        return web.Response(status=self.answers.pop(0) if self.answers else 200)

    async def __aenter__(self) -> "Receiver":
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"
        return self

    async def __aexit__(self, *exc) -> None:
        self.released.set()
        await self.runner.cleanup()

    def events(self) -> list[str]:
        return [payload["event"] for _, _, payload in self.got]


def echo_router():
    async def echo(event, context):
        return "re: " + event.get("Content", "")

    return Router([Route("echo", echo, fallback=True)])


def hook(url, **kw):
    return {"crm": WebhookConfig("crm", url, frozenset(kw.pop("events", wh.EVENTS)), SECRET,
                                 kw.pop("allow_private", True))}


async def until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_configuration_is_validated_with_the_settings_name(tmp_path):
    ok = parse_webhooks({"crm": {"url": "https://crm.example.com/hook", "events": ["message.received"],
                                 "secret": SECRET}})
    assert ok["crm"].events == {"message.received"} and SECRET not in repr(ok["crm"])
    for table, words in (
            ({"url": "ftp://x", "secret": SECRET}, "webhooks.crm.url"),
            ({"url": "https://x.example", "events": ["message.deleted"], "secret": SECRET}, "webhooks.crm.events"),
            ({"url": "https://x.example", "secret": "short"}, "webhooks.crm.secret"),
            ({"url": "http://127.0.0.1:9/x", "secret": SECRET}, "allow_private"),
            ({"url": "http://10.1.2.3/x", "secret": SECRET}, "allow_private"),
            ({"url": "http://localhost/x", "secret": SECRET}, "allow_private"),
            ({"url": "https://x.example", "secret": SECRET, "retries": 3}, "unknown setting")):
        with pytest.raises(wh.WebhookError, match=words):
            parse_webhooks({"crm": table})
    assert parse_webhooks({"crm": {"url": "http://127.0.0.1:9/x", "secret": SECRET, "allow_private": True}})
    config = tmp_path / "csbot.toml"
    config.write_text('[apps.shop]\nappid = "wx1"\ntoken = "t"\n\n[webhooks.crm]\nurl = "ftp://nope"\n'
                      f'secret = "{SECRET}"\n')
    with pytest.raises(ConfigError, match="webhooks.crm.url"):
        load_settings(env={}, config_file=config)


def test_the_signature_is_hmac_sha256_of_timestamp_dot_body():
    import hashlib
    import hmac

    body = '{"event":"message.received"}'.encode()
    header = sign(SECRET, body, 1700000000)
    assert header == "t=1700000000,v1=" + hmac.new(SECRET.encode(), b"1700000000." + body,
                                                   hashlib.sha256).hexdigest()
    assert verify(SECRET, body, header, now=1700000010)
    assert not verify(SECRET, body + b" ", header, now=1700000010)
    assert not verify(SECRET, body, header, now=1700009999)  # too old: a replay
    assert not verify("another-secret-xyz", body, header, now=1700000010)


async def test_events_reach_a_local_receiver_signed_with_app_openid_and_the_message():
    async with Receiver() as receiver, Harness.start(router=echo_router(), webhooks=hook(receiver.url)) as bot:
        await bot.send_text("oAnn", "你好")
        await bot.wait_idle()
        await until(lambda: {"message.received", "message.sent"} <= set(receiver.events()))
        for headers, body, payload in receiver.got:
            assert verify(SECRET, body, headers["X-Csbot-Signature"])
            assert headers["X-Csbot-Event"] == payload["event"] and headers["X-Csbot-Delivery"].isdigit()
            assert (payload["app"], payload["openid"], payload["webhook"]) == ("default", "oAnn", "crm")
        by_event = {p["event"]: p for _, _, p in receiver.got}
        assert by_event["message.received"]["message"]["text"] == "你好"
        assert by_event["message.sent"]["message"]["text"] == "re: 你好"
        assert by_event["message.sent"]["message"]["status"] == "sent"

        await bot.services.review.set_status("default", "oAnn", "human", agent="ada")
        await until(lambda: "conversation.status_changed" in receiver.events())
        changed = next(p for _, _, p in receiver.got if p["event"] == "conversation.status_changed")
        assert changed["conversation"]["status"] == "human"

        bot.fake.inject(SEND, errcode=40003, times=1)
        await bot.services.review.reply("default", "oAnn", "客服来了", agent="ada")
        await bot.wait_idle()
        await until(lambda: "message.failed" in receiver.events())
        failed = next(p for _, _, p in receiver.got if p["event"] == "message.failed")
        assert failed["message"]["status"] == "failed" and failed["message"]["errcode"] == 40003


async def test_a_failing_receiver_is_retried_with_backoff_then_failed_and_redelivered(monkeypatch):
    monkeypatch.setattr(wh, "BASE_DELAY", 0.05)
    monkeypatch.setattr(wh, "MAX_ATTEMPTS", 3)
    from tests.review.support import ADMIN_TOKEN, api

    async with Receiver() as receiver, Harness.start(router=echo_router(), admin_token=ADMIN_TOKEN,
                                                     webhooks=hook(receiver.url, events=["message.received"])) as bot:
        receiver.answers = [500, 503]
        await bot.send_text("oAnn", "one")
        await until(lambda: len(receiver.got) == 3)
        _, page = await api(bot, "GET", "/api/webhooks/deliveries")
        [delivery] = page["deliveries"]
        for _ in range(100):
            _, page = await api(bot, "GET", "/api/webhooks/deliveries")
            if page["deliveries"][0]["status"] == "delivered":
                break
            await asyncio.sleep(0.05)
        d = page["deliveries"][0]
        assert (d["status"], d["attempts"], d["last_status"]) == ("delivered", 3, 200)
        # the same delivery id on every attempt: a receiver can drop duplicates
        assert len({headers["X-Csbot-Delivery"] for headers, _, _ in receiver.got}) == 1

        receiver.answers = [500, 500, 500]
        await bot.send_text("oBen", "two")
        for _ in range(200):
            _, failed = await api(bot, "GET", "/api/webhooks/deliveries", params={"status": "failed"})
            if failed["deliveries"]:
                break
            await asyncio.sleep(0.05)
        [d] = failed["deliveries"]
        assert d["attempts"] == 3 and d["last_error"] == "HTTP 500" and d["openid"] == "oBen"
        status, body = await api(bot, "POST", f"/api/webhooks/deliveries/{d['id']}/redeliver")
        assert status == 202
        await until(lambda: len(receiver.got) == 7)
        status, body = await api(bot, "POST", f"/api/webhooks/deliveries/{d['id']}/redeliver")
        assert status == 409  # delivered now: nothing to re-drive
        _, listed = await api(bot, "GET", "/api/webhooks/deliveries", params={"status": "delivered"})
        assert len(listed["deliveries"]) == 2


async def test_private_addresses_are_refused_unless_allowed():
    async with Receiver() as receiver, Harness.start(router=echo_router(),
                                                     webhooks=hook(receiver.url, allow_private=False)) as bot:
        await bot.send_text("oAnn", "x")
        await bot.wait_idle()
        await bot.services.webhooks.flush()
        for _ in range(100):
            rows = await wh.list_deliveries(bot.services.sessionmaker)
            if rows and all(r["status"] == "failed" for r in rows):
                break
            await asyncio.sleep(0.05)
        assert rows and all(r["status"] == "failed" and "private" in r["last_error"] for r in rows)
        assert rows[0]["attempts"] == 1 and receiver.got == []
    with pytest.raises(wh.PrivateAddress):  # a name that resolves to loopback is refused too
        await wh._PublicOnlyResolver().resolve("localhost", 80)


async def test_a_hanging_receiver_never_delays_the_ack_or_the_reply():
    async with Receiver() as receiver, Harness.start(router=echo_router(), webhooks=hook(receiver.url)) as bot:
        receiver.hang = True
        started = time.monotonic()
        status, _ = await bot.send_text("oAnn", "快")
        await bot.wait_idle()
        assert status == 200 and bot.replies_to("oAnn") == ["re: 快"]
        assert time.monotonic() - started < 3


async def test_cli_lists_and_redelivers(tmp_path, monkeypatch):
    import os
    import subprocess
    import sys

    monkeypatch.setattr(wh, "MAX_ATTEMPTS", 1)
    async with Receiver() as receiver, Harness.start(router=echo_router(),
                                                     webhooks=hook(receiver.url, events=["message.received"])) as bot:
        receiver.answers = [500]
        await bot.send_text("oAnn", "x")
        for _ in range(200):
            rows = await wh.list_deliveries(bot.services.sessionmaker, status="failed")
            if rows:
                break
            await asyncio.sleep(0.05)
        env = {k: v for k, v in os.environ.items() if not k.startswith("CSBOT_")}
        env.update(CSBOT_APPID="wx1", CSBOT_TOKEN="t", CSBOT_DATABASE_URL=bot.settings.database_url)

        async def cli(*args):  # a subprocess that does not block this event loop (the running csbot)
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "csbot", "webhooks", *args, env=env,
                                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            return proc.returncode, out.decode(), err.decode()
        code, out, err = await cli("list", "--status", "failed", "--json")
        assert code == 0 and json.loads(out)["last_error"] == "HTTP 500", err
        code, out, err = await cli("redeliver", "--failed")
        assert code == 0 and out.startswith("1 delivery"), err
        await until(lambda: len(receiver.got) == 2, timeout=15)


async def test_a_closed_conversation_reopened_by_the_customer_is_a_status_change():
    async with Receiver() as receiver, Harness.start(
            router=echo_router(), webhooks=hook(receiver.url, events=["conversation.status_changed"])) as bot:
        await bot.send_text("oAnn", "一")
        await bot.wait_idle()
        await bot.services.review.set_status("default", "oAnn", "closed", agent="ada")
        await until(lambda: len(receiver.got) == 1)
        await bot.send_text("oAnn", "二")
        await bot.wait_idle()
        await until(lambda: len(receiver.got) == 2)
        assert [p["conversation"]["status"] for _, _, p in receiver.got] == ["closed", "bot"]


async def test_a_process_whose_clock_runs_fast_never_claims_a_live_delivery(tmp_path, monkeypatch):
    """Delivery claims are leases timed by the database's clock, like every lease."""
    from sqlalchemy import select, update

    from csbot.store import make_engine, make_sessionmaker
    from csbot.store.migrate import upgrade_async

    url = f"sqlite+aiosqlite:///{tmp_path / 'csbot.db'}"
    await upgrade_async(url)
    engine = make_engine(url)
    sessionmaker = make_sessionmaker(engine)
    real = time.time
    try:
        async with sessionmaker() as s, s.begin():
            s.add(wh.WebhookDelivery(webhook="crm", event="message.received", body="{}", status="pending",
                                     attempts=0, next_attempt_at=real() - 1, created_at=real(),
                                     lease_owner="host:1:other", lease_until=real() + 30))
        fast = wh.Webhooks({}, sessionmaker)
        assert fast.instance_id.count(":") == 2  # host:pid:random, the process's instance identity
        monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this process's clock: an hour fast

        assert await fast._claim() == []  # by the database's clock the other's claim has 30 s left

        async with sessionmaker() as s, s.begin():  # the other process died; its claim ran out
            await s.execute(update(wh.WebhookDelivery).values(lease_until=real() - 1))
        [claimed] = await fast._claim()
        async with sessionmaker() as s:
            row = (await s.execute(select(wh.WebhookDelivery))).scalar_one()
        assert claimed.id == row.id and row.lease_owner == fast.instance_id
        assert real() + 50 < row.lease_until < real() + 70  # LEASE_SECONDS from the database's now
    finally:
        await engine.dispose()
