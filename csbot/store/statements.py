"""Statements built once per dialect, so SQLAlchemy's compiled cache always hits on hot paths."""

from __future__ import annotations

from typing import Any, Callable

from sqlalchemy.ext.asyncio import AsyncSession

from csbot.store.engine import dialect_insert

_statements: dict[tuple[str, str], Any] = {}


def cached(dialect: str, name: str, build: Callable[[Any], Any]) -> Any:
    """The statement ``name`` for ``dialect``; ``build`` gets the dialect's INSERT construct."""
    key = (dialect, name)
    stmt = _statements.get(key)
    if stmt is None:
        stmt = _statements[key] = build(dialect_insert(dialect))
    return stmt


def dialect_of(session: AsyncSession) -> str:
    return session.bind.dialect.name  # type: ignore[union-attr]
