"""Full-text search over message text: the one search the CLI, the API and the console use.

Semantics: a case-insensitive substring match of the whole query against ``messages.text``
(the stored text of a message: its content, or the description of media, cards and events).

- SQLite: the FTS5 external-content table ``messages_fts`` (migration 0002). With the trigram
  tokenizer (SQLite 3.34+) a query of 3 or more characters is answered from the index, Chinese
  included; shorter queries fall back to a scan (``LIKE``), which is correct but not indexed.
  With the unicode61 tokenizer (older SQLite) the query is matched as a phrase of words.
- PostgreSQL: ``ILIKE '%query%'``, served by the pg_trgm GIN index ``ix_messages_text_trgm``
  (3 or more characters, like trigram FTS5).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, literal_column, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from csbot.store import Message

#: engine URL -> "trigram" | "unicode61" | "" (no FTS table), found once per database
_FTS_KIND: dict[str, str] = {}

MAX_QUERY_LENGTH = 200


def escape_like(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def fts_phrase(value: str) -> str:
    """``value`` as one FTS5 phrase string: quoted, inner quotes doubled (no query syntax).

    A NUL would end FTS5's string early ("unterminated string"): it is dropped.
    """
    return '"' + value.replace("\x00", "").replace('"', '""') + '"'


async def fts_kind(session: AsyncSession) -> str:
    """Which FTS5 tokenizer the SQLite store's ``messages_fts`` uses ("" when there is none)."""
    bind = session.bind
    key = str(bind.url)  # type: ignore[union-attr]
    if key not in _FTS_KIND:
        sql = (await session.execute(text(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'messages_fts'"))).scalar()
        _FTS_KIND[key] = "" if not sql else ("trigram" if "trigram" in sql else "unicode61")
    return _FTS_KIND[key]


async def matching_ids(session: AsyncSession, query: str) -> Select[Any]:
    """A SELECT of the ids of messages whose text matches ``query`` (for ``Message.id.in_``)."""
    # a NUL is no text (PostgreSQL refuses it, FTS5 reads it as the end of the string)
    query = query.replace("\x00", "").strip()[:MAX_QUERY_LENGTH]
    dialect = session.bind.dialect.name  # type: ignore[union-attr]
    if dialect == "sqlite":
        kind = await fts_kind(session)
        if kind == "unicode61" or (kind == "trigram" and len(query) >= 3):
            return (select(literal_column("rowid")).select_from(text("messages_fts"))
                    .where(text("messages_fts MATCH :fts_q").bindparams(fts_q=fts_phrase(query))))
        return select(Message.id).where(_like(query))
    return select(Message.id).where(Message.text.ilike(f"%{escape_like(query)}%", escape="\\"))


def _like(query: str) -> ColumnElement[bool]:
    # SQLite's LIKE is case-insensitive for ASCII, like the trigram tokenizer's default
    return Message.text.like(f"%{escape_like(query)}%", escape="\\")
