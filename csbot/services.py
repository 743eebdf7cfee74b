"""The one object that holds what a running csbot is made of.

``create_app`` builds a :class:`Services`, stores it under the app key :data:`SERVICES` and
fills the store-backed parts when the app starts. Every surface (webhook, review API and
console, cloud routes, tests) finds what it needs here by attribute, e.g.
``services_of(request).inbox``; there is no second locator. A new service adds one attribute.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:  # the modules below import much of csbot; only their types are needed here
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

    from csbot.config import Settings
    from csbot.inbox import Inbox
    from csbot.media import LocalMediaStore, MediaFetcher
    from csbot.metrics import Metrics
    from csbot.openapi import OpenAPIRegistry
    from csbot.outbox import Outbox
    from csbot.replay import ReplayGuard
    from csbot.review.service import Review
    from csbot.routing import Router
    from csbot.store.batch import BatchWriter


@dataclass(eq=False, repr=False)
class Services:
    """Everything the running service holds. Store-backed parts are None until the app starts."""

    settings: "Settings"
    router: "Router"
    metrics: "Metrics"
    #: this process, in leases and logs
    instance_id: str = field(default_factory=lambda: uuid.uuid4().hex[:16])
    #: set once the store, the writer and the workers are up (``/healthz`` answers 200)
    ready: bool = False
    #: set when the app stops: long-lived streams (the console's live updates) end
    closing: asyncio.Event = field(default_factory=asyncio.Event)
    engine: "AsyncEngine | None" = None
    sessionmaker: "async_sessionmaker[AsyncSession] | None" = None
    writer: "BatchWriter | None" = None
    inbox: "Inbox | None" = None
    outbox: "Outbox | None" = None
    openapi: "OpenAPIRegistry | None" = None
    media: "LocalMediaStore | None" = None
    #: customers' images by PicUrl: public WeChat CDN addresses only (csbot.media)
    media_fetcher: "MediaFetcher | None" = None
    #: plaintext pushes: one body per (timestamp, nonce), across processes (csbot.replay)
    replay: "ReplayGuard | None" = None
    #: conversation review and takeover (CLI, ``/api/``, console)
    review: "Review | None" = None
    # cloud services (issue 10, 11) and agents (issue 9) add one attribute each below
    sessions: Any = None
    functions: Any = None
    database: Any = None
    storage: Any = None
    #: console agent accounts, sessions, API tokens (csbot.review.agents) and the audit log (csbot.review.audit)
    agents: Any = None
    audit: Any = None
    #: refused pushes kept for diagnosis (CSBOT_KEEP_REFUSED), csbot.refused; None when off
    refused: Any = None
    #: outbound webhooks (csbot.outbound_webhooks.Webhooks); None when none is configured
    webhooks: Any = None

    def __repr__(self) -> str:  # never the settings: they hold secrets
        return f"<Services {self.instance_id} ready={self.ready}>"


SERVICES = web.AppKey("csbot_services", Services)


def services_of(where: web.Application | web.Request) -> Services:
    """The :class:`Services` of an app, or of the app serving a request (also from a sub-app)."""
    if isinstance(where, web.Request):
        where = where.config_dict  # type: ignore[assignment]
    return where[SERVICES]  # type: ignore[index]


__all__ = ["Services", "SERVICES", "services_of"]
