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

        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)

        @event.listens_for(engine.sync_engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()
            # the cloud database's $regex (csbot.cloud.database): Python's re, as its reference matcher
            dbapi_conn.create_function("csbot_regexp", 3, regexp_sql_function, deterministic=True)

        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_pre_ping", True)
    # JIT compiling pays off for long analytic queries only; the cloud database's nested JSON
    # conditions have high cost estimates and would spend seconds compiling short queries
    connect_args = kwargs.setdefault("connect_args", {})
    connect_args.setdefault("server_settings", {}).setdefault("jit", "off")
    return create_async_engine(url, **kwargs)


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
