"""What csbot knows of users' subscribe-message consents (``wx.requestSubscribeMessage``).

A one-time subscribe message needs one consent per send; WeChat answers 43101 without one and
never tells the server how many a user has left. The mini program tells csbot right after the
user accepted (the shipped ``openapi`` function's ``subscribe`` action), so the outbox can skip a
send it knows has no consent instead of spending a call on a sure 43101.

Per (app, openid, template): ``None`` = nothing known (send, WeChat decides), else the count of
accepted and unused consents. A send spends one; a 43101 sets it to 0.
"""

from __future__ import annotations

import time
from typing import Iterable

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from csbot.store import SubscribeConsent
from csbot.store.engine import dialect_insert

__all__ = ["record_consents", "consents_left", "spend_consent", "forget_consents", "MAX_CONSENTS"]

_CONSENTS = SubscribeConsent.__table__
#: WeChat lets a user accept a template many times; csbot counts at most this many ahead
MAX_CONSENTS = 1000


async def record_consents(sessionmaker: async_sessionmaker[AsyncSession], app: str, openid: str,
                          accepted: Iterable[str] = (), rejected: Iterable[str] = ()) -> None:
    """The user accepted (one more consent each) or rejected (none left) these templates."""
    now = time.time()
    async with sessionmaker() as s, s.begin():
        dialect = s.bind.dialect.name  # type: ignore[union-attr]
        insert = dialect_insert(dialect)
        least = func.min if dialect == "sqlite" else func.least  # SQLite's min(a, b) is scalar
        for template_id, accept in [*((t, True) for t in dict.fromkeys(accepted)),
                                    *((t, False) for t in dict.fromkeys(rejected))]:
            ins = insert(_CONSENTS).values(app=app, openid=openid, template_id=template_id,
                                           remaining=1 if accept else 0, updated_at=now)
            remaining = least(_CONSENTS.c.remaining + 1, MAX_CONSENTS) if accept else 0
            await s.execute(ins.on_conflict_do_update(
                index_elements=["app", "openid", "template_id"],
                set_={"remaining": remaining, "updated_at": now}))


async def consents_left(sessionmaker: async_sessionmaker[AsyncSession], app: str, openid: str,
                        template_id: str) -> int | None:
    """Consents known for this template, or None when csbot knows nothing about it."""
    async with sessionmaker() as s:
        return (await s.execute(select(_CONSENTS.c.remaining).where(
            _CONSENTS.c.app == app, _CONSENTS.c.openid == openid,
            _CONSENTS.c.template_id == template_id))).scalar_one_or_none()


async def spend_consent(sessionmaker: async_sessionmaker[AsyncSession], app: str, openid: str,
                        template_id: str) -> None:
    """A subscribe message was sent: one consent fewer (if csbot was counting)."""
    async with sessionmaker() as s, s.begin():
        await s.execute(update(_CONSENTS).where(
            _CONSENTS.c.app == app, _CONSENTS.c.openid == openid, _CONSENTS.c.template_id == template_id,
            _CONSENTS.c.remaining > 0).values(remaining=_CONSENTS.c.remaining - 1, updated_at=time.time()))


async def forget_consents(sessionmaker: async_sessionmaker[AsyncSession], app: str, openid: str,
                          template_id: str) -> None:
    """WeChat said 43101 (no consent): none left, whatever csbot counted."""
    await record_consents(sessionmaker, app, openid, rejected=[template_id])
