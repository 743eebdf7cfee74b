"""Cloud storage: names, atomic streamed writes, overwrites, limits, temp URLs, rules (SQLite and PostgreSQL)."""

from __future__ import annotations

import asyncio
import math
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from csbot.cloud.storage import (
    MAX_BATCH,
    AccessDenied,
    FileNotFound,
    FileTooLarge,
    InvalidCloudPath,
    StorageRule,
    StorageRules,
    TooManyFiles,
    content_disposition,
    load_signing_key,
    parse_file_id,
    validate_cloud_path,
)

from .storage_fixtures import blobs, storage, store_url  # noqa: F401 - fixtures

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00pixels" * 50


# ---------------------------------------------------------------- names


@pytest.mark.parametrize("path", ["a.png", "users/o1/avatar.png", "中文/图片 1.jpg", "a" * 850,
                                  "目" * 283, "weird name #1 ?x=%20&.txt", "a/./b", ".hidden"])
def test_cloud_paths_wechat_accepts(path):
    assert validate_cloud_path(path) == path


@pytest.mark.parametrize("path, reason", [
    ("", "must not be empty"),
    ("/abs.png", "must not start with '/'"),
    ("a//b.png", "'//'"),
    ("a/../b.png", "'..'"),
    ("..", "'..'"),
    ("a..b", "'..'"),
    ("a" * 851, "851 bytes; at most 850"),
    ("目" * 284, "852 bytes; at most 850"),
    ("dir/", "not end with '/'"),
    ("a\nb", "control characters"),
    (None, "must be a string"),
    (42, "must be a string"),
])
def test_cloud_paths_wechat_refuses_are_refused_with_the_rule(path, reason):
    with pytest.raises(InvalidCloudPath, match=reason):
        validate_cloud_path(path)


def test_file_ids_name_the_app_and_the_path():
    assert parse_file_id("cloud://default/a/b.png") == ("default", "a/b.png")
    for bad in ("default/a.png", "cloud://", "cloud://default", "cloud://default/", "cloud://bad.app/a",
                "cloud://default//a", "", None):
        with pytest.raises(InvalidCloudPath):
            parse_file_id(bad)


def test_only_safe_types_are_shown_inline_and_names_survive_in_utf8():
    assert content_disposition("a/photo.png", "image/png") == \
        "inline; filename=\"photo.png\"; filename*=UTF-8''photo.png"
    assert content_disposition("page.html", "text/html").startswith("attachment;")
    assert content_disposition("x.svg", "image/svg+xml").startswith("attachment;")
    assert "filename*=UTF-8''%E5%90%88%E5%90%8C%20%221%22.pdf" in content_disposition("合同 \"1\".pdf", "application/pdf")
    assert 'filename="__ _1_.pdf"' in content_disposition("合同 \"1\".pdf", "application/pdf")


# ---------------------------------------------------------------- writing and reading


async def test_an_upload_is_kept_by_cloud_path_with_its_metadata(storage):
    stored = await storage.upload("default", "users/o1/avatar.png", PNG, openid="o1")
    assert stored.file_id == "cloud://default/users/o1/avatar.png"
    assert (stored.size, stored.content_type, stored.owner_openid) == (len(PNG), "image/png", "o1")
    assert await storage.download("default", "users/o1/avatar.png") == PNG
    again = await storage.stat("default", "users/o1/avatar.png")
    assert again.sha256 == stored.sha256 and again.owner_openid == "o1"
    assert [p.read_bytes() for p in blobs(storage)] == [PNG]


async def test_the_same_path_overwrites_and_the_old_bytes_are_removed(storage):
    first = await storage.upload("default", "notes/a.txt", b"first version")
    second = await storage.upload("default", "notes/a.txt", b"second")
    assert await storage.download("default", "notes/a.txt") == b"second"
    assert second.created_at == first.created_at and second.updated_at >= first.updated_at
    assert second.size == 6
    assert [p.read_bytes() for p in blobs(storage)] == [b"second"]


async def test_the_same_path_in_two_apps_is_two_files(storage):
    await storage.upload("default", "x.txt", b"one")
    await storage.upload("shop", "x.txt", b"two")
    assert await storage.download("default", "x.txt") == b"one"
    assert await storage.download("shop", "x.txt") == b"two"


async def test_uploads_stream_from_a_file_or_an_async_iterator(storage, tmp_path):
    source = tmp_path / "big.bin"
    source.write_bytes(b"0123456789" * 30_000)
    await storage.upload("default", "from-path.bin", source)

    async def parts():
        for i in range(100):
            yield bytes([i]) * 1000

    await storage.upload("default", "from-iter.bin", parts())
    assert await storage.download("default", "from-path.bin") == source.read_bytes()
    assert await storage.download("default", "from-iter.bin") == b"".join(bytes([i]) * 1000 for i in range(100))


async def test_text_is_refused_as_ambiguous(storage):
    with pytest.raises(TypeError, match="encode"):
        await storage.upload("default", "a.txt", "is this a path or the content?")
    assert blobs(storage) == []


async def test_a_file_over_the_limit_is_refused_and_nothing_is_left(storage):
    await storage.upload("default", "big.bin", b"kept")
    with pytest.raises(FileTooLarge, match="1048576 bytes"):
        await storage.upload("default", "big.bin", b"x" * (1024 * 1024 + 1))
    assert await storage.download("default", "big.bin") == b"kept"
    assert [p.read_bytes() for p in blobs(storage)] == [b"kept"]
    exact = await storage.upload("default", "exact.bin", b"y" * (1024 * 1024))
    assert exact.size == 1024 * 1024


async def test_an_upload_cancelled_halfway_leaves_neither_a_row_nor_bytes(storage):
    started = asyncio.Event()

    async def slow():
        yield b"half of it"
        started.set()
        await asyncio.sleep(3600)
        yield b"never"

    task = asyncio.create_task(storage.upload("default", "slow.bin", slow()))
    await started.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await storage.stat("default", "slow.bin") is None
    assert blobs(storage) == []


async def test_a_failing_source_leaves_the_previous_version_whole(storage):
    await storage.upload("default", "doc.txt", b"version 1")

    async def broken():
        yield b"partial"
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError):
        await storage.upload("default", "doc.txt", broken())
    assert await storage.download("default", "doc.txt") == b"version 1"
    assert [p.read_bytes() for p in blobs(storage)] == [b"version 1"]


async def test_concurrent_uploads_to_one_path_leave_one_whole_version(storage):
    bodies = [bytes([65 + i]) * (50_000 + i) for i in range(8)]
    await asyncio.gather(*(storage.upload("default", "race.bin", body) for body in bodies))
    final = await storage.download("default", "race.bin")
    assert final in bodies
    stored = await storage.stat("default", "race.bin")
    assert stored.size == len(final)
    assert [p.read_bytes() for p in blobs(storage)] == [final]


async def test_leftovers_of_a_killed_upload_are_swept(storage):
    await storage.upload("default", "a.txt", b"a")
    leftover = blobs(storage)[0].with_name(".dead.part")
    leftover.write_bytes(b"half")
    assert await storage.backend.sweep_partials(older_than=3600) == 0
    assert await storage.backend.sweep_partials(older_than=-1) == 1
    assert [p.read_bytes() for p in blobs(storage)] == [b"a"]


async def test_a_missing_file_is_not_found(storage):
    with pytest.raises(FileNotFound, match="cloud://default/nothing.txt"):
        await storage.download("default", "nothing.txt")


# ---------------------------------------------------------------- deleting


async def test_delete_reports_each_file_in_order(storage):
    await storage.upload("default", "a.txt", b"a")
    await storage.upload("default", "b.txt", b"b")
    results = await storage.delete_many(["cloud://default/a.txt", "cloud://default/missing.txt",
                                         "nonsense", "cloud://default/b.txt"])
    assert results == [
        {"fileID": "cloud://default/a.txt", "status": 0, "errMsg": "ok"},
        {"fileID": "cloud://default/missing.txt", "status": 1,
         "errMsg": "STORAGE_FILE_NONEXIST: no file cloud://default/missing.txt"},
        {"fileID": "nonsense", "status": 1, "errMsg": "INVALID_PARAM: fileID must start with cloud://"},
        {"fileID": "cloud://default/b.txt", "status": 0, "errMsg": "ok"},
    ]
    assert blobs(storage) == []
    assert await storage.stat("default", "a.txt") is None


async def test_at_most_fifty_files_per_call(storage):
    with pytest.raises(TooManyFiles, match="51 files; at most 50"):
        await storage.delete_many([f"cloud://default/{i}" for i in range(MAX_BATCH + 1)])
    with pytest.raises(TooManyFiles):
        await storage.temp_urls([f"cloud://default/{i}" for i in range(MAX_BATCH + 1)])
    assert len(await storage.temp_urls([f"cloud://default/{i}" for i in range(MAX_BATCH)])) == MAX_BATCH


async def test_an_unknown_app_is_not_served(storage):
    [result] = await storage.delete_many(["cloud://other/a.txt"])
    assert result["status"] == 1 and "does not serve" in result["errMsg"]


# ---------------------------------------------------------------- temporary URLs


async def test_temp_urls_are_signed_and_honour_max_age_exactly(storage):
    await storage.upload("default", "a b/图.png", PNG)
    before = time.time()
    results = await storage.temp_urls(["cloud://default/a b/图.png",
                                       {"fileID": "cloud://default/a b/图.png", "maxAge": 1},
                                       {"fileID": "cloud://default/a b/图.png", "maxAge": 86400},
                                       {"fileID": "cloud://default/a b/图.png", "maxAge": 7.5}])
    after = time.time()
    expiries = []
    for result in results:
        assert result["status"] == 0 and result["errMsg"] == "ok"
        url = urlsplit(result["tempFileURL"])
        assert (url.scheme, url.netloc, url.path) == ("https", "csbot.example",
                                                      "/cloud/files/default/a%20b/%E5%9B%BE.png")
        query = parse_qs(url.query)
        expires = int(query["expires"][0])
        assert storage.verify("default", "a b/图.png", expires, query["sign"][0], now=expires) is None
        expiries.append(expires)
    for expires, max_age in zip(expiries, (3600, 1, 86400, 7.5)):
        assert math.ceil(before + max_age) <= expires <= math.ceil(after + max_age)


async def test_a_bad_max_age_or_a_missing_file_fails_that_file_only(storage):
    await storage.upload("default", "a.txt", b"a")
    results = await storage.temp_urls([{"fileID": "cloud://default/a.txt", "maxAge": 86401},
                                       {"fileID": "cloud://default/a.txt", "maxAge": 0},
                                       {"fileID": "cloud://default/a.txt", "maxAge": "60"},
                                       {"fileID": "cloud://default/a.txt", "maxAge": True},
                                       "cloud://default/gone.txt",
                                       {"fileID": "cloud://default/a.txt", "maxAge": 60}])
    assert [r["status"] for r in results] == [1, 1, 1, 1, 1, 0]
    assert "at most 86400" in results[0]["errMsg"] and "more than 0" in results[1]["errMsg"]
    assert "number of seconds" in results[2]["errMsg"] and "number of seconds" in results[3]["errMsg"]
    assert results[4]["errMsg"].startswith("STORAGE_FILE_NONEXIST")
    assert all(r["tempFileURL"] == "" for r in results[:5])
    assert set(results[0]) == {"fileID", "tempFileURL", "status", "errMsg"}


async def test_a_signature_is_bound_to_the_app_path_expiry_and_purpose(storage):
    url = storage.temp_url("default", "a.txt", 60)
    sign = parse_qs(urlsplit(url.url).query)["sign"][0]
    assert storage.verify("default", "a.txt", url.expires, sign) is None
    assert "not valid" in storage.verify("default", "b.txt", url.expires, sign)
    assert "not valid" in storage.verify("shop", "a.txt", url.expires, sign)
    assert "not valid" in storage.verify("default", "a.txt", url.expires + 1, sign)
    assert "not valid" in storage.verify("default", "a.txt", url.expires, sign, purpose="upload")
    assert "expired" in storage.verify("default", "a.txt", url.expires, sign, now=url.expires + 1)
    assert "no valid expiry" in storage.verify("default", "a.txt", "soon", sign)


# ---------------------------------------------------------------- rules


async def test_by_default_users_write_only_their_own_files_and_everyone_reads(storage):
    await storage.upload("default", "u/o1.png", PNG, openid="o1")
    await storage.upload("default", "server.txt", b"from a handler")
    with pytest.raises(AccessDenied, match="another user's file"):
        await storage.upload("default", "u/o1.png", b"overwrite", openid="o2")
    with pytest.raises(AccessDenied, match="server side"):
        await storage.upload("default", "server.txt", b"overwrite", openid="o2")
    [denied] = await storage.delete_many(["cloud://default/u/o1.png"], openid="o2")
    assert denied["status"] == 1 and denied["errMsg"].startswith("STORAGE_EXCEED_AUTHORITY")
    assert await storage.download("default", "u/o1.png") == PNG
    [read] = await storage.temp_urls(["cloud://default/u/o1.png"], openid="o2")
    assert read["status"] == 0
    await storage.upload("default", "u/o1.png", b"mine", openid="o1")
    [deleted] = await storage.delete_many(["cloud://default/u/o1.png"], openid="o1")
    assert deleted["status"] == 0
    assert [p.read_bytes() for p in blobs(storage)] == [b"from a handler"]


async def test_a_denied_overwrite_leaves_no_bytes_behind(storage):
    await storage.upload("default", "u/o1.png", PNG, openid="o1")
    blob = await storage.write_blob(b"sneaky")
    with pytest.raises(AccessDenied):
        await storage.commit("default", "u/o1.png", blob, openid="o2")
    assert [p.read_bytes() for p in blobs(storage)] == [PNG]


async def test_custom_rules_are_parsed_and_applied(storage):
    storage.rules = StorageRules.from_mapping({"read": "resource.openid == auth.openid", "write": False})
    await storage.upload("default", "private.txt", b"p", owner_openid="o1")
    [mine] = await storage.temp_urls(["cloud://default/private.txt"], openid="o1")
    [theirs] = await storage.temp_urls(["cloud://default/private.txt"], openid="o2")
    assert mine["status"] == 0 and theirs["status"] == 1 and "read rule" in theirs["errMsg"]
    with pytest.raises(AccessDenied, match="write rule False"):
        await storage.upload("default", "new.txt", b"n", openid="o1")


@pytest.mark.parametrize("source, auth, owner, allowed", [
    (True, "o1", "o2", True),
    (False, "o1", "o1", False),
    ("resource.openid == auth.openid", "o1", "o1", True),
    ("resource.openid == auth.openid", "o1", None, False),
    ("auth != null", "o1", "o2", True),
    ("auth.openid == 'oAdmin' || resource.openid == auth.openid", "oAdmin", "o2", True),
    ("!(resource.openid != auth.openid) && true", "o1", "o1", True),
    ("resource.path == \"public/a\"", "o1", "o2", True),
])
def test_storage_rule_expressions(source, auth, owner, allowed):
    assert StorageRule(source).allows(auth, {"openid": owner, "path": "public/a"}) is allowed


@pytest.mark.parametrize("source", ["require('fs')", "resource.openid ==", "auth.openid == (1", "x" * 1025,
                                    "resource.openid = auth.openid", "__import__('os')"])
def test_storage_rules_that_are_not_the_grammar_are_refused(source):
    with pytest.raises(ValueError):
        StorageRule(source)


# ---------------------------------------------------------------- the signing key


def test_the_signing_key_is_made_once_and_kept(tmp_path: Path):
    first = load_signing_key("", tmp_path)
    assert len(first) == 32 and load_signing_key("", tmp_path) == first
    assert oct((tmp_path / "storage" / "signing.key").stat().st_mode & 0o777) == "0o600"
    assert load_signing_key("configured", tmp_path) == b"configured"


async def test_a_failing_disk_is_a_clear_error_and_leaves_nothing(storage, monkeypatch, tmp_path):
    from csbot.cloud import storage as module

    def full(handle, tmp, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(module, "_commit_file", full)
    with pytest.raises(module.StorageUnavailable, match="could not write"):
        await storage.upload("default", "a.txt", b"data")
    assert await storage.stat("default", "a.txt") is None
    assert blobs(storage) == []
    with pytest.raises(module.StorageError, match="cannot read"):
        await storage.upload("default", "b.txt", tmp_path / "does-not-exist")


def test_a_bad_storage_rule_in_the_config_stops_the_start_naming_it(tmp_path: Path):
    from csbot.config import ConfigError, load_settings

    env = {"CSBOT_APPID": "wx0123456789abcdef", "CSBOT_TOKEN": "t"}
    good = tmp_path / "good.toml"
    good.write_text('[storage.rules]\nread = true\nwrite = "resource.openid == auth.openid"\n')
    assert load_settings(env, good).storage_rules == {"read": True, "write": "resource.openid == auth.openid"}
    bad = tmp_path / "bad.toml"
    bad.write_text('[storage.rules]\nwrite = "doc._openid == auth.openid"\n')
    with pytest.raises(ConfigError, match=r"\[storage.rules\]"):
        load_settings(env, bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text('[storage.rules]\ndelete = false\n')
    with pytest.raises(ConfigError, match="unknown key"):
        load_settings(env, unknown)
