"""Storage fixtures: a Storage on a migrated store (SQLite, and PostgreSQL when configured).

Imported by the storage tests (``from .storage_fixtures import ...``), not a conftest, so the
cloud tests of other services keep their own fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from csbot.cloud.storage import LocalBackend, Storage
from csbot.store.engine import make_engine, make_sessionmaker
from csbot.store.migrate import upgrade_async


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path: Path) -> str:
    """An empty store of each kind (PostgreSQL: skipped without CSBOT_TEST_DATABASE_URL)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'csbot.db'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
async def storage(store_url: str, tmp_path: Path):
    await upgrade_async(store_url)
    engine = make_engine(store_url)
    store = Storage(make_sessionmaker(engine), LocalBackend(tmp_path / "storage"), signing_key=b"k" * 32,
                    max_file_size=1024 * 1024, public_url="https://csbot.example", apps=["default", "shop"])
    yield store
    await engine.dispose()


def blobs(storage: Storage) -> list[Path]:
    """Every file the backend holds (finished blobs and leftovers alike)."""
    root = storage.backend.root  # type: ignore[attr-defined]
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []
