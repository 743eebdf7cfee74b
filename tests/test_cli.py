"""The csbot command line, run as an operator runs it."""

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from csbot.testing.harness import TEST_AES_KEY, TEST_APPID, TEST_TOKEN, Harness

VECTORS = json.loads((Path(__file__).parent / "wire" / "crypto-vectors.json").read_text())
SAFE_JSON = next(v for v in VECTORS if v["id"] == "mp-doc-safe-post-json")


def run(*args, env=None, cwd=None, stdin=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CSBOT_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "csbot", *args], env=full_env, cwd=cwd, input=stdin,
                          capture_output=True, text=True, timeout=60)


def app_env(tmp_path, **extra):
    return {"CSBOT_APPID": TEST_APPID, "CSBOT_TOKEN": TEST_TOKEN, "CSBOT_APP_SECRET": "s3cr3t-value-xyz",
            "CSBOT_ENCODING_AES_KEY": TEST_AES_KEY,
            "CSBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}", **extra}


def test_help_lists_the_commands():
    out = run("--help").stdout
    for cmd in ("serve", "migrate", "check", "simulate", "decrypt"):
        assert cmd in out


def test_migrate_then_check_reports_a_current_schema_with_secrets_masked(tmp_path):
    env = app_env(tmp_path)
    res = run("migrate", env=env)
    assert res.returncode == 0 and "head" in res.stdout
    res = run("check", env=env, cwd=Path(__file__).parents[1])
    assert res.returncode == 0, res.stdout + res.stderr
    assert "(current)" in res.stdout and "configuration OK" in res.stdout
    assert "s3cr3t-value-xyz" not in res.stdout and TEST_AES_KEY not in res.stdout
    assert "human" in res.stdout and "faq" in res.stdout  # the shipped handlers were loaded


def test_check_explains_configuration_errors(tmp_path):
    res = run("check", env=app_env(tmp_path, CSBOT_ENCODING_AES_KEY="tooshort"))
    assert res.returncode == 2 and "CSBOT_ENCODING_AES_KEY must be 43 characters" in res.stderr
    res = run("check", env=app_env(tmp_path, CSBOT_DATABASE_URL="mysql://x"))
    assert res.returncode == 2 and "unknown driver" in res.stderr


def test_check_reports_an_unreachable_database(tmp_path):
    res = run("check", env=app_env(tmp_path, CSBOT_DATABASE_URL="postgresql+asyncpg://nobody@127.0.0.1:1/x"))
    assert res.returncode == 1 and "cannot connect" in res.stdout


def vector_env(**over):
    env = {"CSBOT_APPID": SAFE_JSON["appid"], "CSBOT_TOKEN": SAFE_JSON["token"],
           "CSBOT_ENCODING_AES_KEY": SAFE_JSON["encoding_aes_key"]}
    env.update(over)
    return env


def vector_query():
    v = SAFE_JSON
    return (f"signature={v['signature']}&timestamp={v['timestamp']}&nonce={v['nonce']}"
            f"&openid={v['openid_query']}&encrypt_type=aes&msg_signature={v['msg_signature']}")


def test_decrypt_opens_a_captured_push():
    res = run("decrypt", "--query", vector_query(), "--body", "-", env=vector_env(), stdin=SAFE_JSON["post_body"])
    assert res.returncode == 0, res.stdout
    assert "msg_signature: OK" in res.stdout and "appid: OK" in res.stdout
    assert SAFE_JSON["expected_plaintext"] in res.stdout


def test_decrypt_says_precisely_what_is_wrong():
    body = SAFE_JSON["post_body"]
    wrong_token = run("decrypt", "--query", vector_query(), "--body", "-", env=vector_env(CSBOT_TOKEN="BBBBB"), stdin=body)
    assert wrong_token.returncode == 1 and "signature: WRONG" in wrong_token.stdout
    wrong_key = run("decrypt", "--query", vector_query(), "--body", "-",
                    env=vector_env(CSBOT_ENCODING_AES_KEY="B" * 43), stdin=body)
    assert wrong_key.returncode == 1 and "FAILED" in wrong_key.stdout and "key differs" in wrong_key.stdout
    wrong_appid = run("decrypt", "--query", vector_query(), "--body", "-", env=vector_env(CSBOT_APPID="wxother"), stdin=body)
    assert wrong_appid.returncode == 1 and "appid: WRONG" in wrong_appid.stdout
    assert SAFE_JSON["appid"] in wrong_appid.stdout


def test_decrypt_reads_the_query_from_a_url_and_the_body_from_a_file(tmp_path):
    f = tmp_path / "push.json"
    f.write_text(SAFE_JSON["post_body"])
    res = run("decrypt", "--url", "https://example.com/wechat?" + vector_query(), "--body", str(f), env=vector_env())
    assert res.returncode == 0 and "debug_demo" in res.stdout


async def test_simulate_sends_a_signed_encrypted_push_to_a_running_instance(tmp_path):
    async with Harness.start(handlers_dir="handlers") as bot:
        env = {**os.environ, **app_env(tmp_path)}
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "csbot", "simulate", "--url", bot.url, "--text", "你好", "--openid", "oUser1",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert out.decode().strip() == "200 success"
        [row] = await bot.messages()
        assert (row.openid, row.text) == ("oUser1", "你好")

        # an inline passive reply comes back decrypted
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "csbot", "simulate", "--url", bot.url, "--text", "转人工", "--format", "json",
            env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert "transfer_customer_service" in out.decode()


def test_dev_lets_a_person_chat_with_the_handlers_in_the_terminal():
    res = run("dev", cwd=Path(__file__).parents[1], stdin="/enter\n怎么退货\n转人工\n/quit\n")
    assert res.returncode == 0, res.stderr
    lines = [l for l in res.stdout.splitlines() if "bot> " in l]
    assert "欢迎" in lines[0] and "退货" in lines[1]
    assert "customer-service tool" in lines[2]


def test_check_warns_with_a_non_zero_exit_when_no_reply_can_ever_be_sent(tmp_path):
    repo = Path(__file__).parents[1]
    env = app_env(tmp_path)
    del env["CSBOT_APP_SECRET"]
    res = run("check", env=env, cwd=repo)
    assert res.returncode == 1 and "configuration OK" not in res.stdout
    assert "WARNING: app default has no AppSecret (CSBOT_APP_SECRET)" in res.stdout
    empty = tmp_path / "no-handlers"
    empty.mkdir()
    res = run("check", env=app_env(tmp_path, CSBOT_HANDLERS=str(empty)), cwd=repo)
    assert res.returncode == 1 and "WARNING: no handler" in res.stdout


#: text a stranger controls, with what a terminal acts on: a bidi override, an 8-bit CSI, an OSC
HOSTILE = "evil\u202etxt.exe\u2066 \x9b2J\x1b]0;owned\x07\u2028"
TERMINAL_ACTIVE = set(map(chr, [*range(0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F,
                                *range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x2028, 0x2029]))


def test_json_output_of_refused_and_webhooks_is_inert_on_a_terminal(tmp_path):
    """--json lines escape C1 controls and bidi overrides (\\u202e) like the human output does;
    decoded, they are the stored text exactly."""
    import sqlite3

    env = app_env(tmp_path, CSBOT_KEEP_REFUSED="5")
    assert run("migrate", env=env).returncode == 0
    with sqlite3.connect(tmp_path / "cli.db") as db:
        db.execute("INSERT INTO refused_pushes (app, at, remote, method, path, query, content_type, body, "
                   "body_size, status, reason) VALUES ('default', 1700000000, ?, 'POST', '/wechat', ?, ?, NULL, 0, "
                   "400, ?)", (HOSTILE[:40], "nonce=" + HOSTILE, "text/xml" + HOSTILE, "bad body: " + HOSTILE))
        db.execute("INSERT INTO webhook_deliveries (webhook, event, app, openid, body, status, attempts, "
                   "next_attempt_at, created_at, last_status, last_error) VALUES ('crm', 'message.received', "
                   "'default', ?, '{}', 'failed', 1, 0, 1700000000, 500, ?)", ("o" + HOSTILE, "HTTP 500: " + HOSTILE))

    for args, field, value in ((("refused", "--json"), "query", "nonce=" + HOSTILE),
                               (("webhooks", "list", "--json"), "last_error", "HTTP 500: " + HOSTILE)):
        res = run(*args, env=env)
        assert res.returncode == 0, res.stderr
        [line] = res.stdout.splitlines()
        assert not TERMINAL_ACTIVE & set(line), args
        assert "\\u202e" in line and "\\u009b" in line
        assert json.loads(line)[field] == value
        human = run(*args[:-1], env=env)  # the human listing was already escaped
        assert human.returncode == 0 and not TERMINAL_ACTIVE & set(human.stdout.rstrip("\n")), args
