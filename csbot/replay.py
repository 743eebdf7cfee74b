"""Plaintext pushes: a (timestamp, nonce) seen with one body is refused with any other body.

A plaintext push is authenticated by the query's ``signature`` alone, which covers the Token,
``timestamp`` and ``nonce`` but not the body. Anyone who sees one signed push URL (reverse
proxies log query strings) could post any body, as any openid, under it while its timestamp is
inside the clock-skew window. WeChat's retries resend the same bytes under the same query, so
the rule "the first body seen for a (timestamp, nonce) is the only one accepted" keeps retries
working and stops the substitution. The claim lives in SQL, so every process of a deployment
agrees (on PostgreSQL too), and expires when its timestamp leaves the window (after a day when
the window is turned off).

This narrows, but cannot close, plaintext mode's hole: whoever posts first under a leaked URL
wins. Only encrypted modes authenticate the body (``msg_signature``).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from csbot.store.engine import dialect_insert
from csbot.store.models import PushNonce

__all__ = ["ReplayGuard", "NonceClaim"]

_TABLE = PushNonce.__table__
#: how long a claim is kept when the timestamp window is off
_NO_WINDOW_TTL = 86400.0
#: seconds between purges of expired claims (per process)
_PURGE_EVERY = 60.0


@dataclass
class NonceClaim:
    """Claim (app, key) for a body digest; the result is True when the stored digest is this one."""

    app: str
    key: str
    digest: str
    expires_at: float
    purge_before: float | None = None
    batch_kind: str = field(default="push_nonce", init=False)

    async def apply_many(self, session: AsyncSession, ops: Sequence["NonceClaim"]) -> list[bool]:
        conn = await session.connection()
        insert = dialect_insert(conn.dialect.name)
        purge = [op.purge_before for op in ops if op.purge_before is not None]
        if purge:
            await conn.execute(delete(_TABLE).where(_TABLE.c.expires_at < max(purge)))
        await conn.execute(
            insert(_TABLE).on_conflict_do_nothing(index_elements=["app", "key"]),
            [{"app": op.app, "key": op.key, "body_sha256": op.digest, "expires_at": op.expires_at} for op in ops],
        )
        rows = await conn.execute(select(_TABLE.c.app, _TABLE.c.key, _TABLE.c.body_sha256).where(
            _TABLE.c.key.in_({op.key for op in ops})))
        stored = {(r.app, r.key): r.body_sha256 for r in rows}
        return [stored.get((op.app, op.key)) == op.digest for op in ops]


class ReplayGuard:
    """Checks plaintext pushes through the group-commit writer (one more commit per push)."""

    def __init__(self) -> None:
        self._next_purge = 0.0

    def claim_for(self, app: str, timestamp: str, nonce: str, body: bytes, *, max_clock_skew: int,
                  now: float | None = None) -> NonceClaim:
        now = time.time() if now is None else now
        key = hashlib.sha256(f"{timestamp}\n{nonce}".encode("utf-8", "surrogatepass")).hexdigest()
        if max_clock_skew > 0:
            expires_at = float(int(timestamp)) + max_clock_skew + 60.0
        else:
            expires_at = now + _NO_WINDOW_TTL
        purge_before = None
        if now >= self._next_purge:
            self._next_purge = now + _PURGE_EVERY
            purge_before = now
        return NonceClaim(app, key, hashlib.sha256(body).hexdigest(), expires_at, purge_before)

    async def first_body(self, writer: Any, app: str, timestamp: str, nonce: str, body: bytes, *,
                         max_clock_skew: int) -> bool:
        """True when ``body`` is the first (or the same) body seen for this timestamp and nonce."""
        return bool(await writer.run(self.claim_for(app, timestamp, nonce, body,
                                                     max_clock_skew=max_clock_skew)))
