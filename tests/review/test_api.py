"""The review HTTP API: bearer auth, listing and paging, threads, actions, export, send, and an
OpenAPI document that schemathesis checks against the running handlers."""

import asyncio
import json

import aiohttp
import pytest

from csbot.review.api import openapi_document
from csbot.services import services_of
from csbot.testing.harness import Harness

from .support import ADMIN_TOKEN, AUTH, api, start


async def fill(bot):
    for openid, text in (("oAnn", "怎么退款"), ("oBen", "<script>alert(1)</script>"), ("oCat", "转人工")):
        await bot.send_text(openid, text)
        await bot.wait_idle()


async def test_without_an_admin_token_or_an_account_the_console_and_api_say_how_to_make_the_first_admin():
    async with Harness.start(handlers_dir=None) as bot:
        status, page = await api(bot, "GET", "/admin/login")
        assert status == 403 and "csbot agents add NAME --role admin" in page and 'name="password"' not in page
        for headers in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer  "}, {"Authorization": "Bearer x"}):
            for path in ("/api/conversations", "/api/openapi.json"):
                status, body = await api(bot, "GET", path, headers=headers)
                assert status == 401 and "csbot agents add NAME --role admin" in body["error"], (headers, body)
        # the first-admin form cannot be used with an empty token
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as web:
            async with web.get(bot.url + "/admin/login") as r:
                csrf = r.cookies["csbot_login"].value
            async with web.post(bot.url + "/admin/login", allow_redirects=False,
                                data={"name": "eve", "password": "x" * 12, "token": "", "csrf": csrf}) as r:
                assert r.status == 403 and "csbot agents add NAME --role admin" in await r.text()
        assert await services_of(bot.app).agents.count() == 0


async def test_without_an_admin_token_agents_made_on_the_command_line_sign_in_and_use_their_tokens():
    from .support import PASSWORD, add_agent, agents_of, console_sign_in

    async with Harness.start(handlers_dir=None) as bot:
        await bot.send_text("oAnn", "怎么退款")
        await bot.wait_idle()
        await add_agent(bot, "wang", role="admin")  # what `csbot agents add wang --role admin` does
        async with bot.session.get(bot.url + "/admin/login") as r:
            page = await r.text()
            assert r.status == 200 and 'name="password"' in page and 'name="token"' not in page
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as web:
            assert (await console_sign_in(bot, web, "wang", PASSWORD)).status == 303
            async with web.get(bot.url + "/admin/c/default/oAnn") as r:
                assert r.status == 200 and "怎么退款" in await r.text()
        token = await agents_of(bot).issue_token("wang")
        status, page = await api(bot, "GET", "/api/conversations", headers={"Authorization": f"Bearer {token}"})
        assert status == 200 and [c["openid"] for c in page["conversations"]] == ["oAnn"]
        status, body = await api(bot, "GET", "/api/conversations", headers={"Authorization": "Bearer "})
        assert status == 401


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {ADMIN_TOKEN}"},
                                     {"Authorization": f"Bearer {ADMIN_TOKEN}x"}])
async def test_every_call_needs_the_bearer_token(bot, headers, caplog):
    for method, path in (("GET", "/api/conversations"), ("GET", "/api/openapi.json"),
                         ("POST", "/api/send"), ("GET", "/api/export"), ("GET", "/api/nothing-here")):
        status, body = await api(bot, method, path, headers=headers)
        assert (status, body) == (401, {"error": "missing or wrong bearer token"}), (method, path)
    assert ADMIN_TOKEN not in caplog.text


async def test_list_pages_with_a_cursor_newest_activity_first_and_filters(bot):
    await fill(bot)
    status, first = await api(bot, "GET", "/api/conversations?limit=2")
    assert status == 200 and [c["openid"] for c in first["conversations"]] == ["oCat", "oBen"]
    status, second = await api(bot, "GET", f"/api/conversations?limit=2&cursor={first['next_cursor']}")
    assert [c["openid"] for c in second["conversations"]] == ["oAnn"] and second["next_cursor"] is None
    _, found = await api(bot, "GET", "/api/conversations", params={"search": "<script>"})
    assert [c["openid"] for c in found["conversations"]] == ["oBen"]
    _, none = await api(bot, "GET", "/api/conversations?status=human")
    assert none["conversations"] == []
    _, recent = await api(bot, "GET", "/api/conversations?since=2026-01-01T00:00:00Z&app=default")
    assert len(recent["conversations"]) == 3
    for bad in ("limit=0", "limit=abc", "status=asleep", "since=soon", "cursor=%%%"):
        status, body = await api(bot, "GET", f"/api/conversations?{bad}")
        assert status == 400 and set(body) == {"error"}, bad


async def test_reply_status_tags_and_notes_act_on_the_conversation(bot):
    await fill(bot)
    status, body = await api(bot, "POST", "/api/conversations/default/oAnn/reply",
                             json={"text": "您好，我是客服", "agent": "ada"})
    assert status == 202 and body["status"] == "queued"
    assert (body["conversation"]["status"], body["conversation"]["assigned_agent"]) == ("human", "ada")
    await bot.wait_idle()
    assert bot.replies_to("oAnn")[-1] == "您好，我是客服"

    status, body = await api(bot, "POST", "/api/conversations/default/oAnn/tags", json={"add": ["refund"]})
    assert (status, body) == (200, {"tags": ["refund"]})
    status, body = await api(bot, "POST", "/api/conversations/default/oAnn/notes",
                             json={"text": "asked twice", "author": "ada"})
    assert status == 201 and body["note"]["text"] == "asked twice"
    status, body = await api(bot, "POST", "/api/conversations/default/oAnn/status", json={"status": "bot"})
    assert status == 200 and body["conversation"]["status"] == "bot"

    status, thread = await api(bot, "GET", "/api/conversations/default/oAnn")
    assert status == 200
    kinds = [(i["kind"], i.get("event") or i.get("action") or i.get("direction")) for i in thread["items"]]
    assert kinds == [("message", "in"), ("message", "out"), ("event", "takeover"), ("message", "out"),
                     ("audit", "tag"), ("note", None), ("event", "handback")]
    reply = thread["items"][3]
    assert (reply["author"], reply["status"], reply["text"]) == ("agent:ada", "sent", "您好，我是客服")


async def test_bad_requests_get_a_short_json_error_never_a_500(bot):
    await fill(bot)
    cases = [
        ("POST", "/api/conversations/default/oAnn/reply", {"data": b"not json"}, 400),
        ("POST", "/api/conversations/default/oAnn/reply", {"json": ["a list"]}, 400),
        ("POST", "/api/conversations/default/oAnn/reply", {"json": {"text": ""}}, 400),
        ("POST", "/api/conversations/default/oAnn/reply", {"json": {"text": "x" * 4001}}, 400),
        ("POST", "/api/conversations/default/oNobody/reply", {"json": {"text": "hi"}}, 404),
        ("POST", "/api/conversations/nosuchapp/oAnn/reply", {"json": {"text": "hi"}}, 404),
        ("POST", "/api/conversations/default/oAnn/status", {"json": {"status": "asleep"}}, 400),
        ("POST", "/api/conversations/default/oAnn/status", {"json": {"status": "human", "agent": 7}}, 400),
        ("POST", "/api/conversations/default/oAnn/tags", {"json": {"add": "not-a-list"}}, 400),
        ("POST", "/api/conversations/default/oAnn/reply", {"data": b"{" * 2_000_000}, 413),
        ("GET", "/api/conversations/default/oAnn?limit=-1", {}, 400),
        ("DELETE", "/api/conversations", {}, 405),
        ("GET", "/api/export?format=xml", {}, 400),
    ]
    for method, path, kw, expected in cases:
        status, body = await api(bot, method, path, **kw)
        assert status == expected and isinstance(body, dict) and set(body) == {"error"}, (method, path, body)
        assert "Traceback" not in body["error"]


async def test_export_streams_json_lines_or_csv(bot):
    await fill(bot)
    status, body = await api(bot, "GET", "/api/export")
    rows = [json.loads(line) for line in body.splitlines()]
    assert status == 200 and len(rows) == len(await bot.messages())
    status, body = await api(bot, "GET", "/api/export?format=csv&since=1h&app=default")
    assert body.startswith("\ufeff")  # a UTF-8 BOM: Excel and WPS read the Chinese right
    body = body.removeprefix("\ufeff")
    assert body.splitlines()[0].startswith("id,app,openid,direction,type")
    assert len(body.splitlines()) == len(rows) + 1


async def test_send_delivers_any_customer_service_message_through_the_outbox(bot):
    await fill(bot)
    thumb = bot.fake.add_media(b"\x89PNG fake thumbnail", "image/png")
    sends = [
        {"touser": "oAnn", "msgtype": "text", "text": {"content": "订单已发货"}},
        {"app": "default", "touser": "oAnn", "msgtype": "link",
         "link": {"title": "物流", "description": "查看物流", "url": "https://example.com/t",
                  "thumb_url": "https://example.com/t.png"}},
        {"touser": "oAnn", "msgtype": "miniprogrampage",
         "miniprogrampage": {"title": "订单", "pagepath": "pages/order", "thumb_media_id": thumb}},
        {"touser": "oAnn", "msgtype": "image", "image": {"media_id": thumb}},
    ]
    for body in sends:
        status, answer = await api(bot, "POST", "/api/send", json=body)
        assert status == 202 and answer["status"] == "queued", answer
    await bot.wait_idle()
    assert bot.replies_to("oAnn")[-4:] == ["订单已发货", "[link]", "[miniprogrampage]", "[image]"]
    for bad, expected in (({"touser": "oAnn", "msgtype": "video"}, 400),
                          ({"touser": "oAnn", "msgtype": "text", "text": {}}, 400),
                          ({"touser": "oAnn", "msgtype": "link", "link": {"title": "x"}}, 400),
                          ({"app": "nope", "touser": "oAnn", "msgtype": "text", "text": {"content": "x"}}, 404),
                          ({"msgtype": "text", "text": {"content": "x"}}, 400)):
        status, answer = await api(bot, "POST", "/api/send", json=bad)
        assert status == expected and "error" in answer, bad


async def test_the_openapi_document_is_served_and_describes_every_route(bot):
    status, doc = await api(bot, "GET", "/api/openapi.json")
    assert status == 200 and doc == json.loads(json.dumps(openapi_document()))
    served = {(r.method, r.resource.canonical) for r in bot.app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/api/") and r.method != "HEAD"}
    documented = {(m.upper(), "/api" + p) for p, ops in doc["paths"].items() for m in ops if m != "parameters"}
    assert documented == served


async def test_schemathesis_finds_no_server_error_and_no_mismatch_with_the_document():
    import hypothesis
    import schemathesis
    from schemathesis.checks import (content_type_conformance, not_a_server_error,
                                     response_schema_conformance, status_code_conformance)
    from schemathesis.generation import GenerationMode

    async with start() as bot:
        await fill(bot)
        schema = schemathesis.openapi.from_dict(openapi_document())
        checks = [not_a_server_error, status_code_conformance, content_type_conformance,
                  response_schema_conformance]
        failures: list[str] = []
        calls = {"n": 0}

        def run_operation(operation, mode):
            @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
            @hypothesis.settings(max_examples=8, deadline=None, database=None, derandomize=True,
                                 suppress_health_check=list(hypothesis.HealthCheck),
                                 phases=[hypothesis.Phase.generate])
            def check(case):
                calls["n"] += 1
                response = case.call(base_url=bot.url + "/api", headers=AUTH, timeout=10)
                if response.status_code >= 400:
                    assert response.headers.get("content-type", [""])[0].startswith("application/json")
                    assert set(response.json()) == {"error"}
                case.validate_response(response, checks=checks)

            try:
                check()
            except Exception as exc:  # collected: every operation runs, then all failures are shown
                failures.append(f"{mode.value} {operation.label}: {exc}")

        def run_all():
            for result in schema.get_all_operations():
                operation = result.ok()
                for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                    run_operation(operation, mode)

        await asyncio.to_thread(run_all)
        assert not failures, "\n\n".join(failures)
        assert calls["n"] > 50


async def test_a_reply_retried_with_its_idempotency_key_is_queued_once(bot):
    await bot.send_text("oAnn", "在吗")
    await bot.wait_idle()
    path = "/api/conversations/default/oAnn/reply"
    headers = {**AUTH, "Idempotency-Key": "crm-7781"}
    answers = [await api(bot, "POST", path, headers=headers, json={"text": "您好", "agent": "wang"}) for _ in range(2)]
    assert [s for s, _ in answers] == [202, 202]
    assert answers[0][1]["message_id"] == answers[1][1]["message_id"]
    status, body = await api(bot, "POST", path, headers={**AUTH, "Idempotency-Key": "x" * 201},
                             json={"text": "您好", "agent": "wang"})
    assert status == 400 and "idempotency key" in body["error"]
    await bot.wait_idle()
    assert bot.replies_to("oAnn").count("您好") == 1
