"""The console's read-only database pages (``/admin/db``)."""

from __future__ import annotations

from urllib.parse import quote

import aiohttp

from csbot.cloud.database import Database
from tests.review.support import add_agent, console_sign_in, start


async def signed_in(bot, session, name="ada", role="admin"):
    await add_agent(bot, name, role=role)
    resp = await console_sign_in(bot, session, name)
    assert resp.status == 303


async def test_collections_and_documents_with_a_json_filter():
    async with start() as bot:
        db = Database(bot.services.database, "default")
        await db.collection("orders").add([{"n": 1, "note": "<script>alert(1)</script>"}, {"n": 2}])
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as agent:
            async with agent.get(bot.url + "/admin/db", allow_redirects=False) as resp:
                assert resp.status == 303  # sign in first
            await signed_in(bot, agent)
            async with agent.get(bot.url + "/admin/db") as resp:
                html = await resp.text()
                assert resp.status == 200 and "/admin/db/default/orders" in html and ">2<" in html
            where = quote('{"n": 1}')
            async with agent.get(f"{bot.url}/admin/db/default/orders?where={where}") as resp:
                html = await resp.text()
                assert "1 document<" in html and "&lt;script&gt;" in html and "<script>alert" not in html
            async with agent.get(f"{bot.url}/admin/db/default/orders?where={quote('{nope')}") as resp:
                assert "the filter is not JSON" in await resp.text()
            bad = quote('{"n": {"$bad": 1}}')
            async with agent.get(f"{bot.url}/admin/db/default/orders?where={bad}") as resp:
                assert "unknown query operator" in await resp.text()


async def test_only_admins_browse_the_database():
    """Documents belong to every app and customer: an agent (not an admin) is refused, loudly."""
    async with start() as bot:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as agent:
            await signed_in(bot, agent, name="bob", role="agent")
            for path in ("/admin/db", "/admin/db/default/orders"):
                async with agent.get(bot.url + path, allow_redirects=False) as resp:
                    assert resp.status == 403, path
