"""Leases on conversation rows: which process handles (or sends for) one user right now.

A lease is an owner and an expiry on the conversation row. Taking one is atomic: on SQLite a
conditional ``UPDATE``; on PostgreSQL the row is first locked with ``FOR UPDATE SKIP LOCKED``,
so a process never waits behind another that is taking the same lane, it just moves on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from csbot.store.models import Conversation, User
from csbot.store.statements import cached, dialect_of

_CONV = Conversation.__table__
_USER = User.__table__


def _user_upsert(insert: Any) -> Any:
    ins = insert(_USER)
    return ins.on_conflict_do_update(index_elements=["app", "openid"],
                                     set_={"last_seen": ins.excluded.last_seen})


async def take_lease(conn: Any, *, kind: str, app: str, openid: str, owner: str, until: float,
                     now: float) -> Any | None:
    """Take the ``kind`` lease ("lease" for handling, "send_lease" for sending) of one lane.

    Returns the row (``id``, ``status``) when this owner now holds it, else None.
    """
    owner_col, until_col = _CONV.c[f"{kind}_owner"], _CONV.c[f"{kind}_until"]
    free = or_(owner_col.is_(None), owner_col == owner, until_col < now)
    where = [_CONV.c.app == app, _CONV.c.openid == openid, free]
    if conn.dialect.name == "postgresql":
        locked = (await conn.execute(
            select(_CONV.c.id).where(*where).with_for_update(skip_locked=True))).first()
        if locked is None:
            return None
        where = [_CONV.c.id == locked.id]
    return (await conn.execute(
        update(_CONV).where(*where).values({owner_col: owner, until_col: until})
        .returning(_CONV.c.id, _CONV.c.status))).first()


@dataclass
class LaneOp:
    """Acquire, renew or release a lease of one user's lane.

    ``kind`` is "lease" (handling pushes) or "send_lease" (sending replies). One batch kind for
    all, applied in submission order: a release queued before a new acquire of the same lane
    must not run after it. Acquiring a handling lease also records the user (first/last seen).
    """

    action: str  # "acquire" | "renew" | "release"
    owner: str
    until: float | None = None
    app: str = ""
    openid: str = ""
    seen_at: float = 0.0
    conversation_ids: tuple[int, ...] = ()
    kind: str = "lease"
    batch_kind: str = "lane"

    async def apply_many(self, session: AsyncSession, ops: Sequence["LaneOp"]) -> list[Any | None]:
        """Per op: the conversation row (``id``, ``status``) when a lease was acquired, else None."""
        dialect = dialect_of(session)
        conn = await session.connection()
        now = time.time()
        acquiring = [op for op in ops if op.action == "acquire"]
        if acquiring:
            await conn.execute(
                cached(dialect, "conv_upsert", lambda ins: ins(_CONV).on_conflict_do_nothing(
                    index_elements=["app", "openid"])),
                [dict(app=op.app, openid=op.openid, status="bot", created_at=now, last_message_at=now,
                      tags="[]") for op in acquiring])
            users = {(op.app, op.openid): dict(app=op.app, openid=op.openid, first_seen=op.seen_at,
                                               last_seen=op.seen_at) for op in acquiring if op.kind == "lease"}
            if users:
                await conn.execute(cached(dialect, "user_upsert", _user_upsert), list(users.values()))
        results: list[Any | None] = []
        for op in ops:
            if op.action == "acquire":
                results.append(await take_lease(conn, kind=op.kind, app=op.app, openid=op.openid,
                                                owner=op.owner, until=op.until or now, now=now))
                continue
            if op.conversation_ids:
                owner_col, until_col = _CONV.c[f"{op.kind}_owner"], _CONV.c[f"{op.kind}_until"]
                values = ({owner_col: None, until_col: None} if op.action == "release"
                          else {until_col: op.until})
                await conn.execute(update(_CONV).where(_CONV.c.id.in_(op.conversation_ids),
                                                       owner_col == op.owner).values(values))
            results.append(None)
        return results
