"""The web console in headless Chromium (Debian's, through Python playwright): sign in, find a
conversation, watch a push arrive live, take over, reply, hand back; customer text is only text;
requests without a session or CSRF token are refused."""

import asyncio
import re
import struct
import time
import zlib
from pathlib import Path

import pytest

from .support import ADMIN_TOKEN, PASSWORD, add_agent, agents_of, console_sign_in, review_of, start

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).parents[2] / "test-output"
XSS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']

needs_chromium = pytest.mark.skipif(not CHROMIUM.exists(),
                                    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")


def tiny_png(width: int = 160, height: int = 100) -> bytes:
    """A small green PNG, made here (no image library needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\x00" + b"\x07\xc1\x60" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


@pytest.fixture
async def browser():
    if not CHROMIUM.exists():
        pytest.skip("needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            yield b
        finally:
            await b.close()


async def signed_in_page(browser, bot, name="Alice", role="admin", **context_options):
    if name not in [a["name"] for a in await agents_of(bot).list()]:
        await add_agent(bot, name, role=role)
    context = await browser.new_context(**{"viewport": {"width": 1280, "height": 860}, "locale": "en-US",
                                           **context_options})
    page = await context.new_page()
    dialogs: list[str] = []
    page.on("dialog", lambda d: (dialogs.append(d.message), asyncio.ensure_future(d.dismiss())))
    await page.goto(bot.url + "/admin")
    assert "/admin/login" in page.url
    await page.fill("input[name=name]", name)
    await page.fill("input[name=password]", PASSWORD)
    await page.click("button[type=submit]")
    await page.wait_for_url(re.compile(r"/admin/$"))
    return page, dialogs


async def fill(bot):
    """Four customers, one after the other (so the newest activity is oDan's)."""
    await bot.enter("oAnn", session_from="product-page")
    await bot.send_text("oAnn", "怎么退款")
    await bot.wait_idle()
    await bot.send_text("oWang", "我买的蓝色羊毛围巾还没发货")
    await bot.send_text("oWang", "订单号 20261123-7781")
    media_id = bot.fake.add_media(tiny_png(), "image/png")
    await bot.send(bot.builder.image("oWang", media_id))
    # WeChat no longer has this one (and its PicUrl is gone too)
    await bot.send(bot.builder.image("oWang", "EXPIRED_MEDIA_ID_42", pic_url=bot.fake.base_url + "/gone.jpg"))
    await bot.send(bot.builder.miniprogrampage("oWang", title="羊毛围巾 · 蓝色", pagepath="pages/item?id=77"))
    await bot.wait_idle()
    await bot.send_text("oCat", "boom")
    await bot.wait_idle()
    await bot.send_text("oDan", "转人工")
    await bot.wait_idle()


@needs_chromium
async def test_an_agent_finds_a_conversation_watches_it_live_takes_over_replies_and_hands_back(browser):
    SHOTS.mkdir(exist_ok=True)
    async with start() as bot:
        await fill(bot)
        await review_of(bot).set_tags("default", "oAnn", add=["refund"])
        page, dialogs = await signed_in_page(browser, bot)

        rows = page.locator("#conv-list li.conv")
        assert await rows.count() == 4
        assert await rows.first.get_attribute("data-key") == "default/oDan"  # newest activity first
        assert await page.locator("li.conv[data-key='default/oCat'] .badge.unanswered").count() == 1
        assert await page.locator("li.conv[data-key='default/oDan'] .badge.transferred").count() == 1
        # a new customer shows up in the open list without a reload
        await bot.send_text("oEve", "hello, anyone there?")
        await page.locator("li.conv[data-key='default/oEve']").wait_for(timeout=5000)
        assert await rows.first.get_attribute("data-key") == "default/oEve"
        await page.screenshot(path=str(SHOTS / "console-list.png"), full_page=True)

        await page.fill("input[name=q]", "羊毛围巾")
        await page.press("input[name=q]", "Enter")
        await page.wait_for_url(re.compile(r"q=%E7%BE%8A"))
        assert await rows.count() == 1
        await rows.first.click()
        await page.wait_for_url(re.compile(r"/admin/c/default/oWang$"))

        thread = page.locator("#thread")
        await thread.get_by_text("我买的蓝色羊毛围巾还没发货").wait_for()
        photo = thread.locator("img.photo")
        assert await photo.count() == 1
        assert await photo.evaluate("img => img.complete && img.naturalWidth") == 160  # served from the media store
        assert await thread.get_by_text("MediaId EXPIRED_MEDIA_ID_42").count() == 1  # placeholder
        assert await thread.locator(".card-mp .card-title").inner_text() == "羊毛围巾 · 蓝色"

        await bot.send_text("oWang", "还在吗？")  # a push arrives while the agent reads
        await thread.get_by_text("还在吗？").wait_for(timeout=5000)

        await page.click("button:has-text('Take over')")
        await page.wait_for_url(re.compile(r"/admin/c/default/oWang$"))
        assert await page.locator("#conv-status").text_content() == "human"
        await page.fill("textarea[name=text]", "您好，我是客服 Alice，马上为您查询。")
        await page.click("#send-reply")
        await page.wait_for_url(re.compile(r"/admin/c/default/oWang$"))
        deadline = time.monotonic() + 10
        while "您好，我是客服 Alice，马上为您查询。" not in bot.replies_to("oWang"):
            assert time.monotonic() < deadline, "the reply never reached WeChat"
            await asyncio.sleep(0.1)
        await page.locator(".msg.out.agent .pill-sent").wait_for(timeout=5000)  # delivery state, live
        await page.fill("textarea[name=text]", "")
        await page.evaluate("window.scrollTo(0, document.body.scrollHeight)")
        await page.screenshot(path=str(SHOTS / "console-thread.png"))

        await page.click("button:has-text('Hand back to bot')")
        await page.wait_for_url(re.compile(r"/admin/c/default/oWang$"))
        assert await page.locator("#conv-status").text_content() == "bot"
        assert (await review_of(bot).conversation("default", "oWang"))["status"] == "bot"
        assert dialogs == []


@needs_chromium
async def test_customer_text_that_looks_like_html_is_shown_as_text_and_runs_nothing(browser):
    async with start() as bot:
        await bot.send_text("oXss", XSS[0])
        await bot.wait_idle()
        page, dialogs = await signed_in_page(browser, bot)
        await page.locator("li.conv[data-key='default/oXss']").get_by_text(XSS[0]).wait_for()
        await bot.send_text("oXss", XSS[1])  # arrives in the list through the live-update script
        await page.locator("li.conv[data-key='default/oXss']").get_by_text(XSS[1]).wait_for(timeout=5000)

        await page.click("li.conv[data-key='default/oXss'] a")
        await page.wait_for_url(re.compile(r"/admin/c/default/oXss$"))
        for payload in XSS:
            await page.locator("#thread").get_by_text(payload, exact=True).wait_for()
        await bot.send_text("oXss", XSS[1] + " (live)")  # rendered by the thread's live-update script
        await page.locator("#thread").get_by_text(XSS[1] + " (live)", exact=True).wait_for(timeout=5000)
        await asyncio.sleep(0.3)
        assert dialogs == []
        assert await page.locator("img[src=x]").count() == 0
        assert await page.locator("#thread script").count() == 0


async def form_csrf(bot, session, path):
    async with session.get(bot.url + path) as resp:
        html = await resp.text()
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


async def test_requests_without_a_session_or_csrf_token_are_refused():
    import aiohttp

    async with start() as bot:
        await bot.send_text("oAnn", "hi")
        await bot.wait_idle()
        base = bot.url + "/admin"
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as anon:
            async with anon.get(base + "/", allow_redirects=False) as r:
                assert r.status == 303 and r.headers["Location"].startswith("/admin/login")
            for path in ("/events", "/media/1"):
                async with anon.get(base + path) as r:
                    assert r.status == 401, path
            async with anon.post(base + "/c/default/oAnn/reply", data={"text": "x"}) as r:
                assert r.status == 401
            async with anon.post(base + "/login", data={"name": "mallory", "password": PASSWORD,
                                                        "token": ADMIN_TOKEN}) as r:
                assert r.status == 403  # no sign-in CSRF token
            await add_agent(bot, "ada")
            r = await console_sign_in(bot, anon, "mallory", password="guess guess")
            assert r.status == 401 and "csbot_session" not in r.cookies

        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as agent:
            r = await console_sign_in(bot, agent, "ada")
            assert r.status == 303
            cookie = r.headers["Set-Cookie"]
            assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and PASSWORD not in cookie
            for data in ({"text": "x"}, {"text": "x", "csrf": "forged"}):
                async with agent.post(base + "/c/default/oAnn/reply", data=data) as r:
                    assert r.status == 403
                async with agent.post(base + "/c/default/oAnn/status", data={**data, "status": "closed"}) as r:
                    assert r.status == 403
            assert bot.fake.sent_to("oAnn") == [] and (await review_of(bot).conversation("default", "oAnn"))["status"] == "bot"

            csrf = await form_csrf(bot, agent, "/admin/c/default/oAnn")
            async with agent.post(base + "/c/default/oAnn/status", data={"status": "closed", "csrf": csrf}) as r:
                assert r.status == 200 and "closed" in await r.text()
            async with agent.get(base + "/") as r:
                assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
            async with agent.get(base + "/c/default/oNobody") as r:
                assert r.status == 404 and "Traceback" not in await r.text()
