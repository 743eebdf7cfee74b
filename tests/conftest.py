"""Shared fixtures: a fresh PostgreSQL database per test when CSBOT_TEST_DATABASE_URL is set."""

import os
import uuid

import pytest

try:
    import pytest_asyncio

    _async_fixture = pytest_asyncio.fixture
except ImportError:  # pragma: no cover
    _async_fixture = pytest.fixture

PG_SKIP_REASON = ("PostgreSQL tests need CSBOT_TEST_DATABASE_URL "
                  "(e.g. postgresql+asyncpg://postgres@127.0.0.1:5432/test); .ci/run sets it")


async def _admin_connect(url: str):
    import asyncpg

    return await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://"))


async def create_test_database() -> tuple[str, "object"]:
    """A fresh, empty PostgreSQL database: its URL and an async ``drop()``; skips when unset."""
    base = os.environ.get("CSBOT_TEST_DATABASE_URL")
    if not base:
        pytest.skip(PG_SKIP_REASON)
    name = f"csbot_t_{uuid.uuid4().hex[:12]}"
    conn = await _admin_connect(base)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()

    async def drop() -> None:
        conn = await _admin_connect(base)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    head, _, _ = base.rpartition("/")
    return f"{head}/{name}", drop


@_async_fixture
async def pg_url():
    """URL of a fresh, empty PostgreSQL database, dropped afterwards."""
    url, drop = await create_test_database()
    yield url
    await drop()
