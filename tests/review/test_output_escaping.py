"""Customer text that reaches a terminal or a spreadsheet is inert: control characters are shown,
never obeyed, and no CSV cell starts like a formula (OWASP CSV injection)."""

from __future__ import annotations

import csv
import io
import json

import pytest

from csbot.escaping import csv_cell, terminal_safe
from csbot.review.cli import describe_item, format_batch

from .support import AUTH, api, start
from .test_cli import csbot

ESC = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred"
FORGED = "hi\n2026-11-30 10:00:00  > agent:boss [text] please pay to account 123   [sent]"


@pytest.mark.parametrize("text, shown", [
    ("\x1b[31mred", "\\x1b[31mred"),
    ("a\nb\rc\td", "a\\nb\\rc\\td"),
    ("\x9b2J", "\\x9b2J"),                       # an 8-bit CSI
    ("\x00\x7f", "\\x00\\x7f"),
    ("abc\u202edcba", "abc\\u202edcba"),         # right-to-left override
    ("你好 😀 <b>", "你好 😀 <b>"),               # ordinary text is untouched
])
def test_terminal_safe_shows_control_characters_as_escapes(text, shown):
    assert terminal_safe(text) == shown


@pytest.mark.parametrize("value, cell", [
    ("=HYPERLINK(\"http://evil\",\"x\")", "'=HYPERLINK(\"http://evil\",\"x\")"),
    ("+1+1", "'+1+1"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\t=1", "'\t=1"), ("\r=1", "'\r=1"),
    ("＝1+1", "'＝1+1"),
    ("hello = world", "hello = world"), ("", ""), (-1, -1), (None, None), (3.5, 3.5),
])
def test_csv_cells_that_start_like_a_formula_are_neutralised(value, cell):
    assert csv_cell(value) == cell


def test_the_csv_export_neutralises_formulas_and_keeps_the_text_readable():
    rows = [{"id": 1, "text": "=1+2", "errcode": -1, "error": "@cmd", "openid": "+oX"}]
    table = list(csv.DictReader(io.StringIO(format_batch(rows, "csv", header=True))))
    assert table[0]["text"] == "'=1+2" and table[0]["error"] == "'@cmd" and table[0]["openid"] == "'+oX"
    assert table[0]["errcode"] == "-1"  # a number is data
    assert json.loads(format_batch(rows, "jsonl", header=False))["text"] == "=1+2"  # JSON is exact


def test_a_thread_line_cannot_forge_another_line_or_drive_the_terminal():
    item = {"kind": "message", "direction": "in", "type": "text", "at": 1_700_000_000,
            "content": {"Content": FORGED + ESC}, "status": "failed", "handler": "h", "error": "bad\x1b[8m"}
    text = describe_item(item)
    lines = text.splitlines()
    assert len(lines) == 2 and lines[1].strip().startswith("! handler h failed")  # its own second line
    assert "\x1b" not in text and "\\x1b]0;pwned\\x07" in text and "\\n2026-11-30" in lines[0]


@pytest.fixture
async def json_bot():
    """JSON pushes: XML cannot carry most control characters at all, JSON can."""
    async with start(fmt="json") as b:
        yield b


async def test_the_cli_prints_customer_text_inert_and_exports_safe_csv(json_bot, tmp_path):
    bot = json_bot
    await bot.send_text("oMallory", "=HYPERLINK(\"http://evil.example\",\"click\")")
    assert (await bot.send_text("oMallory", FORGED + ESC))[0] == 200
    await bot.wait_idle()
    code, out, err = await csbot(bot, "conversations", "show", "oMallory")
    assert code == 0, err
    assert "\x1b" not in out and "\\x1b[2J" in out
    assert not any(line.startswith("2026-11-30 10:00:00  > agent:boss") for line in out.splitlines())
    code, out, err = await csbot(bot, "conversations", "list")
    assert code == 0 and "\x1b" not in out
    code, out, err = await csbot(bot, "conversations", "show", "oMallory", "--json")
    assert "\x1b" not in out and any("\\u001b]0;pwned" in line for line in out.splitlines())

    target = tmp_path / "x.csv"
    code, _, err = await csbot(bot, "conversations", "export", "--format", "csv", "--output", str(target))
    assert code == 0, err
    texts = [r["text"] for r in csv.DictReader(io.StringIO(target.read_text(encoding="utf-8-sig")))]
    assert "'=HYPERLINK(\"http://evil.example\",\"click\")" in texts
    assert not any(t.startswith(("=", "+", "-", "@")) for t in texts)


async def test_the_api_csv_export_neutralises_formulas(bot):
    await bot.send_text("oMallory", "@SUM(1+1)*cmd|' /C calc'!A0")
    await bot.wait_idle()
    status, body = await api(bot, "GET", "/api/export?format=csv", headers=AUTH)
    assert status == 200
    texts = [r["text"] for r in csv.DictReader(io.StringIO(body.lstrip("\ufeff")))]
    assert "'@SUM(1+1)*cmd|' /C calc'!A0" in texts


def test_csbot_decrypt_shows_a_hostile_push_inert(tmp_path):
    """`csbot decrypt` (and `--refused`) prints a push's plaintext: a stranger's bytes."""
    from csbot.testing.harness import test_app
    from csbot.testing.pushes import PushBuilder
    from tests.test_cli import app_env, run

    builder = PushBuilder.for_app(test_app(), mode="safe", fmt="json")
    # JSON escapes C0 controls itself, not an 8-bit CSI (0x9b) or a right-to-left override
    push = builder.build(builder.text("oMallory", "hi\x9b2J\u202eevil"))
    query = "&".join(f"{k}={v}" for k, v in push.query.items())
    res = run("decrypt", "--query", query, "--body", "-", env=app_env(tmp_path), stdin=push.body.decode())
    assert res.returncode == 0, res.stdout
    assert "\x9b" not in res.stdout and "\u202e" not in res.stdout
    assert "hi\\x9b2J\\u202eevil" in res.stdout
