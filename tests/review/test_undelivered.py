"""Replies that never arrived: flagged (API, CLI, console, metric) and retried (API, CLI, console)
through the outbox's usual order and quota; times in one format (ISO 8601 with offset), shown in
the browser's zone."""

import asyncio
import json
import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from csbot.review.cli import describe_item
from csbot.testing.harness import TEST_APPID

from .support import api, review_of, start
from .test_cli import csbot
from .test_console import browser, needs_chromium, signed_in_page  # noqa: F401 (fixture)

SEND = "/cgi-bin/message/custom/send"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00$")


async def failed_reply(bot, openid="oAnn", errcode=40003):
    """A customer writes; the bot's reply is refused by WeChat for good."""
    bot.fake.inject(SEND, errcode=errcode, times=1)
    await bot.send_text(openid, "怎么退货")
    await bot.wait_idle()
    [row] = [m for m in await bot.messages(openid, direction="out")]
    assert row.status == ("failed" if errcode == 40003 else "quota_exceeded")
    return row


async def metric(bot) -> str:
    async with bot.session.get(bot.url + "/metrics") as resp:
        text = await resp.text()
    return re.search(r'^csbot_undelivered_conversations\{app="default"\} (\S+)$', text, re.M).group(1)


async def test_a_failed_reply_flags_the_conversation_until_a_retry_delivers_it():
    async with start() as bot:
        row = await failed_reply(bot)
        await bot.send_text("oBen", "怎么退货")  # answered and delivered
        await bot.wait_idle()

        _, page = await api(bot, "GET", "/api/conversations")
        flags = {c["openid"]: c["undelivered"] for c in page["conversations"]}
        assert flags == {"oAnn": True, "oBen": False}
        _, only = await api(bot, "GET", "/api/conversations", params={"undelivered": "true"})
        assert [c["openid"] for c in only["conversations"]] == ["oAnn"]
        status, body = await api(bot, "GET", "/api/conversations", params={"undelivered": "maybe"})
        assert status == 400 and "undelivered" in body["error"]
        assert await metric(bot) == "1.0"

        code, out, _ = await csbot(bot, "conversations", "list", "--undelivered", "--json")
        assert code == 0 and [json.loads(line)["undelivered"] for line in out.splitlines()] == [True]
        code, out, _ = await csbot(bot, "conversations", "list")
        assert re.search(r"oAnn .*✗", out) and not re.search(r"oBen .*✗", out)
        code, out, _ = await csbot(bot, "conversations", "show", "oAnn")
        assert f"csbot retry {row.id}" in out

        _, thread = await api(bot, "GET", "/api/conversations/default/oAnn")
        [reply] = [i for i in thread["items"] if i.get("direction") == "out"]
        assert reply["retryable"] is True
        status, body = await api(bot, "POST", f"/api/messages/{row.id}/retry", json={"agent": "ada"})
        assert status == 202 and body["status"] == "queued" and body["message"]["id"] == row.id
        await bot.wait_idle()
        assert bot.replies_to("oAnn") == [reply["text"]]
        [again] = await bot.messages("oAnn", direction="out")
        assert (again.status, again.attempts) == ("sent", 1)
        _, page = await api(bot, "GET", "/api/conversations", params={"undelivered": "1"})
        assert page["conversations"] == []
        assert await metric(bot) == "0.0"


async def test_only_undelivered_replies_can_be_retried():
    async with start() as bot:
        await bot.send_text("oBen", "怎么退货")
        await bot.wait_idle()
        sent = (await bot.messages("oBen", direction="out"))[0]
        pushed = (await bot.messages("oBen", direction="in"))[0]
        for message_id, expected in ((sent.id, 409), (pushed.id, 400), (999999, 404)):
            status, body = await api(bot, "POST", f"/api/messages/{message_id}/retry")
            assert status == expected and set(body) == {"error"}, (message_id, body)
        status, body = await api(bot, "POST", "/api/messages/abc/retry")
        assert status == 400
        code, _, err = await csbot(bot, "retry", str(sent.id))
        assert code == 1 and "only failed, dead, quota_exceeded" in err


async def test_a_retry_obeys_the_reply_quota_like_any_reply():
    async with start(quota_window_seconds=1) as bot:
        row = await failed_reply(bot)
        await asyncio.sleep(1.2)  # the customer's reply window has closed meanwhile
        code, out, _ = await csbot(bot, "retry", str(row.id), "--agent", "max")
        assert code == 0 and f"reply {row.id} to oAnn queued again" in out
        for _ in range(100):
            [again] = await bot.messages("oAnn", direction="out")
            if again.status not in ("queued", "sending"):
                break
            await asyncio.sleep(0.05)
        assert again.status == "quota_exceeded" and "window closed" in again.error
        assert bot.replies_to("oAnn") == []
        # once the customer writes again, the window is open and the retry goes out
        await bot.send_text("oAnn", "还在吗")
        await bot.wait_idle()
        await review_of(bot).retry(row.id, actor="max")
        await bot.wait_idle()
        assert bot.replies_to("oAnn") == [again.text]


async def test_times_are_iso_8601_with_offset_in_list_thread_export_and_cli():
    async with start() as bot:
        await failed_reply(bot)
        await review_of(bot).add_note("default", "oAnn", "checked", author="ada")
        _, page = await api(bot, "GET", "/api/conversations")
        conv = page["conversations"][0]
        for key in ("created_at", "last_message_at"):
            assert ISO.match(conv[key]), conv[key]
        assert ISO.match(conv["last_message"]["at"])
        _, thread = await api(bot, "GET", "/api/conversations/default/oAnn")
        for item in thread["items"]:
            assert ISO.match(item["at"]), item
        _, export = await api(bot, "GET", "/api/export")
        for line in export.splitlines():
            row = json.loads(line)
            assert ISO.match(row["created_at"]) and ISO.match(row["received_at"])
        code, out, _ = await csbot(bot, "conversations", "show", "oAnn", "--json")
        assert all(ISO.match(json.loads(line).get("at") or json.loads(line)["created_at"])
                   for line in out.splitlines())
        # the terminal shows them in its local zone
        local = datetime.fromisoformat(thread["items"][0]["at"]).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        assert describe_item(thread["items"][0]).startswith(local)


@needs_chromium
async def test_the_console_shows_every_time_in_the_browsers_zone_and_retries(browser, monkeypatch):  # noqa: F811
    monkeypatch.setenv("TZ", "UTC")  # the server's zone
    time.tzset()
    try:
        async with start() as bot:
            row = await failed_reply(bot)
            page, dialogs = await signed_in_page(browser, bot, timezone_id="Asia/Shanghai")
            badge = page.locator("li.conv[data-key='default/oAnn'] .badge.undelivered")
            assert await badge.count() == 1
            listed = page.locator("li.conv[data-key='default/oAnn'] time")
            assert "UTC+08:00" in await listed.get_attribute("title")

            await page.goto(f"{bot.url}/admin/c/default/oAnn")
            _, thread = await api(bot, "GET", "/api/conversations/default/oAnn")

            def shanghai(at: str) -> str:
                return (datetime.fromisoformat(at).astimezone(timezone(timedelta(hours=8)))
                        .strftime("%Y-%m-%d %H:%M"))

            first = thread["items"][0]
            drawn = page.locator(f"#m{first['id']} time")
            assert await drawn.inner_text() == shanghai(first["at"])
            assert (await drawn.get_attribute("title")).endswith("UTC+08:00")

            await bot.send_text("oAnn", "还在吗")  # arrives live, drawn by the script
            live = page.locator(".msg.in").filter(has_text="还在吗")
            await live.wait_for(timeout=5000)
            newest = (await bot.messages("oAnn", direction="in"))[-1]
            _, thread = await api(bot, "GET", "/api/conversations/default/oAnn")
            at = next(i["at"] for i in thread["items"] if i["id"] == newest.id)
            assert await live.locator("time").inner_text() == shanghai(at)

            await page.locator(f"#m{row.id} button.retry").click()
            await page.wait_for_url(re.compile(r"/admin/c/default/oAnn$"))
            await bot.wait_idle()
            assert (await bot.messages("oAnn", direction="out"))[0].status == "sent"
            assert dialogs == []
    finally:
        monkeypatch.undo()
        time.tzset()
