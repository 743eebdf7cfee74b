"""What a crash leaves in cloud storage is swept: a real process SIGKILLed mid-upload (a temp
file), between the blob's rename into place and the row's commit (a blob no row references),
and between a delete's commit and the blob's unlink; never a blob an upload in progress is
about to commit, never a referenced one, never one younger than the grace period."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from csbot.cli import main
from csbot.cloud.storage import LocalBackend, Storage
from csbot.store.engine import make_engine, make_sessionmaker
from csbot.store.migrate import upgrade_async

from .storage_fixtures import blobs, storage, store_url  # noqa: F401 - fixtures

#: the child: an upload stopped at one exact point (it prints "ready" there and waits to be killed)
CHILD = textwrap.dedent('''
    import asyncio, sys
    from pathlib import Path
    from csbot.cloud.storage import LocalBackend, Storage
    from csbot.store.engine import make_engine, make_sessionmaker

    url, root, point = sys.argv[1:4]

    async def stop_here():
        print("ready", flush=True)
        await asyncio.sleep(3600)

    async def main():
        storage = Storage(make_sessionmaker(make_engine(url)), LocalBackend(Path(root)), signing_key=b"k" * 32)
        if point == "mid-upload":
            async def source():
                yield b"half of a file" * 1000
                await stop_here()
            await storage.upload("default", "killed.bin", source())
        elif point == "before-commit":
            async def switch(*args, **kwargs):
                await stop_here()
            storage._switch_to = switch
            await storage.upload("default", "killed.bin", b"renamed into place, never committed")
        elif point == "after-delete-commit":
            await storage.upload("default", "deleted.bin", b"deleted, never unlinked")
            async def unlink(key):
                await stop_here()
            storage.backend.delete = unlink
            await storage.delete("default", "deleted.bin")

    asyncio.run(main())
''')


def _kill_at(url: str, root: Path, point: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, str(root), point], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()  # type: ignore[union-attr]
        assert line.strip() == "ready", (line, child.stderr.read())  # type: ignore[union-attr]
        child.send_signal(signal.SIGKILL)
    finally:
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL


@pytest.fixture
async def on_disk(store_url, tmp_path):
    """A store a child process can use too, and this process's Storage on it."""
    await upgrade_async(store_url)
    engine = make_engine(store_url)
    storage = Storage(make_sessionmaker(engine), LocalBackend(tmp_path / "storage"), signing_key=b"k" * 32)
    yield store_url, storage
    await engine.dispose()


@pytest.mark.parametrize("point", ["mid-upload", "before-commit", "after-delete-commit"])
async def test_what_a_sigkilled_upload_or_delete_leaves_is_swept(on_disk, point):
    url, storage = on_disk
    await storage.upload("default", "kept.txt", b"a file that stays")
    await asyncio.to_thread(_kill_at, url, storage.backend.root, point)

    leftovers = [p for p in blobs(storage) if p.read_bytes() != b"a file that stays"]
    assert len(leftovers) == 1, blobs(storage)
    assert leftovers[0].name.startswith(".") == (point == "mid-upload")  # a temp file, else a blob
    assert await storage.stat("default", "killed.bin") is None
    assert await storage.stat("default", "deleted.bin") is None

    young = await storage.sweep(grace=3600)  # within the grace period: left alone
    assert young.orphans == [] and young.partials_removed == 0
    assert leftovers[0].exists()

    report = await storage.sweep(grace=-1)
    assert (report.partials_removed, len(report.orphans)) == ((1, 0) if point == "mid-upload" else (0, 1))
    assert [p.read_bytes() for p in blobs(storage)] == [b"a file that stays"]
    assert await storage.download("default", "kept.txt") == b"a file that stays"


async def test_a_blob_an_upload_is_about_to_commit_is_never_swept(storage):
    at_commit, release = asyncio.Event(), asyncio.Event()
    switch = storage._switch_to

    async def slow_switch(*args, **kwargs):
        at_commit.set()
        await release.wait()
        return await switch(*args, **kwargs)

    storage._switch_to = slow_switch
    upload = asyncio.ensure_future(storage.upload("default", "slow.bin", b"about to be committed"))
    await at_commit.wait()
    [blob] = blobs(storage)
    report = await storage.sweep(grace=-1)  # older than any grace: only "in progress" protects it
    assert report.orphans == [] and blob.exists()
    release.set()
    await upload
    assert await storage.download("default", "slow.bin") == b"about to be committed"
    assert (await storage.sweep(grace=-1)).orphans == []


async def test_a_temp_file_of_an_upload_still_writing_is_never_swept(storage):
    writing, release = asyncio.Event(), asyncio.Event()

    async def slow_source():
        yield b"first half, "
        writing.set()
        await release.wait()
        yield b"second half"

    upload = asyncio.ensure_future(storage.upload("default", "stream.bin", slow_source()))
    await writing.wait()
    await asyncio.sleep(0.05)
    assert any(p.name.endswith(".part") for p in blobs(storage))
    report = await storage.sweep(grace=-1)
    assert report.partials_removed == 0
    release.set()
    await upload
    assert await storage.download("default", "stream.bin") == b"first half, second half"


async def test_a_dry_run_reports_and_removes_nothing(storage):
    await storage.upload("default", "a.txt", b"a")
    orphan = storage.backend.root / "objects" / "ab" / ("0" * 32)
    orphan.parent.mkdir(parents=True, exist_ok=True)
    orphan.write_bytes(b"orphan")
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    report = await storage.sweep(grace=3600, dry_run=True)
    assert report.orphans == [f"objects/ab/{'0' * 32}"] and orphan.exists()
    assert (await storage.sweep(grace=3600)).orphans == [f"objects/ab/{'0' * 32}"]
    assert not orphan.exists()
    assert await storage.download("default", "a.txt") == b"a"


def test_csbot_storage_sweep_reports_orphans(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("CSBOT_APPID", "wx0123456789abcdef")
    monkeypatch.setenv("CSBOT_TOKEN", "token")
    monkeypatch.setenv("CSBOT_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'csbot.db'}")
    monkeypatch.setenv("CSBOT_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CSBOT_CONFIG", raising=False)
    orphan = tmp_path / "data" / "storage" / "objects" / "cd" / ("1" * 32)
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"orphan")
    old = time.time() - 7200
    os.utime(orphan, (old, old))

    assert main(["storage", "sweep", "--dry-run"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] is True and report["orphans"] == 1 and orphan.exists()
    assert main(["storage", "sweep", "--grace", "5"]) == 2
    assert "at least 60" in capsys.readouterr().out
    assert main(["storage", "sweep"]) == 0
    assert json.loads(capsys.readouterr().out)["orphans"] == 1 and not orphan.exists()
