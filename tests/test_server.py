"""Serving: one clear line for a busy port, the listening line, JSON for malformed requests."""

import asyncio
import socket
import subprocess
import sys

from csbot.testing.harness import Harness

from tests.review.support import AUTH, api, start
from tests.test_cli import app_env, run


async def raw_request(url: str, request_line: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request_line + b"\r\nHost: x\r\nAuthorization: " + AUTH["Authorization"].encode()
                 + b"\r\nConnection: close\r\n\r\n")
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


async def test_raw_utf8_in_an_api_url_gets_a_json_error_that_says_how_to_encode_it():
    async with start() as bot:
        status, headers, body = await raw_request(bot.url, "GET /api/conversations?search=退款 HTTP/1.1".encode())
        assert status == 400 and headers["content-type"].startswith("application/json")
        import json
        error = json.loads(body)["error"]
        assert "--data-urlencode" in error
        # the README's curl form (-G --data-urlencode) works
        status, page = await api(bot, "GET", "/api/conversations", params={"search": "退款"})
        assert status == 200 and page["conversations"] == []


async def test_every_api_error_is_json_even_aiohttps_own():
    async with start() as bot:
        for method, path in (("GET", "/api/nothing-here"), ("DELETE", "/api/conversations"),
                             ("GET", "/api"), ("GET", "/api/conversations/default/nobody")):
            status, body = await api(bot, method, path)
            assert status >= 400 and isinstance(body, dict) and set(body) == {"error"}, (method, path, body)
    async with Harness.start(handlers_dir=None) as bot:  # no admin token: only agents' tokens, still JSON
        status, body = await api(bot, "GET", "/api/conversations")
        assert status == 401 and "CSBOT_ADMIN_TOKEN" in body["error"]


def test_serve_says_where_it_listens_and_a_busy_port_is_one_clear_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = run("serve", "--host", "127.0.0.1", "--port", str(port), env=app_env(tmp_path))
    assert res.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}" in res.stderr and "already in use" in res.stderr
    assert "Traceback" not in res.stderr

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith("CSBOT_")}
    env.update(app_env(tmp_path))
    proc = subprocess.Popen([sys.executable, "-m", "csbot", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"csbot listening on http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)
