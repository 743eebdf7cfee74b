"""POST /cloud/login: a wx.login code becomes a session token; the session_key never leaves."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import func, select

from csbot.cloud.sessions import CloudSession, SessionStore, hash_token
from csbot.store import CloudSessionRecord, User
from csbot.testing.harness import TEST_APPID, Harness

from tests.cloud.conftest import MiniProgram

OPENID = "oLoginUser0001"


async def login(bot: Harness, body: dict) -> tuple[int, dict, dict]:
    resp = await bot.session.post(f"{bot.url}/cloud/login", json=body)
    return resp.status, await resp.json(), dict(resp.headers)


async def _rows(bot: Harness, model):
    async with bot.services.sessionmaker() as s:
        return list((await s.execute(select(model))).scalars())


class TestLogin:
    async def test_a_code_becomes_a_token_and_only_its_hash_is_stored(self, bot: Harness, caplog) -> None:
        caplog.set_level(logging.DEBUG, logger="csbot")
        code = bot.fake.issue_login_code(TEST_APPID, OPENID, unionid="uUnionLogin")
        status, body, _ = await login(bot, {"code": code})
        assert status == 200
        assert set(body) == {"token", "expires_in", "openid"}
        assert body["openid"] == OPENID and body["expires_in"] == 7 * 86400
        [record] = await _rows(bot, CloudSessionRecord)
        assert record.token_hash == hash_token(body["token"]) and body["token"] not in record.token_hash
        session_key = bot.fake.session_key_of(TEST_APPID, OPENID)
        [user] = await _rows(bot, User)
        assert (user.openid, user.unionid, user.session_key) == (OPENID, "uUnionLogin", session_key)
        assert session_key not in caplog.text and body["token"] not in caplog.text

    async def test_the_token_identifies_the_user(self, bot: Harness) -> None:
        code = bot.fake.issue_login_code(TEST_APPID, OPENID)
        _, body, _ = await login(bot, {"code": code})
        session = await bot.services.sessions.lookup(body["token"])
        assert session == CloudSession(app="default", appid=TEST_APPID, openid=OPENID, unionid=None,
                                       expires_at=session.expires_at)
        assert "session_key" not in repr(session)

    async def test_appid_selects_the_app_by_appid_or_name(self, bot: Harness) -> None:
        for appid in (TEST_APPID, "default"):
            status, _, _ = await login(bot, {"code": bot.fake.issue_login_code(TEST_APPID, OPENID), "appid": appid})
            assert status == 200
        status, body, _ = await login(bot, {"code": bot.fake.issue_login_code(TEST_APPID, OPENID),
                                            "appid": "wxNotOurs"})
        assert status == 400 and body["errMsg"] == "unknown appid"

    async def test_a_new_login_replaces_the_session_key_and_keeps_older_tokens(self, bot: Harness) -> None:
        _, first, _ = await login(bot, {"code": bot.fake.issue_login_code(TEST_APPID, OPENID, unionid="uU")})
        old_key = bot.fake.session_key_of(TEST_APPID, OPENID)
        _, second, _ = await login(bot, {"code": bot.fake.issue_login_code(TEST_APPID, OPENID)})
        new_key = bot.fake.session_key_of(TEST_APPID, OPENID)
        assert new_key != old_key
        assert await bot.services.sessions.session_key("default", OPENID) == new_key
        [user] = await _rows(bot, User)
        assert user.unionid == "uU"  # a login without unionid does not forget it
        assert await bot.services.sessions.lookup(first["token"]) is not None
        assert await bot.services.sessions.lookup(second["token"]) is not None

    async def test_a_code_is_single_use(self, bot: Harness) -> None:
        code = bot.fake.issue_login_code(TEST_APPID, OPENID)
        assert (await login(bot, {"code": code}))[0] == 200
        status, body, _ = await login(bot, {"code": code})
        assert (status, body["errCode"]) == (400, 40029)

    async def test_a_code_lives_five_minutes(self, bot: Harness) -> None:
        code = bot.fake.issue_login_code(TEST_APPID, OPENID)
        bot.fake.advance(301)
        status, body, _ = await login(bot, {"code": code})
        assert (status, body["errCode"]) == (400, 40029)

    @pytest.mark.parametrize("body", [{}, {"code": ""}, {"code": 12}, {"code": "x" * 300}])
    async def test_a_missing_or_malformed_code_is_400(self, bot: Harness, body: dict) -> None:
        status, answer, _ = await login(bot, body)
        assert status == 400 and answer["errCode"] == 40029 and answer["errMsg"]
        assert not bot.fake.calls_to("/sns/jscode2session")

    async def test_a_body_that_is_not_json_is_400(self, bot: Harness) -> None:
        for raw in (b"code=abc", b"[1]", b"\xff\xfe"):
            resp = await bot.session.post(f"{bot.url}/cloud/login", data=raw)
            assert resp.status == 400, raw
            assert set(await resp.json()) == {"errCode", "errMsg"}

    async def test_a_blocked_user_is_403(self, bot: Harness) -> None:
        bot.fake.inject("/sns/jscode2session", errcode=40226)
        status, body, _ = await login(bot, {"code": bot.fake.issue_login_code(TEST_APPID, OPENID)})
        assert (status, body["errCode"]) == (403, 40226)

    async def test_wechat_busy_is_503_with_retry_after(self, bot: Harness) -> None:
        bot.fake.inject("/sns/jscode2session", errcode=-1)
        status, body, headers = await login(bot, {"code": bot.fake.issue_login_code(TEST_APPID, OPENID)})
        assert (status, body["errCode"]) == (503, -1) and int(headers["Retry-After"]) > 0
        assert await _rows(bot, CloudSessionRecord) == []

    async def test_wechat_unreachable_is_503(self, bot: Harness) -> None:
        bot.fake.inject("/sns/jscode2session", status=502)
        status, body, headers = await login(bot, {"code": bot.fake.issue_login_code(TEST_APPID, OPENID)})
        assert status == 503 and "Retry-After" in headers

    async def test_rate_limited_login_is_429(self, bot: Harness) -> None:
        bot.fake.inject("/sns/jscode2session", errcode=45011)
        status, body, headers = await login(bot, {"code": bot.fake.issue_login_code(TEST_APPID, OPENID)})
        assert (status, body["errCode"]) == (429, 45011) and "Retry-After" in headers

    async def test_a_wrong_app_secret_is_the_operators_problem_not_the_callers(self, bot: Harness, caplog) -> None:
        bot.fake.apps[TEST_APPID] = "another-secret"
        status, body, _ = await login(bot, {"code": bot.fake.issue_login_code(TEST_APPID, OPENID)})
        assert status == 503 and "secret" not in body["errMsg"].lower()
        assert "AppSecret" in caplog.text and bot.settings.apps["default"].secret not in caplog.text


class TestSessionLookup:
    async def test_lookups_are_cached_not_a_database_round_trip(self, bot: Harness, monkeypatch) -> None:
        store: SessionStore = bot.services.sessions
        token = await store.create("default", OPENID, "c2Vzc2lvbmtleTE2Ynl0ZQ==")
        assert await store.lookup(token) is not None

        def no_db():
            raise AssertionError("the database was queried")

        monkeypatch.setattr(store, "sessionmaker", no_db)
        for _ in range(3):
            assert (await store.lookup(token)).openid == OPENID

    async def test_an_expired_session_is_refused_even_when_cached(self, bot: Harness) -> None:
        store: SessionStore = bot.services.sessions
        now = [1_000_000.0]
        store.clock = lambda: now[0]
        token = await store.create("default", OPENID, None)
        assert await store.lookup(token) is not None
        now[0] += store.lifetime + 1
        assert await store.lookup(token) is None

    async def test_revocation_here_is_immediate(self, bot: Harness) -> None:
        store: SessionStore = bot.services.sessions
        token = await store.create("default", OPENID, None)
        other = await store.create("default", OPENID, None)
        assert await store.lookup(token) and await store.lookup(other)
        assert await store.revoke(token)
        assert await store.lookup(token) is None
        assert await store.revoke_user("default", OPENID) == 1
        assert await store.lookup(other) is None
        assert await store.session_key("default", OPENID) is None

    async def test_revocation_elsewhere_reaches_this_process_within_the_cache_time(self, bot: Harness) -> None:
        mine: SessionStore = bot.services.sessions
        now = [1_000_000.0]
        mine.clock = lambda: now[0]
        token = await mine.create("default", OPENID, None)
        assert await mine.lookup(token) is not None
        other_process = SessionStore(bot.settings, bot.services.sessionmaker)
        assert await other_process.revoke(token)
        assert await mine.lookup(token) is not None  # still trusted from the cache…
        now[0] += mine.cache_seconds + 0.1
        assert await mine.lookup(token) is None  # …but not for longer than the cache time

    async def test_a_forged_or_absurd_token_is_unknown(self, bot: Harness) -> None:
        store: SessionStore = bot.services.sessions
        assert await store.lookup("not-a-token") is None
        assert await store.lookup("x" * 10_000) is None
        assert await store.lookup("") is None

    async def test_logging_in_again_purges_the_users_expired_sessions(self, bot: Harness) -> None:
        store: SessionStore = bot.services.sessions
        now = [1_000_000.0]
        store.clock = lambda: now[0]
        await store.create("default", OPENID, None)
        now[0] += store.lifetime + 1
        await store.create("default", OPENID, None)
        async with bot.services.sessionmaker() as s:
            assert (await s.execute(select(func.count()).select_from(CloudSessionRecord))).scalar_one() == 1


    async def test_expired_sessions_of_every_user_are_purged(self, bot: Harness) -> None:
        store: SessionStore = bot.services.sessions
        now = [1_000_000.0]
        store.clock = lambda: now[0]
        await store.create("default", "oGone1", None)
        await store.create("default", "oGone2", None)
        now[0] += store.lifetime / 2
        kept = await store.create("default", "oStays", None)
        now[0] += store.lifetime / 2 + 1
        assert await store.purge_expired() == 2
        assert await store.lookup(kept) is not None


class TestStoreDown:
    @staticmethod
    def break_store(monkeypatch, store: SessionStore) -> None:
        from sqlalchemy.exc import OperationalError

        def unavailable():
            raise OperationalError("SELECT 1", {}, Exception("database is locked"))

        monkeypatch.setattr(store, "sessionmaker", unavailable)

    async def test_login_is_503_with_retry_after(self, bot: Harness, monkeypatch) -> None:
        self.break_store(monkeypatch, bot.services.sessions)
        status, body, headers = await login(bot, {"code": bot.fake.issue_login_code(TEST_APPID, OPENID)})
        assert status == 503 and set(body) == {"errCode", "errMsg"} and headers["Retry-After"]

    async def test_a_call_with_an_uncached_session_is_503_not_401(self, bot: Harness, monkeypatch) -> None:
        mp = MiniProgram(bot, OPENID)
        await mp.login()
        bot.services.sessions._cache.clear()
        self.break_store(monkeypatch, bot.services.sessions)
        resp = await mp.call("echo")
        assert resp.status == 503 and resp.headers["Retry-After"]


class TestLogout:
    async def test_logout_ends_the_session(self, bot: Harness) -> None:
        mp = MiniProgram(bot, OPENID)
        await mp.login()
        resp = await bot.session.post(f"{bot.url}/cloud/logout", headers=mp.headers())
        assert resp.status == 200
        resp = await bot.session.post(f"{bot.url}/cloud/logout", headers=mp.headers())
        assert resp.status == 401
        body = await resp.json()
        assert set(body) == {"errCode", "errMsg"} and resp.headers["WWW-Authenticate"].startswith("Bearer")


class TestOnPostgreSQL:
    async def test_login_lookup_key_rotation_and_revocation(self, fake, pg_url: str) -> None:
        async with Harness.start(handlers_dir=None, fake=fake, database_url=pg_url) as bot:
            _, first, _ = await login(bot, {"code": bot.fake.issue_login_code(TEST_APPID, OPENID, unionid="uPG")})
            _, second, _ = await login(bot, {"code": bot.fake.issue_login_code(TEST_APPID, OPENID)})
            store: SessionStore = bot.services.sessions
            assert (await store.lookup(first["token"])).unionid == "uPG"
            assert await store.session_key("default", OPENID) == bot.fake.session_key_of(TEST_APPID, OPENID)
            [user] = await _rows(bot, User)
            assert user.unionid == "uPG"
            assert await store.revoke_user("default", OPENID) == 2
            assert await store.lookup(second["token"]) is None
