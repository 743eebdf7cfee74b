"""Alembic, driven from code: ``csbot migrate`` and the start-up check of ``csbot serve``."""

from __future__ import annotations

import asyncio
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine


class SchemaNotCurrent(RuntimeError):
    """The database schema is behind the code's migrations."""


def alembic_config(database_url: str) -> Config:
    script_location = Path(str(resources.files("csbot.migrations")))
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location))
    # '%' would be read as interpolation by configparser
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    cfg.attributes["database_url"] = database_url
    return cfg


def head_revision(database_url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()


def upgrade(database_url: str, revision: str = "head") -> None:
    """Run pending migrations. Blocking: call from a thread when a loop is running."""
    command.upgrade(alembic_config(database_url), revision)


async def upgrade_async(database_url: str) -> None:
    await asyncio.to_thread(upgrade, database_url)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def ensure_schema(engine: AsyncEngine, database_url: str, *, auto_upgrade: bool) -> None:
    """Make sure the schema is at head: upgrade when allowed, else explain what to run."""
    head = head_revision(database_url)
    current = await current_revision(engine)
    if current == head:
        return
    if auto_upgrade:
        await upgrade_async(database_url)
        return
    raise SchemaNotCurrent(
        f"the database schema is at {current or 'nothing (empty database)'} but this csbot needs "
        f"{head}; run `csbot migrate` against this database first"
    )
