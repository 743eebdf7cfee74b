"""Agent accounts: the first admin from the admin token, name+password sign-in with server-side
sessions that disabling and password resets end everywhere, sign-in rate limits per name and per
address, roles, and per-agent API tokens on /api/."""

import asyncio
import re
import io
import json
import sys

import aiohttp
import pytest

from csbot.services import services_of
from csbot.review import agents as agents_module
from csbot.review.agents import Agents
from csbot.review.service import Invalid

from .support import ADMIN_TOKEN, PASSWORD, add_agent, agents_of, api, console_sign_in, review_of, start


def jar() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))


async def audit(bot, **kw):
    return await services_of(bot.app).audit.entries(**kw)


async def test_the_admin_token_creates_the_first_admin_and_only_while_no_agent_exists():
    async with start() as bot, jar() as browser:
        async with browser.get(bot.url + "/admin/login") as r:
            assert "Create the first admin" in await r.text()
        r = await console_sign_in(bot, browser, "root", token="wrong")
        assert r.status == 401 and "csbot_session" not in r.cookies
        r = await console_sign_in(bot, browser, "root", password="short", token=ADMIN_TOKEN)
        assert r.status == 400 and await agents_of(bot).count() == 0
        r = await console_sign_in(bot, browser, "root", token=ADMIN_TOKEN)
        assert r.status == 303
        assert [a["role"] for a in await agents_of(bot).list()] == ["admin"]
        async with browser.get(bot.url + "/admin/") as r:
            assert r.status == 200 and "root" in await r.text()

        async with jar() as other:  # now the token no longer signs anybody in
            async with other.get(bot.url + "/admin/login") as r:
                page = await r.text()
                assert "Create the first admin" not in page and 'name="token"' not in page
            r = await console_sign_in(bot, other, "mallory", password=ADMIN_TOKEN, token=ADMIN_TOKEN)
            assert r.status == 401 and await agents_of(bot).count() == 1
        actions = [(e["action"], e["agent"]) for e in await audit(bot)]
        assert ("failed_sign_in", "root") in actions and ("agent_add", "root") in actions
        assert ("failed_sign_in", "mallory") in actions


async def test_sign_in_by_name_and_password_and_disable_or_reset_signs_out_everywhere():
    async with start() as bot:
        await bot.send_text("oAnn", "hi")
        await bot.wait_idle()
        await add_agent(bot, "admin", role="admin")
        await add_agent(bot, "ada")
        async with jar() as laptop, jar() as phone:
            for device in (laptop, phone):
                r = await console_sign_in(bot, device, "ada")
                assert r.status == 303
                cookie = r.headers["Set-Cookie"]
                assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and PASSWORD not in cookie
            async with jar() as stranger:
                wrong = await console_sign_in(bot, stranger, "ada", password="not her password")
                assert wrong.status == 401 and "csbot_session" not in wrong.cookies
            for device in (laptop, phone):
                async with device.get(bot.url + "/admin/", allow_redirects=False) as r:
                    assert r.status == 200

            await agents_of(bot).reset_password("ada", "a brand new password")
            for device in (laptop, phone):
                async with device.get(bot.url + "/admin/", allow_redirects=False) as r:
                    assert r.status == 303 and r.headers["Location"].startswith("/admin/login")
            assert (await console_sign_in(bot, laptop, "ada")).status == 401  # the old password
            assert (await console_sign_in(bot, laptop, "ada", password="a brand new password")).status == 303

            await agents_of(bot).set_disabled("ada", True)
            async with laptop.get(bot.url + "/admin/", allow_redirects=False) as r:
                assert r.status == 303
            r = await console_sign_in(bot, phone, "ada", password="a brand new password")
            assert r.status == 401 and "disabled" in await r.text()
            await agents_of(bot).set_disabled("ada", False)
            assert (await console_sign_in(bot, phone, "ada", password="a brand new password")).status == 303


async def test_a_live_stream_ends_when_its_agent_is_disabled():
    async with start() as bot, jar() as browser:
        await add_agent(bot, "admin", role="admin")
        await add_agent(bot, "ada")
        assert (await console_sign_in(bot, browser, "ada")).status == 303
        async with browser.get(bot.url + "/admin/events?after=0") as stream:
            assert stream.status == 200
            await agents_of(bot).set_disabled("ada", True)
            body = await asyncio.wait_for(stream.content.read(), timeout=10)  # the server ends it
        assert b"event: signed_out" in body


async def test_sign_in_attempts_are_limited_per_name_and_per_address(monkeypatch):
    monkeypatch.setattr(agents_module, "NAME_LIMIT", 3)
    monkeypatch.setattr(agents_module, "ADDRESS_LIMIT", 5)
    async with start() as bot, jar() as browser:
        await add_agent(bot, "ada")
        for _ in range(3):
            assert (await console_sign_in(bot, browser, "ada", password="guess guess")).status == 401
        r = await console_sign_in(bot, browser, "ada")  # the right password, but too late
        assert r.status == 429 and int(r.headers["Retry-After"]) > 0
        assert "csbot_session" not in r.cookies
        for name in ("bob", "cy"):  # other names from the same address
            assert (await console_sign_in(bot, browser, name, password="guess guess")).status in (401, 429)
        await add_agent(bot, "dee")
        assert (await console_sign_in(bot, browser, "dee")).status == 429  # the address is limited now
        failed = await audit(bot, action="failed_sign_in")
        assert len(failed) >= 6 and all(e["address"] == "127.0.0.1" for e in failed)
        assert any(e["detail"] == "rate limited" for e in failed)


async def test_agents_see_their_own_and_unassigned_conversations_admins_see_all():
    async with start() as bot:
        for openid in ("oAnn", "oBen", "oCy"):
            await bot.send_text(openid, "hello")
        await bot.wait_idle()
        await add_agent(bot, "boss", role="admin")
        await add_agent(bot, "ada")
        await add_agent(bot, "bob")
        review = review_of(bot)
        await review.set_status("default", "oAnn", "human", agent="ada")
        await review.set_status("default", "oBen", "human", agent="bob")
        ada_token = await agents_of(bot).issue_token("ada")
        ada = {"Authorization": f"Bearer {ada_token}"}

        status, body = await api(bot, "GET", "/api/conversations", headers=ada)
        assert status == 200 and sorted(c["openid"] for c in body["conversations"]) == ["oAnn", "oCy"]
        status, body = await api(bot, "GET", "/api/conversations?assigned=mine", headers=ada)
        assert [c["openid"] for c in body["conversations"]] == ["oAnn"]
        status, body = await api(bot, "GET", "/api/conversations?assigned=unassigned", headers=ada)
        assert [c["openid"] for c in body["conversations"]] == ["oCy"]
        status, body = await api(bot, "GET", "/api/conversations/default/oBen", headers=ada)
        assert status == 403 and "bob" in body["error"]
        status, body = await api(bot, "POST", "/api/conversations/default/oBen/status", headers=ada,
                                 json={"status": "human"})
        assert status == 403
        status, body = await api(bot, "GET", "/api/conversations")  # the admin token sees everything
        assert len(body["conversations"]) == 3
        status, body = await api(bot, "GET", "/api/export", headers=ada)
        assert status == 403


async def test_an_agent_api_token_acts_as_that_agent_until_the_agent_is_disabled():
    async with start() as bot:
        await bot.send_text("oAnn", "where is my order?")
        await bot.wait_idle()
        await add_agent(bot, "boss", role="admin")
        await add_agent(bot, "ada")
        token = await agents_of(bot).issue_token("ada")
        assert token.startswith("csbot_at_")
        headers = {"Authorization": f"Bearer {token}"}
        status, body = await api(bot, "POST", "/api/conversations/default/oAnn/reply", headers=headers,
                                 json={"text": "on its way", "agent": "somebody else"})
        assert status == 202 and body["conversation"]["assigned_agent"] == "ada"
        thread = await review_of(bot).thread("default", "oAnn")
        assert [i["author"] for i in thread["items"] if i.get("direction") == "out"][-1] == "agent:ada"
        status, body = await api(bot, "POST", "/api/conversations/default/oAnn/notes", headers=headers,
                                 json={"text": "asked twice", "author": "mallory"})
        assert status == 201 and body["note"]["author"] == "ada"

        await agents_of(bot).set_disabled("ada", True)
        status, body = await api(bot, "GET", "/api/conversations", headers=headers)
        assert status == 401 and body == {"error": "missing or wrong bearer token"}
        await agents_of(bot).set_disabled("ada", False)  # re-enabling does not bring the old token back
        status, _ = await api(bot, "GET", "/api/conversations", headers=headers)
        assert status == 401
        status, _ = await api(bot, "GET", "/api/conversations",
                              headers={"Authorization": "Bearer csbot_at_made-up"})
        assert status == 401


async def test_assignment_to_an_agent_and_the_rules_around_it():
    async with start() as bot:
        await bot.send_text("oAnn", "hello")
        await bot.wait_idle()
        await add_agent(bot, "boss", role="admin")
        await add_agent(bot, "ada")
        await add_agent(bot, "bob")
        ada = {"Authorization": f"Bearer {await agents_of(bot).issue_token('ada')}"}
        status, body = await api(bot, "POST", "/api/conversations/default/oAnn/assign", json={"agent": "zed"})
        assert status == 400 and "zed" in body["error"]
        status, body = await api(bot, "POST", "/api/conversations/default/oAnn/assign", headers=ada,
                                 json={"agent": "bob"})
        assert status == 403
        status, body = await api(bot, "POST", "/api/conversations/default/oAnn/assign", headers=ada,
                                 json={"agent": "ada"})
        assert status == 200 and body["conversation"]["assigned_agent"] == "ada"
        assert body["conversation"]["status"] == "bot"  # assignment is not a takeover
        status, body = await api(bot, "POST", "/api/conversations/default/oAnn/assign",
                                 json={"agent": "bob", "by": "lead"})
        assert status == 200 and body["conversation"]["assigned_agent"] == "bob"
        status, body = await api(bot, "GET", "/api/conversations/default/oAnn", headers=ada)
        assert status == 403
        entries = await audit(bot, action="assign")
        assert [(e["agent"], e["detail"]) for e in entries] == [("ada", "to ada"), ("lead", "to bob")]


async def test_passwords_are_argon2_hashes_and_bad_input_is_refused():
    async with start() as bot:
        agents: Agents = agents_of(bot)
        await agents.add("ada", PASSWORD)
        from csbot.review.models import Agent
        from sqlalchemy import select

        async with services_of(bot.app).sessionmaker() as s:
            stored = (await s.execute(select(Agent.password_hash))).scalar_one()
        assert stored.startswith("$argon2id$") and PASSWORD not in stored
        for bad in (dict(name="ada", password=PASSWORD), dict(name="", password=PASSWORD),
                    dict(name="x" * 65, password=PASSWORD), dict(name="eve", password="1234567"),
                    dict(name="eve", password=PASSWORD, role="root")):
            with pytest.raises(Invalid):
                await agents.add(**bad)


def test_cli_agents_and_audit(tmp_path, monkeypatch, capsys):
    from csbot.cli import main

    monkeypatch.setenv("CSBOT_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path}/csbot.db")
    monkeypatch.setenv("CSBOT_APPID", "wx0123456789abcdef")
    monkeypatch.setenv("CSBOT_TOKEN", "tok")
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["agents", "add", "ada", "--role", "admin", "--password-stdin"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("short\n"))
    assert main(["agents", "add", "bob", "--password-stdin"]) == 1
    assert "at least 8" in capsys.readouterr().err
    monkeypatch.setattr(sys, "stdin", io.StringIO(PASSWORD + "\n"))
    assert main(["agents", "add", "bob", "--password-stdin"]) == 0
    capsys.readouterr()
    assert main(["agents", "token", "bob"]) == 0
    token = capsys.readouterr().out.strip()
    assert token.startswith("csbot_at_") and len(token) > 40
    assert main(["agents", "disable", "ada"]) == 1  # the last admin
    assert main(["agents", "disable", "bob"]) == 0
    assert main(["agents", "enable", "bob"]) == 0
    monkeypatch.setattr(sys, "stdin", io.StringIO("another password\n"))
    assert main(["agents", "reset-password", "bob", "--password-stdin"]) == 0
    assert main(["agents", "disable", "nobody"]) == 1
    capsys.readouterr()
    # no terminal and no --password-stdin (a script, cron): one line saying what to do, no traceback
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert main(["agents", "reset-password", "bob"]) == 1
    assert capsys.readouterr().err == "csbot: no terminal to ask for the password: pipe it in with --password-stdin\n"
    assert main(["agents", "list", "--json"]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(a["name"], a["role"], a["disabled"]) for a in listed] == [("ada", "admin", False), ("bob", "agent", False)]

    assert main(["audit", "--since", "1d", "--json"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [e["action"] for e in entries] == ["agent_add", "agent_add", "agent_token", "agent_disable",
                                              "agent_enable", "agent_password"]
    assert all({"action", "agent", "at", "address"} <= set(e) and e["address"] == "cli" for e in entries)
    assert entries[0]["at"][:4].isdigit() and entries[0]["at"][19] in "+-Z"
    assert main(["audit", "--since", "1d"]) == 0
    assert "agent_token" in capsys.readouterr().out


async def test_admins_manage_agents_in_the_console_and_agents_cannot():
    async with start() as bot:
        await add_agent(bot, "boss", role="admin")
        await add_agent(bot, "ada")
        async with jar() as boss, jar() as ada_browser:
            assert (await console_sign_in(bot, ada_browser, "ada")).status == 303
            assert (await console_sign_in(bot, boss, "boss")).status == 303
            async with ada_browser.get(bot.url + "/admin/agents") as r:
                assert r.status == 403
            async with boss.get(bot.url + "/admin/agents") as r:
                page = await r.text()
                csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
                assert r.status == 200 and 'data-agent="ada"' in page
            async with boss.post(bot.url + "/admin/agents", data={"csrf": csrf, "name": "cy", "password": PASSWORD,
                                                                  "role": "agent"}) as r:
                assert r.status == 200 and 'data-agent="cy"' in await r.text()
            async with boss.post(bot.url + "/admin/agents/ada/disable", data={"csrf": csrf}) as r:
                assert r.status == 200
            async with ada_browser.get(bot.url + "/admin/", allow_redirects=False) as r:
                assert r.status == 303  # signed out everywhere
            async with boss.post(bot.url + "/admin/agents/cy/password", data={"csrf": csrf, "password": "x"}) as r:
                assert r.status == 400
            async with boss.post(bot.url + "/admin/agents", data={"name": "eve", "password": PASSWORD}) as r:
                assert r.status == 403  # no CSRF token
        actions = [e["action"] for e in await audit(bot)]
        assert "agent_add" in actions and "agent_disable" in actions
