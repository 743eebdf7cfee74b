"""Group commit: many small writes share one transaction and one commit.

Per-commit overhead of the async DB layer (about 1 ms of CPU) and SQLite's single writer make
one-commit-per-push slow. Writers submit an operation and await its result; one loop takes
everything queued, applies it in one transaction and commits once. Every caller still waits
for the commit that holds its write, so "durable before acknowledged" is kept.

If a batch fails, its operations are retried one transaction each, so a single bad write fails
alone instead of taking its neighbours down.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol, Sequence

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

log = logging.getLogger("csbot.store")


class WriteOp(Protocol):
    """One write. Ops of the same ``batch_kind`` are applied together by ``apply_many``."""

    batch_kind: str

    async def apply_many(self, session: AsyncSession, ops: Sequence["WriteOp"]) -> list[Any]: ...


class BatchWriter:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], *, max_batch: int = 500,
                 urgent_kinds: frozenset[str] = frozenset({"intake"})) -> None:
        self.urgent_kinds = urgent_kinds
        self._sessionmaker = sessionmaker
        self._max_batch = max_batch
        self._queue: asyncio.Queue[tuple[WriteOp, asyncio.Future[Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="csbot-batch-writer")

    async def close(self) -> None:
        if self._task is not None:
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
            item = await self._queue.get()
            batch = [item]
            while len(batch) < self._max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # pushes waiting for their ack go first, in a commit of their own: an ack never waits
            # behind the workers' bookkeeping
            urgent = [b for b in batch if b[0].batch_kind in self.urgent_kinds]
            if urgent and len(urgent) < len(batch):
                rest = [b for b in batch if b[0].batch_kind not in self.urgent_kinds]
                await self._commit(urgent)
                await self._commit(rest)
            else:
                await self._commit(batch)

    async def _commit(self, batch: list[tuple[WriteOp, asyncio.Future[Any]]]) -> None:
        try:
            results = await self._apply(batch)
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
                    res = await self._apply([single])
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

    async def _apply(self, batch: list[tuple[WriteOp, asyncio.Future[Any]]]) -> list[Any]:
        groups: dict[str, list[int]] = {}
        for i, (op, _) in enumerate(batch):
            groups.setdefault(op.batch_kind, []).append(i)
        results: list[Any] = [None] * len(batch)
        async with self._sessionmaker() as session:
            async with session.begin():
                for indexes in groups.values():
                    ops = [batch[i][0] for i in indexes]
                    out = await ops[0].apply_many(session, ops)
                    for i, r in zip(indexes, out):
                        results[i] = r
        self.commits += 1
        return results
