"""Handlers use ``context.db`` like a cloud function uses ``cloud.database()``."""

from __future__ import annotations

import textwrap

from csbot.cloud.database.query import parse_query
from csbot.testing.harness import Harness

HANDLER = textwrap.dedent('''
    async def main(event, context):
        _ = context.db.command
        visits = context.db.collection("visits")
        if (await visits.where({"_id": context.OPENID}).count())["total"] == 0:
            await visits.doc(context.OPENID).set({"n": 0, "texts": []})
        await visits.doc(context.OPENID).update({"n": _.inc(1), "texts": _.push([event["Content"]])})
        doc = (await visits.doc(context.OPENID).get())["data"]
        return f"visit {doc['n']}: {', '.join(doc['texts'])}"
''')


async def test_a_handler_keeps_state_in_a_collection_with_context_db(tmp_path):
    (tmp_path / "counter.py").write_text(HANDLER, encoding="utf-8")
    async with Harness.start(handlers_dir=tmp_path) as bot:
        await bot.send_text("oVisitor", "hi")
        await bot.wait_idle()
        await bot.send_text("oVisitor", "again")
        await bot.wait_idle()
        assert bot.replies_to("oVisitor") == ["visit 1: hi", "visit 2: hi, again"]
        store = bot.services.database
        assert await store.count("default", "visits", parse_query({"n": 2, "_openid": None})) == 1
