"""The web console in headless Chromium (Debian's, through Python playwright): sign in, find a
conversation, watch a push arrive live, take over, reply, hand back; customer text is only text;
requests without a session or CSRF token are refused."""

import asyncio
import os
import re
import struct
import time
import zlib
from pathlib import Path
from urllib.parse import parse_qs

import pytest

from csbot.services import services_of

from .support import ADMIN_TOKEN, PASSWORD, add_agent, agents_of, console_sign_in, review_of, start

CHROMIUM = Path("/usr/bin/chromium")
SHOTS = Path(__file__).parents[2] / "test-output"
XSS = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']
LINKS = 'javascript:alert(1) http://evil.test/"onmouseover="alert(1)'


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


#: the README's screenshots are written to docs/ only when asked (CSBOT_SCREENSHOTS=docs), so a
#: test run leaves the working tree clean
DOCS = Path(__file__).parents[2] / "docs" if os.environ.get("CSBOT_SCREENSHOTS") == "docs" else SHOTS


async def wait_until(predicate, timeout=10.0, what="the condition"):
    deadline = time.monotonic() + timeout
    while not await predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.1)


async def pane_boxes(page):
    return {name: await page.locator(f".pane-{name}").bounding_box() for name in ("list", "thread", "details")}


@needs_chromium
async def test_an_agent_finds_a_conversation_watches_it_live_takes_over_replies_and_hands_back(browser):
    SHOTS.mkdir(exist_ok=True)
    async with start() as bot:
        await fill(bot)
        for n in range(25):  # a long thread: the panes scroll on their own, the composer stays
            await bot.send_text("oWang", f"第 {n} 条：请看 https://example.com/order?id={n} 谢谢")
        await review_of(bot).set_tags("default", "oAnn", add=["refund"])
        await bot.wait_idle()
        page, dialogs = await signed_in_page(browser, bot)

        rows = page.locator("#conv-list li.conv")
        assert await rows.count() == 4
        assert await rows.first.get_attribute("data-key") == "default/oWang"  # newest activity first
        assert await page.locator("li.conv[data-key='default/oCat'] .badge.unanswered").count() == 1
        assert await page.locator("li.conv[data-key='default/oDan'] .badge.transferred").count() == 1
        assert await page.locator("li.conv[data-key='default/oCat'] .count.unread").inner_text() == "1"
        # a new customer shows up in the open list without a reload
        await bot.send_text("oEve", "hello, anyone there?")
        await page.locator("li.conv[data-key='default/oEve']").wait_for(timeout=15000)
        assert await rows.first.get_attribute("data-key") == "default/oEve"
        await wait_until(lambda: page.evaluate("document.title.startsWith('(')"), what="the waiting count in the title")

        await page.fill("input[name=q]", "羊毛围巾")
        await page.press("input[name=q]", "Enter")
        await page.wait_for_url(re.compile(r"q=%E7%BE%8A"))
        assert await rows.count() == 1
        await rows.first.click()
        await page.wait_for_url(re.compile(r"/admin/c/default/oWang\?q="))

        # three panes side by side, each scrolling on its own; the composer in view
        boxes = await pane_boxes(page)
        assert boxes["list"]["x"] < boxes["thread"]["x"] < boxes["details"]["x"]
        thread = page.locator("#thread")
        assert await thread.evaluate("t => t.scrollHeight > t.clientHeight + 100")
        assert await thread.evaluate("t => Math.abs(t.scrollHeight - t.clientHeight - t.scrollTop) < 80")  # at the bottom
        assert await page.evaluate("document.scrollingElement.scrollHeight <= window.innerHeight")
        composer = await page.locator("#send-reply").bounding_box()
        assert composer["y"] + composer["height"] <= 860

        await thread.get_by_text("我买的蓝色羊毛围巾还没发货").wait_for()
        photo = thread.locator("img.photo")
        assert await photo.count() == 1
        await wait_until(lambda: photo.evaluate("img => img.complete && img.naturalWidth === 160"), what="the photo")
        assert await thread.get_by_text("MediaId EXPIRED_MEDIA_ID_42").count() == 1  # placeholder
        assert await thread.locator(".card-mp .card-title").inner_text() == "羊毛围巾 · 蓝色"
        link = thread.locator("a[href='https://example.com/order?id=24']")
        assert await link.get_attribute("rel") == "noopener noreferrer" and await link.get_attribute("target") == "_blank"

        await bot.send_text("oWang", "还在吗？")  # a push arrives while the agent reads at the bottom
        await thread.get_by_text("还在吗？").wait_for(timeout=15000)
        await wait_until(lambda: thread.evaluate("t => Math.abs(t.scrollHeight - t.clientHeight - t.scrollTop) < 80"),
                         what="the thread to follow the new message")
        await page.goto(bot.url + "/admin/c/default/oWang")  # the README's picture: the whole list
        await page.locator("#thread").get_by_text("还在吗？").wait_for()
        await asyncio.sleep(0.3)
        await page.screenshot(path=str(DOCS / "console-three-pane.png"))

        await page.click("button:has-text('Take over')")
        await page.wait_for_url(re.compile(r"/admin/c/default/oWang"))
        assert await page.locator("#conv-status").get_attribute("data-status") == "human"
        await page.fill("#reply-text", "您好，我是客服 Alice，马上为您查询。")
        await page.click("#send-reply")
        await page.wait_for_url(re.compile(r"/admin/c/default/oWang"))
        await wait_until(lambda: asyncio.sleep(0, "您好，我是客服 Alice，马上为您查询。" in bot.replies_to("oWang")),
                         what="the reply to reach WeChat")
        await page.locator(".msg.out.agent .pill-sent").last.wait_for(timeout=15000)  # delivery state, live
        await page.screenshot(path=str(SHOTS / "console-thread.png"))

        await page.click("button:has-text('Hand back to bot')")
        await page.wait_for_url(re.compile(r"/admin/c/default/oWang"))
        assert await page.locator("#conv-status").get_attribute("data-status") == "bot"
        assert (await review_of(bot).conversation("default", "oWang"))["status"] == "bot"
        assert dialogs == []


@needs_chromium
async def test_changes_made_elsewhere_unread_marks_new_message_marker_and_notifications(browser):
    async with start() as bot:
        await add_agent(bot, "bob")
        await bot.send_text("oAnn", "我想退货")
        for n in range(30):
            await bot.send_text("oBen", f"message {n}")
        await bot.wait_idle()
        page, dialogs = await signed_in_page(browser, bot)
        await page.context.grant_permissions(["notifications"])
        await page.add_init_script("""
            window.__notes = [];
            window.Notification = class { constructor(title, opts) { window.__notes.push(title); }
              static get permission() { return 'granted'; } static requestPermission() { return Promise.resolve('granted'); } };
        """)
        await page.goto(bot.url + "/admin/c/default/oBen")
        await page.click("#notify-toggle")  # opt in
        await wait_until(lambda: page.evaluate("localStorage.getItem('csbot-notify') === '1'"), what="the opt-in")
        assert await page.locator("#take-over").count() == 1

        # someone else takes the conversation over (the CLI here): the details update, no stale button
        await review_of(bot).set_status("default", "oBen", "human", agent="bob")
        await page.locator("#details .details-inner[data-assigned='bob']").wait_for(timeout=15000)
        assert await page.locator("#conv-status").get_attribute("data-status") == "human"
        assert await page.locator("#side-agent").inner_text() == "bob"

        # scrolled up: a new message shows the marker instead of jumping
        await page.locator("#thread").evaluate("t => { t.scrollTop = 0; }")
        await bot.send_text("oBen", "are you there?")
        await page.locator("#new-marker").wait_for(state="visible", timeout=15000)
        assert await page.locator("#thread").evaluate("t => t.scrollTop < 50")
        await page.click("#new-marker")
        assert await page.locator("#new-marker").is_hidden()

        # another customer writes: unread count on the row, a notification for a new unassigned one
        await bot.send_text("oCy", "hello?")
        await page.locator("li.conv[data-key='default/oCy'] .count.unread").wait_for(timeout=15000)
        await wait_until(lambda: page.evaluate("window.__notes.length > 0"), what="a notification")
        assert "oCy" in (await page.evaluate("window.__notes"))[0]
        assert re.match(r"^\(\d+\) ", await page.title())
        assert dialogs == []


@needs_chromium
async def test_saved_replies_images_and_assignment(browser):
    async with start() as bot:
        await add_agent(bot, "bob")
        await bot.send_text("oAnn", "怎么退款")
        await bot.send_text("oBen", "hello")
        await bot.wait_idle()
        page, dialogs = await signed_in_page(browser, bot)
        await page.goto(bot.url + "/admin/saved-replies")
        await page.fill("input[name=shortcut]", "refund")
        await page.fill(".saved-form textarea[name=text]", "退款会在 3 个工作日内原路退回。")
        await page.click(".saved-form button[type=submit]")
        await page.locator("tr[data-shortcut='refund']").wait_for()

        await page.goto(bot.url + "/admin/c/default/oAnn")
        await page.locator("#reply-text").type("您好！/ref")
        await page.locator("#saved-menu li[data-shortcut='refund']").wait_for(state="visible")
        await page.keyboard.press("Enter")
        assert await page.input_value("#reply-text") == "您好！退款会在 3 个工作日内原路退回。"
        await page.keyboard.press("Control+Enter")
        await page.wait_for_url(re.compile(r"/admin/c/default/oAnn"))
        await wait_until(lambda: asyncio.sleep(0, "您好！退款会在 3 个工作日内原路退回。" in bot.replies_to("oAnn")),
                         what="the saved reply to be sent")

        png = tiny_png(120, 80)
        await page.set_input_files("#image-file", files=[{"name": "receipt.png", "mimeType": "image/png", "buffer": png}])
        await page.wait_for_url(re.compile(r"/admin/c/default/oAnn"))
        await wait_until(lambda: asyncio.sleep(0, any(m.get("msgtype") == "image" for m in bot.fake.sent_to("oAnn"))),
                         what="the image to be sent")
        await page.locator("img.photo.sent").wait_for()

        await page.goto(bot.url + "/admin/c/default/oBen")
        await page.select_option(".assign-form select", "bob")
        await page.click("#assign")
        await page.wait_for_url(re.compile(r"/admin/c/default/oBen"))
        assert await page.locator("#side-agent").inner_text() == "bob"
        await page.click("#filter-unassigned")
        await page.wait_for_url(re.compile(r"assigned=unassigned"))
        keys = await page.locator("#conv-list li.conv").evaluate_all("ls => ls.map(l => l.dataset.key)")
        assert keys == []  # oAnn is Alice's (she replied), oBen is bob's
        await page.click("#filter-mine")
        keys = await page.locator("#conv-list li.conv").evaluate_all("ls => ls.map(l => l.dataset.key)")
        assert keys == ["default/oAnn"]
        audit = [e["action"] for e in await services_of(bot.app).audit.entries()]
        assert {"saved_reply", "reply", "image", "assign", "takeover", "sign_in"} <= set(audit)
        assert dialogs == []


@needs_chromium
async def test_phone_width_and_the_chinese_interface(browser):
    DOCS.mkdir(exist_ok=True)
    async with start() as bot:
        await fill(bot)
        await add_agent(bot, "小王")
        context = await browser.new_context(viewport={"width": 390, "height": 844}, locale="zh-CN",
                                            extra_http_headers={"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.5"},
                                            is_mobile=True, has_touch=True)
        page = await context.new_page()
        await page.goto(bot.url + "/admin/")
        assert await page.locator("h1").inner_text() == "登录客服台"
        await page.fill("input[name=name]", "小王")
        await page.fill("input[name=password]", PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_url(re.compile(r"/admin/$"))
        assert await page.locator(".pane-thread").is_hidden()  # one pane at a time
        assert await page.locator(".tab.active").first.inner_text() == "全部"
        await page.click("li.conv[data-key='default/oWang'] a")
        await page.wait_for_url(re.compile(r"/admin/c/default/oWang"))
        assert await page.locator(".pane-list").is_hidden()
        assert await page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth")  # nothing cut off
        for selector in ("#send-reply", "#reply-text", ".thread-head .back", "#details-toggle"):
            box = await page.locator(selector).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390 and box["y"] + box["height"] <= 844, selector
        assert await page.locator("#send-reply").inner_text() == "发送"
        await page.screenshot(path=str(DOCS / "console-phone.png"))
        await page.click("#details-toggle")
        assert await page.locator("#take-over").inner_text() == "接管"
        await page.click("#details-close")
        assert await page.locator("#take-over").is_hidden()

        desktop = await browser.new_context(viewport={"width": 1280, "height": 860}, locale="zh-CN",
                                            extra_http_headers={"Accept-Language": "zh-CN,zh;q=0.9"})
        await desktop.add_cookies(await context.cookies())
        wide = await desktop.new_page()
        await wide.goto(bot.url + "/admin/c/default/oWang")
        assert await wide.locator("#take-over").inner_text() == "接管"
        await wide.screenshot(path=str(DOCS / "console-zh.png"))
        await wide.click("a[hreflang=en]")  # the header's switch
        await wide.wait_for_url(re.compile(r"/admin/c/default/oWang"))
        assert await wide.locator("#take-over").inner_text() == "Take over"
        await desktop.close()
        await context.close()


@needs_chromium
async def test_a_refusal_reads_in_chinese_in_a_chinese_console(browser):
    """小王 writes a reply while an admin gives the conversation to bob: the refusal is Chinese."""
    async with start() as bot:
        await bot.send_text("oAnn", "我想退货")
        await bot.wait_idle()
        await add_agent(bot, "bob")
        page, dialogs = await signed_in_page(browser, bot, name="小王", role="agent", locale="zh-CN",
                                             extra_http_headers={"Accept-Language": "zh-CN,zh;q=0.9"})
        await page.goto(bot.url + "/admin/c/default/oAnn")
        assert await page.locator("#send-reply").inner_text() == "发送"
        await page.fill("#reply-text", "您好，请提供订单号")
        await review_of(bot).assign("default", "oAnn", "bob")  # meanwhile, an admin
        await page.click("#send-reply")
        await page.locator("main.card h1").wait_for()
        assert await page.locator("main.card h1").inner_text() == "403"
        assert await page.locator("main.card p").first.inner_text() == "此会话已分配给 bob；如需接手，请管理员重新分配"
        assert "assigned" not in await page.content()
        assert "您好，请提供订单号" not in bot.replies_to("oAnn")
        assert dialogs == []


@needs_chromium
async def test_customer_text_that_looks_like_html_is_shown_as_text_and_runs_nothing(browser):
    async with start() as bot:
        await bot.send_text("oXss", LINKS)
        await bot.send_text("oXss", XSS[0])
        await bot.wait_idle()
        page, dialogs = await signed_in_page(browser, bot)
        await page.locator("li.conv[data-key='default/oXss']").get_by_text(XSS[0]).wait_for()
        await bot.send_text("oXss", XSS[1])  # arrives in the list through the live-update script
        await page.locator("li.conv[data-key='default/oXss']").get_by_text(XSS[1]).wait_for(timeout=15000)

        await page.click("li.conv[data-key='default/oXss'] a")
        await page.wait_for_url(re.compile(r"/admin/c/default/oXss$"))
        for payload in XSS:
            await page.locator("#thread").get_by_text(payload, exact=True).wait_for()
        await bot.send_text("oXss", XSS[1] + " (live)")  # rendered by the thread's live-update script
        await page.locator("#thread").get_by_text(XSS[1] + " (live)", exact=True).wait_for(timeout=15000)
        await asyncio.sleep(0.3)
        assert dialogs == []
        assert await page.locator("img[src=x]").count() == 0
        assert await page.locator("#thread script").count() == 0
        assert await page.locator("#thread a[href^='javascript']").count() == 0
        link = page.locator("#thread a[href^='http://evil.test/']").first
        assert await link.get_attribute("onmouseover") is None and await link.get_attribute("rel") == "noopener noreferrer"


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
            # a form without a session goes to sign in (and back to where it came from); a script gets 401
            async with anon.post(base + "/c/default/oAnn/reply", data={"text": "x"}, allow_redirects=False,
                                 headers={"Referer": "https://evil.test/admin/x"}) as r:
                location = r.headers["Location"]
                assert r.status == 303 and location.startswith("/admin/login?")
                assert parse_qs(location.partition("?")[2]) == {"next": ["/admin/"], "ended": ["1"]}
            async with anon.post(base + "/c/default/oAnn/reply", data={"text": "x"},
                                 headers={"X-CSRF-Token": "x"}) as r:
                assert r.status == 401
            assert "x" not in bot.replies_to("oAnn")
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


@needs_chromium
async def test_a_session_that_ends_mid_reply_keeps_what_the_agent_typed(browser):
    async with start() as bot:
        await bot.send_text("oAnn", "我的快递三天没动了")
        await bot.wait_idle()
        page, dialogs = await signed_in_page(browser, bot, name="ada", role="agent")
        await page.goto(bot.url + "/admin/c/default/oAnn")
        draft = "您好，我查了一下，您的包裹在中转站，预计明天送到。"
        await page.fill("#reply-text", draft)
        # meanwhile an admin resets ada's password (or her 12 hours are up): the session ends
        await agents_of(bot).reset_password("ada", PASSWORD)
        await page.click("#send-reply")
        await page.wait_for_url(re.compile(r"/admin/login\?"))
        assert "Your session has ended" in await page.locator(".alert").inner_text()
        assert draft not in bot.replies_to("oAnn")
        await page.fill("input[name=name]", "ada")
        await page.fill("input[name=password]", PASSWORD)
        await page.click("button[type=submit]")
        await page.wait_for_url(re.compile(r"/admin/c/default/oAnn$"))  # back where she was
        assert await page.input_value("#reply-text") == draft
        async with page.expect_navigation():
            await page.click("#send-reply")
        assert page.url.endswith("/admin/c/default/oAnn")  # the #sent mark was read and dropped
        await wait_until(lambda: asyncio.sleep(0, draft in bot.replies_to("oAnn")), what="the reply to be sent")
        await page.reload()
        assert await page.input_value("#reply-text") == ""  # sent: not offered again
        assert bot.replies_to("oAnn").count(draft) == 1
        # the live page of a session ended elsewhere goes to the sign-in page, the draft kept
        await page.fill("#reply-text", "还有别的问题吗？")
        await agents_of(bot).set_disabled("ada", True)
        await page.wait_for_url(re.compile(r"/admin/login\?.*ended=1"), timeout=15000)
        assert await page.evaluate("Object.keys(localStorage).filter(k => k.startsWith('csbot-draft:ada:'))") \
            == ["csbot-draft:ada:default/oAnn"]
        assert dialogs == []


@needs_chromium
async def test_long_text_right_to_left_text_and_images_that_fail_to_load(browser):
    from csbot.messages import Image

    async with start() as bot:
        long_url = "https://shop.example/track?" + "x" * 3000
        await bot.send_text("oLong", long_url)
        await bot.send_text("oLong", "我" * 1500)
        arabic = "مرحبا، أين طلبي رقم 1234؟"
        await bot.send_text("oLong", arabic)
        await bot.wait_idle()
        review = review_of(bot)
        evil = "\u202eeve"  # a right-to-left override in an agent's name
        await review.reply("default", "oLong", "稍等", agent=evil)
        await review.set_tags("default", "oLong", add=["\u202evip"])
        gone = services_of(bot.app).media.path_of("outgoing/deleted-meanwhile.png")
        image_id = await review.reply_with("default", "oLong", Image(path=str(gone)), agent="Alice", action="image")
        page, dialogs = await signed_in_page(browser, bot)
        await page.goto(bot.url + "/admin/c/default/oLong")
        # nothing widens the thread or the page, at desktop and phone width
        for width in (1280, 390):
            await page.set_viewport_size({"width": width, "height": 860})
            assert await page.locator("#thread").evaluate("t => t.scrollWidth <= t.clientWidth"), width
            assert await page.evaluate("document.scrollingElement.scrollWidth <= window.innerWidth"), width
        await page.set_viewport_size({"width": 1280, "height": 860})
        # Arabic reads right to left in its bubble; the reversing name does not reorder its line
        bubble = page.locator(".msg.in .text", has_text="مرحبا")
        assert await bubble.evaluate("e => getComputedStyle(e).direction") == "rtl"
        meta = page.locator(".msg.out.agent .meta", has_text="eve").first
        name_box = await meta.locator("bdi").bounding_box()
        time_box = await meta.locator("time").bounding_box()
        assert name_box["x"] + name_box["width"] <= time_box["x"] + 1, (name_box, time_box)
        # the image that is gone says so instead of a broken icon
        failed = page.locator(f"#m{image_id} .media-failed")
        await failed.wait_for()
        assert await failed.inner_text() == "The image could not be loaded"
        assert dialogs == []


async def test_a_double_click_on_send_sends_one_reply():
    import aiohttp

    async with start() as bot:
        await bot.send_text("oAnn", "在吗")
        await bot.wait_idle()
        await add_agent(bot, "ada")
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as web:
            assert (await console_sign_in(bot, web, "ada")).status == 303
            async with web.get(bot.url + "/admin/c/default/oAnn") as r:
                page = await r.text()
            form = {name: re.search(f'name="{name}" value="([^"]+)"', page).group(1) for name in ("csrf", "send_key")}
            for _ in range(2):
                async with web.post(bot.url + "/admin/c/default/oAnn/reply", data={**form, "text": "您好"},
                                    allow_redirects=False) as r:
                    assert r.status == 303
        await bot.wait_idle()
        assert bot.replies_to("oAnn").count("您好") == 1
