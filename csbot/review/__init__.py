"""Conversation review and human takeover: CLI, HTTP API (``/api/``) and web console (``/admin``).

``setup_review`` is called once by :func:`csbot.app.create_app`. It always starts the task that
returns ``human`` conversations with no agent reply for ``CSBOT_HUMAN_TIMEOUT`` seconds to the
bot, and always mounts the API and the console: agents sign in with their accounts whether or not
``CSBOT_ADMIN_TOKEN`` is set. The admin token only adds an admin-level API token and the
console's creation of the first admin; with no token and no account, ``/admin`` says (403) how to
create the first admin and ``/api/`` refuses every call (401) saying the same.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from csbot.services import Services

log = logging.getLogger("csbot.review")


def sweep_interval(timeout: float) -> float:
    return min(30.0, max(0.2, timeout / 4))


async def run_human_timeout(services: Services) -> None:
    """Forever: hand ``human`` conversations without an agent reply for the timeout back to the bot."""
    timeout = services.settings.human_timeout
    while True:
        await asyncio.sleep(sweep_interval(timeout))
        try:
            returned = await services.review.return_idle_to_bot(timeout)  # type: ignore[union-attr]
        except asyncio.CancelledError:
            raise
        except Exception:
            log.warning("could not return idle human conversations to the bot; retrying", exc_info=True)
            continue
        for app, openid in returned:
            log.info("conversation %s/%s had no agent reply for %ds: back to the bot", app, openid, int(timeout))


def setup_review(app: web.Application, services: Services, *, run_workers: bool = True) -> None:
    """Mount the review API and console and start the human-timeout task."""
    settings = services.settings

    async def background(_app: web.Application):  # type: ignore[no-untyped-def]
        task = None
        if run_workers and settings.human_timeout > 0:
            task = asyncio.create_task(run_human_timeout(services), name="csbot-review-human-timeout")
        yield
        services.closing.set()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def on_shutdown(_app: web.Application) -> None:
        services.closing.set()  # ends the console's live-update streams

    app.cleanup_ctx.append(background)
    app.on_shutdown.append(on_shutdown)

    async def refresh_undelivered() -> None:
        if services.review is None:
            return
        counts = await services.review.undelivered_counts()
        for name in settings.apps:
            services.metrics.undelivered.labels(name).set(counts.get(name, 0))

    services.metrics.refreshers.append(refresh_undelivered)
    # always mounted: an operator who made agents with `csbot agents add` and set no admin token
    # has a console; with neither, the sign-in page (403) and the API (401) say how to make one
    from csbot.review.api import build_api
    from csbot.review.console import build_console

    app.add_subapp("/api/", build_api(services))

    async def api_root(request: web.Request) -> web.Response:  # "/api" without the slash
        return web.json_response({"error": "not found; the API's description is /api/openapi.json"},
                                 status=404)

    app.router.add_route("*", "/api", api_root)
    app.add_subapp("/admin/", build_console(services))


__all__ = ["setup_review", "run_human_timeout"]
