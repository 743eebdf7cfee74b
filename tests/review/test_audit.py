"""The audit trail: every action on a conversation is recorded with agent, time and address, in
the same transaction as the action, and shows in the thread; ``csbot audit`` reads it."""

import json

from csbot.services import services_of
from csbot.review.audit import Actor

from .support import add_agent, agents_of, api, review_of, start


async def test_every_action_on_a_conversation_is_recorded_and_shown_in_its_thread():
    async with start() as bot:
        await bot.send_text("oAnn", "where is my parcel?")
        await bot.wait_idle()
        await add_agent(bot, "boss", role="admin")
        await add_agent(bot, "ada")
        ada = {"Authorization": f"Bearer {await agents_of(bot).issue_token('ada')}"}
        path = "/api/conversations/default/oAnn"
        assert (await api(bot, "POST", path + "/assign", headers=ada, json={"agent": "ada"}))[0] == 200
        assert (await api(bot, "POST", path + "/status", headers=ada, json={"status": "human"}))[0] == 200
        assert (await api(bot, "POST", path + "/reply", headers=ada, json={"text": "checking"}))[0] == 202
        assert (await api(bot, "POST", path + "/tags", headers=ada, json={"add": ["parcel", "vip"]}))[0] == 200
        assert (await api(bot, "POST", path + "/tags", headers=ada, json={"remove": ["vip"]}))[0] == 200
        assert (await api(bot, "POST", path + "/notes", headers=ada, json={"text": "courier late"}))[0] == 201
        assert (await api(bot, "POST", path + "/status", headers=ada, json={"status": "bot"}))[0] == 200
        assert (await api(bot, "POST", path + "/status", json={"status": "closed", "agent": "lead"}))[0] == 200
        await review_of(bot).set_status("default", "oAnn", "closed", by=Actor("ada", "agent", "10.0.0.9"))  # no-op

        status, body = await api(bot, "GET", "/api/audit?since=1h&openid=oAnn")
        assert status == 200
        got = [(e["action"], e["agent"], e["detail"]) for e in body["entries"]]
        assert got == [("assign", "ada", "to ada"), ("takeover", "ada", None), ("reply", "ada", got[2][2]),
                       ("tag", "ada", "+parcel +vip"), ("tag", "ada", "-vip"), ("note", "ada", got[5][2]),
                       ("handback", "ada", None), ("close", "lead", None)]
        assert all(e["address"] == "127.0.0.1" and e["app"] == "default" for e in body["entries"])
        assert (await api(bot, "GET", "/api/audit", headers=ada))[0] == 403  # admins only

        items = (await review_of(bot).thread("default", "oAnn"))["items"]
        events = [(i["event"], i["actor"], i.get("address")) for i in items if i["kind"] == "event"]
        assert events == [("takeover", "ada", "127.0.0.1"), ("handback", "ada", "127.0.0.1"),
                          ("close", "lead", "127.0.0.1")]
        audits = [(i["action"], i["agent"]) for i in items if i["kind"] == "audit"]
        assert audits == [("assign", "ada"), ("tag", "ada"), ("tag", "ada")]


async def test_an_audit_row_is_written_with_its_action_or_not_at_all():
    async with start() as bot:
        await bot.send_text("oAnn", "hi")
        await bot.wait_idle()
        hub = services_of(bot.app)
        status, _ = await api(bot, "POST", "/api/conversations/default/oAnn/tags", json={"add": ["x" * 40]})
        assert status == 400
        status, _ = await api(bot, "POST", "/api/conversations/default/oNobody/notes", json={"text": "hi"})
        assert status == 404
        assert await hub.audit.entries() == []
