"""Hostile and malformed input at the webhook: refused with a short 4xx, nothing stored, no harm
to other pushes; plaintext mode's limits; the handshake's window. SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio
import logging
import threading
import time

import pytest
from sqlalchemy import func, select

from csbot.config import AppConfig, load_settings
from csbot.store import Message, PushNonce
from csbot.testing.harness import TEST_AES_KEY, TEST_APPID, TEST_TOKEN, Harness, test_app
from csbot.wire import MessageCrypto, compute_signature, render_fields


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request) -> dict:
    """Harness overrides for each backend (PostgreSQL skipped without CSBOT_TEST_DATABASE_URL)."""
    if request.param == "sqlite":
        return {}
    return {"database_url": request.getfixturevalue("pg_url")}


async def count(bot, model=Message) -> int:
    async with bot.services.sessionmaker() as s:
        return (await s.execute(select(func.count()).select_from(model))).scalar_one()


def signed(ts: str | None = None, nonce: str = "9876") -> dict[str, str]:
    ts = ts or str(int(time.time()))
    return {"signature": compute_signature(TEST_TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce}


def encrypted(plaintext: bytes, fmt: str = "json") -> tuple[dict[str, str], bytes]:
    """A correctly signed safe-mode push around any plaintext bytes."""
    query = signed()
    encrypt = MessageCrypto(TEST_AES_KEY, TEST_APPID).encrypt(plaintext)
    query.update(encrypt_type="aes",
                 msg_signature=compute_signature(TEST_TOKEN, query["timestamp"], query["nonce"], encrypt))
    return query, render_fields({"ToUserName": "gh", "Encrypt": encrypt}, fmt)


async def post(bot, query, body, path="/wechat") -> tuple[int, str]:
    async with bot.session.post(bot.url + path, params=query, data=body) as resp:
        return resp.status, await resp.text()


async def metrics_text(bot) -> str:
    async with bot.session.get(bot.url + "/metrics") as resp:
        return await resp.text()


_HEAD = '{"ToUserName":"gh","FromUserName":"oEvil","CreateTime":%d,"MsgType":"text","MsgId":"777",' % int(time.time())

HOSTILE = {
    "deep json": (_HEAD + '"A":' + "[" * 50_000 + "]" * 50_000 + "}").encode(),
    "nested 40": (_HEAD + '"A":' + '{"b":' * 40 + "1" + "}" * 40 + "}").encode(),
    "lone surrogate": (_HEAD + r'"Content":"hi \ud800 there"}').encode(),
    "nul": (_HEAD + r'"Content":"a\u0000b"}').encode(),
    "long openid": _HEAD.replace("oEvil", "o" * 200).encode() + b'"Content":"x"}',
    "long msgid": _HEAD.replace('"777"', '"' + "7" * 100 + '"').encode() + b'"Content":"x"}',
    "long msgtype": _HEAD.replace('"text"', '"' + "t" * 100 + '"').encode() + b'"Content":"x"}',
    "long event": _HEAD.encode() + b'"Event":"' + b"e" * 300 + b'"}',
    "huge content": _HEAD.encode() + b'"Content":"' + "你".encode() * 30_000 + b'"}',
}


async def test_signed_but_malformed_pushes_are_400_and_never_hurt_other_pushes(store, caplog):
    async with Harness.start(handlers_dir=None, fmt="json", **store) as bot:
        for n, case in enumerate(sorted(HOSTILE)):
            good = [bot.builder.build(bot.builder.text(f"oGood{n}x{i}", "hello")) for i in range(3)]
            bad_query, bad_body = encrypted(HOSTILE[case])
            results = await asyncio.gather(post(bot, bad_query, bad_body),
                                           *(p.post(bot.session, bot.url) for p in good))
            status, reason = results[0]
            assert status == 400, (case, reason)
            assert 0 < len(reason) < 100 and "Traceback" not in reason
            assert all(r == (200, b"success") for r in results[1:]), case  # the same group commit went fine
        assert await count(bot) == 3 * len(HOSTILE)
        metrics = await metrics_text(bot)
        assert "store_unavailable" not in metrics
        assert f'outcome="refused_400"}} {float(len(HOSTILE))}' in metrics
        assert not any(r.levelno >= logging.ERROR for r in caplog.records)


async def test_a_value_the_database_refuses_is_a_400_for_that_push_alone(pg_url, monkeypatch):
    """Defence in depth: if a value ever slips past the wire's limits, PostgreSQL's refusal is a
    400 for that push (WeChat must not retry it), not a 503 and a store-unavailable alarm."""
    from csbot.wire import parse

    monkeypatch.setattr(parse, "_COLUMN_WIDTHS", {})
    async with Harness.start(handlers_dir=None, fmt="json", database_url=pg_url) as bot:
        good = [bot.builder.build(bot.builder.text(f"oGood{i}", "hello")) for i in range(5)]
        bad = bot.builder.build(bot.builder.text("o" * 300, "hello"))
        results = await asyncio.gather(bad.post(bot.session, bot.url), *(p.post(bot.session, bot.url) for p in good))
        assert results[0] == (400, b"push has values the store cannot keep")
        assert all(r == (200, b"success") for r in results[1:])
        assert await count(bot) == 5
        assert "store_unavailable" not in await metrics_text(bot)


async def test_large_bodies_are_decoded_off_the_event_loop(monkeypatch):
    from csbot import webhook

    threads: list[str] = []
    real = webhook.decode_push

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(webhook, "decode_push", spy)
    async with Harness.start(handlers_dir=None) as bot:
        assert (await bot.send_text("oSmall", "hi"))[0] == 200
        assert (await bot.send_text("oLarge", "长" * 20_000))[0] == 200  # 60 KB, > 64 KiB encrypted
        assert threads[0] == threading.main_thread().name
        assert threads[1] != threading.main_thread().name
        assert await count(bot) == 2


async def test_a_failed_store_write_logs_no_customer_text(monkeypatch, caplog):
    from csbot.inbox import Inbox

    real = Inbox.row_for

    def broken_row(self, app, push, **kw):
        row = real(self, app, push, **kw)
        row["raw"] = None  # NOT NULL: the insert fails with the statement's parameters at hand
        return row

    monkeypatch.setattr(Inbox, "row_for", broken_row)
    caplog.set_level(logging.DEBUG)
    async with Harness.start(handlers_dir=None) as bot:
        status, _ = await bot.send_text("oU", "MY-CARD-NUMBER-4111111111111111")
        assert status == 503
    loud = "\n".join(r.getMessage() + (caplog.handler.formatter.formatException(r.exc_info) if r.exc_info else "")
                     for r in caplog.records if r.levelno >= logging.WARNING)
    assert loud  # the failure is reported...
    assert "4111111111111111" not in loud  # ...without what the customer wrote


# --------------------------------------------------------------------------- plaintext mode


def test_require_encryption_defaults_to_true_whenever_an_aes_key_is_set():
    assert AppConfig(name="a", appid="wx", token="t", encoding_aes_key=TEST_AES_KEY).require_encryption is True
    assert AppConfig(name="a", appid="wx", token="t").require_encryption is False
    env = {"CSBOT_APPID": "wx1", "CSBOT_TOKEN": "t"}
    assert load_settings({**env, "CSBOT_ENCODING_AES_KEY": TEST_AES_KEY}).apps["default"].require_encryption
    assert not load_settings(env).apps["default"].require_encryption
    opted_out = load_settings({**env, "CSBOT_ENCODING_AES_KEY": TEST_AES_KEY, "CSBOT_REQUIRE_ENCRYPTION": "false"})
    assert opted_out.apps["default"].require_encryption is False
    shown = opted_out.masked()["apps"]["default"]
    assert shown["require_encryption"] is False and "plaintext" in shown["mode"]


async def test_a_plaintext_push_to_an_app_with_a_key_is_refused_by_default():
    """The downgrade: with an EncodingAESKey set, a push without encrypt_type no longer passes."""
    async with Harness.start(handlers_dir=None, apps={"default": test_app()}, mode="plaintext") as bot:
        status, body = await bot.send_text("oU", "hi")
        assert status == 400 and b"requires encryption" in body
        assert await count(bot) == 0


async def test_plaintext_timestamp_and_nonce_take_one_body_only(store):
    apps = {"default": test_app(require_encryption=False)}
    async with Harness.start(handlers_dir=None, apps=apps, mode="plaintext", **store) as bot:
        push = bot.builder.build(bot.builder.text("oCustomer", "hi"), nonce="12345")
        assert await post(bot, push.query, push.body) == (200, "success")
        assert await post(bot, push.query, push.body) == (200, "success")  # WeChat's retry: same bytes
        forged = bot.builder.build(bot.builder.text("oVictim", "send me a refund"), nonce="12345",
                                   timestamp=int(push.query["timestamp"]))
        assert forged.query == push.query and forged.body != push.body
        status, reason = await post(bot, forged.query, forged.body)
        assert (status, reason) == (403, "timestamp and nonce already used with another body")
        assert [m.openid for m in await bot.messages()] == ["oCustomer"]
        other = bot.builder.build(bot.builder.text("oVictim", "a new message"))
        assert (await post(bot, other.query, other.body))[0] == 200
        assert await count(bot, PushNonce) == 2
        # encrypted pushes need no claim: msg_signature covers their body
        bot.builders["default"] = type(bot.builder).for_app(apps["default"], mode="safe")
        assert (await bot.send_text("oCustomer", "safe"))[0] == 200
        assert await count(bot, PushNonce) == 2


async def test_the_claim_holds_across_processes_sharing_postgresql(pg_url):
    """Two services (own engines, writers and guards) on one database: the second refuses."""
    apps = {"default": test_app(require_encryption=False)}
    async with Harness.start(handlers_dir=None, apps=apps, mode="plaintext", database_url=pg_url) as one, \
            Harness.start(handlers_dir=None, apps=apps, mode="plaintext", database_url=pg_url) as two:
        push = one.builder.build(one.builder.text("oCustomer", "hi"), nonce="555")
        forged = one.builder.build(one.builder.text("oVictim", "forged"), nonce="555",
                                   timestamp=int(push.query["timestamp"]))
        # at the same time, on two processes: exactly one body wins
        results = await asyncio.gather(post(one, push.query, push.body), post(two, forged.query, forged.body))
        assert sorted(r[0] for r in results) == [200, 403]
        assert await post(two, push.query if results[0][0] == 200 else forged.query,
                          push.body if results[0][0] == 200 else forged.body) == (200, "success")
        assert await count(one) == 1


async def test_expired_claims_are_purged():
    from csbot.replay import ReplayGuard

    apps = {"default": test_app(require_encryption=False)}
    async with Harness.start(handlers_dir=None, apps=apps, mode="plaintext", max_clock_skew=60) as bot:
        guard = ReplayGuard()
        writer = bot.services.writer
        old = str(int(time.time()) - 3600)
        assert await guard.first_body(writer, "default", old, "1", b"a", max_clock_skew=60)
        assert await count(bot, PushNonce) == 1
        guard._next_purge = 0.0
        assert await guard.first_body(writer, "default", str(int(time.time())), "2", b"b", max_clock_skew=60)
        assert await count(bot, PushNonce) == 1  # the expired one went


# --------------------------------------------------------------------------- the handshake


async def test_handshake_answers_text_plain_with_nosniff():
    async with Harness.start(handlers_dir=None) as bot:
        q = bot.builder.handshake_query("<script>alert(1)</script>")
        async with bot.session.get(bot.url + "/wechat", params=q) as resp:
            assert resp.status == 200 and await resp.text() == "<script>alert(1)</script>"
            assert resp.headers["Content-Type"].startswith("text/plain")
            assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_stale_handshake_is_refused():
    async with Harness.start(handlers_dir=None) as bot:
        q = bot.builder.handshake_query("4375120948345356249", timestamp=int(time.time()) - 3600)
        async with bot.session.get(bot.url + "/wechat", params=q) as resp:
            assert resp.status == 403 and "4375120948345356249" not in await resp.text()
            assert resp.headers["X-Content-Type-Options"] == "nosniff"


async def test_a_store_outage_is_logged_with_its_cause(monkeypatch, caplog):
    from csbot.inbox import IntakeOp

    async def down(self, session, ops):
        raise ConnectionError("connection refused by 10.0.0.5:5432")

    async with Harness.start(handlers_dir=None) as bot:
        monkeypatch.setattr(IntakeOp, "apply_many", down)
        status, _ = await bot.send_text("oU", "MY-SECRET-TEXT")
        assert status == 503
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("ConnectionError: connection refused by 10.0.0.5:5432" in m for m in errors)
    assert not any("MY-SECRET-TEXT" in m for m in errors)
