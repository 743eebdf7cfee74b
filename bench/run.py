#!/usr/bin/env python
"""csbot webhook benchmark: acknowledged pushes/s next to a bare aiohttp app, same run, interleaved.

    python bench/run.py [--duration 10] [--connections 32] [--rounds 3] [--pushes 20000]
    python bench/run.py --smoke          # 2 s, 1 round: a quick check that everything works

What it does (see bench/README.md):

1. generates distinct signed and encrypted (safe mode, XML) text pushes with
   ``csbot.testing.pushes.PushBuilder`` into ``bench/out/pushes.dat``: distinct MsgIds, 500
   openids, a fixed test token/appid/EncodingAESKey;
2. starts FakeWeChat and the bare app (``bench/bare_app.py``) as processes;
3. for each round: wrk against the bare app, then a fresh ``csbot serve`` (new SQLite file,
   WAL + synchronous=FULL as csbot configures it, workers on, ``bench/handlers``) is warmed
   up, driven by wrk with the same pushes, checked for durability (every acknowledged push
   is a row of ``messages``), and timed until its workers have handled the backlog;
4. prints a table and writes everything to ``bench/out/latest.json``.

wrk runs with ``-t1`` (this is a 2-core machine); ``bench/wrk_pushes.lua`` gives each request
the next push and reports latency percentiles and status counts as JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OUT = HERE / "out"

# fixed test credentials (never used anywhere real)
TOKEN = "csbotbenchtoken"
APPID = "wxbench0000000001"
SECRET = "benchsecret"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
N_OPENIDS = 500
MSGID_BASE = 7_000_000_000_000_000_000  # bench pushes; warm-up pushes use MSGID_WARMUP
MSGID_WARMUP = 6_000_000_000_000_000_000
#: the push file holds at least duration x this many pushes, so a csbot round never wraps
#: (csbot without storage peaks near 7,600/s on this machine kind)
SIZE_RATE = 9000
WARMUP_PUSHES = 400
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- pushes


def _builder():
    from csbot.testing.pushes import PushBuilder

    return PushBuilder(token=TOKEN, appid=APPID, encoding_aes_key=AES_KEY, mode="safe", fmt="xml")


def make_pushes(n: int, msgid_base: int) -> list[tuple[str, bytes]]:
    """``n`` distinct safe-mode XML text pushes as (path?query, body)."""
    b = _builder()
    ts = int(time.time())
    out = []
    for i in range(n):
        openid = f"oBenchUser{i % N_OPENIDS:06d}"
        fields = b.text(openid, f"bench message {i}: 你好，我的订单什么时候发货？", msg_id=msgid_base + i,
                        create_time=ts)
        push = b.build(fields, timestamp=ts, nonce=str(1_000_000_000 + i))
        out.append(("/wechat?" + urlencode(push.query), push.body))
    return out


def write_pushes(path: Path, pushes: list[tuple[str, bytes]]) -> None:
    with open(path, "wb") as f:
        for url, body in pushes:
            f.write(f"{url}\t{len(body)}\n".encode())
            f.write(body)
            f.write(b"\n")


# --------------------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args} exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen | None, timeout: float = 15.0) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a live process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


# --------------------------------------------------------------------------- wrk


def run_wrk(url: str, args: argparse.Namespace, pushes_file: Path, label: str) -> dict[str, Any]:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.duration}s", "--timeout", "5s",
           "--latency", "-s", str(HERE / "wrk_pushes.lua"), url]
    env = dict(os.environ, BENCH_PUSHES=str(pushes_file), BENCH_THREADS=str(args.threads))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.duration + 120)
    wall = time.monotonic() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    (OUT / f"wrk-{label}.txt").write_text(" ".join(cmd) + "\n\n" + res.stdout + res.stderr)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("BENCH_JSON ")), None)
    if res.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
    data = json.loads(line[len("BENCH_JSON "):])
    secs = data["duration_us"] / 1e6
    ok = data["statuses"].get("200", 0)
    non200 = sum(v for k, v in data["statuses"].items() if k != "200")
    sock = sum(data["errors"][k] for k in ("connect", "read", "write", "timeout"))
    data.update(
        seconds=secs,
        ok=ok,
        ok_per_s=ok / secs,
        req_per_s=data["requests"] / secs,
        non200=non200,
        error_total=non200 + sock,
        wrk_cpu_s=(after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
        wall_s=wall,
        cmd=" ".join(cmd),
    )
    return data


# --------------------------------------------------------------------------- csbot


def _db_counts(db: Path) -> dict[str, int]:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        rows = con.execute(
            "SELECT status, count(*) FROM messages WHERE direction='in' AND wechat_msg_id >= ? "
            "GROUP BY status", (str(MSGID_BASE),)).fetchall()
        # wechat_msg_id is text; all bench ids have the same number of digits, so text order works
    finally:
        con.close()
    counts = {s: c for s, c in rows}
    counts["total"] = sum(c for _, c in rows)
    return counts


def _pending(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return con.execute("SELECT count(*) FROM messages WHERE direction='in' "
                           "AND status IN ('pending','inline')").fetchone()[0]
    finally:
        con.close()


async def _post_all(base: str, pushes: list[tuple[str, bytes]], concurrency: int) -> list[int]:
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as s:
        async def one(url: str, body: bytes) -> int:
            async with sem:
                async with s.post(base + url, data=body, headers={"Content-Type": "text/xml"}) as r:
                    await r.read()
                    return r.status
        return await asyncio.gather(*(one(u, b) for u, b in pushes))


def wait_drained(db: Path, timeout: float) -> float | None:
    """Seconds until no inbound push is pending; None if ``timeout`` passed first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if _pending(db) == 0:
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def csbot_round(i: int, args: argparse.Namespace, pushes_file: Path, n_pushes: int,
                warmup: list[tuple[str, bytes]], fake_port: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"csbot-bench-{i}-"))
    db = work / "csbot.db"
    port = free_port()
    env = dict(os.environ)
    env.update(
        CSBOT_APPID=APPID, CSBOT_TOKEN=TOKEN, CSBOT_ENCODING_AES_KEY=AES_KEY, CSBOT_APP_SECRET=SECRET,
        CSBOT_REQUIRE_ENCRYPTION="true",
        CSBOT_DATABASE_URL=f"sqlite+aiosqlite:///{db}",
        CSBOT_HANDLERS=str(HERE / "handlers"),
        CSBOT_WECHAT_API_BASE=f"http://127.0.0.1:{fake_port}",
        CSBOT_MAX_CLOCK_SKEW="0",  # pre-generated timestamps must pass
        CSBOT_HOST="127.0.0.1", CSBOT_PORT=str(port),
        CSBOT_DATA_DIR=str(work / "data"),
    )
    csbot = shutil.which("csbot")
    cmd = [csbot] if csbot else [sys.executable, "-m", "csbot"]
    probe_out = OUT / f"probe-round{i}.json"
    if args.probe:  # the same serve, with group-commit statistics (bench/probe_serve.py)
        cmd = [sys.executable, str(HERE / "probe_serve.py")]
        env["BENCH_PROBE_OUT"] = str(probe_out)
    cmd += ["serve", "--log-level", args.csbot_log_level]
    log_path = OUT / f"csbot-round{i}.log"
    log = open(log_path, "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=work)
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        # warm-up: imports, SQLAlchemy statement caches, first lanes; then let the workers finish
        statuses = asyncio.run(_post_all(f"http://127.0.0.1:{port}", warmup, args.connections))
        if any(s != 200 for s in statuses):
            raise RuntimeError(f"warm-up pushes refused: {sorted(set(statuses))}; see {log_path}")
        wait_drained(db, 30)
        if args.profile:
            pyspy = subprocess.Popen(["py-spy", "record", "-p", str(proc.pid), "-d", str(args.duration + 1),
                                      "-r", "200", "-f", "raw", "-o", str(OUT / f"profile-round{i}.txt")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cpu0 = proc_cpu(proc.pid)
        w = run_wrk(f"http://127.0.0.1:{port}/wechat", args, pushes_file, f"csbot-round{i}")
        t_end = time.monotonic()
        cpu1 = proc_cpu(proc.pid)
        at_end = _db_counts(db)  # right after wrk: acknowledged pushes must already be committed
        drain = wait_drained(db, args.drain_timeout)
        # from the end of wrk until no push is pending (the row counts above take a few ms)
        drain_s = None if drain is None else time.monotonic() - t_end
        cpu2 = proc_cpu(proc.pid)
        final = _db_counts(db)
        if args.profile:
            pyspy.wait(timeout=60)
        if proc.poll() is not None:
            raise RuntimeError(f"csbot exited during the round; see {log_path}")
    finally:
        stop(proc)
        log.close()
    if args.probe and probe_out.exists():
        w["probe"] = json.loads(probe_out.read_text())
    distinct_sent = min(w["sent"], n_pushes)
    w.update(
        committed_at_end=at_end["total"],
        done_at_end=at_end.get("done", 0),
        pending_at_end=at_end.get("pending", 0),
        committed_final=final["total"],
        handled_final=final.get("done", 0),
        failed_final=final.get("failed", 0),
        # durable: every 200 has its row (without wrap-around each 200 is a distinct push)
        durable=(at_end["total"] >= w["ok"]) if w["wraps"] == 0 else (at_end["total"] >= min(w["ok"], distinct_sent)),
        committed_unacked=at_end["total"] - w["ok"],
        drain_s=drain_s,
        csbot_cpu_run_s=cpu1 - cpu0,
        csbot_cpu_drain_s=cpu2 - cpu1,
        csbot_cpu_us_per_ack=(cpu1 - cpu0) / w["ok"] * 1e6 if w["ok"] else None,
        csbot_cpu_us_per_push_total=(cpu2 - cpu0) / max(final["total"], 1) * 1e6,
        log=str(log_path),
        db=str(db),
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return w


# --------------------------------------------------------------------------- report


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def table(rounds: list[dict[str, Any]]) -> str:
    head = (f"{'round':>5} {'target':<6} {'req/s':>9} {'acked/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
            f"{'durable':>7} {'committed':>9} {'handled@end':>11} {'drain s':>7} {'cpu µs/ack':>10}")
    lines = [head, "-" * len(head)]
    for r in rounds:
        for name in ("bare", "csbot"):
            w = r[name]
            lat = w["latency_us"]
            durable = committed = handled = drain = cpu = "-"
            if name == "csbot":
                durable = "yes" if w["durable"] else "NO"
                committed, handled = str(w["committed_at_end"]), str(w["done_at_end"])
                drain = "n/a" if w["drain_s"] is None else f"{w['drain_s']:.2f}"
                cpu = "-" if not w["csbot_cpu_us_per_ack"] else f"{w['csbot_cpu_us_per_ack']:.0f}"
            lines.append(
                f"{r['round']:>5} {name:<6} {w['req_per_s']:>9.0f} {w['ok_per_s']:>9.0f} {_ms(lat['p50']):>7} "
                f"{_ms(lat['p99']):>7} {w['error_total']:>6} {durable:>7} {committed:>9} {handled:>11} "
                f"{drain:>7} {cpu:>10}")
    return "\n".join(lines)


def summarize(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    bare = [r["bare"]["ok_per_s"] for r in rounds]
    cs = [r["csbot"]["ok_per_s"] for r in rounds]
    ratios = [r["csbot"]["ok_per_s"] / r["bare"]["ok_per_s"] for r in rounds if r["bare"]["ok_per_s"]]
    p99 = [r["csbot"]["latency_us"]["p99"] / 1000 for r in rounds]
    p50 = [r["csbot"]["latency_us"]["p50"] / 1000 for r in rounds]
    errors = sum(r["csbot"]["error_total"] for r in rounds)
    drains = [r["csbot"]["drain_s"] for r in rounds]
    s = {
        "bare_req_per_s_median": statistics.median(bare),
        "csbot_acked_per_s_median": statistics.median(cs),
        "ratio_median": statistics.median(ratios) if ratios else None,
        "ratio_min": min(ratios) if ratios else None,
        "csbot_p50_ms_median": statistics.median(p50),
        "csbot_p99_ms_median": statistics.median(p99),
        "csbot_p99_ms_max": max(p99),
        "bare_p99_ms_median": statistics.median(r["bare"]["latency_us"]["p99"] / 1000 for r in rounds),
        "csbot_errors_total": errors,
        "bare_errors_total": sum(r["bare"]["error_total"] for r in rounds),
        "all_durable": all(r["csbot"]["durable"] for r in rounds),
        "wraps": sum(r["csbot"]["wraps"] for r in rounds),
        "drain_s_max": None if any(d is None for d in drains) else max(drains),
        "csbot_cpu_us_per_ack_median": statistics.median(
            r["csbot"]["csbot_cpu_us_per_ack"] for r in rounds if r["csbot"]["csbot_cpu_us_per_ack"]),
    }
    s["target"] = {
        "ratio_ge_0.25": s["ratio_median"] is not None and s["ratio_median"] >= 0.25,
        "p99_lt_25ms": s["csbot_p99_ms_max"] < 25,
        "zero_errors": errors == 0,
        "durable": s["all_durable"],
    }
    s["target"]["met"] = all(s["target"].values())
    return s


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10, help="seconds per wrk run (default 10)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1 on a 2-core machine)")
    p.add_argument("--rounds", type=int, default=3, help="bare/csbot pairs, interleaved")
    p.add_argument("--pushes", type=int, default=20000,
                   help=f"minimum distinct pushes; the file holds at least duration x {SIZE_RATE} so "
                        "csbot rounds do not wrap around")
    p.add_argument("--smoke", action="store_true", help="2 s, 1 round")
    p.add_argument("--drain-timeout", type=float, default=60)
    p.add_argument("--profile", action="store_true", help="py-spy record csbot during each round (raw "
                   "collapsed stacks in bench/out/profile-roundN.txt; needs py-spy)")
    p.add_argument("--probe", action="store_true", help="run csbot through bench/probe_serve.py: group-commit "
                   "sizes and timings in bench/out/probe-roundN.json (diagnosis; adds a little overhead)")
    p.add_argument("--keep", action="store_true", help="keep each round's SQLite directory")
    p.add_argument("--csbot-log-level", default="WARNING")
    args = p.parse_args(argv)
    if args.smoke:
        args.duration, args.rounds = 2, 1
    args.duration = int(args.duration) if float(args.duration).is_integer() else args.duration
    if shutil.which("wrk") is None:
        print("bench: wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    if args.profile and shutil.which("py-spy") is None:
        print("bench: --profile needs py-spy (pip install py-spy)", file=sys.stderr)
        return 2
    OUT.mkdir(parents=True, exist_ok=True)

    n_pushes = max(args.pushes, int(args.duration * SIZE_RATE))
    t0 = time.monotonic()
    pushes = make_pushes(n_pushes, MSGID_BASE)
    pushes_file = OUT / "pushes.dat"
    write_pushes(pushes_file, pushes)
    del pushes
    warmup = make_pushes(WARMUP_PUSHES, MSGID_WARMUP)
    gen_s = time.monotonic() - t0
    print(f"generated {n_pushes} distinct safe-mode XML pushes ({N_OPENIDS} openids) in {gen_s:.1f}s "
          f"-> {pushes_file}", flush=True)

    fake_port, bare_port = free_port(), free_port()
    fake = bare = None
    rounds: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        fake = subprocess.Popen([sys.executable, "-m", "csbot.testing.fake_wechat", "--port", str(fake_port),
                                 "--app", f"{APPID}:{SECRET}", "--no-reply-window"],
                                stdout=open(OUT / "fake_wechat.log", "wb"), stderr=subprocess.STDOUT)
        bare = subprocess.Popen([sys.executable, str(HERE / "bare_app.py"), "--port", str(bare_port)],
                                stdout=open(OUT / "bare_app.log", "wb"), stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{bare_port}/healthz", bare)
        time.sleep(0.3)  # FakeWeChat has no health route; it only has to be listening before csbot sends
        if fake.poll() is not None:
            raise RuntimeError("FakeWeChat exited; see bench/out/fake_wechat.log")
        for i in range(1, args.rounds + 1):
            print(f"round {i}/{args.rounds}: bare ...", end="", flush=True)
            b = run_wrk(f"http://127.0.0.1:{bare_port}/wechat", args, pushes_file, f"bare-round{i}")
            print(f" {b['req_per_s']:.0f} req/s; csbot ...", end="", flush=True)
            c = csbot_round(i, args, pushes_file, n_pushes, warmup, fake_port)
            print(f" {c['ok_per_s']:.0f} acked/s, p99 {c['latency_us']['p99'] / 1000:.1f} ms, "
                  f"drained in {c['drain_s'] if c['drain_s'] is not None else 'n/a'} s", flush=True)
            rounds.append({"round": i, "bare": b, "csbot": c})
    finally:
        stop(bare)
        stop(fake)

    summary = summarize(rounds)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "cpu": _cpu_model()},
        "params": {"duration_s": args.duration, "connections": args.connections, "wrk_threads": args.threads,
                   "rounds": args.rounds, "pushes": n_pushes, "openids": N_OPENIDS, "mode": "safe",
                   "format": "xml", "sqlite": "WAL, synchronous=FULL", "handlers": "bench/handlers (no-op)"},
        "command": " ".join(["python", "bench/run.py", *(argv if argv is not None else sys.argv[1:])]),
        "generation_s": gen_s,
        "elapsed_s": time.monotonic() - started,
        "summary": summary,
        "rounds": rounds,
    }
    (OUT / "latest.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))

    print()
    print(table(rounds))
    print()
    s = summary
    print(f"bare app: {s['bare_req_per_s_median']:.0f} req/s (median)   csbot: {s['csbot_acked_per_s_median']:.0f} "
          f"acked pushes/s (median)   ratio {s['ratio_median']:.3f} (target >= 0.25)")
    print(f"csbot latency: p50 {s['csbot_p50_ms_median']:.2f} ms, p99 {s['csbot_p99_ms_median']:.2f} ms median / "
          f"{s['csbot_p99_ms_max']:.2f} ms worst (target < 25 ms)   errors {s['csbot_errors_total']}   "
          f"durable {'yes' if s['all_durable'] else 'NO'}   wrap-arounds {s['wraps']}")
    print(f"target {'MET' if s['target']['met'] else 'NOT met'}: "
          + ", ".join(f"{k}={'ok' if v else 'FAIL'}" for k, v in s["target"].items() if k != "met"))
    print(f"written to {OUT / 'latest.json'}")
    return 0


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    sys.exit(main())
