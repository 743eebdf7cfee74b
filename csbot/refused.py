"""Refused pushes, kept for diagnosis (``CSBOT_KEEP_REFUSED=N``): the N most recent ones.

When WeChat's pushes are refused (a wrong Token, a rotated EncodingAESKey, a proxy that
rewrites the body), the operator needs the exact request to find out why. With
``CSBOT_KEEP_REFUSED=N`` the webhook's refusal path hands each refused POST here; it is written
to the ``refused_pushes`` table in the background (never into ``messages``: a refused push is
not a message), and only the latest N are kept. ``csbot refused`` lists them and
``csbot decrypt --refused ID`` walks one through the checks step by step.

Refusals can come in floods (a scanner, a misconfigured proxy): keeping them never delays the
answer, holds at most ``QUEUE_LIMIT`` waiting in memory and drops the rest (counted).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web
from sqlalchemy import Float, Integer, LargeBinary, String, Text, delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from csbot.store.models import Base, BigId

log = logging.getLogger("csbot.refused")

#: refused pushes waiting to be written; more are dropped
QUEUE_LIMIT = 200
#: bodies are kept up to this size (WeChat's pushes are far smaller)
BODY_LIMIT = 256 * 1024


class RefusedPush(Base):
    """One refused push, as it came."""

    __tablename__ = "refused_pushes"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    app: Mapped[str] = mapped_column(String(64))
    at: Mapped[float] = mapped_column(Float)
    remote: Mapped[str | None] = mapped_column(String(64), nullable=True)
    method: Mapped[str] = mapped_column(String(8))
    path: Mapped[str] = mapped_column(String(256))
    #: the raw query string (signature, timestamp, nonce, msg_signature…)
    query: Mapped[str] = mapped_column(Text)
    content_type: Mapped[str | None] = mapped_column(String(128), nullable=True)
    body: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True)
    body_size: Mapped[int] = mapped_column(Integer)
    status: Mapped[int] = mapped_column(Integer)
    reason: Mapped[str] = mapped_column(Text)


class RefusedKeeper:
    """Writes refused pushes in the background and keeps the latest ``keep``."""

    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], keep: int) -> None:
        self.sessionmaker = sessionmaker
        self.keep = keep
        self.dropped = 0
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_LIMIT)
        self._task: asyncio.Task[None] | None = None

    def offer(self, row: dict[str, Any]) -> None:
        """Queue one refused push; never blocks, never raises."""
        try:
            self._queue.put_nowait(row)
        except asyncio.QueueFull:
            self.dropped += 1
            return
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name="csbot-keep-refused")

    async def _drain(self) -> None:
        while not self._queue.empty():
            rows = [self._queue.get_nowait() for _ in range(min(self._queue.qsize(), 100))]
            try:
                await self._write(rows)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # diagnosis aid only: never let it disturb the service
                log.warning("could not keep %d refused push(es): %s", len(rows), type(exc).__name__)

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        async with self.sessionmaker() as s, s.begin():
            await s.execute(RefusedPush.__table__.insert(), rows)
            cutoff = (await s.execute(select(RefusedPush.id).order_by(RefusedPush.id.desc())
                                      .offset(self.keep).limit(1))).scalar()
            if cutoff is not None:
                await s.execute(delete(RefusedPush).where(RefusedPush.id <= cutoff))

    async def flush(self) -> None:
        """Wait until every queued refusal is written (tests, shutdown)."""
        while self._task is not None and not self._task.done():
            await asyncio.shield(self._task)

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self.flush(), 5)
        except (asyncio.TimeoutError, Exception):
            if self._task is not None:
                self._task.cancel()


def keep_refused(request: web.Request, app_name: str, status: int, reason: str) -> None:
    """Called by the webhook's refusal path: keep a refused POST when CSBOT_KEEP_REFUSED is set."""
    from csbot.services import services_of

    keeper = getattr(services_of(request), "refused", None)
    if keeper is None or request.method != "POST":
        return
    body: bytes | None = getattr(request, "_read_bytes", None)  # what the webhook read, if it did
    keeper.offer(dict(
        app=app_name[:64], at=time.time(), remote=(request.remote or "")[:64], method=request.method[:8],
        path=request.path[:256], query=request.query_string[:8192],
        content_type=(request.headers.get("Content-Type") or "")[:128] or None,
        body=body[:BODY_LIMIT] if body is not None else None,
        body_size=len(body) if body is not None else (request.content_length or 0),
        status=status, reason=reason[:2000]))


def refused_item(r: RefusedPush) -> dict[str, Any]:
    """One kept refusal as ``csbot refused --json`` shows it (times as everywhere: ISO 8601, UTC)."""
    from csbot.review.service import iso

    return {"id": r.id, "app": r.app, "at": iso(r.at), "remote": r.remote, "path": r.path, "query": r.query,
            "content_type": r.content_type, "status": r.status, "reason": r.reason, "body_size": r.body_size}


async def list_refused(sessionmaker: async_sessionmaker[AsyncSession], limit: int = 50) -> list[RefusedPush]:
    async with sessionmaker() as s:
        return list((await s.execute(select(RefusedPush).order_by(RefusedPush.id.desc())
                                     .limit(limit))).scalars())


async def get_refused(sessionmaker: async_sessionmaker[AsyncSession], refused_id: int) -> RefusedPush | None:
    async with sessionmaker() as s:
        return (await s.execute(select(RefusedPush).where(RefusedPush.id == refused_id))).scalars().first()


__all__ = ["RefusedPush", "RefusedKeeper", "keep_refused", "list_refused", "get_refused", "refused_item"]
