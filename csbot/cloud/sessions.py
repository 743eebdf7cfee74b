"""Mini-program login sessions: ``POST /cloud/login`` and who is calling.

The mini program sends a ``wx.login`` code; csbot trades it for ``openid``/``session_key``
through ``sns/jscode2session`` and answers an opaque token the client sends back as
``Authorization: Bearer <token>``. Only the token's SHA-256 is stored (a leaked table lets no one
in); the ``session_key`` is kept on the user's row for open-data decryption and never leaves
the server or reaches a log. A new login replaces the user's ``session_key`` (WeChat rotates it
on ``wx.login``); tokens issued before stay valid until they expire or are revoked.

Lookups are cached in the process for ``cloud_session_cache_seconds`` (default 30 s), so a call
is not a database round trip. Expiry is checked on every lookup against the cached expiry;
revocation through this process evicts at once, and another process's revocation reaches this
one within the cache time.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Mapping

from aiohttp import web
from sqlalchemy import delete, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from csbot.cloud.errors import ERR_BAD_REQUEST, ERR_UNAUTHORIZED, ERR_UNAVAILABLE, CloudError
from csbot.config import AppConfig, Settings
from csbot.openapi import APITransportError, WeChatAPIError
from csbot.services import services_of
from csbot.store import CloudSessionRecord, User
from csbot.store.engine import dialect_insert

if TYPE_CHECKING:
    from csbot.openapi import OpenAPIRegistry

__all__ = ["CloudSession", "SessionStore", "require_session", "bearer_token", "hash_token", "login_errors"]

log = logging.getLogger("csbot.cloud.sessions")

#: entries kept in the per-process lookup cache (least recently used go first)
CACHE_ENTRIES = 50_000
_USERS = User.__table__
_SESSIONS = CloudSessionRecord.__table__


@dataclass(frozen=True)
class CloudSession:
    """Who is calling, from the server-side record (never from the request body).

    ``app`` is the app's name in this deployment, ``appid`` its WeChat AppID. The user's
    ``session_key`` is deliberately not here: it is read fresh when open data is decrypted
    (``SessionStore.session_key``), so a later login's key is always the one used.
    """

    app: str
    appid: str
    openid: str
    unionid: str | None
    expires_at: float


#: the store failing (down, locked, disk full): the caller may retry, it is not their mistake
STORE_ERRORS = (SQLAlchemyError, OSError)


def store_unavailable(exc: BaseException) -> CloudError:
    log.error("sessions: the store is unavailable: %s", exc)
    return CloudError(503, ERR_UNAVAILABLE, "the server's store is unavailable, retry later",
                      headers={"Retry-After": "2"})


def hash_token(token: str) -> str:
    """What is stored for a token: SHA-256 (a 256-bit random token needs no slow hash)."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def bearer_token(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    value = value.strip()
    return value or None


def _unauthorized(reason: str) -> CloudError:
    return CloudError(401, ERR_UNAUTHORIZED, reason, headers={"WWW-Authenticate": 'Bearer realm="csbot"'})


async def require_session(request: web.Request) -> CloudSession:
    """The caller's session, or a 401 ``{"errCode", "errMsg"}`` (raised) when there is none."""
    token = bearer_token(request)
    if token is None:
        raise _unauthorized("missing session: log in with POST /cloud/login and send "
                            "Authorization: Bearer <token>")
    store: SessionStore | None = services_of(request).sessions
    if store is None:
        raise CloudError(503, ERR_UNAVAILABLE, "starting, retry shortly", headers={"Retry-After": "1"})
    try:
        session = await store.lookup(token)
    except STORE_ERRORS as exc:
        raise store_unavailable(exc) from None
    if session is None:
        raise _unauthorized("session expired or unknown: log in again")
    return session


class SessionStore:
    """Creates, looks up (cached) and revokes login sessions; keeps users' ``session_key``."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.clock = clock
        self.lifetime = float(settings.cloud_session_lifetime)
        self.cache_seconds = float(settings.cloud_session_cache_seconds)
        #: token hash -> (session, trusted until)
        self._cache: OrderedDict[str, tuple[CloudSession, float]] = OrderedDict()

    # ---- creating

    async def create(self, app: str, openid: str, session_key: str | None,
                     unionid: str | None = None) -> str:
        """Record a login of ``openid`` and return a new token (only its hash is stored).

        ``session_key`` replaces the user's previous one; ``unionid`` fills ``users.unionid``
        (a login without one leaves a known unionid in place).
        """
        cfg = self._app(app)
        if not openid:
            raise ValueError("openid is required")
        token = secrets.token_urlsafe(32)
        now = self.clock()
        async with self.sessionmaker() as s, s.begin():
            insert = dialect_insert(s.bind.dialect.name)  # type: ignore[union-attr]
            ins = insert(_USERS).values(app=cfg.name, openid=openid, unionid=unionid, first_seen=now,
                                        last_seen=now, session_key=session_key,
                                        session_key_at=now if session_key else None)
            changes: dict[str, Any] = {"last_seen": ins.excluded.last_seen}
            if session_key:
                changes.update(session_key=ins.excluded.session_key,
                               session_key_at=ins.excluded.session_key_at)
            if unionid:
                changes["unionid"] = ins.excluded.unionid
            await s.execute(ins.on_conflict_do_update(index_elements=["app", "openid"], set_=changes))
            # a user's expired sessions go when they log in again: the table stays small
            await s.execute(delete(_SESSIONS).where(_SESSIONS.c.app == cfg.name, _SESSIONS.c.openid == openid,
                                                    _SESSIONS.c.expires_at <= now))
            await s.execute(_SESSIONS.insert().values(
                token_hash=hash_token(token), app=cfg.name, openid=openid, unionid=unionid,
                created_at=now, expires_at=now + self.lifetime))
        return token

    async def login(self, openapi: OpenAPIRegistry, app: str, code: str) -> dict[str, Any]:
        """Trade a ``wx.login`` code for a session: ``{"token", "expires_in", "openid"}``.

        Raises ``CloudError`` for WeChat's refusals (see ``login_errors``).
        """
        cfg = self._app(app)
        try:
            answer = await openapi.get(cfg.name).auth.code2session(js_code=code)
        except WeChatAPIError as exc:
            raise login_errors(exc, cfg) from None
        except APITransportError as exc:
            log.warning("app %s: jscode2session unavailable: %s", cfg.name, exc)
            raise CloudError(503, ERR_UNAVAILABLE, "WeChat login is unavailable, retry later",
                             headers={"Retry-After": "5"}) from None
        openid = answer.get("openid")
        if not isinstance(openid, str) or not openid:
            log.error("app %s: jscode2session answered without an openid", cfg.name)
            raise CloudError(503, ERR_UNAVAILABLE, "WeChat login answered without an openid",
                             headers={"Retry-After": "5"})
        session_key = answer.get("session_key") if isinstance(answer.get("session_key"), str) else None
        unionid = answer.get("unionid") if isinstance(answer.get("unionid"), str) and answer.get("unionid") else None
        try:
            token = await self.create(cfg.name, openid, session_key, unionid=unionid)
        except STORE_ERRORS as exc:
            raise store_unavailable(exc) from None
        log.info("app %s: login of %s", cfg.name, openid)
        return {"token": token, "expires_in": int(self.lifetime), "openid": openid}

    # ---- looking up

    async def lookup(self, token: str) -> CloudSession | None:
        """The live session of ``token``, from the cache when it is fresh; None if none."""
        if not token or len(token) > 512:
            return None
        key = hash_token(token)
        now = self.clock()
        hit = self._cache.get(key)
        if hit is not None:
            session, trusted_until = hit
            if now < trusted_until and now < session.expires_at:
                self._cache.move_to_end(key)
                return session
            del self._cache[key]
        async with self.sessionmaker() as s:
            row = (await s.execute(select(_SESSIONS).where(_SESSIONS.c.token_hash == key))).first()
        if row is None or row.expires_at <= now or row.app not in self.settings.apps:
            return None
        session = CloudSession(app=row.app, appid=self.settings.apps[row.app].appid, openid=row.openid,
                               unionid=row.unionid, expires_at=row.expires_at)
        if self.cache_seconds > 0:
            self._cache[key] = (session, now + self.cache_seconds)
            if len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return session

    async def session_key(self, app: str, openid: str) -> str | None:
        """The user's current ``session_key`` (from their latest login), or None."""
        async with self.sessionmaker() as s:
            return (await s.execute(select(_USERS.c.session_key).where(
                _USERS.c.app == app, _USERS.c.openid == openid))).scalar_one_or_none()

    # ---- revoking

    async def revoke(self, token: str) -> bool:
        """End one session (logout). True if it existed."""
        key = hash_token(token)
        self._cache.pop(key, None)
        async with self.sessionmaker() as s, s.begin():
            result = await s.execute(delete(_SESSIONS).where(_SESSIONS.c.token_hash == key))
        return bool(result.rowcount)

    async def revoke_user(self, app: str, openid: str) -> int:
        """End every session of a user (and forget their ``session_key``); returns how many."""
        for key, (session, _) in list(self._cache.items()):
            if session.app == app and session.openid == openid:
                del self._cache[key]
        async with self.sessionmaker() as s, s.begin():
            result = await s.execute(delete(_SESSIONS).where(_SESSIONS.c.app == app, _SESSIONS.c.openid == openid))
            await s.execute(_USERS.update().where(_USERS.c.app == app, _USERS.c.openid == openid)
                            .values(session_key=None, session_key_at=None))
        return int(result.rowcount or 0)

    async def purge_expired(self) -> int:
        """Delete expired sessions of every user."""
        async with self.sessionmaker() as s, s.begin():
            result = await s.execute(delete(_SESSIONS).where(_SESSIONS.c.expires_at <= self.clock()))
        return int(result.rowcount or 0)

    # ---- apps

    def _app(self, app: str) -> AppConfig:
        try:
            return self.settings.apps[app]
        except KeyError:
            raise ValueError(f"no app named {app!r} is configured") from None

    def app_for(self, requested: Any) -> AppConfig:
        """The app a login is for: by name or WeChat AppID; alone (or ``default``) when absent."""
        apps: Mapping[str, AppConfig] = self.settings.apps
        if requested is None or requested == "":
            if len(apps) == 1:
                return next(iter(apps.values()))
            if "default" in apps:
                return apps["default"]
            raise CloudError(400, ERR_BAD_REQUEST, "appid is required: this server serves several apps")
        if isinstance(requested, str):
            if requested in apps:
                return apps[requested]
            for cfg in apps.values():
                if cfg.appid == requested:
                    return cfg
        raise CloudError(400, ERR_BAD_REQUEST, "unknown appid")


def login_errors(exc: WeChatAPIError, app: AppConfig) -> CloudError:
    """WeChat's jscode2session refusal as the caller's error.

    40029 (bad or used code) → 400; 40226 (high-risk user) → 403; -1 (busy) → 503 and
    45011 (rate limit) → 429, both with Retry-After. AppID/secret problems are the operator's:
    logged as errors, 503 to the caller.
    """
    code, msg = exc.errcode, exc.errmsg
    if code == 40029:
        return CloudError(400, 40029, "invalid code: call wx.login again")
    if code == 40226:
        return CloudError(403, 40226, "this user is blocked by WeChat (high risk)")
    if code == -1:
        return CloudError(503, -1, "WeChat is busy, retry later", headers={"Retry-After": "2"})
    if code == 45011:
        return CloudError(429, 45011, "too many logins, retry later", headers={"Retry-After": "60"})
    if code == 40163:
        return CloudError(400, 40163, "code already used: call wx.login again")
    log.error("app %s: jscode2session refused (errcode %s: %s): check the app's AppID and AppSecret",
              app.name, code, msg)
    return CloudError(503, ERR_UNAVAILABLE, "login is unavailable (server configuration)",
                      headers={"Retry-After": "30"})
