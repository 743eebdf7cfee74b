"""``/cloud/db/...`` over real HTTP with session tokens: the fixed shapes, rules and errors."""

from __future__ import annotations

import pytest

from csbot.cloud.database.rules import rules_from_config
from csbot.testing.harness import Harness

pytest.importorskip("csbot.cloud.sessions", reason="csbot.cloud.sessions (the functions issue) provides tokens")

RULES = {
    "orders": rules_from_config({"read": "doc._openid == auth.openid", "write": "doc._openid == auth.openid"},
                                where="collections.orders"),
    "faq": rules_from_config({"mode": "admin_write_all_read"}, where="collections.faq"),
}


@pytest.fixture
async def bot():
    async with Harness.start(handlers_dir=None, collection_rules=RULES) as b:
        yield b


async def token_for(bot, openid):
    return await bot.services.sessions.create("default", openid, "c2Vzc2lvbmtleTEyMzQ1Ng==")


async def call(bot, method, path, token=None, body=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with bot.session.request(method, f"{bot.url}/cloud/db/{path}", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_the_fixed_shapes(bot):
    me = await token_for(bot, "oMe")
    status, added = await call(bot, "POST", "orders/add", me, {"data": {"item": "tea", "n": 1, "style": {"c": "red"}}})
    assert status == 200 and set(added) == {"_id"}
    doc_id = added["_id"]
    assert await call(bot, "POST", "orders/get", me, {"where": {"_openid": "{openid}"}, "orderBy": [["n", "asc"]],
                                                        "skip": 0, "limit": 5, "field": {"item": True}}) == \
        (200, {"data": [{"_id": doc_id, "item": "tea"}]})
    assert await call(bot, "POST", "orders/count", me, {"where": {"_openid": "{openid}"}}) == (200, {"total": 1})
    assert await call(bot, "POST", "orders/update", me, {"where": {"_openid": "{openid}"},
                                                           "data": {"style": {"size": "L"}, "$inc": {"n": 2}}}) == \
        (200, {"stats": {"updated": 1}})
    status, got = await call(bot, "GET", f"orders/doc/{doc_id}", me)
    assert status == 200 and got["data"]["style"] == {"c": "red", "size": "L"} and got["data"]["n"] == 3
    assert await call(bot, "PATCH", f"orders/doc/{doc_id}", me, {"data": {"n": 9}}) == (200, {"stats": {"updated": 1}})
    status, body = await call(bot, "PUT", f"orders/doc/{doc_id}", me, {"data": {"item": "coffee"}})
    assert status == 200 and body["stats"]["updated"] == 1
    assert (await call(bot, "GET", f"orders/doc/{doc_id}", me))[1]["data"] == \
        {"_id": doc_id, "_openid": "oMe", "item": "coffee"}
    assert await call(bot, "DELETE", f"orders/doc/{doc_id}", me) == (200, {"stats": {"removed": 1}})
    status, body = await call(bot, "GET", f"orders/doc/{doc_id}", me)
    assert status == 404 and body["errCode"] == -502004
    assert await call(bot, "POST", "orders/remove", me, {"where": {"_openid": "{openid}"}}) == \
        (200, {"stats": {"removed": 0}})


async def test_errors(bot):
    me, other = await token_for(bot, "oMe"), await token_for(bot, "oOther")
    status, body = await call(bot, "POST", "orders/get", None, {})
    assert status == 401 and "errCode" in body
    status, body = await call(bot, "POST", "orders/get", me, {"where": {"status": "paid"}})
    assert status == 403 and body["errCode"] == -502003 and "_openid" in body["errMsg"]
    status, body = await call(bot, "POST", "orders/get", me, {"where": {"_openid": "{openid}", "n": {"$foo": 1}}})
    assert status == 400 and "$foo" in body["errMsg"]
    status, body = await call(bot, "POST", "faq/add", me, {"data": {"q": "spam"}})
    assert status == 403
    doc_id = (await call(bot, "POST", "orders/add", me, {"data": {"n": 1}}))[1]["_id"]
    status, body = await call(bot, "GET", f"orders/doc/{doc_id}", other)
    assert status == 403 and doc_id in body["errMsg"]
    status, body = await call(bot, "POST", "orders/add", me, {"data": {"blob": "x" * (1024 * 1024)}})
    assert status == 413
    async with bot.session.post(f"{bot.url}/cloud/db/orders/get", data=b"{not json",
                                headers={"Authorization": f"Bearer {me}"}) as resp:
        assert resp.status == 400 and "errMsg" in await resp.json()
