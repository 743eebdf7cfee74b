"""Saved replies: canned answers agents insert in the console's composer (``/shortcut``).

Admins add, change and delete them (each change audited as ``saved_reply``); every agent reads
them. A shortcut is 1 to 32 letters, digits, ``-`` or ``_`` (Chinese letters too), unique.
"""

from __future__ import annotations

import re
import time
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from csbot.review.audit import Actor, record
from csbot.review.agents import Forbidden
from csbot.review.i18n import N_
from csbot.review.models import SavedReply
from csbot.review.service import Invalid, NotFound, check_text

SHORTCUT = re.compile(r"^[\w-]{1,32}$")
MAX_SAVED = 500


def saved_item(r: SavedReply) -> dict[str, Any]:
    return {"id": r.id, "shortcut": r.shortcut, "text": r.text, "updated_by": r.updated_by,
            "updated_at": r.updated_at}


def check_shortcut(value: Any) -> str:
    value = str(value or "").strip().lstrip("/")
    if not SHORTCUT.match(value):
        raise Invalid(N_("a shortcut is 1 to 32 letters, digits, - or _"))
    return value


class SavedReplies:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession]) -> None:
        self.sessionmaker = sessionmaker

    async def list(self) -> list[dict[str, Any]]:
        async with self.sessionmaker() as s:
            rows = (await s.execute(select(SavedReply).order_by(SavedReply.shortcut).limit(MAX_SAVED))).scalars()
            return [saved_item(r) for r in rows]

    async def put(self, shortcut: str, text: str, *, by: Actor) -> dict[str, Any]:
        """Add a saved reply, or change the one with this shortcut."""
        if not by.is_admin:
            raise Forbidden(N_("only an admin manages saved replies"))
        shortcut = check_shortcut(shortcut)
        text = check_text(text, "saved_reply")
        async with self.sessionmaker() as s, s.begin():
            row = (await s.execute(select(SavedReply).where(SavedReply.shortcut == shortcut))).scalars().first()
            if row is None:
                row = SavedReply(shortcut=shortcut, text=text, updated_by=by.name, updated_at=time.time())
                s.add(row)
                await record(s, "saved_reply", by, detail=f"added /{shortcut}")
            else:
                row.text, row.updated_by, row.updated_at = text, by.name, time.time()
                await record(s, "saved_reply", by, detail=f"changed /{shortcut}")
            await s.flush()
            return saved_item(row)

    async def delete(self, reply_id: int, *, by: Actor) -> None:
        if not by.is_admin:
            raise Forbidden(N_("only an admin manages saved replies"))
        async with self.sessionmaker() as s, s.begin():
            row = (await s.execute(select(SavedReply).where(SavedReply.id == reply_id))).scalars().first()
            if row is None:
                raise NotFound(N_("no such saved reply"))
            await s.execute(delete(SavedReply).where(SavedReply.id == reply_id))
            await record(s, "saved_reply", by, detail=f"deleted /{row.shortcut}")


__all__ = ["SavedReplies", "check_shortcut"]
