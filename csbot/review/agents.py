"""Agent accounts: passwords, console sessions, per-agent API tokens, sign-in rate limits.

- Passwords are hashed with argon2id (argon2-cffi), in a worker thread (a hash takes tens of
  milliseconds and must not stall the event loop). An unknown name costs a hash too, so the
  answer's timing does not tell which names exist.
- Console sessions live in the store (``agent_sessions``): the cookie holds a random token, the
  row only its SHA-256. Disabling an agent or resetting their password deletes their sessions,
  which signs them out everywhere at their next request (live streams check every few seconds).
- API tokens (``csbot agents token NAME``) are random, shown once, stored as SHA-256; a request
  with one acts as that agent. Disabling the agent deletes them.
- Sign-in attempts are limited per tried name and per address by counting the ``failed_sign_in``
  rows of the audit log in a window, so the limit holds across processes and restarts.
- Roles: ``agent`` answers and takes over the conversations that are theirs or nobody's;
  ``admin`` also sees every conversation, assigns them, and manages agents and saved replies.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from csbot.review.audit import Actor, AuditLog, record
from csbot.review.i18n import N_
from csbot.review.models import Agent, AgentSession, AgentToken
from csbot.review.service import Invalid, NotFound, ReviewError, check_name

ROLES = ("admin", "agent")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
SESSION_TTL = 12 * 3600
TOKEN_PREFIX = "csbot_at_"
#: at most this many failed sign-ins per tried name, and per address, in the window
NAME_LIMIT = 5
ADDRESS_LIMIT = 20
LIMIT_WINDOW = 15 * 60

_hasher = PasswordHasher()
#: verified against for unknown names, so they take as long as known ones
_DUMMY_HASH = _hasher.hash("csbot-no-such-agent")


class SignInRefused(ReviewError):
    status = 401


class RateLimited(ReviewError):
    status = 429

    def __init__(self, message: str, /, *, retry_after: int, **params: Any) -> None:
        super().__init__(message, **params)
        self.retry_after = retry_after


class Forbidden(ReviewError):
    status = 403


def sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_password(password: Any) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise Invalid(N_("a password needs at least %(n)s characters"), n=MIN_PASSWORD)
    if len(password) > MAX_PASSWORD:
        raise Invalid(N_("a password has at most %(n)s characters"), n=MAX_PASSWORD)
    return password


def check_role(role: Any) -> str:
    if role not in ROLES:
        raise Invalid(N_("role must be one of %(choices)s"), choices=", ".join(ROLES))
    return str(role)


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hasher.hash, password)


async def verify_password(stored: str, password: str) -> bool:
    def verify() -> bool:
        try:
            return _hasher.verify(stored, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False
    return await asyncio.to_thread(verify)


def agent_item(a: Agent) -> dict[str, Any]:
    return {"name": a.name, "role": a.role, "disabled": bool(a.disabled), "created_at": a.created_at,
            "password_changed_at": a.password_changed_at}


def actor_of(a: Agent, address: str | None) -> Actor:
    return Actor(name=a.name, role=a.role, address=address, agent_id=a.id)


@dataclass(frozen=True)
class ConsoleSession:
    """A signed-in console session: who, and the CSRF token its forms carry."""

    actor: Actor
    csrf: str
    token_hash: str
    #: the cookie's value, only when the session was just opened
    cookie: str | None = None


class Agents:
    """Accounts, sessions and tokens over one store."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker

    # ---- managing accounts (CLI, console admins)

    async def _get(self, s: AsyncSession, name: str) -> Agent:
        agent = (await s.execute(select(Agent).where(Agent.name == name))).scalars().first()
        if agent is None:
            raise NotFound(N_("no agent named %(name)r"), name=name)
        return agent

    async def count(self) -> int:
        async with self.sessionmaker() as s:
            return int((await s.execute(select(func.count()).select_from(Agent))).scalar_one())

    async def add(self, name: str, password: str, *, role: str = "agent", by: Actor | None = None) -> dict[str, Any]:
        name = check_name(name, "new_agent")
        role = check_role(role)
        hashed = await hash_password(check_password(password))
        now = time.time()
        try:
            async with self.sessionmaker() as s, s.begin():
                agent = Agent(name=name, role=role, password_hash=hashed, disabled=False, created_at=now,
                              password_changed_at=now)
                s.add(agent)
                await s.flush()
                await record(s, "agent_add", by, detail=f"{name} ({role})")
                return agent_item(agent)
        except IntegrityError:
            raise Invalid(N_("an agent named %(name)r already exists"), name=name) from None

    async def bootstrap(self, name: str, password: str, *, address: str | None) -> ConsoleSession:
        """The first admin, created from the console with the admin token; signs them in."""
        name = check_name(name, "your_name")
        hashed = await hash_password(check_password(password))
        now = time.time()
        async with self.sessionmaker() as s, s.begin():
            if (await s.execute(select(func.count()).select_from(Agent))).scalar_one():
                raise Forbidden(N_("an admin exists already: sign in with your name and password"))
            agent = Agent(name=name, role="admin", password_hash=hashed, disabled=False, created_at=now,
                          password_changed_at=now)
            s.add(agent)
            await s.flush()
            actor = actor_of(agent, address)
            await record(s, "agent_add", actor, detail=f"{name} (admin), the first admin, with the admin token")
            return await self._open_session(s, agent, actor)

    async def list(self) -> list[dict[str, Any]]:
        async with self.sessionmaker() as s:
            return [agent_item(a) for a in (await s.execute(select(Agent).order_by(Agent.name))).scalars()]

    async def names(self) -> list[str]:
        async with self.sessionmaker() as s:
            return list((await s.execute(select(Agent.name).where(Agent.disabled.is_(False))
                                         .order_by(Agent.name))).scalars())

    async def set_disabled(self, name: str, disabled: bool, *, by: Actor | None = None) -> dict[str, Any]:
        """Disabling signs the agent out everywhere and revokes their API tokens."""
        async with self.sessionmaker() as s, s.begin():
            agent = await self._get(s, name)
            if disabled and agent.role == "admin" and not agent.disabled:
                admins = (await s.execute(select(func.count()).select_from(Agent).where(
                    Agent.role == "admin", Agent.disabled.is_(False)))).scalar_one()
                if admins <= 1:
                    raise Invalid(N_("%(name)s is the last enabled admin; add another admin first"), name=name)
            await s.execute(update(Agent).where(Agent.id == agent.id).values(disabled=disabled))
            if disabled:
                await self._revoke(s, agent.id, tokens=True)
            await record(s, "agent_disable" if disabled else "agent_enable", by, detail=name)
            await s.refresh(agent)
            return agent_item(agent)

    async def reset_password(self, name: str, password: str, *, by: Actor | None = None) -> None:
        """A new password; signs the agent out everywhere (their API tokens stay)."""
        hashed = await hash_password(check_password(password))
        async with self.sessionmaker() as s, s.begin():
            agent = await self._get(s, name)
            await s.execute(update(Agent).where(Agent.id == agent.id).values(
                password_hash=hashed, password_changed_at=time.time()))
            await self._revoke(s, agent.id, tokens=False)
            await record(s, "agent_password", by, detail=name)

    async def issue_token(self, name: str, *, by: Actor | None = None) -> str:
        """A new API token acting as this agent; only its hash is kept."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self.sessionmaker() as s, s.begin():
            agent = await self._get(s, name)
            if agent.disabled:
                raise Invalid(N_("%(name)s is disabled; enable the agent first"), name=name)
            s.add(AgentToken(token_hash=sha256(token), agent_id=agent.id, created_at=time.time()))
            await record(s, "agent_token", by, detail=name)
        return token

    @staticmethod
    async def _revoke(s: AsyncSession, agent_id: int, *, tokens: bool) -> None:
        await s.execute(delete(AgentSession).where(AgentSession.agent_id == agent_id))
        if tokens:
            await s.execute(delete(AgentToken).where(AgentToken.agent_id == agent_id))

    # ---- signing in

    async def sign_in(self, name: str, password: str, *, address: str | None) -> ConsoleSession:
        """Check the password (rate-limited per name and per address); open a session."""
        name = (name or "").strip()[:64]
        now = time.time()
        async with self.sessionmaker() as s:
            by_name = await AuditLog.failures(s, since=now - LIMIT_WINDOW, agent=name)
            by_address = await AuditLog.failures(s, since=now - LIMIT_WINDOW, address=address) if address else 0
            agent = (await s.execute(select(Agent).where(Agent.name == name))).scalars().first()
        if by_name >= NAME_LIMIT or by_address >= ADDRESS_LIMIT:
            await self._failed(name, address, "rate limited")
            raise RateLimited(N_("too many failed sign-ins; wait a few minutes and try again"),
                              retry_after=LIMIT_WINDOW // 3)
        ok = await verify_password(agent.password_hash if agent else _DUMMY_HASH, password or "")
        if agent is None or not ok:
            await self._failed(name, address, "wrong name or password")
            raise SignInRefused(N_("wrong name or password"))
        if agent.disabled:
            await self._failed(name, address, "disabled")
            raise SignInRefused(N_("this account is disabled"))
        rehash = _hasher.check_needs_rehash(agent.password_hash)
        new_hash = await hash_password(password) if rehash else None
        async with self.sessionmaker() as s, s.begin():
            if new_hash:
                await s.execute(update(Agent).where(Agent.id == agent.id).values(password_hash=new_hash))
            actor = actor_of(agent, address)
            await record(s, "sign_in", actor)
            return await self._open_session(s, agent, actor)

    async def _failed(self, name: str, address: str | None, why: str) -> None:
        async with self.sessionmaker() as s, s.begin():
            await record(s, "failed_sign_in", None, agent=name, address=address, detail=why)

    async def _open_session(self, s: AsyncSession, agent: Agent, actor: Actor) -> ConsoleSession:
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(24)
        now = time.time()
        await s.execute(delete(AgentSession).where(AgentSession.agent_id == agent.id,
                                                   AgentSession.expires_at < now))
        s.add(AgentSession(token_hash=sha256(token), agent_id=agent.id, csrf=csrf, created_at=now,
                           expires_at=now + SESSION_TTL, address=actor.address))
        return ConsoleSession(actor=actor, csrf=csrf, token_hash=sha256(token), cookie=token)

    async def session(self, token: str | None, *, address: str | None) -> ConsoleSession | None:
        """The live session of this cookie, or None (unknown, expired, signed out, disabled)."""
        if not token or len(token) > 256:
            return None
        digest = sha256(token)
        async with self.sessionmaker() as s:
            row = (await s.execute(select(AgentSession, Agent).join(Agent, Agent.id == AgentSession.agent_id)
                                   .where(AgentSession.token_hash == digest))).first()
        if row is None:
            return None
        sess, agent = row
        if sess.expires_at < time.time() or agent.disabled:
            return None
        return ConsoleSession(actor=actor_of(agent, address), csrf=sess.csrf, token_hash=digest)

    async def sign_out(self, session: ConsoleSession) -> None:
        async with self.sessionmaker() as s, s.begin():
            await s.execute(delete(AgentSession).where(AgentSession.token_hash == session.token_hash))
            await record(s, "sign_out", session.actor)

    async def by_token(self, token: str, *, address: str | None) -> Actor | None:
        """The agent an API token acts as, or None."""
        if not token.startswith(TOKEN_PREFIX) or len(token) > 256:
            return None
        digest = sha256(token)
        now = time.time()
        async with self.sessionmaker() as s:
            row = (await s.execute(select(AgentToken, Agent).join(Agent, Agent.id == AgentToken.agent_id)
                                   .where(AgentToken.token_hash == digest))).first()
            if row is None or row[1].disabled:
                return None
            tok, agent = row
            if tok.last_used_at is None or tok.last_used_at < now - 60:  # at most one write a minute
                await s.execute(update(AgentToken).where(AgentToken.token_hash == digest)
                                .values(last_used_at=now))
                await s.commit()
        return actor_of(agent, address)


__all__ = ["Agents", "ConsoleSession", "Forbidden", "RateLimited", "SignInRefused", "ROLES", "TOKEN_PREFIX"]
