"""Where media a customer sends are kept: in cloud storage, by a fileID on the message row.

WeChat's temporary media live 3 days; a conversation kept for review must outlive that, so an
image is fetched once (``get_temp_media``, else its ``PicUrl``) and kept in
:mod:`csbot.cloud.storage` at ``inbox/<openid>/<message id>-<tag>.<ext>``. The tag is an HMAC
of the message, so the path is the same on every re-run (a re-handled push overwrites, never
duplicates) yet cannot be guessed by another customer (storage's default read rule is open).
The file belongs to the server side: the customer cannot delete or overwrite it.

Before storage existed, images were kept under ``CSBOT_DATA_DIR/media`` and linked by
``media_path``; :func:`adopt_legacy_media` moves those into storage at start.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
from pathlib import Path
from typing import Any, Protocol

import aiohttp

log = logging.getLogger("csbot.media")

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
_EXT = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp"}


class MediaStore(Protocol):
    async def put(self, key: str, data: bytes) -> str: ...

    async def get(self, key: str) -> bytes: ...


class LocalMediaStore:
    """Files under ``root``; keys are relative paths made of safe characters only.

    Kept to read (and adopt) media stored before cloud storage; new media go to storage.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_of(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if not path.is_relative_to(self.root.resolve()):
            raise ValueError("media key escapes the store")
        return path

    async def put(self, key: str, data: bytes) -> str:
        path = self.path_of(key)

        def write() -> None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(path.suffix + ".part")
            tmp.write_bytes(data)
            tmp.replace(path)

        await asyncio.to_thread(write)
        return key

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self.path_of(key).read_bytes)


def image_extension(data: bytes) -> str:
    """By the bytes, not by what the sender claims: the console shows it with this type."""
    if data.startswith(b"\x89PNG"):
        return ".png"
    if data.startswith(b"GIF8"):
        return ".gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    return ".jpg"


def customer_media_path(storage: Any, app: str, openid: str, message_id: int, data: bytes) -> str:
    """``inbox/<openid>/<id>-<tag>.<ext>``: stable for one message, unguessable for others."""
    tag = hmac.new(storage.signing_key, f"inbox\n{app}\n{message_id}".encode(), hashlib.sha256).hexdigest()[:16]
    return f"inbox/{_SAFE.sub('_', openid)}/{message_id}-{tag}{image_extension(data)}"


async def keep_customer_media(storage: Any, app: str, openid: str, message_id: int, data: bytes) -> str:
    """Store media a customer sent; returns its fileID (for ``messages.file_id``)."""
    path = customer_media_path(storage, app, openid, message_id, data)
    stored = await storage.upload(app, path, data)
    return str(stored.file_id)


async def adopt_legacy_media(storage: Any, sessionmaker: Any, legacy_root: Path, batch: int = 100) -> int:
    """Move images kept before storage existed (``media_path``) into storage; returns how many.

    Idempotent and safe in several processes at once: the path is the same for a message, and
    a row is only given a fileID it does not have yet. The old files are left in place (the
    README says when ``CSBOT_DATA_DIR/media`` may be removed); a missing one is skipped.
    """
    from sqlalchemy import select, update

    from csbot.store.models import Message

    legacy = LocalMediaStore(legacy_root)
    adopted = 0
    after = 0
    while True:
        async with sessionmaker() as s:
            rows = (await s.execute(
                select(Message.id, Message.app, Message.openid, Message.media_path)
                .where(Message.media_path.is_not(None), Message.file_id.is_(None), Message.id > after)
                .order_by(Message.id).limit(batch))).all()
        if not rows:
            return adopted
        for row in rows:
            after = row.id
            try:
                data = await legacy.get(row.media_path)
            except (OSError, ValueError):
                log.warning("media of message %s (%s) is missing; left as it is", row.id, row.media_path)
                continue
            file_id = await keep_customer_media(storage, row.app, row.openid, row.id, data)
            async with sessionmaker() as s, s.begin():
                await s.execute(update(Message).where(Message.id == row.id, Message.file_id.is_(None))
                                .values(file_id=file_id))
            adopted += 1


async def fetch_user_image(openapi: Any, event: dict[str, Any], timeout: float = 10.0) -> bytes | None:
    """The bytes of an image a user sent: by MediaId through the API, else by PicUrl."""
    media_id = event.get("MediaId")
    if media_id and openapi is not None:
        try:
            return await openapi.customer_service_message.get_temp_media(media_id=media_id)
        except Exception as exc:
            log.warning("get_temp_media failed for an image push: %s", exc)
    url = event.get("PicUrl")
    if isinstance(url, str) and url.startswith(("http://", "https://")):
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as s:
                async with s.get(url) as resp:
                    if resp.status == 200:
                        return await resp.read()
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("fetching PicUrl of an image push failed: %s", exc)
    return None
