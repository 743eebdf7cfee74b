"""Access tokens: fetched once per deployment, shared through the SQL store.

Why this is more than a cache: ``cgi-bin/token`` invalidates the previous token on every
fetch, so two processes refreshing on their own knock each other out (the 40001 storms of
silenceper#516, easywechat#1453, WxJava#2998). Here every process reads the token from the
``access_tokens`` row, and a refresh is done by one coroutine per process (asyncio.Lock) and
one process per deployment: the ``token:<app>`` lease of csbot.store.leases, the same lease
mechanism as the users' lanes (taken with one conditional UPDATE, timed by the database's clock,
owned by the process's one instance identity). The holder fetches; the others wait for the row to
change, or keep using the current token while it still works. No row lock or transaction is held
across the HTTP fetch (a ``BEGIN IMMEDIATE`` on SQLite would block every other writer for as long
as the fetch takes). The lease is fenced: the new token is written only if nobody took the lease
since, so a holder that stalled past its lease (and lost it to another) cannot write its token
over the newer one; a holder killed mid-fetch leaves a lease that simply runs out.

On 40001/40014/42001 the caller calls ``invalidate(failed_token)``: the cached token is
expired only if it is still the one that failed (compare-and-set), so a slow coroutine
holding an old token cannot throw away a fresh one, and the API call is retried once.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from csbot.config import AppConfig, Settings
from csbot.openapi.errors import APITransportError, WeChatAPIError, is_transient
from csbot.openapi.transport import Transport, check_errcode
from csbot.openapi.util import token_fingerprint
from csbot.store.engine import dialect_insert
from csbot.store.leases import NamedLease, held_by, release_named_lease, take_named_lease
from csbot.store.models import AccessToken

__all__ = ["TokenManager", "TokenState"]

log = logging.getLogger("csbot.openapi.tokens")

#: refresh this long before expiry at most (stable_token rotates 5 min before expiry, so a
#: refresh later than that would get the same old token back) ...
REFRESH_MARGIN = 300.0
#: ... or 10% of the token's lifetime when that is shorter (short-lived tokens)
REFRESH_FRACTION = 0.1
#: WeChat allows a forced stable_token refresh at most every 30 s (20 a day); we wait longer
FORCE_MIN_INTERVAL = 60.0
#: after a token fetch fails for a configuration reason (bad secret, IP whitelist), callers
#: get the same error without a new fetch for this long: don't hammer the token endpoint
FETCH_FAILURE_HOLD = 10.0
#: token-fetch errors that mean "fix the configuration", not "try again"
CONFIG_ERRCODES = frozenset({40002, 40013, 40125, 40164, 89503, 41002, 41004, 40001})
#: first polling interval (s) while another process holds the fetch lease (doubles up to 0.5 s)
LEASE_POLL = 0.05


@dataclass(frozen=True)
class TokenState:
    """What the ``access_tokens`` row says."""

    token: str | None
    expires_at: float
    fetched_at: float

    def refresh_at(self) -> float:
        """When to stop using the token: expiry minus min(5 min, 10% of its lifetime)."""
        lifetime = max(0.0, self.expires_at - self.fetched_at)
        return self.expires_at - min(REFRESH_MARGIN, REFRESH_FRACTION * lifetime)


def _dialect_name(sessionmaker: async_sessionmaker[AsyncSession], settings: Settings) -> str:
    bind = sessionmaker.kw.get("bind")
    if bind is not None:
        return str(bind.dialect.name)
    return "sqlite" if settings.is_sqlite else "postgresql"


class TokenManager:
    """The access token of one app: ``await get()``; on a token error ``await invalidate(t)``.

    ``fetches`` counts requests this manager sent to the token source (tests, metrics);
    ``forced_fetches`` counts the ``force_refresh`` ones among them.
    """

    def __init__(
        self,
        app: AppConfig,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        transport: Transport,
        *,
        instance_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.source = settings.token_source
        self._base = settings.wechat_api_base.rstrip("/")
        self._sm = sessionmaker
        self._transport = transport
        self.instance_id = instance_id[:64]
        self._clock = clock
        self._dialect = _dialect_name(sessionmaker, settings)
        self._insert = dialect_insert(self._dialect)
        #: the shared lease that keeps processes from fetching at the same time (csbot.store.leases)
        self.lease_name = f"token:{app.name}"
        #: how processes are kept from fetching at the same time (for diagnostics)
        self.lock_kind = f"lease {self.lease_name} (csbot.store.leases)"
        #: the lease outlives one fetch with its retries (and a forced refetch)
        self.lease_seconds = 3 * (settings.api_timeout + 1.0) * 2
        self._lock = asyncio.Lock()
        self._state: TokenState | None = None
        #: the last token invalidated here while it was still the cached one
        self._failed: str | None = None
        self._last_forced = float("-inf")
        self._fail_until = 0.0
        self._fail_exc: WeChatAPIError | None = None
        self.fetches = 0
        self.forced_fetches = 0

    # ------------------------------------------------------------------ public
    async def get(self) -> str:
        """A token valid for at least a few minutes; fetched only when the shared one is due."""
        token = self._cached()
        if token is not None:
            return token
        async with self._lock:
            token = self._cached()
            if token is not None:
                return token
            state = await self._read()
            if self._usable(state):
                return self._adopt(state)
            self._raise_if_held()
            return await self._refresh()

    async def invalidate(self, failed_token: str) -> None:
        """WeChat refused ``failed_token``: forget it, but only if it is still the cached one.

        Compare-and-set both in memory and in the shared row: when 200 sends fail with the
        same expired token, the first one expires it and the other 199 find a fresh token.
        """
        if self._state is not None and self._state.token != failed_token:
            return  # this process already moved on to another token
        # Under the lock: until the shared row is marked, a concurrent get() could read the
        # row, still valid-looking, and adopt the refused token again.
        async with self._lock:
            state = self._state
            if state is not None and state.token != failed_token:
                return
            if state is None and self._failed == failed_token:
                return  # another coroutine already expired it; its get() refreshes
            self._failed = failed_token
            self._state = None
            log.info("app %s: access token %s refused by WeChat; expiring it",
                     self.app.name, token_fingerprint(failed_token))
            async with self._sm() as session, session.begin():
                await session.execute(
                    update(AccessToken)
                    .where(AccessToken.app == self.app.name, AccessToken.token == failed_token)
                    .values(expires_at=0.0)
                )

    @property
    def cached_token(self) -> str | None:
        """The token held in memory (None when none or due): for diagnostics and tests."""
        return self._cached()

    # ----------------------------------------------------------------- helpers
    def _cached(self) -> str | None:
        state = self._state
        if state is not None and state.token and self._clock() < state.refresh_at():
            return state.token
        return None

    def _usable(self, state: TokenState | None) -> bool:
        return state is not None and bool(state.token) and self._clock() < state.refresh_at()

    def _adopt(self, state: TokenState) -> str:
        assert state.token
        self._state = state
        self._failed = None
        return state.token

    def _raise_if_held(self) -> None:
        if self._fail_exc is not None and time.monotonic() < self._fail_until:
            exc = self._fail_exc
            raise WeChatAPIError(exc.errcode, exc.errmsg, exc.rid, exc.path, exc.response)

    async def _read(self) -> TokenState | None:
        async with self._sm() as session:
            return await self._state_in(session, missing_ok=True)

    async def _state_in(self, session: AsyncSession, *, missing_ok: bool = False) -> Any:
        row = (await session.execute(
            select(AccessToken.token, AccessToken.expires_at, AccessToken.fetched_at)
            .where(AccessToken.app == self.app.name))).one_or_none()
        if row is None and missing_ok:
            return None
        return TokenState(row.token, row.expires_at or 0.0, row.fetched_at or 0.0)

    def _ensure_row(self) -> Any:
        return (
            self._insert(AccessToken)
            .values(app=self.app.name, token=None, expires_at=0.0, fetched_at=0.0)
            .on_conflict_do_nothing(index_elements=["app"])
        )

    # ------------------------------------------------------ cross-process lease
    async def _refresh(self) -> str:
        """Take the fetch lease and fetch, or wait for the holder's token (or use the current one)."""
        deadline = time.monotonic() + self.lease_seconds + 5.0
        delay = LEASE_POLL
        while True:
            lease, state = await self._take_lease()
            if self._usable(state):
                if lease is not None:
                    await self._release(lease)
                return self._adopt(state)  # another process refreshed while we waited
            if lease is not None:
                token = await self._fetch_under(lease, state)
                if token is not None:
                    return token
                continue  # fenced out: another process took over; its token is the one to use
            if state.token and state.token != self._failed and self._clock() < state.expires_at - 1.0:
                # Another process is refreshing ahead of expiry; the current token still
                # works, so use it now rather than wait (not cached: the next call looks again).
                return state.token
            if time.monotonic() > deadline:
                raise APITransportError(
                    f"app {self.app.name}: another process has held the token fetch lease too long",
                    path="access_token",
                )
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 0.5)

    async def _take_lease(self) -> tuple[NamedLease | None, TokenState]:
        """In one transaction: the app's row (created if missing) and, if it is due, the lease."""
        async with self._sm() as session, session.begin():
            await session.execute(self._ensure_row())
            state = await self._state_in(session)
            if self._usable(state):
                return None, state
            lease = await take_named_lease(await session.connection(), self.lease_name, self.instance_id,
                                           self.lease_seconds)
            if lease is None:
                return None, state
            # re-read under the lease: a holder may have written and released in between
            return lease, await self._state_in(session)

    async def _fetch_under(self, lease: NamedLease, state: TokenState) -> str | None:
        """Fetch while holding ``lease`` and write the token, fenced; None if fenced out."""
        try:
            new = await self._fetch_with_policy(state, lease)
            async with self._sm() as session, session.begin():
                written = await session.execute(
                    update(AccessToken).where(AccessToken.app == self.app.name, held_by(lease))
                    .values(token=new.token, expires_at=new.expires_at, fetched_at=new.fetched_at))
                await release_named_lease(await session.connection(), lease)
        except BaseException:
            await asyncio.shield(self._release(lease))
            raise
        if (written.rowcount or 0) != 1:  # type: ignore[attr-defined]
            log.warning("app %s: token fetch lease was taken over during the fetch; the newer holder's "
                        "token is used, not %s", self.app.name, token_fingerprint(new.token))
            return None
        return self._adopt(new)

    async def _release(self, lease: NamedLease) -> None:
        try:
            async with self._sm() as session, session.begin():
                await release_named_lease(await session.connection(), lease)
        except Exception:  # the lease expires by itself
            log.warning("app %s: could not release the token fetch lease", self.app.name, exc_info=True)

    # ------------------------------------------------------------------ fetch
    async def _fetch_with_policy(self, cached: TokenState, lease: NamedLease) -> TokenState:
        """Fetch in normal mode; force a new stable token only in one narrow case.

        ``force_refresh=true`` invalidates the current stable token *for everybody* at once,
        so used carelessly two processes (or two deployments sharing an AppID) would take
        turns killing each other's token. We force only when all of these hold:

        1. WeChat just refused the token (``invalidate`` recorded it) and the shared row
           still holds exactly that token, i.e. nobody has replaced it since: a process
           whose token was killed by someone else's forced refresh finds the new token in
           the row (or gets it from a normal-mode fetch) and never forces back;
        2. a normal-mode fetch, made just now, returned that same refused token: the token
           is "fresh" as far as stable_token is concerned yet the API rejects it (e.g. the
           AppSecret was reset), so asking again in normal mode cannot help;
        3. this process has not forced within ``FORCE_MIN_INTERVAL`` (WeChat allows one
           forced refresh per 30 s, 20 a day).

        Otherwise the normal-mode answer is used, and a token that keeps failing surfaces
        as the API error instead of a refresh loop.
        """
        failed = self._failed
        new = await self._fetch(lease, force=False)
        if (
            self.source == "stable"
            and failed is not None
            and new.token == failed
            and cached.token == failed
            and time.monotonic() - self._last_forced >= FORCE_MIN_INTERVAL
        ):
            log.warning(
                "app %s: stable_token returned the token WeChat just refused (%s); forcing a refresh",
                self.app.name, token_fingerprint(failed),
            )
            self._last_forced = time.monotonic()
            self.forced_fetches += 1
            new = await self._fetch(lease, force=True)
        self._failed = None
        return new

    async def _fetch(self, lease: NamedLease, *, force: bool) -> TokenState:
        """One token fetch, retried twice on transient failures (fetching is idempotent).

        Each request is a side effect (``cgi-bin/token`` and a forced refresh kill the previous
        token): it is made only while the lease is still good by this process's own count.
        """
        attempts = 3
        for attempt in range(attempts):
            if not lease.valid():
                raise APITransportError(f"app {self.app.name}: the token fetch lease ran out before the "
                                        "fetch was done", path="access_token")
            try:
                started = self._clock()
                token, expires_in = await self._fetch_once(force=force)
            except (WeChatAPIError, APITransportError) as exc:
                if is_transient(exc) and attempt < attempts - 1:
                    await asyncio.sleep(0.2 * (2**attempt) * (0.5 + random.random()))
                    continue
                if isinstance(exc, WeChatAPIError) and exc.errcode in CONFIG_ERRCODES:
                    self._fail_exc, self._fail_until = exc, time.monotonic() + FETCH_FAILURE_HOLD
                log.error("app %s: access token fetch from %s failed: %s", self.app.name, self._source_label(), exc)
                raise
            self._fail_exc = None
            log.info(
                "app %s: access token %s fetched from %s%s, expires in %ss",
                self.app.name, token_fingerprint(token), self._source_label(),
                " (force_refresh)" if force else "", int(expires_in),
            )
            return TokenState(token, started + expires_in, started)
        raise AssertionError("unreachable")

    def _source_label(self) -> str:
        if self.source in ("stable", "plain"):
            return "cgi-bin/stable_token" if self.source == "stable" else "cgi-bin/token"
        from csbot.openapi.util import redact_url

        return redact_url(self.source)

    async def _fetch_once(self, *, force: bool) -> tuple[str, float]:
        self.fetches += 1
        app = self.app
        if self.source == "stable":
            path = "cgi-bin/stable_token"
            body: dict[str, Any] = {"grant_type": "client_credential", "appid": app.appid,
                                    "secret": app.secret, "force_refresh": force}
            data = await self._transport.request("POST", f"{self._base}/{path}", path=path,
                                                 json_body=body, limited=False)
        elif self.source == "plain":
            path = "cgi-bin/token"
            params = {"grant_type": "client_credential", "appid": app.appid, "secret": app.secret}
            data = await self._transport.request("GET", f"{self._base}/{path}", path=path,
                                                 params=params, limited=False)
        else:
            path = "token service"
            data = await self._transport.request("GET", self.source, path=path,
                                                 params={"appid": app.appid}, limited=False)
        check_errcode(path, data)
        token = data.get("access_token")
        if not isinstance(token, str) or not token:
            raise APITransportError(f"{path}: answer has no access_token", status=200, path=path)
        try:
            expires_in = float(data.get("expires_in") or 0)
        except (TypeError, ValueError):
            expires_in = 0.0
        if expires_in <= 0:
            expires_in = 7200.0 if self.source in ("stable", "plain") else 600.0
        return token, expires_in
