"""``csbot dev``: commands, saying when nobody answered, --handlers, and Ctrl-C."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from csbot.dev import DevSession
from csbot.testing.harness import Harness

from tests.test_cli import app_env, run

REPO = Path(__file__).parents[1]
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64




async def test_commands_help_image_event_user_history_and_no_handler(tmp_path):
    (tmp_path / "h").mkdir()
    (tmp_path / "h" / "greet.py").write_text(
        "from csbot import route\n"
        "@route(event='user_enter_tempsession')\n"
        "async def main(event, context):\n    return '欢迎 ' + event.get('SessionFrom', '')\n"
        "@route(msg_type='image')\n"
        "async def image(event, context):\n    return '收到图片'\n"
        "@route(keyword='quiet')\n"
        "async def quiet(event, context):\n    return None\n", encoding="utf-8")
    image = tmp_path / "photo.png"
    image.write_bytes(PNG)
    out: list[str] = []
    async with Harness.start(handlers_dir=tmp_path / "h") as bot:
        dev = DevSession(bot, "oA", out=out.append)
        assert await dev.handle("/help")
        assert any("/image FILE" in line for line in out) and any("/history" in line for line in out)
        assert await bot.messages() == []  # /help was not sent as a customer message

        out.clear()
        await dev.handle("/event user_enter_tempsession SessionFrom=广告")
        assert out == ["bot> 欢迎 广告"]
        out.clear()
        await dev.handle(f"/image {image}")
        assert out == ["bot> 收到图片"]
        [row] = [m for m in await bot.messages("oA") if m.msg_type == "image"]
        assert row.media_path or row.file_id  # csbot fetched the image from the fake and kept it

        out.clear()
        await dev.handle("anything")
        assert len(out) == 1 and "no handler answered this text" in out[0]
        out.clear()
        await dev.handle("quiet")
        assert out == ["  (handler greet.quiet answered nothing)"]
        out.clear()
        await dev.handle("/event CLICK EventKey=menu1")
        assert "no handler answered this CLICK" in out[0]
        out.clear()
        await dev.handle("//help")  # sends "/help" as text
        assert "no handler answered" in out[0]

        await dev.handle("/user oB")
        assert dev.prompt == "oB> "
        out.clear()
        await dev.handle("/history")
        assert out == ["  no messages with oB yet"]
        await dev.handle("/user oA")
        out.clear()
        await dev.handle("/history")
        text = "\n".join(out)
        assert "< customer [text] anything" in text and "> bot:greet.image [text] 收到图片   [sent]" in text
        out.clear()
        await dev.handle("/nonsense")
        assert "unknown command" in out[0]
        assert await dev.handle("/quit") is False


async def test_failed_deliveries_are_shown():
    out: list[str] = []
    async with Harness.start(handlers_dir=REPO / "handlers") as bot:
        bot.fake.inject("/cgi-bin/message/custom/send", errcode=40003, times=5)
        dev = DevSession(bot, "oA", out=out.append)
        await dev.handle("/enter")
        assert any("failed" in line and "reply" in line for line in out), out


def test_the_handlers_flag_wins_over_the_configured_app(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "echo.py").write_text(
        "async def main(event, context):\n    return 'echo: ' + (event.get('Content') or '')\n")
    env = app_env(tmp_path, CSBOT_HANDLERS=str(REPO / "handlers"))
    res = run("dev", "--handlers", str(tmp_path / "mine"), env=env, cwd=tmp_path, stdin="hi\n/quit\n")
    assert res.returncode == 0, res.stderr
    assert "bot> echo: hi" in res.stdout


def test_ctrl_c_exits_at_once_while_waiting_for_input(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSBOT_")}
    proc = subprocess.Popen([sys.executable, "-m", "csbot", "dev"], cwd=REPO, env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while "/quit" not in line:  # the banner: the session is up and reading
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
        time.sleep(0.3)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=5)
        assert time.monotonic() - started < 3
        assert "Traceback" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
