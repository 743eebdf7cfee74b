"""The baseline: a bare aiohttp app that answers ``success`` without reading the request.

Same server settings as ``csbot serve`` (aiohttp's ``web.run_app``, default asyncio loop, no
access log), so the gap between this and csbot is csbot's own work per push.

    python bench/bare_app.py --port 18081
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="success", content_type="text/plain")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=18081)
    args = p.parse_args()
    app = web.Application()
    app.router.add_post("/wechat", ok)
    app.router.add_get("/healthz", ok)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
