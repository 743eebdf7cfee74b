"""Callable-function benchmark: calls/s through ``POST /cloud/functions/{name}`` next to a bare
aiohttp app doing the same JSON echo, interleaved.

    python bench/functions.py                       # 3 rounds x 5 s each side, 16 connections
    python bench/functions.py --duration 3 --rounds 2 --connections 8

Processes (all on loopback): a FakeWeChat, ``csbot serve`` on a fresh SQLite store with
``bench/handlers_functions/`` (``echo`` returns its input) and the per-user rate limit off
(``CSBOT_FUNCTION_RATE=0``: one user makes every call), and the bare app (this file with
``--bare PORT``: aiohttp, ``web.run_app`` like csbot, reads the JSON body and answers
``{"result": data, "requestID": …}``). One user logs in once (a wx.login code from the fake,
``POST /cloud/login``); then for each round wrk (``-t1``, ``bench/wrk_function.lua``) POSTs the
same body with the Bearer token to each server in turn. Every csbot call therefore does what a
real one does: session lookup (cached), rate-limit check, body read and JSON parse, CloudID
scan, the function, result serialisation, the Prometheus histogram. Reports calls/s, p50/p99
latency and non-2xx answers per side, the ratio csbot/bare (issue 10's target: ≥ 0.30) and
writes ``bench/out/functions-latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"
APPID, SECRET = "wx0123456789abcdef", "bench-secret"
BODY = {"data": {"a": 12, "b": 19, "text": "你好，请问我的订单什么时候发货？", "items": [1, 2, 3]}}


# --------------------------------------------------------------------------- the bare app


def bare_server(port: int) -> None:
    from aiohttp import web

    async def echo(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"result": body.get("data"), "requestID": uuid.uuid4().hex})

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/cloud/functions/{name}", echo)
    app.router.add_get("/healthz", ok)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen[Any], seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: process exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy")


def post_json(url: str, payload: Any) -> Any:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def run_wrk(url: str, token: str, body_file: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = ["wrk", "-t1", f"-c{args.connections}", f"-d{args.duration:g}s", "--timeout", "5s", "--latency",
           "-s", str(HERE / "wrk_function.lua"), url, "--", token, str(body_file)]
    started = time.process_time()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=args.duration + 30)
    if res.returncode != 0:
        raise RuntimeError(f"wrk failed: {res.stdout}\n{res.stderr}")
    out = res.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        if not m:
            return float("nan")
        value, unit = float(m.group(1)), m.group(2)
        return value / 1000 if unit == "us" else value * 1000 if unit == "s" else value

    return {"calls_per_s": rps, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0,
            "wrk_cpu_s": time.process_time() - started, "raw": out}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.bare:
        bare_server(args.bare)
        return 0

    OUT.mkdir(exist_ok=True)
    body_file = OUT / "function-body.json"
    body_file.write_text(json.dumps(BODY, ensure_ascii=False), encoding="utf-8")
    tmp = tempfile.TemporaryDirectory(prefix="csbot-bench-fn-")
    procs: list[subprocess.Popen[Any]] = []
    try:
        fake = subprocess.Popen([sys.executable, "-m", "csbot.testing.fake_wechat", "--port", "0",
                                 "--app", f"{APPID}:{SECRET}"], stdout=subprocess.PIPE, text=True, cwd=ROOT)
        procs.append(fake)
        fake_url = fake.stdout.readline().strip()  # type: ignore[union-attr]
        csbot_port, bare_port = free_port(), free_port()
        env = {**os.environ, "CSBOT_APPID": APPID, "CSBOT_APP_SECRET": SECRET, "CSBOT_TOKEN": "benchToken",
               "CSBOT_WECHAT_API_BASE": fake_url, "CSBOT_DATABASE_URL": f"sqlite+aiosqlite:///{tmp.name}/csbot.db",
               "CSBOT_HANDLERS": str(HERE / "handlers_functions"), "CSBOT_DATA_DIR": f"{tmp.name}/data",
               "CSBOT_HOST": "127.0.0.1", "CSBOT_PORT": str(csbot_port), "CSBOT_FUNCTION_RATE": "0"}
        csbot = subprocess.Popen([sys.executable, "-m", "csbot", "serve", "--log-level", "WARNING"], env=env,
                                 cwd=tmp.name)
        procs.append(csbot)
        bare = subprocess.Popen([sys.executable, __file__, "--bare", str(bare_port)], cwd=ROOT)
        procs.append(bare)
        csbot_url, bare_url = f"http://127.0.0.1:{csbot_port}", f"http://127.0.0.1:{bare_port}"
        wait_healthy(csbot_url, csbot)
        wait_healthy(bare_url, bare)

        code = post_json(f"{fake_url}/_fake/issue_login_code", {"appid": APPID, "openid": "oBenchUser"})["result"]
        token = post_json(f"{csbot_url}/cloud/login", {"code": code})["token"]
        check = urllib.request.Request(f"{csbot_url}/cloud/functions/echo", data=json.dumps(BODY).encode(),
                                       method="POST", headers={"Authorization": f"Bearer {token}",
                                                               "Content-Type": "application/json"})
        with urllib.request.urlopen(check, timeout=10) as resp:
            assert json.loads(resp.read())["result"] == BODY["data"], "echo answered something else"
        # warm-up of both sides
        for url in (bare_url, csbot_url):
            run_wrk(f"{url}/cloud/functions/echo", token, body_file,
                    argparse.Namespace(connections=args.connections, duration=1))

        rounds: list[dict[str, Any]] = []
        for i in range(args.rounds):
            order = [("bare", bare_url), ("csbot", csbot_url)]
            if i % 2:
                order.reverse()  # interleaved, alternating who goes first
            result: dict[str, Any] = {}
            for label, url in order:
                result[label] = run_wrk(f"{url}/cloud/functions/echo", token, body_file, args)
            result["ratio"] = result["csbot"]["calls_per_s"] / result["bare"]["calls_per_s"]
            rounds.append(result)
            print(f"round {i + 1}: bare {result['bare']['calls_per_s']:.0f}/s, csbot "
                  f"{result['csbot']['calls_per_s']:.0f}/s, ratio {result['ratio']:.2f}", flush=True)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        tmp.cleanup()

    def median(key: str, side: str) -> float:
        return statistics.median(r[side][key] for r in rounds)

    summary = {
        "duration_s": args.duration, "rounds": args.rounds, "connections": args.connections,
        "bare_calls_per_s": median("calls_per_s", "bare"), "csbot_calls_per_s": median("calls_per_s", "csbot"),
        "ratio_median": statistics.median(r["ratio"] for r in rounds),
        "csbot_p50_ms": median("p50_ms", "csbot"), "csbot_p99_ms": median("p99_ms", "csbot"),
        "bare_p50_ms": median("p50_ms", "bare"), "bare_p99_ms": median("p99_ms", "bare"),
        "non_2xx": sum(r[s]["non_2xx"] for r in rounds for s in ("bare", "csbot")),
        "socket_errors": sum(r[s]["socket_errors"] for r in rounds for s in ("bare", "csbot")),
    }
    (OUT / "functions-latest.json").write_text(json.dumps({"summary": summary, "rounds": rounds}, indent=2,
                                                          ensure_ascii=False))
    print()
    print(f"{'':8} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for side in ("bare", "csbot"):
        print(f"{side:8} {summary[side + '_calls_per_s']:9.0f} {summary[side + '_p50_ms']:8.2f} "
              f"{summary[side + '_p99_ms']:8.2f}")
    target = "met" if summary["ratio_median"] >= 0.30 else "NOT met"
    print(f"csbot / bare = {summary['ratio_median']:.2f} (target >= 0.30: {target}); "
          f"non-2xx {summary['non_2xx']}, socket errors {summary['socket_errors']}")
    return 0 if summary["non_2xx"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
