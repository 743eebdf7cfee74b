"""The mini program's storage calls: /cloud/storage/upload, temp-urls, delete (session token; storage rules)."""

from __future__ import annotations

import aiohttp
import pytest

from csbot.testing.harness import Harness

pytest.importorskip("csbot.cloud.sessions", reason="mini-program sessions (POST /cloud/login) are not in this tree")

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00pixels" * 50


@pytest.fixture
async def bot():
    async with Harness.start(handlers_dir=None, storage_max_file_size=64 * 1024) as b:
        yield b


async def token_for(bot, openid: str) -> str:
    return await bot.services.sessions.create("default", openid, "c2Vzc2lvbktleTEyMzQ1Ng==")


def upload_form(cloud_path: str | None, data: bytes | None, *, file_first: bool = False) -> aiohttp.FormData:
    """What wx.uploadFile sends: formData fields and the file part named by `name`."""
    form = aiohttp.FormData()
    if file_first and data is not None:
        form.add_field("file", data, filename="tmp_abc.png", content_type="image/png")
    if cloud_path is not None:
        form.add_field("cloudPath", cloud_path)
    if not file_first and data is not None:
        form.add_field("file", data, filename="tmp_abc.png", content_type="image/png")
    return form


async def call(bot, token: str | None, path: str, headers: dict | None = None, **kwargs):
    headers = {**({"Authorization": f"Bearer {token}"} if token else {}), **(headers or {})}
    async with bot.session.post(f"{bot.url}{path}", headers=headers, **kwargs) as resp:
        return resp.status, await resp.json()


def objects(bot) -> list:
    root = bot.services.storage.backend.root / "objects"
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


async def test_a_user_uploads_links_and_deletes_their_file(bot):
    token = await token_for(bot, "oAlice")
    status, body = await call(bot, token, "/cloud/storage/upload", data=upload_form("avatars/alice.png", PNG))
    assert (status, body) == (200, {"fileID": "cloud://default/avatars/alice.png"})
    stored = await bot.services.storage.stat("default", "avatars/alice.png")
    assert stored.owner_openid == "oAlice" and stored.size == len(PNG)

    status, body = await call(bot, token, "/cloud/storage/temp-urls", json={"fileList": [
        "cloud://default/avatars/alice.png", {"fileID": "cloud://default/avatars/alice.png", "maxAge": 120},
        "cloud://default/missing.png"]})
    assert status == 200
    first, second, missing = body["fileList"]
    assert set(first) == {"fileID", "tempFileURL", "status", "errMsg"}
    assert first["status"] == second["status"] == 0 and missing["status"] == 1
    assert first["tempFileURL"].startswith(bot.url + "/cloud/files/default/avatars/alice.png?")
    async with bot.session.get(second["tempFileURL"]) as resp:  # no session needed: the URL is the capability
        assert resp.status == 200 and await resp.read() == PNG

    status, body = await call(bot, token, "/cloud/storage/delete", json={"fileList": ["cloud://default/avatars/alice.png"]})
    assert (status, body) == (200, {"fileList": [{"fileID": "cloud://default/avatars/alice.png", "status": 0,
                                                  "errMsg": "ok"}]})
    assert objects(bot) == []


async def test_the_file_part_may_come_before_the_cloud_path(bot):
    token = await token_for(bot, "oAlice")
    status, body = await call(bot, token, "/cloud/storage/upload", data=upload_form("x.png", PNG, file_first=True))
    assert (status, body) == (200, {"fileID": "cloud://default/x.png"})


async def test_another_user_cannot_overwrite_or_delete_but_can_read(bot):
    alice, bob = await token_for(bot, "oAlice"), await token_for(bot, "oBob")
    await call(bot, alice, "/cloud/storage/upload", data=upload_form("shared/a.png", PNG))
    status, body = await call(bot, bob, "/cloud/storage/upload", data=upload_form("shared/a.png", b"bob's"))
    assert status == 403 and "write rule" in body["errMsg"] and set(body) == {"errCode", "errMsg"}
    status, body = await call(bot, bob, "/cloud/storage/delete", json={"fileList": ["cloud://default/shared/a.png"]})
    assert status == 200 and body["fileList"][0]["status"] == 1
    assert body["fileList"][0]["errMsg"].startswith("STORAGE_EXCEED_AUTHORITY")
    status, body = await call(bot, bob, "/cloud/storage/temp-urls", json={"fileList": ["cloud://default/shared/a.png"]})
    assert body["fileList"][0]["status"] == 0
    assert await bot.services.storage.download("default", "shared/a.png") == PNG
    assert len(objects(bot)) == 1


async def test_uploads_need_a_session(bot):
    for token in (None, "not-a-token"):
        status, body = await call(bot, token, "/cloud/storage/upload", data=upload_form("a.png", PNG))
        assert status == 401 and set(body) >= {"errCode", "errMsg"}
        status, _ = await call(bot, token, "/cloud/storage/temp-urls", json={"fileList": []})
        assert status == 401
    assert objects(bot) == []


@pytest.mark.parametrize("form, reason", [
    (upload_form("/abs.png", PNG), "must not start with '/'"),
    (upload_form("a//b.png", PNG), "'//'"),
    (upload_form("../x.png", PNG), "'..'"),
    (upload_form(None, PNG), "no cloudPath"),
    (upload_form("a.png", None), "file"),  # only a text field: not even multipart
])
async def test_a_bad_upload_is_a_clear_400_and_stores_nothing(bot, form, reason):
    token = await token_for(bot, "oAlice")
    status, body = await call(bot, token, "/cloud/storage/upload", data=form)
    assert status == 400 and reason in body["errMsg"]
    assert objects(bot) == []


async def test_not_multipart_is_a_400(bot):
    token = await token_for(bot, "oAlice")
    status, body = await call(bot, token, "/cloud/storage/upload", json={"cloudPath": "a.png"})
    assert status == 400 and "multipart" in body["errMsg"]


async def test_a_file_over_the_limit_is_a_413_and_leaves_nothing(bot):
    token = await token_for(bot, "oAlice")
    status, body = await call(bot, token, "/cloud/storage/upload", data=upload_form("big.bin", b"x" * (64 * 1024 + 1)))
    assert status == 413 and "65536 bytes" in body["errMsg"]

    async def chunked():  # no Content-Length: the limit is enforced while streaming
        yield b"--B\r\nContent-Disposition: form-data; name=\"cloudPath\"\r\n\r\nbig.bin\r\n"
        yield b"--B\r\nContent-Disposition: form-data; name=\"file\"; filename=\"f\"\r\n\r\n"
        for _ in range(100):
            yield b"y" * 1024
        yield b"\r\n--B--\r\n"

    status, body = await call(bot, token, "/cloud/storage/upload", data=chunked(),
                              headers={"Content-Type": "multipart/form-data; boundary=B"})
    assert status == 413
    assert objects(bot) == [] and await bot.services.storage.stat("default", "big.bin") is None


async def test_temp_urls_and_delete_take_at_most_fifty_files(bot):
    token = await token_for(bot, "oAlice")
    many = [f"cloud://default/{i}.png" for i in range(51)]
    for path in ("/cloud/storage/temp-urls", "/cloud/storage/delete"):
        status, body = await call(bot, token, path, json={"fileList": many})
        assert status == 400 and "at most 50" in body["errMsg"]
        status, body = await call(bot, token, path, json={"files": []})
        assert status == 400 and "fileList" in body["errMsg"]
        status, body = await call(bot, token, path, data=b"{oops")
        assert status == 400


async def test_files_of_another_app_are_out_of_reach(bot):
    token = await token_for(bot, "oAlice")
    status, body = await call(bot, token, "/cloud/storage/delete", json={"fileList": ["cloud://shop/a.png"]})
    assert status == 200 and body["fileList"][0]["status"] == 1
