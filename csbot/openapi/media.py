"""Reuse uploaded images: a temp media_id lives 3 days, so the same picture is uploaded once."""

from __future__ import annotations

import asyncio
import hashlib
import logging
from typing import TYPE_CHECKING

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from csbot.store.engine import dialect_insert
from csbot.store.models import MediaCache

if TYPE_CHECKING:
    from csbot.openapi.client import OpenAPI

__all__ = ["upload_image_cached", "MEDIA_LIFETIME", "MIN_REMAINING"]

log = logging.getLogger("csbot.openapi.media")

#: WeChat keeps temporary media for 3 days
MEDIA_LIFETIME = 3 * 86400.0
#: a cached media_id is reused only while it has more than this left (a queued send may
#: wait in the outbox for a while before it uses the id)
MIN_REMAINING = 3600.0


async def upload_image_cached(
    openapi: OpenAPI, sessionmaker: async_sessionmaker[AsyncSession], data: bytes
) -> str:
    """The media_id of image ``data`` for this app: cached (by sha256) or freshly uploaded."""
    digest = hashlib.sha256(data).hexdigest()
    app = openapi.app.name
    lock = openapi.media_locks.setdefault(digest, asyncio.Lock())
    try:
        async with lock:
            async with sessionmaker() as session:
                row = (
                    await session.execute(
                        select(MediaCache.media_id, MediaCache.expires_at).where(
                            MediaCache.app == app, MediaCache.sha256 == digest
                        )
                    )
                ).one_or_none()
            if row is not None and row.expires_at - openapi.clock() > MIN_REMAINING:
                return str(row.media_id)
            # Expiry counts from before the upload: WeChat's 3 days start no earlier.
            started = openapi.clock()
            answer = await openapi.customer_service_message.upload_temp_media(type="image", media=data)
            media_id = str(answer["media_id"])
            expires_at = started + MEDIA_LIFETIME
            bind = sessionmaker.kw.get("bind")
            insert = dialect_insert(bind.dialect.name if bind is not None else "sqlite")
            stmt = insert(MediaCache).values(
                app=app, sha256=digest, media_type="image", media_id=media_id, expires_at=expires_at
            )
            stmt = stmt.on_conflict_do_update(
                index_elements=["app", "sha256"],
                set_={"media_id": media_id, "expires_at": expires_at, "media_type": "image"},
            )
            async with sessionmaker() as session, session.begin():
                await session.execute(stmt)
            log.debug("app %s: uploaded image %s… as temp media", app, digest[:12])
            return media_id
    finally:
        if not lock.locked() and openapi.media_locks.get(digest) is lock:
            openapi.media_locks.pop(digest, None)
