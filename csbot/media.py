"""Where media a customer sends are kept (cloud storage, by a fileID on the message row), and
how they are fetched without SSRF.

WeChat's temporary media live 3 days; a conversation kept for review must outlive that, so an
image is fetched once and kept in :mod:`csbot.cloud.storage` at
``inbox/<openid>/<message id>-<tag>.<ext>``. The tag is an HMAC of the message, so the path is
the same on every re-run (a re-handled push overwrites, never duplicates) yet cannot be guessed
by another customer (storage's default read rule is open). The file belongs to the server side:
the customer cannot delete or overwrite it.

Fetching is the dangerous part: a push names the URL. So an image comes through WeChat's API
(``get_temp_media`` with the push's MediaId) and only failing that from its ``PicUrl``, and
only when the push was authenticated (an app that accepts encrypted pushes only; a plaintext
push's body is covered by no signature), only from WeChat's image CDN hosts, never from a
private, loopback, link-local or otherwise non-public address (checked on the resolved
addresses of every connection, so every redirect hop and a DNS answer that changes are
covered), with a byte cap and an ``image/*`` check, through one shared session.

Before storage existed, images were kept under ``CSBOT_DATA_DIR/media`` and linked by
``media_path``; :func:`adopt_legacy_media` moves those into storage at start.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

log = logging.getLogger("csbot.media")

_SAFE = re.compile(r"[^A-Za-z0-9._-]")
#: WeChat's image CDN: the hosts a push's PicUrl points at (the protocol doc says only
#: "system-generated image URL"; these are the hosts WeChat serves message images from)
WECHAT_IMAGE_HOSTS = frozenset({"mmbiz.qpic.cn", "mmbiz.qlogo.cn", "mmecoa.qpic.cn", "wx.qlogo.cn",
                                "thirdwx.qlogo.cn"})
#: the largest image kept (WeChat's own limit for an image message is 10 MB)
MAX_IMAGE_BYTES = 10 * 1024 * 1024
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
#: NAT64's well-known prefix carries an IPv4 address in its last 32 bits
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def is_public_address(host: str) -> bool:
    """True only for a globally routable unicast address (IPv4-in-IPv6 forms unwrapped)."""
    try:
        addr = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = addr.ipv4_mapped or addr.sixtofour or (addr.teredo[1] if addr.teredo else None)
        if embedded is None and addr in _NAT64:
            embedded = ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
        if embedded is not None:
            addr = embedded
    return addr.is_global and not addr.is_multicast


class MediaRefused(Exception):
    """A PicUrl that csbot will not fetch, or an answer it will not keep; the reason is loggable."""


@dataclass(frozen=True)
class FetchPolicy:
    """What an image fetch may reach. Tests narrow ``is_public`` to pose loopback as public."""

    hosts: frozenset[str] = WECHAT_IMAGE_HOSTS
    #: None: any port; WeChat's CDN URLs carry none
    ports: frozenset[int] | None = frozenset({80, 443})
    is_public: Callable[[str], bool] = is_public_address
    max_bytes: int = MAX_IMAGE_BYTES
    max_redirects: int = 3
    timeout: float = 10.0


class PublicOnlyResolver(AbstractResolver):
    """The default resolver, then every non-public address dropped: a connection can only reach
    the public internet, whatever the DNS answer is at the moment of connecting."""

    def __init__(self, is_public: Callable[[str], bool] = is_public_address,
                 inner: AbstractResolver | None = None) -> None:
        self._inner = inner or aiohttp.ThreadedResolver()
        self._is_public = is_public

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = [r for r in await self._inner.resolve(host, port, family) if self._is_public(r["host"])]
        if not results:
            raise OSError(f"{host} resolves to no public address")
        return results

    async def close(self) -> None:
        await self._inner.close()


@dataclass
class MediaFetcher:
    """One shared HTTP session for customers' images, whose connections reach public addresses only."""

    policy: FetchPolicy = field(default_factory=FetchPolicy)
    resolver: AbstractResolver | None = None
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            resolver = PublicOnlyResolver(self.policy.is_public, self.resolver)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(resolver=resolver, limit=16),
                timeout=aiohttp.ClientTimeout(total=self.policy.timeout), trust_env=False)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def check_url(self, url: URL) -> None:
        """Refuse a URL that is not http(s) on one of WeChat's image hosts."""
        if url.scheme not in ("http", "https") or not url.host:
            raise MediaRefused("not an http(s) URL")
        host = url.host.rstrip(".").lower()
        if host not in self.policy.hosts:
            raise MediaRefused(f"host {host[:64]!r} is not one of WeChat's image hosts")
        if self.policy.ports is not None and url.port not in self.policy.ports:
            raise MediaRefused(f"port {url.port} is not allowed")
        if url.user is not None or url.password is not None:
            raise MediaRefused("a URL with credentials is not allowed")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            return
        if not self.policy.is_public(host):  # a literal address is never resolved: check it here
            raise MediaRefused("not a public address")

    async def fetch_image(self, url: str) -> bytes:
        """The bytes of the image at ``url``; raises MediaRefused or aiohttp/timeout errors."""
        target = URL(url)
        for _ in range(self.policy.max_redirects + 1):
            self.check_url(target)
            async with self._client().get(target, allow_redirects=False) as resp:
                if resp.status in _REDIRECTS:
                    location = resp.headers.get("Location")
                    if not location:
                        raise MediaRefused(f"HTTP {resp.status} without a Location")
                    target = resp.url.join(URL(location))
                    continue
                if resp.status != 200:
                    raise MediaRefused(f"HTTP {resp.status}")
                if not resp.content_type.startswith("image/"):
                    raise MediaRefused(f"answer is {resp.content_type[:64]!r}, not an image")
                if resp.content_length is not None and resp.content_length > self.policy.max_bytes:
                    raise MediaRefused(f"image is larger than {self.policy.max_bytes} bytes")
                data = bytearray()
                async for chunk in resp.content.iter_chunked(64 * 1024):
                    data += chunk
                    if len(data) > self.policy.max_bytes:
                        raise MediaRefused(f"image is larger than {self.policy.max_bytes} bytes")
                return bytes(data)
        raise MediaRefused(f"more than {self.policy.max_redirects} redirects")


def image_extension(data: bytes) -> str | None:
    """The file extension of an image by its magic bytes; None when it is no image csbot keeps."""
    if data.startswith(b"\xff\xd8\xff"):
        return ".jpg"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return ".png"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return ".gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    if data.startswith(b"BM"):
        return ".bmp"
    return None


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


def customer_media_path(storage: Any, app: str, openid: str, message_id: int, data: bytes) -> str:
    """``inbox/<openid>/<id>-<tag>.<ext>``: stable for one message, unguessable for others."""
    tag = hmac.new(storage.signing_key, f"inbox\n{app}\n{message_id}".encode(), hashlib.sha256).hexdigest()[:16]
    return f"inbox/{_SAFE.sub('_', openid)}/{message_id}-{tag}{image_extension(data) or '.jpg'}"


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


async def fetch_user_image(openapi: Any, event: dict[str, Any], *, fetcher: MediaFetcher | None = None,
                           authenticated: bool = False) -> bytes | None:
    """The bytes of an image a user sent: by MediaId through WeChat's API, else (for an
    authenticated push, with a ``fetcher``) by PicUrl under the fetcher's policy. Anything that
    is not an image of a known type, or is larger than the cap, is not kept."""
    max_bytes = fetcher.policy.max_bytes if fetcher is not None else MAX_IMAGE_BYTES
    media_id = event.get("MediaId")
    if isinstance(media_id, str) and media_id and openapi is not None:
        try:
            data = await openapi.customer_service_message.get_temp_media(media_id=media_id)
        except Exception as exc:
            log.warning("get_temp_media failed for an image push: %s", type(exc).__name__)
        else:
            if len(data) <= max_bytes and image_extension(data):
                return data
            log.warning("get_temp_media gave %d bytes that are not an image csbot keeps", len(data))
    url = event.get("PicUrl")
    if not isinstance(url, str) or not url or fetcher is None:
        return None
    if not authenticated:
        log.info("PicUrl of an unauthenticated (plaintext) push is not fetched")
        return None
    try:
        data = await fetcher.fetch_image(url)
    except MediaRefused as exc:
        log.warning("PicUrl of an image push refused: %s", exc)
        return None
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as exc:
        log.warning("fetching PicUrl of an image push failed: %s", type(exc).__name__)
        return None
    if not image_extension(data):
        log.warning("PicUrl of an image push gave bytes that are not an image csbot keeps")
        return None
    return data
