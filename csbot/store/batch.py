"""Group commit: many small writes share one transaction and one commit.

Per-commit overhead of the async DB layer (about 1 ms of CPU) and SQLite's single writer make
one-commit-per-push slow. Writers submit an operation and await its result; one loop takes
everything queued, applies it in one transaction and commits once. Every caller still waits
for the commit that holds its write, so "durable before acknowledged" is kept.

If a batch fails, its operations are retried one transaction each, so a single bad write fails
alone instead of taking its neighbours down.

Several processes on one PostgreSQL database: every conversation row a batch will update is
locked first, in ``id`` order (ops name them in ``locks()``, by id or by (app, openid)); what
else a batch locks belongs to those users' lanes, and multi-row statements sort their rows by a
stable key, so two writers never lock rows of two lanes in opposite orders. A deadlock or
serialization failure, should one still happen, is retried (quietly, counted by
``on_conflict``), not logged as an error.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol, Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = logging.getLogger("csbot.store")


class WriteOp(Protocol):
    """One write. Ops of the same ``batch_kind`` are applied together by ``apply_many``."""

    batch_kind: str

    async def apply_many(self, session: AsyncSession, ops: Sequence["WriteOp"]) -> list[Any]: ...


#: SQLSTATEs of a transaction that lost a lock race and may simply be run again
RETRYABLE_SQLSTATES = frozenset({"40P01", "40001"})  # deadlock_detected, serialization_failure
#: kinds applied first in a batch, in this order; the rest follow in first-seen order
KIND_ORDER = ("intake", "mark", "lane", "status", "outcome")


def is_lock_conflict(exc: BaseException, codes: frozenset[str] | tuple[str, ...] = RETRYABLE_SQLSTATES) -> bool:
    """A deadlock or serialization failure: nothing is wrong with the writes, retry them."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        code = getattr(cur, "sqlstate", None) or getattr(cur, "pgcode", None)
        if code in codes:
            return True
        cur = getattr(cur, "orig", None) or cur.__cause__
    return False


class BatchWriter:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, max_batch: int = 500,
                 urgent_kinds: frozenset[str] = frozenset({"intake", "mark"}),
                 on_conflict: Any = None) -> None:
        #: intake (pushes waiting for their ack) and outbox marks (a reply WeChat accepted is
        #: not ``sent`` until its mark commits: keep that window short) go first
        self.urgent_kinds = urgent_kinds
        self.on_conflict = on_conflict or (lambda: None)
        self.conflicts = 0
        self._sessionmaker = sessionmaker
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[WriteOp, asyncio.Future[Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._busy = False
        self.commits = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="csbot-batch-writer")

    async def close(self, timeout: float = 5.0) -> None:
        """Commit what is queued (at most ``timeout`` seconds), then stop."""
        if self._task is not None:
            deadline = time.monotonic() + timeout
            while (self._busy or not self._queue.empty()) and time.monotonic() < deadline \
                    and not self._task.done():
                await asyncio.sleep(0.01)
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        while not self._queue.empty():
            _, fut = self._queue.get_nowait()
            if not fut.done():
                fut.set_exception(RuntimeError("store is shutting down"))

    async def run(self, op: WriteOp) -> Any:
        """Apply ``op`` in the next group commit and return its result once committed."""
        if self._task is None:
            raise RuntimeError("BatchWriter is not running")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((op, fut))
        return await fut

    async def _loop(self) -> None:
        while True:
            self._busy = False
            item = await self._queue.get()
            self._busy = True
            batch = [item]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # pushes waiting for their ack (and sent marks) go first, in a commit of their own:
            # an ack never waits behind the workers' bookkeeping
            urgent = [b for b in batch if b[0].batch_kind in self.urgent_kinds]
            if urgent and len(urgent) < len(batch):
                rest = [b for b in batch if b[0].batch_kind not in self.urgent_kinds]
                await self._commit(urgent)
                await self._commit(rest)
            else:
                await self._commit(batch)

    async def _commit(self, batch: list[tuple[WriteOp, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._apply_retrying(batch)
        except asyncio.CancelledError:
            for _, fut in batch:
                if not fut.done():
                    fut.set_exception(RuntimeError("store is shutting down"))
            raise
        except Exception:
            log.warning("group commit of %d writes failed; retrying them one by one", len(batch),
                        exc_info=True)
            for single in batch:
                try:
                    res = await self._apply_retrying([single])
                    if not single[1].done():
                        single[1].set_result(res[0])
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the write itself is bad, or the store is down
                    if not single[1].done():
                        single[1].set_exception(exc)
            return
        for (_, fut), res in zip(batch, results):
            if not fut.done():
                fut.set_result(res)

    async def _apply_retrying(self, batch: list[tuple[WriteOp, asyncio.Future[Any]]]) -> list[Any]:
        for attempt in range(3):
            try:
                return await self._apply(batch)
            except Exception as exc:
                if attempt == 2 or not is_lock_conflict(exc):
                    raise
                self.conflicts += 1
                self.on_conflict()
                log.info("group commit of %d writes lost a lock race (%s); retrying it",
                         len(batch), "deadlock" if is_lock_conflict(exc, ("40P01",)) else "serialization failure")
                await asyncio.sleep(0.005 * (attempt + 1))
        raise AssertionError("unreachable")

    async def _apply(self, batch: list[tuple[WriteOp, asyncio.Future[Any]]]) -> list[Any]:
        groups: dict[str, list[int]] = {}
        for i, (op, _) in enumerate(batch):
            groups.setdefault(op.batch_kind, []).append(i)
        order = sorted(groups, key=lambda k: KIND_ORDER.index(k) if k in KIND_ORDER else len(KIND_ORDER))
        named = {lane for op, _ in batch for lane in (getattr(op, "locks", None) or _no_locks)()}
        results: list[Any] = [None] * len(batch)
        async with self._sessionmaker() as session:
            async with session.begin():
                if named and session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
                    await _lock_conversations(session, named)
                for kind in order:
                    indexes = groups[kind]
                    ops = [batch[i][0] for i in indexes]
                    out = await ops[0].apply_many(session, ops)
                    for i, r in zip(indexes, out):
                        results[i] = r
        self.commits += 1
        return results


def _no_locks() -> tuple[int, ...]:
    return ()


_LOCK_STMTS: dict[bool, Any] = {}


async def _lock_conversations(session: AsyncSession, named: set[Any]) -> None:
    """SELECT … FOR UPDATE of the conversations ops named, by id or by (app, openid), in id order.

    Ops that know their lane's row name its id; others (an inline outcome, a claim, a
    ``context.reply``) name the user. Either way every row is locked here, in one id order.
    """
    ids = sorted(n for n in named if isinstance(n, int))
    keys = sorted(n for n in named if not isinstance(n, int))
    stmt = _LOCK_STMTS.get(bool(keys))
    if stmt is None:
        from sqlalchemy import bindparam, select, tuple_

        from csbot.store.models import Conversation

        c = Conversation.__table__.c
        where = c.id.in_(bindparam("ids", expanding=True))
        if keys:
            where = where | tuple_(c.app, c.openid).in_(bindparam("keys", expanding=True))
        stmt = _LOCK_STMTS[bool(keys)] = select(c.id).where(where).order_by(c.id).with_for_update()
    await session.execute(stmt, {"ids": ids, "keys": keys} if keys else {"ids": ids})
