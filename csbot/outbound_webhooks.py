"""Outbound webhooks: tell the operator's other systems what happened, signed, from a durable queue.

Configured as ``[webhooks.NAME]`` tables (``url``, ``events``, ``secret``, ``allow_private``).
Events: ``message.received`` (a push was stored), ``message.sent``, ``message.failed`` (a reply
ended failed, dead or quota_exceeded) and ``conversation.status_changed``.

Flow: the webhook, the outbox and the review service call :meth:`Webhooks.emit`, which only puts
the event in a bounded in-memory queue (it never blocks the ack or a reply). A background task
writes one ``webhook_deliveries`` row per subscribed webhook (the durable queue); the dispatcher
claims due rows with a lease (several processes never send one delivery at once), POSTs the JSON
body with ``X-Csbot-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`` and
retries failures with exponential backoff. After ``MAX_ATTEMPTS`` a delivery is ``failed``: it
shows in ``csbot webhooks list --status failed`` and ``GET /api/webhooks/deliveries`` and can be
re-driven (``csbot webhooks redeliver``, ``POST /api/webhooks/deliveries/{id}/redeliver``).

Receivers must tolerate a delivery twice (the ``X-Csbot-Delivery`` id is stable across retries)
and deliveries out of order. URLs whose host resolves to a private, loopback, link-local or
otherwise non-public address are refused unless the webhook sets ``allow_private = true``;
redirects are not followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import json
import logging
import random
import socket
import time
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver
from sqlalchemy import Float, Integer, String, Text, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Mapped, mapped_column

from csbot.store.models import Base, BigId
from csbot.store.leases import db_now
from csbot.store.statements import dialect_of

log = logging.getLogger("csbot.outbound_webhooks")

EVENTS = ("message.received", "message.sent", "message.failed", "conversation.status_changed")
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
STATES = (PENDING, DELIVERED, FAILED)
MAX_ATTEMPTS = 10
#: first retry after about this many seconds, doubling, capped at an hour
BASE_DELAY = 2.0
MAX_DELAY = 3600.0
TIMEOUT = 10.0
LEASE_SECONDS = 60.0
#: events waiting to be written; more are dropped (and logged)
QUEUE_LIMIT = 10000


class WebhookError(ValueError):
    """A webhook's configuration is wrong; the message names the setting."""


@dataclass(frozen=True)
class WebhookConfig:
    name: str
    url: str
    events: frozenset[str]
    secret: str
    allow_private: bool = False

    def __repr__(self) -> str:  # never the secret
        return f"WebhookConfig({self.name!r}, {self.url!r}, events={sorted(self.events)})"


def parse_webhooks(tables: Any) -> dict[str, WebhookConfig]:
    """``[webhooks.NAME]`` tables, validated (raises :class:`WebhookError`)."""
    if not isinstance(tables, dict):
        raise WebhookError("[webhooks] must be a table of [webhooks.NAME] tables")
    out: dict[str, WebhookConfig] = {}
    for name, table in tables.items():
        where = f"webhooks.{name}"
        if not isinstance(table, dict):
            raise WebhookError(f"{where} must be a table")
        unknown = set(table) - {"url", "events", "secret", "allow_private"}
        if unknown:
            raise WebhookError(f"{where}: unknown setting(s) {', '.join(sorted(unknown))}")
        url = table.get("url")
        parts = urlsplit(url) if isinstance(url, str) else None
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
            raise WebhookError(f"{where}.url must be an http:// or https:// URL")
        events = table.get("events", list(EVENTS))
        if not isinstance(events, list) or not events or not all(e in EVENTS for e in events):
            raise WebhookError(f"{where}.events must be a non-empty list of {', '.join(EVENTS)}")
        secret = table.get("secret")
        if not isinstance(secret, str) or len(secret) < 16:
            raise WebhookError(f"{where}.secret must be a string of at least 16 characters (it signs deliveries)")
        allow_private = table.get("allow_private", False)
        if not isinstance(allow_private, bool):
            raise WebhookError(f"{where}.allow_private must be true or false")
        if not allow_private:
            literal = _literal_ip(parts.hostname)
            if (literal is not None and not literal.is_global) or parts.hostname.lower() == "localhost":
                raise WebhookError(f"{where}.url points to a private or loopback address; set allow_private = true "
                                   "if that is intended")
        out[name] = WebhookConfig(name, url, frozenset(events), secret, allow_private)
    return out


class WebhookDelivery(Base):
    """One event for one webhook: the durable queue."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    webhook: Mapped[str] = mapped_column(String(64))
    event: Mapped[str] = mapped_column(String(64))
    app: Mapped[str | None] = mapped_column(String(64), nullable=True)
    openid: Mapped[str | None] = mapped_column(String(128), nullable=True)
    #: the exact JSON body that is signed and sent
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    delivered_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    lease_owner: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_until: Mapped[float | None] = mapped_column(Float, nullable=True)


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Csbot-Signature`` header value for ``body`` sent at ``timestamp``."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: str, body: bytes, header: str, *, tolerance: float = 300, now: float | None = None) -> bool:
    """What a receiver does: check the signature and that the timestamp is recent."""
    parts = dict(p.split("=", 1) for p in header.split(",") if "=" in p)
    try:
        t = int(parts["t"])
    except (KeyError, ValueError):
        return False
    if abs((time.time() if now is None else now) - t) > tolerance:
        return False
    expected = sign(secret, body, t).split("v1=", 1)[1]
    return hmac.compare_digest(expected, parts.get("v1", ""))


def backoff(attempt: int) -> float:
    high = min(MAX_DELAY, BASE_DELAY * 2 ** max(attempt - 1, 0))
    return random.uniform(high / 2, high)


def _literal_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class PrivateAddress(aiohttp.ClientConnectionError):
    """The webhook's host is (or resolves to) a non-public address and allow_private is off."""


class _PublicOnlyResolver(AbstractResolver):
    """Resolves like aiohttp, then refuses any non-public address: the connection uses exactly
    the addresses that were checked, so DNS cannot swap in a private one afterwards."""

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        addresses = await self._inner.resolve(host, port, family)
        for a in addresses:
            if not ipaddress.ip_address(a["host"]).is_global:
                raise PrivateAddress(f"{host} resolves to the non-public address {a['host']}")
        return addresses

    async def close(self) -> None:
        await self._inner.close()


class Webhooks:
    """Emits events into the durable queue and delivers them."""

    def __init__(self, configs: Mapping[str, WebhookConfig], sessionmaker: async_sessionmaker[AsyncSession],
                 *, instance_id: str | None = None, metrics: Any = None, review: Any = None) -> None:
        self.configs = dict(configs)
        self.sessionmaker = sessionmaker
        if instance_id is None:
            from csbot.openapi.client import default_instance_id

            instance_id = default_instance_id()
        #: the process's one instance identity: the owner of the deliveries it claims
        self.instance_id = instance_id
        self.metrics = metrics
        self.review = review
        self.dropped = 0
        self._events: asyncio.Queue[tuple[str, str | None, str | None, dict[str, Any]]] = asyncio.Queue(QUEUE_LIMIT)
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sessions: dict[bool, aiohttp.ClientSession] = {}

    # ---- emitting (called on the hot paths: never blocks, never raises)

    def subscribed(self, event: str) -> bool:
        return any(event in c.events for c in self.configs.values())

    def emit(self, event: str, app: str | None, openid: str | None, **ref: Any) -> None:
        """Queue ``event``; ``ref`` names what it is about (``message_id=`` or ``conversation=True``)."""
        if not self.subscribed(event):
            return
        try:
            self._events.put_nowait((event, app, openid, {**ref, "at": time.time()}))
        except asyncio.QueueFull:
            self.dropped += 1
            if self.dropped in (1, 100) or self.dropped % 1000 == 0:
                log.error("webhook event queue full: %d event(s) dropped", self.dropped)

    def outbox_state(self, row: Any, state: str) -> None:
        """The outbox's hook: a reply reached a new state."""
        if state == "sent":
            self.emit("message.sent", row.app, row.openid, message_id=row.id)
        elif state in ("failed", "dead", "quota_exceeded"):
            self.emit("message.failed", row.app, row.openid, message_id=row.id)

    def status_changed(self, app: str, openid: str) -> None:
        """The review service's hook: a conversation changed status."""
        self.emit("conversation.status_changed", app, openid, conversation=True)

    def wake(self) -> None:
        """Look for due deliveries now (after a redelivery)."""
        self._wake.set()

    # ---- lifecycle

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._write_loop(), name="csbot-webhooks-write"))
        self._tasks.append(asyncio.create_task(self._deliver_loop(), name="csbot-webhooks-deliver"))

    async def close(self) -> None:
        try:
            await asyncio.wait_for(self._flush_events(), 5)
        except Exception:
            log.warning("webhook events not yet written were lost at shutdown")
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for session in self._sessions.values():
            await session.close()

    # ---- writing deliveries

    async def _write_loop(self) -> None:
        while True:
            first = await self._events.get()
            batch = [first]
            while not self._events.empty() and len(batch) < 500:
                batch.append(self._events.get_nowait())
            try:
                await self._write(batch)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("could not queue %d webhook event(s); retrying", len(batch))
                await asyncio.sleep(1.0)
                for item in batch:  # back in the queue, best effort
                    try:
                        self._events.put_nowait(item)
                    except asyncio.QueueFull:
                        self.dropped += 1
            finally:
                for _ in batch:
                    self._events.task_done()

    async def _flush_events(self) -> None:
        await self._events.join()

    async def flush(self) -> None:
        """Wait until every emitted event is in the durable queue (tests)."""
        await self._flush_events()

    async def _payload(self, event: str, app: str | None, openid: str | None, ref: dict[str, Any]) -> dict[str, Any]:
        from csbot.review.service import iso, message_item

        body: dict[str, Any] = {"event": event, "at": iso(ref["at"]), "app": app, "openid": openid}
        if "message_id" in ref:
            from csbot.store import Message

            async with self.sessionmaker() as s:
                row = (await s.execute(select(Message).where(Message.id == ref["message_id"]))).scalars().first()
            body["message"] = message_item(row) if row is not None else {"id": ref["message_id"]}
        if ref.get("conversation") and self.review is not None and app and openid:
            try:
                body["conversation"] = await self.review.conversation(app, openid)
            except Exception:
                body["conversation"] = None
        return body

    async def _write(self, batch: Sequence[tuple[str, str | None, str | None, dict[str, Any]]]) -> None:
        now = time.time()
        rows = []
        for event, app, openid, ref in batch:
            payload = await self._payload(event, app, openid, ref)
            for config in self.configs.values():
                if event not in config.events:
                    continue
                body = json.dumps({**payload, "webhook": config.name}, ensure_ascii=False, separators=(",", ":"))
                rows.append(dict(webhook=config.name, event=event, app=app, openid=openid, body=body,
                                 status=PENDING, attempts=0, next_attempt_at=now, created_at=now))
        if rows:
            async with self.sessionmaker() as s, s.begin():
                await s.execute(WebhookDelivery.__table__.insert(), rows)
            self._wake.set()

    # ---- delivering

    async def _deliver_loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), 1.0)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                while await self._deliver_due():
                    pass
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("webhook delivery loop failed; retrying")
                await asyncio.sleep(1.0)

    async def _claim(self, limit: int = 20) -> list[WebhookDelivery]:
        """Claim due deliveries: a lease per row, timed by the database's clock (as every lease,
        csbot.store.leases), so a process whose clock runs fast never takes a live claim."""
        now = time.time()
        async with self.sessionmaker() as s:
            db_clock = db_now(dialect_of(s))
            free = or_(WebhookDelivery.lease_until.is_(None), WebhookDelivery.lease_until < db_clock)
            ids = list((await s.execute(
                select(WebhookDelivery.id).where(
                    WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at <= now, free)
                .order_by(WebhookDelivery.id).limit(limit))).scalars())
        claimed = []
        for delivery_id in ids:
            async with self.sessionmaker() as s, s.begin():
                res = await s.execute(update(WebhookDelivery).where(
                    WebhookDelivery.id == delivery_id, WebhookDelivery.status == PENDING, free)
                    .values(lease_owner=self.instance_id, lease_until=db_clock + LEASE_SECONDS))
                if res.rowcount == 1:  # type: ignore[attr-defined]
                    row = (await s.execute(select(WebhookDelivery).where(
                        WebhookDelivery.id == delivery_id))).scalars().one()
                    claimed.append(row)
        return claimed

    async def _deliver_due(self) -> bool:
        rows = await self._claim()
        if not rows:
            return False
        await asyncio.gather(*(self._deliver(row) for row in rows))
        return True

    def _session(self, allow_private: bool) -> aiohttp.ClientSession:
        session = self._sessions.get(allow_private)
        if session is None or session.closed:
            connector = aiohttp.TCPConnector(resolver=None if allow_private else _PublicOnlyResolver(),
                                             limit=20)
            session = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=TIMEOUT))
            self._sessions[allow_private] = session
        return session

    async def _post(self, config: WebhookConfig, row: WebhookDelivery) -> tuple[int | None, str | None]:
        """(HTTP status, error); error is None on a 2xx."""
        host = urlsplit(config.url).hostname or ""
        literal = _literal_ip(host)
        if not config.allow_private and ((literal is not None and not literal.is_global)
                                         or host.lower() == "localhost"):
            return None, f"refused: {host} is a private or loopback address (allow_private is off)"
        body = row.body.encode("utf-8")
        headers = {"Content-Type": "application/json; charset=utf-8", "User-Agent": "csbot-webhooks/1",
                   "X-Csbot-Event": row.event, "X-Csbot-Delivery": str(row.id),
                   "X-Csbot-Signature": sign(config.secret, body, int(time.time()))}
        try:
            async with self._session(config.allow_private).post(config.url, data=body, headers=headers,
                                                                allow_redirects=False) as resp:
                await resp.content.read(4096)
                if 200 <= resp.status < 300:
                    return resp.status, None
                return resp.status, f"HTTP {resp.status}"
        except PrivateAddress as exc:
            return None, f"refused: {exc} (allow_private is off)"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"[:500] if str(exc) else type(exc).__name__

    async def _deliver(self, row: WebhookDelivery) -> None:
        config = self.configs.get(row.webhook)
        attempt = row.attempts + 1
        now = time.time()
        if config is None:
            values: dict[str, Any] = dict(status=FAILED, last_error="this webhook is no longer configured")
        else:
            http_status, error = await self._post(config, row)
            now = time.time()
            if error is None:
                values = dict(status=DELIVERED, delivered_at=now, last_status=http_status, last_error=None)
            elif error.startswith("refused:") or attempt >= MAX_ATTEMPTS:
                values = dict(status=FAILED, last_status=http_status, last_error=error)
                log.warning("webhook %s delivery %s failed for good after %d attempt(s): %s", row.webhook, row.id,
                            attempt, error)
            else:
                values = dict(status=PENDING, last_status=http_status, last_error=error,
                              next_attempt_at=now + backoff(attempt))
                log.info("webhook %s delivery %s: %s; retrying", row.webhook, row.id, error)
        async with self.sessionmaker() as s, s.begin():
            await s.execute(update(WebhookDelivery).where(
                WebhookDelivery.id == row.id, WebhookDelivery.lease_owner == self.instance_id)
                .values(attempts=attempt, lease_owner=None, lease_until=None, **values))
        if self.metrics is not None:
            self.metrics.webhooks.labels(row.webhook, values["status"] if values["status"] != PENDING
                                         else "retry").inc()


# --------------------------------------------------------------------------- reading and re-driving


def delivery_item(d: WebhookDelivery) -> dict[str, Any]:
    from csbot.review.service import iso

    return {"id": d.id, "webhook": d.webhook, "event": d.event, "app": d.app, "openid": d.openid,
            "status": d.status, "attempts": d.attempts, "created_at": iso(d.created_at),
            "next_attempt_at": iso(d.next_attempt_at) if d.status == PENDING else None,
            "delivered_at": iso(d.delivered_at), "last_status": d.last_status, "last_error": d.last_error}


async def list_deliveries(sessionmaker: async_sessionmaker[AsyncSession], *, status: str | None = None,
                          webhook: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    if status is not None and status not in STATES:
        from csbot.review.service import Invalid

        raise Invalid(f"status must be one of {', '.join(STATES)}")
    q = select(WebhookDelivery).order_by(WebhookDelivery.id.desc()).limit(max(1, min(limit, 1000)))
    if status:
        q = q.where(WebhookDelivery.status == status)
    if webhook:
        q = q.where(WebhookDelivery.webhook == webhook)
    async with sessionmaker() as s:
        return [delivery_item(d) for d in (await s.execute(q)).scalars()]


async def redeliver(sessionmaker: async_sessionmaker[AsyncSession], ids: Iterable[int] | None = None, *,
                    all_failed: bool = False) -> int:
    """Queue failed deliveries again (attempts afresh); returns how many."""
    q = update(WebhookDelivery).where(WebhookDelivery.status == FAILED)
    if not all_failed:
        q = q.where(WebhookDelivery.id.in_(list(ids or [])))
    async with sessionmaker() as s, s.begin():
        res = await s.execute(q.values(status=PENDING, attempts=0, next_attempt_at=time.time(),
                                       lease_owner=None, lease_until=None))
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


__all__ = ["EVENTS", "WebhookConfig", "WebhookDelivery", "Webhooks", "parse_webhooks", "sign", "verify",
           "list_deliveries", "redeliver", "delivery_item"]
