"""Fetching customers' images without SSRF: WeChat's API first, PicUrl only from WeChat's image CDN
for authenticated pushes, never to a non-public address (after resolution, on every redirect),
with a byte cap and an image check. Local servers pose as the CDN and as internal addresses."""

from __future__ import annotations

import contextlib
import socket

import aiohttp
import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver

from csbot.media import FetchPolicy, MediaFetcher, MediaRefused, fetch_user_image, is_public_address
from csbot.routing import Route, Router
from csbot.testing.harness import Harness

PNG = b"\x89PNG\r\n\x1a\n" + b"pixels" * 50


class StubResolver(AbstractResolver):
    """DNS as the test says: host -> address."""

    def __init__(self, table: dict[str, str]) -> None:
        self.table = table

    async def resolve(self, host, port=0, family=socket.AF_INET):
        if host not in self.table:
            raise OSError(f"no such host {host}")
        return [{"hostname": host, "host": self.table[host], "port": port, "family": socket.AF_INET,
                 "proto": 0, "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        pass


@contextlib.asynccontextmanager
async def serve(host: str, routes: web.RouteTableDef):
    """An HTTP server on ``host``; yields (port, hits)."""
    hits: list[str] = []

    @web.middleware
    async def count(request, handler):
        hits.append(request.path)
        return await handler(request)

    app = web.Application(middlewares=[count])
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1], hits  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


@pytest.fixture
async def internal():
    """An internal service on 127.0.0.2 (think 169.254.169.254 or an admin port) that must never be hit."""
    routes = web.RouteTableDef()

    @routes.get("/{tail:.*}")
    async def secret(request):
        return web.Response(body=PNG, content_type="image/png")

    async with serve("127.0.0.2", routes) as (port, hits):
        yield port, hits


@pytest.fixture
async def cdn(internal):
    """WeChat's CDN posed on 127.0.0.1: images, redirects, oversize and non-image answers."""
    internal_port, _ = internal
    routes = web.RouteTableDef()

    @routes.get("/ok.png")
    async def ok(request):
        return web.Response(body=PNG, content_type="image/png")

    @routes.get("/to-internal")
    async def to_internal(request):
        raise web.HTTPFound(f"http://mmbiz.qlogo.cn:{internal_port}/latest/meta-data")

    @routes.get("/to-literal")
    async def to_literal(request):
        raise web.HTTPFound(f"http://127.0.0.2:{internal_port}/admin")

    @routes.get("/to-elsewhere")
    async def to_elsewhere(request):
        raise web.HTTPFound("http://evil.example/x.png")

    @routes.get("/hop{n}")
    async def hop(request):
        raise web.HTTPFound(f"/hop{int(request.match_info['n']) + 1}")

    @routes.get("/relative")
    async def relative(request):
        raise web.HTTPFound("/ok.png")

    @routes.get("/big")
    async def big(request):
        return web.Response(body=PNG + b"x" * 5000, content_type="image/png")

    @routes.get("/big-chunked")
    async def big_chunked(request):
        resp = web.StreamResponse(headers={"Content-Type": "image/png"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for _ in range(100):
            await resp.write(b"x" * 1000)
        return resp

    @routes.get("/page")
    async def page(request):
        return web.Response(text="<html>not an image</html>", content_type="text/html")

    @routes.get("/lying.png")
    async def lying(request):
        return web.Response(body=b"<html><script>alert(1)</script></html>", content_type="image/png")

    async with serve("127.0.0.1", routes) as (port, hits):
        yield port, hits


def test_public_addresses_are_told_from_internal_ones():
    for internal in ["127.0.0.1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254", "100.64.0.1",
                     "0.0.0.0", "::1", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::ffff:169.254.169.254",
                     "64:ff9b::a9fe:a9fe", "2002:7f00:1::", "224.0.0.1", "not an ip"]:
        assert not is_public_address(internal), internal
    for public in ["8.8.8.8", "140.207.54.76", "2001:4860:4860::8888", "::ffff:8.8.8.8"]:
        assert is_public_address(public), public


def fetcher_for(port_hosts: dict[str, str], *, public: set[str] = frozenset(), **policy) -> MediaFetcher:
    """A fetcher whose DNS is ``port_hosts`` and for which only ``public`` addresses count as public."""
    return MediaFetcher(FetchPolicy(ports=None, is_public=lambda ip: ip in public, **policy),
                        resolver=StubResolver(port_hosts))


async def test_an_image_from_the_cdn_is_fetched(cdn):
    port, hits = cdn
    fetcher = fetcher_for({"mmbiz.qpic.cn": "127.0.0.1"}, public={"127.0.0.1"})
    try:
        assert await fetcher.fetch_image(f"http://mmbiz.qpic.cn:{port}/ok.png") == PNG
        assert await fetcher.fetch_image(f"http://mmbiz.qpic.cn:{port}/relative") == PNG
    finally:
        await fetcher.close()


async def test_a_cdn_host_that_resolves_to_loopback_is_never_connected(cdn, internal):
    """The real policy: 127.0.0.1 is not public, whatever name it hides behind."""
    port, hits = cdn
    fetcher = MediaFetcher(FetchPolicy(ports=None), resolver=StubResolver({"mmbiz.qpic.cn": "127.0.0.1"}))
    try:
        with pytest.raises(aiohttp.ClientConnectorError):
            await fetcher.fetch_image(f"http://mmbiz.qpic.cn:{port}/ok.png")
    finally:
        await fetcher.close()
    assert hits == []


@pytest.mark.parametrize("path, error", [
    ("/to-internal", aiohttp.ClientConnectorError),   # the redirect's host resolves to 127.0.0.2
    ("/to-literal", MediaRefused),                    # a literal address is no CDN host
    ("/to-elsewhere", MediaRefused),                  # not one of WeChat's image hosts
    ("/hop0", MediaRefused),                          # too many redirects
])
async def test_every_redirect_hop_is_checked(cdn, internal, path, error):
    port, _ = cdn
    fetcher = fetcher_for({"mmbiz.qpic.cn": "127.0.0.1", "mmbiz.qlogo.cn": "127.0.0.2"}, public={"127.0.0.1"})
    try:
        with pytest.raises(error):
            await fetcher.fetch_image(f"http://mmbiz.qpic.cn:{port}{path}")
    finally:
        await fetcher.close()
    assert internal[1] == []  # the internal service never saw a request


@pytest.mark.parametrize("url", [
    "http://127.0.0.2:{internal}/latest/meta-data",
    "http://internal.example:{internal}/x.png",
    "http://mmbiz.qpic.cn.evil.example:{internal}/x.png",
    "http://user:pw@mmbiz.qpic.cn:{internal}/x.png",
    "file:///etc/passwd",
    "gopher://mmbiz.qpic.cn/x",
])
async def test_urls_off_the_cdn_are_refused_before_any_request(internal, url):
    fetcher = fetcher_for({"internal.example": "127.0.0.2", "mmbiz.qpic.cn": "127.0.0.2",
                           "mmbiz.qpic.cn.evil.example": "127.0.0.2"}, public={"127.0.0.2"})
    try:
        with pytest.raises(MediaRefused):
            await fetcher.fetch_image(url.format(internal=internal[0]))
    finally:
        await fetcher.close()
    assert internal[1] == []


async def test_only_the_default_ports_by_default():
    fetcher = MediaFetcher()
    with pytest.raises(MediaRefused, match="port"):
        await fetcher.fetch_image("http://mmbiz.qpic.cn:8080/x.png")
    await fetcher.close()


@pytest.mark.parametrize("path, reason", [
    ("/big", "larger than 1000 bytes"), ("/big-chunked", "larger than 1000 bytes"), ("/page", "not an image"),
])
async def test_oversize_and_non_image_answers_are_refused(cdn, path, reason):
    port, _ = cdn
    fetcher = fetcher_for({"mmbiz.qpic.cn": "127.0.0.1"}, public={"127.0.0.1"}, max_bytes=1000)
    try:
        with pytest.raises(MediaRefused, match=reason):
            await fetcher.fetch_image(f"http://mmbiz.qpic.cn:{port}{path}")
    finally:
        await fetcher.close()


class Api:
    """Stands in for context.openapi: get_temp_media gives ``data`` or raises."""

    def __init__(self, data: bytes | Exception) -> None:
        self.customer_service_message = self
        self.data = data

    async def get_temp_media(self, *, media_id: str) -> bytes:
        if isinstance(self.data, Exception):
            raise self.data
        return self.data


async def test_picurl_is_a_fallback_for_authenticated_pushes_only(cdn):
    port, hits = cdn
    fetcher = fetcher_for({"mmbiz.qpic.cn": "127.0.0.1"}, public={"127.0.0.1"})
    event = {"MediaId": "m1", "PicUrl": f"http://mmbiz.qpic.cn:{port}/ok.png"}
    try:
        assert await fetch_user_image(Api(PNG), event, fetcher=fetcher, authenticated=False) == PNG  # the API
        assert hits == []
        broken = Api(RuntimeError("40007"))
        assert await fetch_user_image(broken, event, fetcher=fetcher, authenticated=False) is None
        assert hits == []  # a plaintext push's PicUrl is nobody's word
        assert await fetch_user_image(broken, event, fetcher=fetcher, authenticated=True) == PNG
        assert hits == ["/ok.png"]
        lying = {"PicUrl": f"http://mmbiz.qpic.cn:{port}/lying.png"}
        assert await fetch_user_image(None, lying, fetcher=fetcher, authenticated=True) is None
    finally:
        await fetcher.close()


async def test_api_media_that_is_not_an_image_is_not_kept():
    assert await fetch_user_image(Api(b"<html>hello</html>"), {"MediaId": "m"}) is None
    assert await fetch_user_image(Api(PNG + b"x" * 100), {"MediaId": "m"},
                                  fetcher=MediaFetcher(FetchPolicy(max_bytes=100))) is None


async def test_an_image_push_pointing_inside_the_network_fetches_nothing(internal):
    """End to end: a signed image push with an internal PicUrl is stored and handled, and the
    internal service sees no request (the reviewed attack stored 64 MB from such a URL)."""
    port, hits = internal
    seen = []

    async def look(event, context):
        seen.append(context.message.media_path)

    async with Harness.start(router=Router([Route("look", look, fallback=True)])) as bot:
        for url in [f"http://127.0.0.2:{port}/latest/meta-data", f"http://localhost:{port}/x.png"]:
            await bot.send(bot.builder.image("oImg", "no-such-media", pic_url=url))
        await bot.wait_idle()
        assert seen == [None, None]
        assert len(await bot.messages(direction="in")) == 2
    assert hits == []
