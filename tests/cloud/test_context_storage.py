"""``context.storage`` in a handler: WeChat's storage calls, server side (no rules)."""

from __future__ import annotations

from pathlib import Path

import pytest

from csbot.routing import Route, Router
from csbot.testing.harness import Harness


async def test_a_handler_uploads_links_downloads_and_deletes(tmp_path: Path):
    seen: dict = {}
    (tmp_path / "menu.pdf").write_bytes(b"%PDF-1.4 menu")

    async def handler(event, context):
        storage = context.storage
        seen["a"] = await storage.upload(f"notes/{context.OPENID}.txt", event["Content"].encode())
        seen["b"] = await storage.upload("menu.pdf", path=tmp_path / "menu.pdf")
        seen["urls"] = await storage.temp_urls([seen["a"], {"fileID": seen["b"], "maxAge": 600}])
        seen["bytes"] = await storage.download(seen["a"])
        seen["deleted"] = await storage.delete([seen["b"]])
        with pytest.raises(TypeError):
            await storage.upload("x.txt")

    async with Harness.start(router=Router([Route("h", handler, fallback=True)])) as bot:
        await bot.send_text("oWriter", "记下这句话")
        await bot.wait_idle()
        assert seen["a"] == "cloud://default/notes/oWriter.txt"
        assert seen["bytes"] == "记下这句话".encode()
        assert [u["status"] for u in seen["urls"]] == [0, 0]
        assert seen["deleted"] == [{"fileID": "cloud://default/menu.pdf", "status": 0, "errMsg": "ok"}]
        stored = await bot.services.storage.for_app("default").stat(seen["a"])
        assert stored.owner_openid is None and stored.content_type == "text/plain"
        assert await bot.services.storage.stat("default", "menu.pdf") is None
