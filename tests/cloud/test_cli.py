"""``csbot cloud client`` writes out the mini program's client; ``csbot check`` lists functions."""

from pathlib import Path

from csbot.cli import main

from tests.cloud.conftest import FUNCTIONS_DIR

CLIENT = Path(__file__).parents[2] / "csbot" / "cloud" / "client" / "csbot-cloud.js"


def test_cloud_client_prints_the_shipped_module(capsys) -> None:
    assert main(["cloud", "client"]) == 0
    out = capsys.readouterr().out
    assert out == CLIENT.read_text(encoding="utf-8")
    assert "module.exports" in out and "callFunction" in out


def test_check_lists_the_callable_functions(capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("CSBOT_APPID", "wx0123456789abcdef")
    monkeypatch.setenv("CSBOT_TOKEN", "token")
    monkeypatch.setenv("CSBOT_HANDLERS", str(FUNCTIONS_DIR))
    monkeypatch.setenv("CSBOT_DATABASE_URL", f"sqlite+aiosqlite:///{tmp_path / 'check.db'}")
    main(["check"])
    out = capsys.readouterr().out
    assert "callable functions: 15" in out
    assert "  - server_only (server only, timeout 20s, in echo)" in out
    assert "  - slow (mini program and server, timeout 0.3s, in echo)" in out


async def test_cloud_logout_ends_a_users_sessions(bot, capsys, monkeypatch) -> None:
    import asyncio

    from tests.cloud.conftest import MiniProgram

    mp = MiniProgram(bot, "oLoggedOut")
    await mp.login()
    assert (await mp.call("echo")).status == 200
    monkeypatch.setenv("CSBOT_APPID", "wx0123456789abcdef")
    monkeypatch.setenv("CSBOT_TOKEN", "token")
    monkeypatch.setenv("CSBOT_DATABASE_URL", bot.settings.database_url)
    assert await asyncio.to_thread(main, ["cloud", "logout", "oLoggedOut"]) == 0
    assert "ended 1 session(s) of oLoggedOut" in capsys.readouterr().out
    bot.services.sessions._cache.clear()  # as after CSBOT_CLOUD_SESSION_CACHE seconds
    assert (await mp.call("echo")).status == 401
