"""The audit trail: who did what, when and from where (table ``audit_log``).

Every action on a conversation (takeover, hand back, close, reply, image, retry, tag, note,
assignment), every sign-in and failed sign-in, and every change to agents and saved replies
writes one row, in the same transaction as the action where there is one. Failed sign-ins are
also what the sign-in rate limit counts (see :mod:`csbot.review.agents`), so the limit holds
across processes.

``csbot audit --since 1d [--json]`` reads it; the console shows a conversation's entries in its
thread.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from csbot.review.models import AuditEntry

#: what each action means, for the CLI's help and the README
ACTIONS = {
    "takeover": "an agent took a conversation over from the bot",
    "handback": "an agent handed a conversation back to the bot",
    "close": "an agent closed a conversation",
    "reply": "an agent's text reply was queued",
    "image": "an agent's image was queued",
    "send": "an operator sent a message through POST /api/send",
    "retry": "a failed or dead reply was queued again",
    "tag": "tags of a conversation changed",
    "note": "a private note was added",
    "assign": "a conversation was assigned to an agent (or unassigned)",
    "sign_in": "an agent signed in to the console",
    "failed_sign_in": "a sign-in was refused (wrong name or password, disabled, or rate-limited)",
    "sign_out": "an agent signed out",
    "agent_add": "an agent account was created",
    "agent_disable": "an agent account was disabled (signed out everywhere, API tokens revoked)",
    "agent_enable": "an agent account was enabled again",
    "agent_password": "an agent's password was reset (signed out everywhere)",
    "agent_token": "a new API token was issued for an agent",
    "saved_reply": "a saved reply was added, changed or deleted",
}
MAX_DETAIL = 500


@dataclass(frozen=True)
class Actor:
    """Who acts: an agent (console session or API token), the admin token, or the command line.

    ``role`` is ``admin`` (sees and may do everything) or ``agent``; ``agent_id`` is set for
    agent accounts (None for the admin token and the CLI); ``address`` is the client's address,
    or ``cli``."""

    name: str
    role: str = "admin"
    address: str | None = None
    agent_id: int | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


async def record(s: AsyncSession, action: str, actor: Actor | None, *, conversation_id: int | None = None,
                 app: str | None = None, openid: str | None = None, detail: str | None = None,
                 agent: str | None = None, address: str | None = None, at: float | None = None) -> None:
    """Write one audit row in the caller's transaction."""
    await s.execute(insert(AuditEntry).values(
        at=time.time() if at is None else at, action=action,
        agent=(agent if agent is not None else (actor.name if actor else None)),
        address=(address if address is not None else (actor.address if actor else None)),
        conversation_id=conversation_id, app=app, openid=openid,
        detail=detail[:MAX_DETAIL] if detail else None))


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def audit_item(e: AuditEntry) -> dict[str, Any]:
    """One entry as ``csbot audit --json`` prints it and the thread shows it."""
    return {"kind": "audit", "id": e.id, "action": e.action, "agent": e.agent, "at": iso(e.at), "ts": e.at,
            "address": e.address, "app": e.app, "openid": e.openid, "detail": e.detail}


class AuditLog:
    """Reading the audit trail."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker

    async def entries(self, *, since: float | None = None, until: float | None = None,
                      action: str | None = None, agent: str | None = None, app: str | None = None,
                      openid: str | None = None, limit: int = 10000) -> list[dict[str, Any]]:
        """Oldest first."""
        q = select(AuditEntry)
        if since is not None:
            q = q.where(AuditEntry.at >= since)
        if until is not None:
            q = q.where(AuditEntry.at < until)
        if action:
            q = q.where(AuditEntry.action == action)
        if agent:
            q = q.where(AuditEntry.agent == agent)
        if app:
            q = q.where(AuditEntry.app == app)
        if openid:
            q = q.where(AuditEntry.openid == openid)
        async with self.sessionmaker() as s:
            rows = (await s.execute(q.order_by(AuditEntry.id).limit(limit))).scalars().all()
        return [audit_item(e) for e in rows]

    @staticmethod
    async def failures(s: AsyncSession, *, since: float, agent: str | None = None,
                       address: str | None = None) -> int:
        """Failed sign-ins since then, for one tried name or one address."""
        q = select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "failed_sign_in", AuditEntry.at >= since)
        if agent is not None:
            q = q.where(AuditEntry.agent == agent)
        if address is not None:
            q = q.where(AuditEntry.address == address)
        return int((await s.execute(q)).scalar_one())


__all__ = ["ACTIONS", "Actor", "AuditLog", "audit_item", "record"]
