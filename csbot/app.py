"""The aiohttp application factory and its lifecycle.

Start: (SQLite: the file is claimed for this process) → engine → schema check (SQLite is
migrated automatically; PostgreSQL must be migrated with ``csbot migrate``) → group-commit
writer → recovery of unfinished work → workers. ``/healthz`` answers 200 only once all of
that is up.

Stop (SIGTERM, as every deploy stops a process): the listening socket closes, then the
workers *drain*: no new push or reply is taken, the handlers and sends in flight get up to
``drain_seconds`` to finish and record their outcome, the rest is cancelled (its push stays
pending, its send in doubt) and the leases are released so another process takes over at once.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web
from sqlalchemy import text

from csbot.cloud.database.store import DocumentStore
from csbot.cloud.sessions import SessionStore
from csbot.config import Settings
from csbot.cloud.storage import start_storage
from csbot.inbox import Inbox
from csbot.media import LocalMediaStore, MediaFetcher
from csbot.outbox import Outbox
from csbot.store.leases import clear_named_leases
from csbot.refused import RefusedKeeper
from csbot.outbound_webhooks import Webhooks
from csbot.replay import ReplayGuard
from csbot.routing import Router
from csbot.store import make_engine, make_sessionmaker
from csbot.store.batch import BatchWriter
from csbot.store.engine import hold_sqlite_file
from csbot.store.migrate import ensure_schema
from csbot.metrics import CONTENT_TYPE_LATEST, Metrics
from csbot.review.service import Review
from csbot.review.agents import Agents
from csbot.review.audit import AuditLog
from csbot.services import SERVICES, Services, services_of
from csbot.webhook import add_routes

log = logging.getLogger("csbot.app")


def create_app(settings: Settings, *, router: Router | None = None, run_workers: bool = True) -> web.Application:
    """Build the service. ``router`` defaults to the handlers of ``settings.handlers_dir``."""
    app = web.Application(client_max_size=settings.max_body_size + 1)
    services = app[SERVICES] = Services(
        settings=settings, metrics=Metrics(),
        router=router if router is not None else Router.load(settings.handlers_dir, settings.handler_options))
    metrics = services.metrics
    instance_id = services.instance_id

    async def lifecycle(app: web.Application):  # type: ignore[no-untyped-def]
        from csbot.openapi import OpenAPIRegistry

        if run_workers and settings.is_sqlite:
            services.serve_lock = hold_sqlite_file(settings.database_url)
        services.engine = make_engine(settings.database_url)
        await ensure_schema(services.engine, settings.database_url, auto_upgrade=settings.is_sqlite)
        services.sessionmaker = make_sessionmaker(services.engine)
        services.database = DocumentStore(services.engine, max_document_size=settings.db_max_document_size,
                                          indexes=settings.collection_indexes, metrics=metrics)
        await services.database.ensure_indexes()
        services.writer = BatchWriter(services.sessionmaker, on_conflict=metrics.store_lock_conflicts.inc)
        services.writer.start()
        services.openapi = OpenAPIRegistry(settings, services.sessionmaker, instance_id=instance_id)
        services.media = LocalMediaStore(settings.data_dir / "media")
        services.replay = ReplayGuard()
        services.media_fetcher = MediaFetcher()
        services.storage = await start_storage(settings, services.sessionmaker, adopt_media=run_workers)  # csbot.cloud
        services.sessions = SessionStore(settings, services.sessionmaker)
        services.outbox = Outbox(settings, services.sessionmaker, services.writer, services.openapi.get,
                                 instance_id=instance_id, metrics=metrics)
        services.inbox = Inbox(settings, services.sessionmaker, services.writer, services.router,
                               openapi_for=services.openapi.get, on_replies=services.outbox.wake,
                               storage=services.storage, media_fetcher=services.media_fetcher,
                               instance_id=instance_id, metrics=metrics,
                               services=services)
        services.review = Review(settings, services.sessionmaker, services.outbox)
        if settings.keep_refused:  # CSBOT_KEEP_REFUSED: refused pushes kept for `csbot refused`
            services.refused = RefusedKeeper(services.sessionmaker, settings.keep_refused)
        if settings.webhooks:  # [webhooks.NAME]: events to the operator's other systems
            services.webhooks = Webhooks(settings.webhooks, services.sessionmaker, instance_id=instance_id,
                                         metrics=metrics, review=services.review)
            services.outbox.on_state = services.webhooks.outbox_state
            services.review.on_status = services.webhooks.status_changed
            if run_workers:
                services.webhooks.start()
        services.agents = Agents(services.sessionmaker)
        services.audit = AuditLog(services.sessionmaker)
        if run_workers:
            if settings.is_sqlite:  # one process: a lease found now is a dead process's (the token fetch)
                async with services.engine.begin() as conn:
                    await clear_named_leases(conn)
            await services.inbox.recover()
            await services.outbox.recover()
            services.inbox.start()
            services.outbox.start()
        services.ready = True
        log.info("csbot ready: %d app(s), %d handler route(s), store %s", len(settings.apps),
                 len(services.router.routes), services.engine.dialect.name)
        yield
        services.ready = False
        if services.refused is not None:
            await services.refused.close()
        if services.webhooks is not None:
            await services.webhooks.close()
        await services.inbox.close()
        await services.outbox.close()
        await services.storage.close()
        await services.writer.close()
        await services.openapi.close()
        await services.media_fetcher.close()
        await services.engine.dispose()
        if services.serve_lock is not None:
            services.serve_lock.close()

    async def drain(app: web.Application) -> None:
        """SIGTERM: stop taking work, let handlers and sends in flight finish (bounded)."""
        services.ready = False
        if services.inbox is None or services.outbox is None:
            return
        log.info("stopping: draining handlers and sends in flight (at most %.0fs)", settings.drain_seconds)
        await asyncio.gather(services.inbox.drain(settings.drain_seconds),
                             services.outbox.drain(settings.drain_seconds))

    app.cleanup_ctx.append(lifecycle)
    app.on_shutdown.append(drain)

    async def healthz(request: web.Request) -> web.Response:
        if not services.ready:
            return web.Response(status=503, text="starting")
        try:
            async with services.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except Exception:
            return web.Response(status=503, text="store unavailable")
        return web.Response(text="ok")

    async def metrics_page(request: web.Request) -> web.Response:
        if services.ready:
            await metrics.refresh()
        return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics_page)
    add_routes(app)
    from csbot.cloud.http import setup_cloud  # csbot.cloud: /cloud/..., /tcb/...
    setup_cloud(app)
    from csbot.review import setup_review  # csbot.review: /api/, /admin, human-timeout task
    setup_review(app, services, run_workers=run_workers)
    return app


__all__ = ["create_app", "services_of", "Services"]
