"""``csbot conversations``, ``csbot reply`` and ``csbot takeover|handback|close``, run as an operator
runs them, against the store of a running csbot filled by real pushes."""

import asyncio
import csv
import io
import json
import os
import sys
import time

from csbot.review.cli import Progress
from csbot.testing.harness import TEST_AES_KEY, TEST_APPID, TEST_TOKEN

from .support import review_of


async def csbot(bot, *args):
    """Run the CLI on ``bot``'s store in a subprocess (without blocking the running service)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSBOT_")}
    env.update(CSBOT_APPID=TEST_APPID, CSBOT_TOKEN=TEST_TOKEN, CSBOT_ENCODING_AES_KEY=TEST_AES_KEY,
               CSBOT_DATABASE_URL=bot.settings.database_url, USER="cli-operator")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "csbot", *args, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def fill(bot):
    await bot.enter("oAnn", session_from="product-page")
    await bot.send_text("oAnn", "怎么退款")
    await bot.send_text("oBen", "boom")
    await bot.send_text("oBen", "转人工")
    await bot.send(bot.builder.miniprogrampage("oCat", title="Blue scarf", pagepath="pages/item?id=9"))
    await bot.wait_idle()


async def test_list_shows_conversations_newest_first_and_filters_and_searches(bot):
    await fill(bot)
    code, out, err = await csbot(bot, "conversations", "list", "--json")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["openid"] for r in rows] == ["oCat", "oBen", "oAnn"]
    assert rows[1]["transferred_at"] is not None and rows[1]["unanswered"] is True
    assert rows[2]["unanswered"] is False  # the FAQ answered

    code, out, _ = await csbot(bot, "conversations", "list", "--search", "退款", "--json")
    assert [json.loads(line)["openid"] for line in out.splitlines()] == ["oAnn"]
    code, out, _ = await csbot(bot, "conversations", "list", "--limit", "1", "--since", "1h", "--json")
    assert len(out.splitlines()) == 1
    await review_of(bot).set_status("default", "oBen", "human", agent="zoe")
    code, out, _ = await csbot(bot, "conversations", "list", "--status", "human")
    assert code == 0 and "oBen" in out and "zoe" in out and "oAnn" not in out


async def test_show_tells_the_whole_thread_with_delivery_states_and_handler_errors(bot):
    await fill(bot)
    code, out, err = await csbot(bot, "conversations", "show", "oAnn")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "oAnn in app default: bot"
    assert lines[1].endswith("< customer [event user_enter_tempsession] product-page")  # said once
    assert "< customer [text] 怎么退款" in out
    assert "> bot:welcome [text]" in out and "> bot:faq [text]" in out and "[sent]" in out

    code, out, _ = await csbot(bot, "conversations", "show", "oBen")
    assert "! handler fragile failed: ValueError: order number not understood" in out
    assert "~ transferred to WeChat's customer-service tool" in out
    code, out, _ = await csbot(bot, "conversations", "show", "oCat")
    assert "mini program card 'Blue scarf' → pages/item?id=9" in out

    code, out, _ = await csbot(bot, "conversations", "show", "oAnn", "--json")
    items = [json.loads(line) for line in out.splitlines()]
    assert items[0]["kind"] == "conversation"
    assert [(i["direction"], i["type"]) for i in items[1:]] == [
        ("in", "event"), ("in", "text"), ("out", "text"), ("out", "text")]

    code, out, err = await csbot(bot, "conversations", "show", "oNobody")
    assert code == 1 and "no conversation with oNobody" in err and "Traceback" not in err


async def test_reply_is_queued_by_the_cli_and_delivered_by_the_running_service(bot):
    await fill(bot)
    bot.fake.inject("/cgi-bin/message/custom/send", errcode=40003)
    code, out, err = await csbot(bot, "reply", "oAnn", "第一条", "--agent", "amy")
    assert code == 0 and "queued" in out, err
    code, out, err = await csbot(bot, "reply", "oAnn", "您好，我是客服 Amy", "--agent", "amy")
    assert code == 0, err
    deadline = time.monotonic() + 10
    while "您好，我是客服 Amy" not in bot.replies_to("oAnn"):
        assert time.monotonic() < deadline, "the service never sent the CLI's reply"
        await asyncio.sleep(0.1)
    code, out, _ = await csbot(bot, "conversations", "show", "oAnn")
    assert out.splitlines()[0] == "oAnn in app default: human, agent amy"
    assert "> agent:amy [text] 第一条   [failed errcode 40003" in out
    assert "> agent:amy [text] 您好，我是客服 Amy   [sent]" in out


async def test_takeover_handback_and_close_change_the_status(bot):
    await fill(bot)
    code, out, _ = await csbot(bot, "takeover", "oCat", "--agent", "max")
    assert (code, out.strip()) == (0, "oCat in app default: human (agent max)")
    code, out, _ = await csbot(bot, "handback", "oCat")
    assert out.strip() == "oCat in app default: bot"
    code, out, _ = await csbot(bot, "close", "oCat")
    assert out.strip() == "oCat in app default: closed"
    code, out, _ = await csbot(bot, "conversations", "show", "oCat")
    assert "* takeover by max" in out and "* handback by cli-operator" in out
    assert "* close by cli-operator" in out


async def test_export_writes_every_message_as_json_lines_or_csv(bot, tmp_path):
    await fill(bot)
    code, out, err = await csbot(bot, "conversations", "export")
    assert code == 0 and err == ""  # no progress bar when standard error is not a terminal
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == len(await bot.messages())
    assert [r["id"] for r in rows] == sorted(r["id"] for r in rows)

    target = tmp_path / "out.csv"
    code, out, err = await csbot(bot, "conversations", "export", "--format", "csv", "--since", "1d",
                                 "--until", "2099-01-01", "--output", str(target))
    assert code == 0 and "exported" in err
    assert target.read_bytes().startswith(b"\xef\xbb\xbfid,app,")  # a UTF-8 BOM for Excel and WPS
    table = list(csv.DictReader(io.StringIO(target.read_text(encoding="utf-8-sig"))))
    assert len(table) == len(rows)
    assert {r["text"] for r in table} >= {"怎么退款", "boom"}
    assert any(r["status"] == "failed" and "order number" in r["error"] for r in table)

    code, out, err = await csbot(bot, "conversations", "export", "--since", "2099-01-01")
    assert (code, out) == (0, "")
    code, out, err = await csbot(bot, "conversations", "export", "--since", "last tuesday")
    assert code == 1 and "not a time" in err


def test_the_export_progress_bar_is_drawn_only_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty, pipe = Terminal(), io.StringIO()
    for stream in (tty, pipe):
        bar = Progress(4, stream)
        bar.advance(2)
        bar.advance(2)
        bar.finish()
    assert "[###############...............] 2/4" in tty.getvalue()
    assert tty.getvalue().endswith("4/4\n")
    assert pipe.getvalue() == ""
