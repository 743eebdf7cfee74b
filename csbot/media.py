"""Where media a customer sends are kept: a small storage interface, a local directory by default.

WeChat's temporary media live 3 days; a conversation kept for review must outlive that, so an
image is fetched once (``get_temp_media``, else its ``PicUrl``) and stored here, and the message
row links to it by a relative key.
"""

from __future__ import annotations

import asyncio
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
    """Files under ``root``; keys are relative paths made of safe characters only."""

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


def media_key(app: str, openid: str, message_id: int, data: bytes) -> str:
    ext = ".jpg"
    if data.startswith(b"\x89PNG"):
        ext = ".png"
    elif data.startswith(b"GIF8"):
        ext = ".gif"
    return f"{_SAFE.sub('_', app)}/{_SAFE.sub('_', openid)}/{message_id}{ext}"


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
