"""The customers an app has seen (``users``): what is known about them beyond the openid."""

from __future__ import annotations

import time
from typing import Any

from csbot.store.models import User
from csbot.store.statements import cached

_USER = User.__table__


async def remember_unionid(conn: Any, app: str, openid: str, unionid: str, *, now: float | None = None) -> None:
    """Keep a user's UnionID, learnt from a push that carries it or from ``code2session``.

    Runs in the caller's transaction (``conn`` is a connection or session); creates the user
    if needed. The handler's ``context.UNIONID`` is read from here.
    """
    now = time.time() if now is None else now

    def build(insert: Any) -> Any:
        ins = insert(_USER)
        return ins.on_conflict_do_update(index_elements=["app", "openid"],
                                         set_={"unionid": ins.excluded.unionid})
    dialect = conn.dialect.name if hasattr(conn, "dialect") else conn.bind.dialect.name  # connection or session
    await conn.execute(cached(dialect, "user_unionid", build),
                       dict(app=app, openid=openid, unionid=unionid[:128], first_seen=now, last_seen=now))
