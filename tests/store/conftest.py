"""The store with its group-commit writer running, on SQLite and on PostgreSQL."""

import pytest

from csbot.store import make_engine, make_sessionmaker
from csbot.store.batch import BatchWriter
from csbot.store.migrate import upgrade_async


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request, tmp_path):
    """(engine, writer) on a fresh, migrated store of each kind."""
    if request.param == "sqlite":
        url = f"sqlite+aiosqlite:///{tmp_path / 'csbot.db'}"
    else:
        from tests.conftest import create_test_database

        url, drop = await create_test_database()
    await upgrade_async(url)
    engine = make_engine(url)
    writer = BatchWriter(make_sessionmaker(engine))
    writer.start()
    yield engine, writer
    await writer.close()
    await engine.dispose()
    if request.param == "postgresql":
        await drop()
