"""``/tcb/database*``: WeChat's server database API on csbot, with the query as WeChat's
statement string (parsed, never run) or as JSON."""

from __future__ import annotations

import json

import pytest

from csbot.testing.harness import Harness

KEY = "server-key-for-tests-0123456789"


@pytest.fixture
async def bot():
    async with Harness.start(handlers_dir=None, server_key=KEY) as b:
        yield b


async def tcb(bot, name, body, key=KEY):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with bot.session.post(f"{bot.url}/tcb/{name}", json=body, headers=headers) as resp:
        return resp.status, await resp.json()


async def test_add_query_count_update_delete_with_statements(bot):
    status, added = await tcb(bot, "databaseadd", {
        "env": "default",
        "query": "db.collection(\"geo\").add({data: [{name: 'a', done: true, n: 1}, {'name': \"b\", done: false, n: 2},"
                 " {name: 'c', done: true, n: 3, tags: ['x', 'y']}]})"})
    assert status == 200 and added["errcode"] == 0 and len(added["id_list"]) == 3

    status, got = await tcb(bot, "databasequery", {
        "env": "default", "query": 'db.collection("geo").where({done: true}).orderBy("n", "desc").limit(10).skip(1).get()'})
    assert status == 200 and got["errcode"] == 0 and got["errmsg"] == "ok"
    assert got["pager"] == {"Offset": 1, "Limit": 10, "Total": 2}
    assert [json.loads(d)["name"] for d in got["data"]] == ["a"]  # each record is a JSON string

    _, counted = await tcb(bot, "databasecount", {
        "env": "default", "query": "db.collection('geo').where({n: db.command.gt(1).and(db.command.lt(3))}).count()"})
    assert counted["count"] == 1
    _, counted = await tcb(bot, "databasecount", {"env": "default", "query": "db.collection('geo').where({name: /^[ab]$/}).count()"})
    assert counted["count"] == 2

    _, updated = await tcb(bot, "databaseupdate", {
        "env": "default",
        "query": "db.collection('geo').where({done: true}).update({data: {n: db.command.inc(10), tags: db.command.push(['z'])}})"})
    assert (updated["matched"], updated["modified"], updated["id"]) == (2, 2, "")
    _, created = await tcb(bot, "databaseupdate", {
        "env": "default", "query": "db.collection('geo').doc('fixed').set({data: {name: 'd'}})"})
    assert (created["matched"], created["modified"], created["id"]) == (0, 0, "fixed")

    _, deleted = await tcb(bot, "databasedelete", {
        "env": "default", "query": "db.collection('geo').where({n: db.command.gte(11)}).remove()"})
    assert deleted["deleted"] == 2
    _, counted = await tcb(bot, "databasecount", {"env": "default", "query": "db.collection('geo').count()"})
    assert counted["count"] == 2


async def test_structured_json_query(bot):
    await tcb(bot, "databaseadd", {"env": "default", "query": {"collection": "todo", "data": [{"t": 1}, {"t": 2}]}})
    _, got = await tcb(bot, "databasequery", {"env": "default", "query": {
        "collection": "todo", "where": {"t": {"$gte": 2}}, "field": {"t": True, "_id": False}}})
    assert got["data"] == ['{"t": 2}'] and got["pager"]["Limit"] == 10


@pytest.mark.parametrize("query, message", [
    ("process.exit(1)", "must start with db.collection"),
    ("db.collection('a').where({a: require('fs')}).get()", "'require' is not allowed"),
    ("db.collection('a').get().then(x => x)", "unsupported method .then()"),
    ("db.collection('a').where({a: {$where: 'sleep(1)'}}).get()", "$where (JavaScript conditions) is not supported"),
    ("db.collection('a').where({a: new Function('x')}).get()", "only new Date(...) may be constructed"),
    ("db.collection('a').where({a: db.Geo.Point(1, 2)}).get()", "geo queries"),
    ("db.collection('a').count()", "runs .get()"),
    ("db.collection('a b').get()", "collection name"),
])
async def test_statements_outside_the_grammar_are_refused(bot, query, message):
    status, body = await tcb(bot, "databasequery", {"env": "default", "query": query})
    assert status == 400 and body["errcode"] != 0 and message in body["errmsg"]


async def test_statements_with_dates_store_and_find_them(bot):
    await tcb(bot, "databaseadd", {"env": "default", "query":
              'db.collection("logs").add({data: [{at: new Date(1704067200000)}, {at: db.serverDate()}]})'})
    status, got = await tcb(bot, "databasequery", {"env": "default", "query":
                            'db.collection("logs").where({at: db.command.lt(new Date("2025-01-01T00:00:00Z"))}).get()'})
    assert status == 200 and [json.loads(d)["at"] for d in got["data"]] == [{"$date": 1704067200000}]


async def test_the_server_key_is_required(bot):
    status, body = await tcb(bot, "databasequery", {"env": "default", "query": "db.collection('a').get()"}, key=None)
    assert status == 401 and body["errcode"] == 41001
    status, _ = await tcb(bot, "databasequery", {"env": "default", "query": "db.collection('a').get()"}, key="wrong")
    assert status == 401
    status, body = await tcb(bot, "databasequery", {"env": "nope", "query": "db.collection('a').get()"})
    assert status == 404 and body["errcode"] == 85088


async def test_the_operations_are_counted_per_collection(bot):
    await tcb(bot, "databasecount", {"env": "default", "query": "db.collection('metered').count()"})
    async with bot.session.get(f"{bot.url}/metrics") as resp:
        text = await resp.text()
    assert ('csbot_cloud_db_operations_total{app="default",collection="metered",operation="tcb.count",'
            'outcome="ok"} 1.0') in text
