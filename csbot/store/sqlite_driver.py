"""aiosqlite with one thread hop per statement.

aiosqlite runs each sqlite3 call on the connection's own thread and hands the result back to
the event loop. SQLAlchemy's adapter makes four such calls per statement (create the cursor,
execute, fetch, close), each a queue hand-off, a thread wake-up and a GIL transfer; on the
webhook's hot path that overhead cost more event-loop time than the SQL itself. Here a
cursor's ``execute`` does all four in one call: it runs the statement, fetches up to
``PREFETCH`` rows and closes the sqlite3 cursor when nothing is left. A larger result (a
streamed export) keeps its cursor open and is fetched in further calls, so memory stays
bounded.

A connection that only read has no transaction to roll back when the pool takes it back: that
call costs no hop either. Everything else (connections, transactions, the thread) is aiosqlite's.
"""

from __future__ import annotations

import sqlite3
from typing import Any, Sequence

import aiosqlite

#: rows fetched together with the statement; more are fetched on demand
PREFETCH = 512


class OneHopCursor:
    """The cursor SQLAlchemy's aiosqlite adapter drives (awaitable methods, DBAPI attributes)."""

    arraysize = 1

    def __init__(self, connection: "OneHopConnection") -> None:
        self._connection = connection
        self._open: sqlite3.Cursor | None = None
        self._rows: list[Any] = []
        self.description: Any = None
        self.rowcount = -1
        self.lastrowid: int | None = None

    async def __aenter__(self) -> "OneHopCursor":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def execute(self, sql: str, parameters: Any = None) -> "OneHopCursor":
        if self._open is not None:
            await self.close()
        conn = self._connection

        def run() -> tuple[Any, list[Any], int, int | None, sqlite3.Cursor | None]:
            cur = conn._conn.cursor()
            try:
                cur.execute(sql) if parameters is None else cur.execute(sql, parameters)
                desc = cur.description
                rows = cur.fetchmany(PREFETCH) if desc is not None else []
            except BaseException:
                cur.close()
                raise
            if desc is None or len(rows) < PREFETCH:
                cur.close()
                return desc, rows, cur.rowcount, cur.lastrowid, None
            return desc, rows, cur.rowcount, cur.lastrowid, cur

        self.description, self._rows, self.rowcount, self.lastrowid, self._open = await conn._execute(run)
        return self

    async def executemany(self, sql: str, seq_of_parameters: Sequence[Any]) -> "OneHopCursor":
        if self._open is not None:
            await self.close()
        conn = self._connection

        def run() -> tuple[int, int | None]:
            cur = conn._conn.cursor()
            try:
                cur.executemany(sql, seq_of_parameters)
                return cur.rowcount, cur.lastrowid
            finally:
                cur.close()

        self.description, self._rows, self._open = None, [], None
        self.rowcount, self.lastrowid = await conn._execute(run)
        return self

    async def _more(self, size: int | None) -> list[Any]:
        """Rows still in the open sqlite3 cursor (all when ``size`` is None)."""
        cur = self._open
        if cur is None:
            return []

        def run() -> tuple[list[Any], int, bool]:
            rows = cur.fetchall() if size is None else cur.fetchmany(size)
            done = size is None or len(rows) < size
            if done:
                cur.close()
            return rows, cur.rowcount, done

        rows, self.rowcount, done = await self._connection._execute(run)
        if done:
            self._open = None
        return rows

    async def fetchall(self) -> list[Any]:
        rows, self._rows = self._rows, []
        if self._open is not None:
            rows.extend(await self._more(None))
        return rows

    async def fetchmany(self, size: int | None = None) -> list[Any]:
        size = size or self.arraysize
        if len(self._rows) < size and self._open is not None:
            self._rows.extend(await self._more(max(size - len(self._rows), PREFETCH)))
        rows, self._rows = self._rows[:size], self._rows[size:]
        return rows

    async def fetchone(self) -> Any:
        rows = await self.fetchmany(1)
        return rows[0] if rows else None

    async def close(self) -> None:
        self._rows = []
        cur, self._open = self._open, None
        if cur is not None:
            await self._connection._execute(cur.close)

    async def setinputsizes(self, *sizes: Any) -> None:
        return None


class OneHopConnection(aiosqlite.Connection):
    """An aiosqlite connection whose cursors cost one thread hop per statement."""

    def cursor(self) -> OneHopCursor:  # type: ignore[override]
        return OneHopCursor(self)

    async def rollback(self) -> None:
        """No hop when there is nothing to roll back: the pool rolls back every connection it
        takes back, and most of them only read (sqlite3 opens a transaction only for writes)."""
        raw = self._connection
        if raw is not None and not raw.in_transaction:
            return
        await super().rollback()


def connector(database: str, **kwargs: Any) -> OneHopConnection:
    """An unstarted connection (SQLAlchemy awaits it), as ``aiosqlite.connect`` makes one."""
    def connect() -> sqlite3.Connection:
        return sqlite3.connect(database, **kwargs)

    conn = OneHopConnection(connect, 64)
    conn._thread.daemon = True  # as SQLAlchemy does for aiosqlite: never block interpreter exit
    return conn
