"""One SQLite and one PostgreSQL database per test session for the database tests.

The property tests run hundreds of examples; they share these stores (each example uses its
own collection) and run their coroutines on a private event loop, so hypothesis drives a
plain synchronous test.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from typing import Any, Iterator

import pytest
from sqlalchemy import event

from csbot.cloud.database.store import DocumentStore
from csbot.store import make_engine
from csbot.store.migrate import upgrade

PG_SKIP_REASON = ("PostgreSQL tests need CSBOT_TEST_DATABASE_URL "
                  "(e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test); .ci/run sets it")


class Backend:
    """A store on its own event loop; ``run(coro)`` runs a coroutine to completion."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        self.url = url
        self.loop = asyncio.new_event_loop()
        self.engine = make_engine(url)
        if name == "sqlite":  # test data: no fsync per commit (the CPU and disk are shared)
            @event.listens_for(self.engine.sync_engine, "connect")
            def _fast(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.cursor().execute("PRAGMA synchronous=OFF")
        self.store = DocumentStore(self.engine)

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        self.run(self.engine.dispose())
        self.loop.close()


def _pg_admin(sql: str) -> None:
    import asyncpg

    async def go() -> None:
        conn = await asyncpg.connect(os.environ["CSBOT_TEST_DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(go())
    finally:
        loop.close()


@pytest.fixture(scope="session")
def sqlite_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    url = f"sqlite+aiosqlite:///{tmp_path_factory.mktemp('clouddb') / 'db.sqlite'}"
    upgrade(url)
    backend = Backend("sqlite", url)
    yield backend
    backend.close()


@pytest.fixture(scope="session")
def pg_backend() -> Iterator[Backend]:
    base = os.environ.get("CSBOT_TEST_DATABASE_URL")
    if not base:
        pytest.skip(PG_SKIP_REASON)
    name = f"csbot_cdb_{uuid.uuid4().hex[:10]}"
    _pg_admin(f'CREATE DATABASE "{name}"')
    _pg_admin(f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    url = f"{base.rpartition('/')[0]}/{name}"
    upgrade(url)
    backend = Backend("postgresql", url)
    yield backend
    backend.close()
    _pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> Backend:
    return request.getfixturevalue(f"{'sqlite' if request.param == 'sqlite' else 'pg'}_backend")
