"""Serving an aiohttp application: the runner behind ``csbot serve``, ``csbot dev`` and the harness.

Why not ``web.run_app``: an operator needs one clear line when the port is taken (not a
traceback), a "listening on http://HOST:PORT" line once the socket is bound, and a client's
malformed request (say, raw UTF-8 in a URL typed into curl) answered as JSON
``{"error": ...}`` like every other error of the HTTP API, not aiohttp's plain-text page.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import signal
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger("csbot.server")


class PortInUse(RuntimeError):
    """The address is taken by another process; the message says which and what to do."""


class _JSONErrorRequestHandler(RequestHandler):  # type: ignore[misc]
    """Answers requests the HTTP parser refused (400, 413, 431…) with a JSON error."""

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500 or request.writer.output_size > 0:
            return super().handle_error(request, status, exc, message)
        first = (message or "").strip().splitlines()[0] if (message or "").strip() else "bad request"
        reason = first.rstrip(":")
        if "url" in reason.lower():
            reason += " (percent-encode the query, e.g. curl -G --data-urlencode 'search=…')"
        log.warning("refused a malformed request from %s: %d %s", request.remote, status, first)
        resp = web.json_response({"error": reason}, status=status)
        resp.force_close()
        return resp


class _JSONErrorServer(web.Server):
    def __call__(self) -> RequestHandler:
        return _JSONErrorRequestHandler(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """An ``AppRunner`` whose connections answer parser-level errors as JSON."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = _JSONErrorServer
        return server


async def start_site(runner: web.AppRunner, host: str, port: int) -> tuple[web.TCPSite, int]:
    """Bind ``host:port`` (port 0: any free one); returns the site and the bound port."""
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            what = {errno.EADDRINUSE: "is already in use (is another csbot running?)",
                    errno.EACCES: "needs privileges this user does not have",
                    errno.EADDRNOTAVAIL: "is not an address of this machine"}[exc.errno]
            raise PortInUse(f"cannot listen on {host}:{port}: the address {what}; "
                            f"choose another with --port or CSBOT_PORT") from None
        raise
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return site, bound


def url_of(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else ("[::1]" if host == "::" else host)
    return f"http://{shown}:{port}"


def settle_heap() -> None:
    """Keep what start-up built (modules, routes, compiled statements) out of the cyclic
    garbage collector's way: a full collection otherwise walks all of it again and again,
    holding the event loop for a large share of a second each time under load. What the
    service allocates from now on is collected as usual."""
    import gc

    gc.collect()
    gc.freeze()


async def serve_until_signal(app: web.Application, host: str, port: int, *,
                             shutdown_timeout: float = 10.0, announce: Any = print) -> None:
    """Run ``app`` on ``host:port`` until SIGINT/SIGTERM; says where it listens once bound."""
    runner = Runner(app, access_log=None, handle_signals=False, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        _site, bound = await start_site(runner, host, port)
        announce(f"csbot listening on {url_of(host, bound)}"
                 + (f" (all interfaces, {host})" if host in ("", "0.0.0.0", "::") else ""))
        settle_heap()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # not the main thread, or Windows
                pass
        await stop.wait()
        log.info("stopping: finishing in-flight requests and work")
    finally:
        await runner.cleanup()
