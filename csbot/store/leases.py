"""Leases on conversation rows: which process handles (or sends for) one user right now.

A lease is an owner and an expiry on the conversation row. Taking one is atomic: on SQLite a
conditional ``UPDATE``; on PostgreSQL the row is first locked with ``FOR UPDATE SKIP LOCKED``,
so a process never waits behind another that is taking the same lane, it just moves on.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select, update

from csbot.store.models import Conversation

_CONV = Conversation.__table__


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
