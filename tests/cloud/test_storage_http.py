"""Storage over HTTP on a running csbot: signed file URLs and WeChat's /tcb storage API."""

from __future__ import annotations

import time

import aiohttp
import pytest

from csbot.testing.harness import Harness

KEY = "server-key-0123456789"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00pixels" * 50


@pytest.fixture
async def bot():
    async with Harness.start(handlers_dir=None, server_key=KEY) as b:
        yield b


def tcb(bot, name: str, body=None, *, key: str | None = KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return bot.session.post(f"{bot.url}/tcb/{name}", json=body, headers=headers, **kwargs)


async def temp_url(bot, path: str, max_age: int = 60) -> str:
    [result] = await bot.services.storage.temp_urls([{"fileID": f"cloud://default/{path}", "maxAge": max_age}],
                                                    base_url=bot.url)
    return result["tempFileURL"]


# ---------------------------------------------------------------- /cloud/files


async def test_a_temp_url_serves_the_file_with_its_type_and_disposition(bot):
    await bot.services.storage.upload("default", "相册/a b#1.png", PNG)
    url = await temp_url(bot, "相册/a b#1.png")
    async with bot.session.get(url) as resp:
        assert resp.status == 200
        assert await resp.read() == PNG
        assert resp.headers["Content-Type"] == "image/png"
        assert resp.headers["Content-Disposition"].startswith("inline;")
        assert "filename*=UTF-8''a%20b%231.png" in resp.headers["Content-Disposition"]
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert "sandbox" in resp.headers["Content-Security-Policy"]
        assert resp.headers["Content-Length"] == str(len(PNG))
    async with bot.session.head(url) as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == str(len(PNG))
    async with bot.session.get(url, headers={"Range": "bytes=0-7"}) as resp:
        assert resp.status == 206 and await resp.read() == PNG[:8]


async def test_an_uploaded_page_is_an_attachment_that_cannot_run_as_csbot(bot):
    await bot.services.storage.upload("default", "evil.html", b"<script>alert(document.cookie)</script>")
    async with bot.session.get(await temp_url(bot, "evil.html")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/html")
        assert resp.headers["Content-Disposition"].startswith("attachment;")
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
        assert resp.headers["Content-Security-Policy"] == "default-src 'none'; sandbox"


async def test_a_tampered_or_expired_url_is_refused(bot):
    await bot.services.storage.upload("default", "a.txt", b"secret-ish")
    await bot.services.storage.upload("default", "b.txt", b"other")
    url = await temp_url(bot, "a.txt")
    for bad in (url.replace("a.txt", "b.txt"), url.replace("sign=", "sign=0"), url.split("?")[0],
                url.replace("expires=", "expires=1")):
        async with bot.session.get(bad) as resp:
            assert resp.status == 403, bad
            body = await resp.json()
            assert set(body) == {"errCode", "errMsg"} and "URL" in body["errMsg"]
    expired = bot.services.storage.temp_url("default", "a.txt", 1, base_url=bot.url, now=time.time() - 10).url
    async with bot.session.get(expired) as resp:
        assert resp.status == 403 and "expired" in (await resp.json())["errMsg"]


async def test_a_url_of_a_deleted_file_is_not_found(bot):
    await bot.services.storage.upload("default", "gone.txt", b"x")
    url = await temp_url(bot, "gone.txt")
    await bot.services.storage.delete("default", "gone.txt")
    async with bot.session.get(url) as resp:
        assert resp.status == 404


# ---------------------------------------------------------------- /tcb auth


async def test_tcb_needs_the_server_key(bot):
    async with tcb(bot, "batchdeletefile", {"env": "default", "fileid_list": []}, key=None) as resp:
        assert resp.status == 401 and (await resp.json())["errcode"] == 41001
    async with tcb(bot, "batchdeletefile", {"env": "default", "fileid_list": []}, key="wrong") as resp:
        assert resp.status == 401 and (await resp.json())["errcode"] == 40014
    async with tcb(bot, "batchdeletefile", {"env": "nope", "fileid_list": []}) as resp:
        assert resp.status == 404 and (await resp.json())["errcode"] == 85088
    async with bot.session.post(f"{bot.url}/tcb/batchdeletefile", data=b"{not json",
                                headers={"Authorization": f"Bearer {KEY}"}) as resp:
        assert resp.status == 400 and (await resp.json())["errcode"] == 47001
    async with bot.session.post(f"{bot.url}/tcb/batchdeletefile", data=b"",
                                headers={"Authorization": f"Bearer {KEY}"}) as resp:
        assert resp.status == 400 and (await resp.json())["errcode"] == 44002


async def test_without_a_server_key_tcb_does_not_exist():
    async with Harness.start(handlers_dir=None) as bot:
        async with tcb(bot, "batchdeletefile", {"env": "default", "fileid_list": []}) as resp:
            assert resp.status == 404


# ---------------------------------------------------------------- /tcb storage


async def test_uploadfile_gives_a_signed_form_that_stores_the_file(bot):
    async with tcb(bot, "uploadfile", {"env": "default", "path": "reports/2026.csv"}) as resp:
        assert resp.status == 200
        ticket = await resp.json()
    assert ticket["errcode"] == 0 and ticket["errmsg"] == "ok"
    assert ticket["file_id"] == "cloud://default/reports/2026.csv"
    assert ticket["url"] == f"{bot.url}/cloud/storage/cos/default"
    assert {"token", "authorization", "cos_file_id"} <= set(ticket)
    form = aiohttp.FormData()
    form.add_field("key", "reports/2026.csv")
    form.add_field("Signature", ticket["authorization"])
    form.add_field("x-cos-security-token", ticket["token"])
    form.add_field("x-cos-meta-fileid", ticket["cos_file_id"])
    form.add_field("file", b"a,b\n1,2\n", filename="2026.csv", content_type="text/csv")
    async with bot.session.post(ticket["url"], data=form) as resp:
        assert resp.status == 204
    assert await bot.services.storage.download("default", "reports/2026.csv") == b"a,b\n1,2\n"
    stored = await bot.services.storage.stat("default", "reports/2026.csv")
    assert stored.owner_openid is None and stored.content_type == "text/csv"


async def test_an_upload_form_for_another_path_or_a_forged_one_stores_nothing(bot):
    async with tcb(bot, "uploadfile", {"env": "default", "path": "a.txt"}) as resp:
        ticket = await resp.json()
    for key, signature in (("b.txt", ticket["authorization"]), ("a.txt", "0" * 64)):
        form = aiohttp.FormData()
        form.add_field("key", key)
        form.add_field("Signature", signature)
        form.add_field("x-cos-security-token", ticket["token"])
        form.add_field("file", b"x", filename="x")
        async with bot.session.post(ticket["url"], data=form) as resp:
            assert resp.status == 403
    # a key changed after the file was sent is caught too
    form = aiohttp.FormData()
    form.add_field("key", "a.txt")
    form.add_field("Signature", ticket["authorization"])
    form.add_field("x-cos-security-token", ticket["token"])
    form.add_field("file", b"x", filename="x")
    form.add_field("key", "c.txt")
    async with bot.session.post(ticket["url"], data=form) as resp:
        assert resp.status == 403
    for path in ("a.txt", "b.txt", "c.txt"):
        assert await bot.services.storage.stat("default", path) is None
    objects = bot.services.storage.backend.root / "objects"
    assert not [p for p in objects.rglob("*") if p.is_file()]


async def test_uploadfile_refuses_a_bad_path(bot):
    async with tcb(bot, "uploadfile", {"env": "default", "path": "/abs"}) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["errcode"] == 40097 and "'/'" in body["errmsg"]


async def test_batchdownloadfile_answers_wechats_shape(bot):
    await bot.services.storage.upload("default", "A.png", PNG)
    async with tcb(bot, "batchdownloadfile", {"env": "default", "file_list": [
        {"fileid": "cloud://default/A.png", "max_age": 7200},
        {"fileid": "cloud://default/missing.png", "max_age": 7200},
    ]}) as resp:
        body = await resp.json()
    assert body["errcode"] == 0 and body["errmsg"] == "ok"
    ok, missing = body["file_list"]
    assert set(ok) == {"fileid", "download_url", "status", "errmsg"}
    assert ok["status"] == 0 and ok["fileid"] == "cloud://default/A.png"
    assert missing["status"] == 1 and missing["download_url"] == "" and "NONEXIST" in missing["errmsg"]
    async with bot.session.get(ok["download_url"]) as resp:
        assert await resp.read() == PNG


async def test_batchdeletefile_answers_wechats_shape(bot):
    await bot.services.storage.upload("default", "A.png", PNG)
    async with tcb(bot, "batchdeletefile", {"env": "default", "fileid_list": [
            "cloud://default/A.png", "cloud://shop/A.png"]}) as resp:
        body = await resp.json()
    assert body["errcode"] == 0
    assert body["delete_list"][0] == {"fileid": "cloud://default/A.png", "status": 0, "errmsg": "ok"}
    assert body["delete_list"][1]["status"] == 1
    assert await bot.services.storage.stat("default", "A.png") is None


async def test_more_than_fifty_files_is_a_clear_error(bot):
    async with tcb(bot, "batchdeletefile", {"env": "default",
                                            "fileid_list": [f"cloud://default/{i}" for i in range(51)]}) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["errcode"] == 40097 and "at most 50" in body["errmsg"]


# ---------------------------------------------------------------- the document


async def test_the_tcb_document_describes_every_tcb_route(bot):
    from csbot.cloud.apidoc import tcb_openapi_document

    async with bot.session.get(f"{bot.url}/tcb/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc == tcb_openapi_document()
    served = {(r.method, r.resource.canonical) for r in bot.app.router.routes()
              if r.resource is not None and r.resource.canonical.startswith("/tcb/") and r.method != "HEAD"
              and r.resource.canonical != "/tcb/openapi.json"}
    documented = {(m.upper(), "/tcb" + p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == served


async def test_schemathesis_finds_no_server_error_and_no_mismatch_in_tcb(bot):
    import asyncio

    import hypothesis
    import schemathesis
    from schemathesis.checks import (content_type_conformance, not_a_server_error,
                                     response_schema_conformance, status_code_conformance)
    from schemathesis.generation import GenerationMode

    from csbot.cloud.apidoc import tcb_openapi_document

    await bot.services.storage.upload("default", "A.png", PNG)
    schema = schemathesis.openapi.from_dict(tcb_openapi_document())
    checks = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
    failures: list[str] = []

    def run_all():
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
                @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
                @hypothesis.settings(max_examples=10, deadline=None, database=None, derandomize=True,
                                     suppress_health_check=list(hypothesis.HealthCheck),
                                     phases=[hypothesis.Phase.generate])
                def check(case):
                    response = case.call(base_url=bot.url + "/tcb", headers={"Authorization": f"Bearer {KEY}"},
                                         timeout=10)
                    assert set(response.json()) >= {"errcode", "errmsg"}
                    case.validate_response(response, checks=checks)

                try:
                    check()
                except Exception as exc:
                    failures.append(f"{mode.value} {operation.label}: {exc}")

    await asyncio.to_thread(run_all)
    assert not failures, "\n\n".join(failures)
