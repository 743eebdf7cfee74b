"""Engine and session factory for SQLite (aiosqlite, WAL) and PostgreSQL (asyncpg)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine, AsyncSession


def make_engine(url: str, **kwargs: Any) -> AsyncEngine:
    """Create the async engine; SQLite gets WAL, full fsync and a busy timeout.

    Statement parameters are customer text: ``hide_parameters`` keeps them out of every
    exception message, so a failed write never logs what a customer wrote.
    """
    kwargs.setdefault("hide_parameters", True)
    if url.startswith("sqlite"):
        from csbot.cloud.database.matcher import regexp_sql_function  # the cloud database's $regex

        from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
        from sqlalchemy.engine import make_url

        from csbot.store.sqlite_driver import connector

        # the URL's file and options, as SQLAlchemy would pass them to aiosqlite.connect
        cargs, cparams = SQLiteDialect_aiosqlite().create_connect_args(make_url(url))
        cparams = {**cparams, "timeout": 30, **kwargs.pop("connect_args", {})}
        # a connection is a thread, a file handle and its pragmas: keep enough of them open that
        # the send lanes' and workers' short reads never open and close one each (overflow churn)
        kwargs.setdefault("pool_size", 32)
        kwargs.setdefault("max_overflow", 32)
        engine = create_async_engine(url, async_creator=lambda: connector(*cargs, **cparams), **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=30000")
            # WAL is a property of the file, kept once set: asking to switch again takes a lock
            # (and fails at once, "database is locked", while many connections open together)
            cur.execute("PRAGMA journal_mode")
            if str(cur.fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
            # the cloud database's $regex (csbot.cloud.database): Python's re, as its reference matcher
            dbapi_conn.create_function("csbot_regexp", 3, regexp_sql_function, deterministic=True)
            dbapi_conn.create_function("csbot_regexp", 4, regexp_sql_function)

        return engine
    kwargs.setdefault("pool_size", 16)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_pre_ping", True)
    # JIT compiling pays off for long analytic queries only; the cloud database's nested JSON
    # conditions have high cost estimates and would spend seconds compiling short queries
    connect_args = kwargs.setdefault("connect_args", {})
    connect_args.setdefault("server_settings", {}).setdefault("jit", "off")
    return create_async_engine(url, **kwargs)


def read_connection(sessionmaker: async_sessionmaker[AsyncSession]) -> Any:
    """A plain connection of ``sessionmaker``'s engine, for hot-path reads: no ORM session
    (nothing to track), and on SQLite no rollback round trip when it goes back to the pool."""
    return sessionmaker.kw["bind"].connect()


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


def dialect_insert(engine_or_name: Any):
    """The dialect's INSERT construct (for ON CONFLICT DO NOTHING)."""
    name = engine_or_name if isinstance(engine_or_name, str) else engine_or_name.dialect.name
    if name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    return insert


class StoreInUse(RuntimeError):
    """Another ``csbot serve`` already serves this SQLite file."""


def sqlite_path(url: str) -> str | None:
    """The file of a SQLite URL; None for an in-memory database."""
    from sqlalchemy.engine import make_url

    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file::memory:"):
        return None
    return database


def hold_sqlite_file(url: str) -> Any:
    """Make this process the only one serving the SQLite file at ``url``.

    SQLite serves one process: its leases are taken over at start, as if every earlier holder
    were dead. A second ``csbot serve`` on the same file would clear the first one's leases
    and send its replies twice, so it is refused. An exclusive ``flock`` on ``FILE.serve-lock``,
    held open for the process's life (the kernel drops it when the process dies, even by
    SIGKILL, so a crash never leaves a stale lock behind). Returns the open lock file.
    """
    import fcntl
    import os

    path = sqlite_path(url)
    if path is None:
        return None
    lock_path = os.path.abspath(path) + ".serve-lock"
    handle = open(lock_path, "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise StoreInUse(
            f"the SQLite database {path} is already served by {holder}; SQLite serves one "
            f"`csbot serve` at a time (stop that one first, or use PostgreSQL to run several)") from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"csbot serve (pid {os.getpid()})\n")
    handle.flush()
    return handle
