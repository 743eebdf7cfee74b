"""The README's examples, run exactly as they are written there."""

import logging
import re
from pathlib import Path

from csbot.routing import Route
from csbot.testing.harness import Harness

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


def code_block(first_line: str) -> str:
    """The fenced code block of the README that starts with ``first_line``."""
    start = README.index("\n" + first_line + "\n") + 1
    return README[start:README.index("\n```", start)] + "\n"


async def test_the_handler_example_answers_with_the_order_number(tmp_path, caplog):
    handlers = tmp_path / "handlers"
    handlers.mkdir()
    (handlers / "orders.py").write_text(code_block("# handlers/orders.py"), encoding="utf-8")
    caplog.set_level(logging.INFO, logger="csbot.handler")
    async with Harness.start(handlers_dir=handlers) as bot:
        await bot.send_text("oUser1", "订单 12345678 到哪了")
        await bot.wait_idle()
        assert bot.replies_to("oUser1") == ["正在查询…", "订单 12345678 已发货"]
        push_id = (await bot.messages("oUser1", direction="in"))[0].id
    lines = [r.getMessage() for r in caplog.records if r.name == "csbot.handler"]
    assert f"[push {push_id} default/oUser1] order 12345678 asked about" in lines


def test_context_match_is_the_routes_regex_match_and_none_elsewhere():
    async def f(event, context):
        return None

    rx = Route("r", f, regex=re.compile(r"订单\s*(\d{6,})"))
    m = rx.match({"MsgType": "text", "Content": "我的订单 1234567 呢"})
    assert m is not None and m.group(1) == "1234567"
    assert rx.match({"MsgType": "image"}) is None
    assert Route("k", f, keywords=frozenset({"hi"})).match({"MsgType": "text", "Content": "hi"}) is None


# --------------------------------------------------------------------------- the standalone fake


async def test_serve_simulate_and_the_standalone_fake_work_as_the_readme_says(tmp_path):
    import asyncio
    import os
    import shutil
    import subprocess
    import sys

    import aiohttp

    from tests.test_recovery import free_port, wait_healthy

    block = code_block("python -m csbot.testing.fake_wechat --port 9000 --app wx0123456789abcdef:yourAppSecret &")
    for typed in ("csbot serve &", "csbot simulate --text 怎么退货 --openid oUser1",
                  "curl -s http://127.0.0.1:9000/_fake/sent", "CSBOT_WECHAT_API_BASE=http://127.0.0.1:9000"):
        assert typed in "python -m csbot.testing.fake_wechat --port 9000 --app wx0123456789abcdef:yourAppSecret &\n" + block
    shutil.copytree(Path(__file__).parents[1] / "handlers", tmp_path / "handlers")
    fake_port, csbot_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSBOT_")}
    env.update(CSBOT_APPID="wx0123456789abcdef", CSBOT_APP_SECRET="yourAppSecret", CSBOT_TOKEN="yourToken",
               CSBOT_WECHAT_API_BASE=f"http://127.0.0.1:{fake_port}", CSBOT_PORT=str(csbot_port))
    fake = subprocess.Popen([sys.executable, "-m", "csbot.testing.fake_wechat", "--port", str(fake_port),
                             "--app", "wx0123456789abcdef:yourAppSecret"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    serve = subprocess.Popen([sys.executable, "-m", "csbot", "serve"], env=env, cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert fake.stdout.readline().strip() == f"http://127.0.0.1:{fake_port}"
        async with aiohttp.ClientSession() as session:
            await wait_healthy(session, f"http://127.0.0.1:{csbot_port}", serve)
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "csbot", "simulate", "--text", "怎么退货", "--openid", "oUser1",
                env=env, cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert out.decode().strip() == "200 success", err.decode()
            sent = []
            for _ in range(100):
                async with session.get(f"http://127.0.0.1:{fake_port}/_fake/sent") as resp:
                    sent = await resp.json()
                if sent:
                    break
                await asyncio.sleep(0.1)
            assert [s["touser"] for s in sent] == ["oUser1"] and "退货" in sent[0]["body"]["text"]["content"]
    finally:
        for proc in (serve, fake):
            proc.terminate()
            proc.wait(15)


async def test_the_standalone_fakes_reply_window_modes():
    from csbot.testing.fake_wechat import FakeWeChat

    async with FakeWeChat({"wxa": "s"}, assume_reply_window=True) as fake, aiohttp_session() as session:
        async def send(openid):
            token = (await (await session.get(f"{fake.base_url}/cgi-bin/token",
                                              params={"grant_type": "client_credential", "appid": "wxa",
                                                      "secret": "s"})).json())["access_token"]
            url = f"{fake.base_url}/cgi-bin/message/custom/send?access_token={token}"
            body = {"touser": openid, "msgtype": "text", "text": {"content": "hi"}}
            return (await (await session.post(url, json=body)).json())["errcode"]

        assert [await send("oNew") for _ in range(6)] == [0] * 5 + [45047]  # the quota still counts
        fake.advance(3 * 86400)
        assert await send("oNew") == 45015  # a window it knows about closes
        async with session.post(f"{fake.base_url}/_fake/user_message", json={"appid": "wxa", "openid": "oNew"}):
            pass
        assert await send("oNew") == 0


def aiohttp_session():
    import aiohttp

    return aiohttp.ClientSession()


def test_simulate_print_shows_the_exact_request_that_decrypt_accepts(tmp_path):
    from csbot.cli import diagnose
    from csbot.config import load_settings
    from tests.test_cli import app_env, run

    env = app_env(tmp_path)
    res = run("simulate", "--text", "你好", "--openid", "oUser1", "--print", env=env)
    assert res.returncode == 0, res.stderr
    request_line, ctype, blank, *body = res.stdout.splitlines()
    method, url = request_line.split(" ", 1)
    assert method == "POST" and url.startswith("http://127.0.0.1:8080/wechat?signature=")
    assert ctype == "Content-Type: text/xml" and blank == "" and "csbot decrypt --url" in res.stderr
    from urllib.parse import parse_qsl, urlsplit
    settings = load_settings(env=env)
    ok, lines = diagnose(settings.apps["default"], dict(parse_qsl(urlsplit(url).query)),
                         "\n".join(body).encode())
    assert ok and any("你好" in line for line in lines), lines


# --------------------------------------------------------------------------- the outbox table


def outbox_codes(state: str) -> set[int]:
    row = next(line for line in README.splitlines() if line.startswith(f"| `{state}` |"))
    return {int(c) for c in re.findall(r"(?<![\w-])(-1|\d{5})(?!\d)", row)}


async def test_the_readme_outbox_table_says_what_the_outbox_does_with_each_errcode():
    from csbot.routing import Router

    async def echo(event, context):
        return "re: " + event.get("Content", "")

    failed, quota = outbox_codes("failed"), outbox_codes("quota_exceeded")
    assert {45015, 45047} <= quota and not {45015, 45047} & failed and failed
    async with Harness.start(router=Router([Route("echo", echo, fallback=True)])) as bot:
        for code in sorted(failed | quota):
            bot.fake.inject("/cgi-bin/message/custom/send", errcode=code, times=1)
            await bot.send_text(f"o{code}", "x")
            await bot.wait_idle()
            [row] = await bot.messages(f"o{code}", direction="out")
            expected = "failed" if code in failed else "quota_exceeded"
            assert (row.status, row.errcode, row.attempts) == (expected, code, 1), code


# --------------------------------------------------------------------------- the review API's curl examples


async def test_the_review_api_curl_examples_run_as_typed():
    import asyncio
    import json
    import os
    import shutil

    import pytest

    from tests.review.support import ADMIN_TOKEN, start

    if shutil.which("curl") is None:
        pytest.skip("needs curl")
    block = code_block('curl -G -H "Authorization: Bearer $CSBOT_ADMIN_TOKEN" --data-urlencode "search=退款" \\')
    block = 'curl -G -H "Authorization: Bearer $CSBOT_ADMIN_TOKEN" --data-urlencode "search=退款" \\\n' + block
    async with start() as bot:
        await bot.send_text("oUser123", "我要退款")
        await bot.wait_idle()
        script = block.replace("http://localhost:8080", bot.url).replace("\\\n", " ")
        outputs = []
        for command in script.strip().splitlines():
            proc = await asyncio.create_subprocess_exec(
                "bash", "-c", "curl -s -S " + command.removeprefix("curl "),
                env={**os.environ, "CSBOT_ADMIN_TOKEN": ADMIN_TOKEN},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
            assert proc.returncode == 0, err.decode()
            outputs.append(json.loads(out))
        found, replied = outputs
        assert [c["openid"] for c in found["conversations"]] == ["oUser123"]
        assert replied["status"] == "queued"
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", f'curl -s -H "Authorization: Bearer $CSBOT_ADMIN_TOKEN" {bot.url}/api/openapi.json',
            env={**os.environ, "CSBOT_ADMIN_TOKEN": ADMIN_TOKEN}, stdout=asyncio.subprocess.PIPE)
        out, _ = await proc.communicate()
        assert json.loads(out)["openapi"].startswith("3.")
        assert 'curl -H "Authorization: Bearer $CSBOT_ADMIN_TOKEN" http://localhost:8080/api/openapi.json' in README


# --------------------------------------------------------------------------- the quick start, as a new operator types it


BIN = str(Path(__import__("sys").executable).parent)  # where `csbot` is installed


def sh_block(after: str) -> str:
    """The first ```sh block after the README's text ``after``."""
    start = README.index("```sh\n", README.index(after)) + len("```sh\n")
    return README[start:README.index("\n```", start)] + "\n"


def operator_env(tmp_path, **extra: str) -> dict[str, str]:
    """A shell of someone who just installed csbot: no CSBOT_ settings, `csbot` on the PATH."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CSBOT_")}
    env["PATH"] = BIN + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def operator_dir(tmp_path) -> Path:
    """A fresh clone's working directory: the shipped handlers, no store yet."""
    import shutil

    shutil.copytree(Path(__file__).parents[1] / "handlers", tmp_path / "handlers")
    return tmp_path


def test_the_quick_start_runs_as_typed(tmp_path):
    import subprocess

    from tests.test_recovery import free_port

    install, *start = sh_block("## Quick start").splitlines()
    assert install == "python3 -m venv .venv && . .venv/bin/activate && pip install ."  # done: we run installed
    tries = sh_block("Try it with a correctly signed")
    port = free_port()  # the README's 8080 may be taken here; CSBOT_PORT is the only difference
    script = "\n".join(start) + "\n" + tries + 'kill "$!"; wait "$!"\n'
    proc = subprocess.run(["bash", "-e", "-c", script], cwd=operator_dir(tmp_path), capture_output=True, text=True,
                          env=operator_env(tmp_path, CSBOT_PORT=str(port)), timeout=90, start_new_session=True)
    assert proc.returncode in (0, 143), proc.stderr
    out = [line for line in proc.stdout.splitlines() if not line.startswith("csbot listening on")]
    assert out[0] == "200 success", proc.stderr
    assert out[1].startswith(f"POST http://127.0.0.1:{port}/wechat?signature=") and "encrypt_type=aes" in out[1]
    assert f"csbot listening on http://127.0.0.1:{port}" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr


def test_simulate_waits_for_a_csbot_that_is_still_starting_and_gives_up_on_a_dead_port(tmp_path):
    import subprocess
    import time

    from tests.test_recovery import free_port

    port = free_port()
    env = operator_env(tmp_path, CSBOT_APPID="wx0123456789abcdef", CSBOT_TOKEN="yourToken", CSBOT_PORT=str(port))
    started = time.monotonic()
    gone = subprocess.run(["csbot", "simulate", "--text", "hi", "--wait", "0.5"], env=env, capture_output=True,
                          text=True, timeout=30)
    assert gone.returncode == 1 and f"cannot reach http://127.0.0.1:{port}" in gone.stderr
    assert "waiting for csbot" in gone.stderr and time.monotonic() - started < 20
    # simulate first, serve a moment later: the push still arrives once
    sim = subprocess.Popen(["csbot", "simulate", "--text", "hi"], env=env, cwd=operator_dir(tmp_path),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    serve = subprocess.Popen(["csbot", "serve"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        out, err = sim.communicate(timeout=30)
        assert sim.returncode == 0 and out.strip() == "200 success", err
    finally:
        serve.terminate()
        serve.wait(15)


def test_the_dev_session_runs_as_typed(tmp_path):
    import subprocess

    lines = sh_block("`csbot dev` runs the service against a fake").splitlines()
    assert lines[0] == "csbot dev"
    typed = [line.removeprefix("oDevCustomer> ") for line in lines if line.startswith("oDevCustomer> ")]
    expected = [line.removeprefix("bot> ").rstrip("…") for line in lines if line.startswith("bot> ")]
    assert typed and expected
    # the quick start's variables are still exported in the operator's shell
    env = operator_env(tmp_path, CSBOT_APPID="wx0123456789abcdef", CSBOT_APP_SECRET="yourAppSecret",
                       CSBOT_TOKEN="yourToken", CSBOT_ENCODING_AES_KEY="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")
    proc = subprocess.run(["bash", "-c", lines[0]], input="\n".join(typed) + "\n/quit\n", cwd=operator_dir(tmp_path),
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    said = [part.split("bot> ", 1)[1] for part in proc.stdout.splitlines() if "bot> " in part]
    assert len(said) == len(expected) and all(s.startswith(e) for s, e in zip(said, expected)), (said, expected)


def test_the_testing_sections_example_passes_in_a_project_of_ones_own(tmp_path):
    import subprocess
    import sys

    project = operator_dir(tmp_path)
    (project / "tests").mkdir()
    (project / "tests" / "test_my_handlers.py").write_text(code_block(
        '# tests/test_my_handlers.py   (pytest-asyncio, asyncio_mode = "auto")'), encoding="utf-8")
    assert "pip install pytest pytest-asyncio" in README
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
                           "tests"], cwd=project, env=operator_env(tmp_path), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "2 passed" in proc.stdout, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- the review API's table, call by call


QUERY_SAMPLES = {"app": "default", "status": "human", "since": "1d", "until": "2099-01-01", "search": "退款",
                 "limit": "10", "cursor": "", "action": "reply", "agent": "wang", "openid": "oUser123"}
BODY_SAMPLES = {"text": "您好，我是客服小王", "agent": "wang", "status": "human", "add": ["vip"], "remove": [],
                "tags": ["vip"], "author": "wang", "app": "default", "touser": "oUser123", "msgtype": "text"}


def api_table() -> list[tuple[str, str, list[str]]]:
    """(method, path with query, [JSON body sketches]) of each row of the README's API table."""
    rows = []
    for line in README.splitlines():
        m = re.match(r"^\| `(GET|POST) (/api/[^`]+)`(.*?) \| ", line)
        if m:
            rows.append((m.group(1), m.group(2).replace("\\|", "|"),
                         [b.replace("\\|", "|") for b in re.findall(r"`(\{.*?\})`", m.group(3))]))
    return rows


def body_of(sketch: str) -> dict:
    """A request body from the table's sketch: its keys (the first of alternatives), sample values."""
    keys = re.findall(r'"(\w+)"', re.sub(r':\s*("[^"]*"|\[[^\]]*\]|\w+)', ":", sketch))  # keys, not values
    body = {}
    for key in keys:
        if key in ("image", "link", "miniprogrampage") and "text" in body:
            continue  # alternatives of "text"
        body[key] = BODY_SAMPLES.get(key)
    if body.get("msgtype") == "text":
        body["text"] = {"content": "您好"}
    return body


async def test_every_call_of_the_readme_api_table_is_accepted_as_written():
    import asyncio
    import os
    import shutil
    from urllib.parse import parse_qsl

    from tests.review.support import ADMIN_TOKEN, AUTH, agents_of, start

    rows = api_table()
    assert len(rows) >= 11 and {m for m, _, _ in rows} == {"GET", "POST"}
    async with start() as bot:
        await agents_of(bot).add("wang", "correct horse battery", role="agent")
        await bot.send_text("oUser123", "我要退款")
        await bot.wait_idle()
        bot.fake.inject("/cgi-bin/message/custom/send", errcode=40003, times=1)
        await bot.send_text("oUser123", "怎么退货")
        await bot.wait_idle()
        [failed] = [m.id for m in await bot.messages("oUser123", direction="out") if m.status == "failed"]
        for method, target, sketches in rows:
            path, _, query = target.partition("?")
            path = path.replace("{app}", "default").replace("{openid}", "oUser123").replace("{id}", str(failed))
            params = {k: (v.split("|")[0] if v else QUERY_SAMPLES[k]) for k, v in parse_qsl(query, keep_blank_values=True)}
            for body in [body_of(s) for s in sketches] or [None]:
                async with bot.session.request(method, bot.url + path, params=params, json=body, headers=AUTH) as r:
                    text = await r.text()
                    assert 200 <= r.status < 300, (method, target, params, body, r.status, text)
        assert any(m.status in ("queued", "sending", "sent") for m in await bot.messages("oUser123", direction="out")
                   if m.id == failed)

        # the outbound webhooks' curl lines, as typed
        if shutil.which("curl") is None:
            return
        for line, expected in ((
                'curl -H "Authorization: Bearer $CSBOT_ADMIN_TOKEN" "http://localhost:8080/api/webhooks/deliveries?status=failed"',
                (200, "deliveries")),
                ("curl -X POST -H \"Authorization: Bearer $CSBOT_ADMIN_TOKEN\" "
                 "http://localhost:8080/api/webhooks/deliveries/17/redeliver", (409, "error"))):
            assert "\n" + line + "\n" in README
            proc = await asyncio.create_subprocess_exec(
                "bash", "-c", line.replace("curl ", "curl -s -w '\\n%{http_code}' ", 1)
                .replace("http://localhost:8080", bot.url),
                env={**os.environ, "CSBOT_ADMIN_TOKEN": ADMIN_TOKEN}, stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            body, _, code = out.decode().rpartition("\n")
            assert (int(code), next(iter(__import__("json").loads(body)))) == expected, (line, out)
