#!/usr/bin/env python
"""csbot webhook benchmark: acknowledged and answered pushes/s next to a bare aiohttp app, interleaved.

    python bench/run.py [--duration 10] [--connections 32] [--rounds 3] [--variants noop,reply]
    python bench/run.py --smoke          # 2 s, 1 round: a quick check that everything works
    python bench/run.py --postgres postgresql+asyncpg://postgres@127.0.0.1/test --variants pg1,pg2

What it does (see bench/README.md):

1. generates a realistic corpus (``bench/corpus.py``: 1,000 openids, Chinese + ASCII text with
   emoji and newlines, lengths 8 / 21 / 118 / 615 at p10 / p50 / p90 / max) of distinct signed
   and encrypted (safe mode, XML) pushes with ``csbot.testing.pushes.PushBuilder`` into
   ``bench/out/pushes.dat``: distinct MsgIds, no wrap-around;
2. starts FakeWeChat and the bare app (``bench/bare_app.py``) as processes of their own;
3. for each round: wrk against the bare app, then for each variant a fresh ``csbot serve``
   (new SQLite file, WAL + synchronous=FULL as csbot configures it, workers on) is warmed up,
   driven by wrk with the same pushes, checked for durability (every acknowledged push is a
   row of ``messages``), and timed until its workers have handled the backlog and, for the
   replying variant, the outbox has sent every reply to the FakeWeChat;
   variants: ``noop`` (``bench/handlers``: every push handled, nothing sent), ``reply``
   (``bench/handlers_reply``: "ok" to every push through the outbox), ``pg1`` / ``pg2``
   (the replying handler on PostgreSQL with one / two ``csbot serve`` processes, wrk split
   across the two ports);
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
sys.path.insert(0, str(HERE))
import corpus  # noqa: E402  (bench/corpus.py)

ROOT = HERE.parent
OUT = HERE / "out"

# fixed test credentials (never used anywhere real)
TOKEN = "csbotbenchtoken"
APPID = "wxbench0000000001"
SECRET = "benchsecret"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
MSGID_BASE = 7_000_000_000_000_000_000  # bench pushes; warm-up pushes use MSGID_WARMUP
MSGID_WARMUP = 6_000_000_000_000_000_000
#: the push file holds at least duration x this many pushes, so a csbot round never wraps
#: (csbot without storage peaks near 7,600/s on this machine kind)
SIZE_RATE = 9000
VARIANTS = ("noop", "reply", "pg1", "pg2")
HANDLERS = {"noop": HERE / "handlers", "reply": HERE / "handlers_reply", "pg1": HERE / "handlers_reply",
            "pg2": HERE / "handlers_reply"}
WARMUP_PUSHES = 400
CLK_TCK = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------- pushes


def _builder():
    from csbot.testing.pushes import PushBuilder

    return PushBuilder(token=TOKEN, appid=APPID, encoding_aes_key=AES_KEY, mode="safe", fmt="xml")


def make_pushes(n: int, msgid_base: int, seed: int = 12) -> list[tuple[str, bytes]]:
    """``n`` distinct safe-mode XML text pushes of the realistic corpus as (path?query, body)."""
    b = _builder()
    ts = int(time.time())
    out = []
    for i, text in enumerate(corpus.texts(n, seed)):
        fields = b.text(corpus.openid(i), text, msg_id=msgid_base + i, create_time=ts)
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


def thread_cpu(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid`` (the event loop is the thread whose id is the pid)."""
    out: dict[int, float] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


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


class StoreProbe:
    """Row counts of a round's store, read from outside csbot (SQLite file or PostgreSQL)."""

    INBOUND = ("SELECT status, count(*) FROM messages WHERE direction='in' AND wechat_msg_id >= '{base}' "
               "GROUP BY status")  # wechat_msg_id is text; bench ids have the same number of digits
    PENDING = "SELECT count(*) FROM messages WHERE direction='in' AND status IN ('pending','inline')"
    OUTBOUND = "SELECT status, count(*) FROM messages WHERE direction='out' GROUP BY status"

    def __init__(self, sqlite_path: Path | None = None, pg_dsn: str | None = None) -> None:
        self.sqlite_path, self.pg_dsn = sqlite_path, pg_dsn

    def _rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self.sqlite_path is not None:
            con = sqlite3.connect(f"file:{self.sqlite_path}?mode=ro", uri=True, timeout=30)
            try:
                return con.execute(sql).fetchall()
            finally:
                con.close()

        async def q() -> list[tuple[Any, ...]]:
            import asyncpg

            con = await asyncpg.connect(self.pg_dsn)
            try:
                return [tuple(r) for r in await con.fetch(sql)]
            finally:
                await con.close()
        return asyncio.run(q())

    def inbound(self) -> dict[str, int]:
        counts = {s: c for s, c in self._rows(self.INBOUND.format(base=MSGID_BASE))}
        counts["total"] = sum(counts.values())
        return counts

    def outbound(self) -> dict[str, int]:
        counts = {s: c for s, c in self._rows(self.OUTBOUND)}
        counts["unfinished"] = sum(counts.get(k, 0) for k in ("queued", "sending", "in_doubt"))
        return counts

    def busy(self, replies: bool) -> bool:
        if self._rows(self.PENDING)[0][0]:
            return True
        return replies and self.outbound()["unfinished"] > 0


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


def wait_drained(store: StoreProbe, timeout: float, replies: bool) -> float | None:
    """Seconds until nothing is pending (and, with ``replies``, no reply unsent); None on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not store.busy(replies):
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def fake_sent(fake_port: int) -> int:
    """Replies the FakeWeChat accepted so far (its record of successful sends)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{fake_port}/_fake/sent", timeout=60) as r:
        return len(json.loads(r.read()))


def _pg_fresh_database(dsn: str, name: str) -> str:
    """Create database ``name`` next to ``dsn``'s and return its SQLAlchemy URL."""
    async def go() -> None:
        import asyncpg

        con = await asyncpg.connect(dsn.replace("postgresql+asyncpg://", "postgresql://"))
        try:
            await con.execute(f'DROP DATABASE IF EXISTS "{name}"')
            await con.execute(f'CREATE DATABASE "{name}"')
        finally:
            await con.close()
    asyncio.run(go())
    base, _, _ = dsn.rpartition("/")
    return f"{base}/{name}"


def csbot_round(i: int, variant: str, args: argparse.Namespace, pushes_file: Path, n_pushes: int,
                warmup: list[tuple[str, bytes]], fake_port: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix=f"csbot-bench-{i}-{variant}-"))
    replies = variant != "noop"
    nproc = 2 if variant == "pg2" else 1
    if variant.startswith("pg"):
        url = _pg_fresh_database(args.postgres, f"csbot_bench_{os.getpid()}_{i}_{variant}")
        store = StoreProbe(pg_dsn=url.replace("postgresql+asyncpg://", "postgresql://"))
    else:
        db = work / "csbot.db"
        url = f"sqlite+aiosqlite:///{db}"
        store = StoreProbe(sqlite_path=db)
    ports = [free_port() for _ in range(nproc)]
    base_env = dict(os.environ)
    base_env.update(
        CSBOT_APPID=APPID, CSBOT_TOKEN=TOKEN, CSBOT_ENCODING_AES_KEY=AES_KEY, CSBOT_APP_SECRET=SECRET,
        CSBOT_REQUIRE_ENCRYPTION="true",
        CSBOT_DATABASE_URL=url,
        CSBOT_HANDLERS=str(HANDLERS[variant]),
        CSBOT_WECHAT_API_BASE=f"http://127.0.0.1:{fake_port}",
        CSBOT_MAX_CLOCK_SKEW="0",  # pre-generated timestamps must pass
        CSBOT_HOST="127.0.0.1",
        CSBOT_DATA_DIR=str(work / "data"),
    )
    csbot = args.csbot or shutil.which("csbot")
    base_cmd = [csbot] if csbot else [sys.executable, "-m", "csbot"]
    if variant.startswith("pg"):
        subprocess.run(base_cmd + ["migrate"], env=base_env, cwd=work, check=True, capture_output=True)
    probe_out = OUT / f"probe-round{i}-{variant}.json"
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        for k, port in enumerate(ports):
            env = dict(base_env, CSBOT_PORT=str(port))
            cmd = list(base_cmd)
            if args.probe and k == 0:  # the same serve, with group-commit statistics (bench/probe_serve.py)
                cmd = [sys.executable, str(HERE / "probe_serve.py")]
                env["BENCH_PROBE_OUT"] = str(probe_out)
            cmd += ["serve", "--log-level", args.csbot_log_level]
            log_path = OUT / f"csbot-round{i}-{variant}-{k}.log"
            logs.append(open(log_path, "wb"))
            procs.append(subprocess.Popen(cmd, env=env, stdout=logs[-1], stderr=subprocess.STDOUT, cwd=work))
        for port, proc in zip(ports, procs):
            wait_http(f"http://127.0.0.1:{port}/healthz", proc)
        # warm-up: imports, statement caches, first lanes, the HTTP pool to WeChat; then let it finish
        statuses = asyncio.run(_post_all(f"http://127.0.0.1:{ports[0]}", warmup, args.connections))
        if any(s != 200 for s in statuses):
            raise RuntimeError(f"warm-up pushes refused: {sorted(set(statuses))}; see {OUT}")
        wait_drained(store, 30, replies)
        sent0 = fake_sent(fake_port)
        pyspies = []
        if args.profile:
            for k, proc in enumerate(procs):
                pyspies.append(subprocess.Popen(
                    ["py-spy", "record", "-p", str(proc.pid), "-d", str(args.duration + 1), "-r", "200", "-f", "raw",
                     "-o", str(OUT / f"profile-round{i}-{variant}-{k}.txt")],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        cpu0 = sum(proc_cpu(p.pid) for p in procs)
        threads0 = [thread_cpu(p.pid) for p in procs]
        if nproc == 1:
            w = run_wrk(f"http://127.0.0.1:{ports[0]}/wechat", args, pushes_file, f"csbot-round{i}-{variant}")
        else:  # wrk split across the processes' ports, each with its half of the corpus and connections
            w = run_wrk_split([f"http://127.0.0.1:{p}/wechat" for p in ports], args, pushes_file,
                              f"csbot-round{i}-{variant}")
        t_end = time.monotonic()
        cpu1 = sum(proc_cpu(p.pid) for p in procs)
        threads1 = [thread_cpu(p.pid) for p in procs]
        # the event loop's CPU and the other threads' (SQLite's, the thread pool's) during the load
        cpu_loop = sum(t1.get(p.pid, 0) - t0.get(p.pid, 0) for p, t0, t1 in zip(procs, threads0, threads1))
        at_end = store.inbound()  # right after wrk: acknowledged pushes must already be committed
        sent_at_end = fake_sent(fake_port) - sent0 if replies else 0
        drain = wait_drained(store, args.drain_timeout, replies)
        # from the end of wrk until nothing is pending or unsent (the counts above take a few ms)
        drain_s = None if drain is None else time.monotonic() - t_end
        cpu2 = sum(proc_cpu(p.pid) for p in procs)
        final = store.inbound()
        out_final = store.outbound()
        sent_final = fake_sent(fake_port) - sent0 if replies else 0
        for spy in pyspies:
            spy.wait(timeout=60)
        if any(p.poll() is not None for p in procs):
            raise RuntimeError(f"csbot exited during the round; see {OUT}")
    finally:
        for proc in procs:
            stop(proc)
        for log in logs:
            log.close()
    if args.probe and probe_out.exists():
        w["probe"] = json.loads(probe_out.read_text())
    distinct_sent = min(w["sent"], n_pushes)
    w.update(
        variant=variant,
        processes=nproc,
        committed_at_end=at_end["total"],
        done_at_end=at_end.get("done", 0),
        pending_at_end=at_end.get("pending", 0),
        committed_final=final["total"],
        handled_final=final.get("done", 0),
        failed_final=final.get("failed", 0),
        # durable: every 200 has its row (without wrap-around each 200 is a distinct push)
        durable=(at_end["total"] >= w["ok"]) if w["wraps"] == 0 else (at_end["total"] >= min(w["ok"], distinct_sent)),
        committed_unacked=at_end["total"] - w["ok"],
        replies_at_end=sent_at_end,
        replies_final=sent_final,
        replies_per_s=sent_at_end / w["seconds"] if w["seconds"] else 0,
        backlog_at_end=(at_end["total"] - sent_at_end) if replies else at_end.get("pending", 0),
        outbound_final=out_final,
        drain_s=drain_s,
        csbot_cpu_run_s=cpu1 - cpu0,
        csbot_cpu_drain_s=cpu2 - cpu1,
        csbot_cpu_loop_run_s=cpu_loop,
        csbot_cpu_other_threads_run_s=(cpu1 - cpu0) - cpu_loop,
        csbot_cpu_us_per_ack=(cpu1 - cpu0) / w["ok"] * 1e6 if w["ok"] else None,
        csbot_cpu_us_per_push_total=(cpu2 - cpu0) / max(final["total"], 1) * 1e6,
        log=str(OUT),
    )
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return w


def run_wrk_split(urls: list[str], args: argparse.Namespace, pushes_file: Path, label: str) -> dict[str, Any]:
    """One wrk per URL at once, each with its own half of the pushes and of the connections."""
    halves = []
    with open(pushes_file, "rb") as f:
        records = []
        while True:
            header = f.readline()
            if not header:
                break
            body = f.read(int(header.split(b"\t")[1]) + 1)
            records.append(header + body)
    for k in range(len(urls)):
        path = OUT / f"pushes-part{k}.dat"
        path.write_bytes(b"".join(records[k::len(urls)]))
        halves.append(path)
    sub = argparse.Namespace(**{**vars(args), "connections": max(1, args.connections // len(urls))})
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(urls)) as ex:
        parts = list(ex.map(lambda k: run_wrk(urls[k], sub, halves[k], f"{label}-{k}"), range(len(urls))))
    merged = dict(parts[0])
    for key in ("ok", "requests", "non200", "error_total", "sent", "wraps"):
        merged[key] = sum(p[key] for p in parts)
    merged["seconds"] = max(p["seconds"] for p in parts)
    merged["ok_per_s"] = sum(p["ok_per_s"] for p in parts)
    merged["req_per_s"] = sum(p["req_per_s"] for p in parts)
    # percentiles cannot be merged exactly: the worse of the two is reported
    merged["latency_us"] = {k: max(p["latency_us"][k] for p in parts) for k in parts[0]["latency_us"]}
    merged["parts"] = parts
    return merged


# --------------------------------------------------------------------------- report


def _ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def table(rounds: list[dict[str, Any]]) -> str:
    head = (f"{'round':>5} {'target':<10} {'acked/s':>9} {'replies/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'errors':>6} "
            f"{'durable':>7} {'backlog@end':>11} {'drain s':>7} {'cpu µs/push':>11}")
    lines = [head, "-" * len(head)]
    for r in rounds:
        for name, w in r["runs"].items():
            lat = w["latency_us"]
            durable = backlog = drain = cpu = replies = "-"
            if name != "bare":
                durable = "yes" if w["durable"] else "NO"
                backlog = str(w["backlog_at_end"])
                drain = "n/a" if w["drain_s"] is None else f"{w['drain_s']:.2f}"
                cpu = f"{w['csbot_cpu_us_per_push_total']:.0f}"
                replies = f"{w['replies_per_s']:.0f}" if w["variant"] != "noop" else "-"
            lines.append(
                f"{r['round']:>5} {name:<10} {w['ok_per_s']:>9.0f} {replies:>9} {_ms(lat['p50']):>7} "
                f"{_ms(lat['p99']):>7} {w['error_total']:>6} {durable:>7} {backlog:>11} {drain:>7} {cpu:>11}")
    return "\n".join(lines)


#: issue 12's targets, per variant: (min ratio to the bare app, needs replies)
TARGETS = {"noop": 0.30, "reply": 0.20}


def summarize(rounds: list[dict[str, Any]], variants: list[str]) -> dict[str, Any]:
    bare = [r["runs"]["bare"]["ok_per_s"] for r in rounds]
    out: dict[str, Any] = {"bare_req_per_s_median": statistics.median(bare),
                           "bare_p99_ms_median": statistics.median(r["runs"]["bare"]["latency_us"]["p99"] / 1000
                                                                   for r in rounds)}
    for v in variants:
        runs = [r["runs"][v] for r in rounds]
        ratios = [w["ok_per_s"] / r["runs"]["bare"]["ok_per_s"] for w, r in zip(runs, rounds)]
        drains = [w["drain_s"] for w in runs]
        s = {
            "acked_per_s_median": statistics.median(w["ok_per_s"] for w in runs),
            "ratio_median": statistics.median(ratios),
            "replies_per_s_median": statistics.median(w["replies_per_s"] for w in runs),
            "replies_during_run_over_acks": statistics.median(
                w["replies_at_end"] / w["ok"] if w["ok"] else 0 for w in runs),
            "p50_ms_median": statistics.median(w["latency_us"]["p50"] / 1000 for w in runs),
            "p99_ms_median": statistics.median(w["latency_us"]["p99"] / 1000 for w in runs),
            "p99_ms_max": max(w["latency_us"]["p99"] / 1000 for w in runs),
            "errors_total": sum(w["error_total"] for w in runs),
            "all_durable": all(w["durable"] for w in runs),
            "wraps": sum(w["wraps"] for w in runs),
            "drain_s_max": None if any(d is None for d in drains) else max(drains),
            "cpu_us_per_push_median": statistics.median(w["csbot_cpu_us_per_push_total"] for w in runs),
            "replies_missing": sum(max(0, w["committed_final"] - w["replies_final"]) for w in runs)
            if v != "noop" else 0,
        }
        if v in TARGETS:
            t = {f"ratio_ge_{TARGETS[v]}": s["ratio_median"] >= TARGETS[v], "zero_errors": s["errors_total"] == 0,
                 "durable": s["all_durable"]}
            if v == "reply":
                t["p99_lt_25ms"] = s["p99_ms_max"] < 25
                t["replies_ge_0.9_acks"] = s["replies_during_run_over_acks"] >= 0.9
                t["drained_within_2s"] = s["drain_s_max"] is not None and s["drain_s_max"] <= 2
                t["every_push_answered"] = s["replies_missing"] == 0
            t["met"] = all(t.values())
            s["target"] = t
        out[v] = s
    if "pg1" in out and "pg2" in out:
        out["pg_scaling_2_over_1"] = out["pg2"]["acked_per_s_median"] / out["pg1"]["acked_per_s_median"]
    return out


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10, help="seconds per wrk run (default 10)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="wrk threads (default 1 on a 2-core machine)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of bare + every variant")
    p.add_argument("--variants", default="noop,reply",
                   help=f"comma-separated, of {','.join(VARIANTS)} (pg* need --postgres)")
    p.add_argument("--postgres", default=os.environ.get("CSBOT_TEST_DATABASE_URL"),
                   help="postgresql+asyncpg:// URL of a server where the pg variants create fresh databases")
    p.add_argument("--pushes", type=int, default=20000,
                   help=f"minimum distinct pushes; the file holds at least duration x {SIZE_RATE} so "
                        "csbot rounds do not wrap around")
    p.add_argument("--smoke", action="store_true", help="2 s, 1 round")
    p.add_argument("--drain-timeout", type=float, default=60)
    p.add_argument("--profile", action="store_true", help="py-spy record csbot during each round (raw "
                   "collapsed stacks in bench/out/profile-roundN-VARIANT-K.txt; needs py-spy)")
    p.add_argument("--probe", action="store_true", help="run csbot through bench/probe_serve.py: group-commit "
                   "sizes and timings in bench/out/probe-roundN-VARIANT.json (diagnosis; adds a little overhead)")
    p.add_argument("--csbot", default=None, help="the csbot executable to measure (default: csbot on PATH); e.g. "
                   "another checkout's venv/bin/csbot, to compare two versions with the same corpus and fake")
    p.add_argument("--keep", action="store_true", help="keep each round's SQLite directory")
    p.add_argument("--csbot-log-level", default="WARNING")
    args = p.parse_args(argv)
    if args.smoke:
        args.duration, args.rounds = 2, 1
    args.duration = int(args.duration) if float(args.duration).is_integer() else args.duration
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        print(f"bench: unknown variant(s) {unknown}; choose from {VARIANTS}", file=sys.stderr)
        return 2
    if any(v.startswith("pg") for v in variants) and not args.postgres:
        print("bench: the pg variants need --postgres URL (or CSBOT_TEST_DATABASE_URL)", file=sys.stderr)
        return 2
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
    warmup = make_pushes(WARMUP_PUSHES, MSGID_WARMUP, seed=99)
    gen_s = time.monotonic() - t0
    lengths = corpus.length_percentiles(list(corpus.texts(n_pushes)))
    print(f"generated {n_pushes} distinct safe-mode XML pushes ({corpus.N_OPENIDS} openids, text lengths "
          f"{lengths}) in {gen_s:.1f}s -> {pushes_file}", flush=True)

    fake_port, bare_port = free_port(), free_port()
    fake = bare = None
    rounds: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        # the fake WeChat in a process of its own; no reply window (the bench's pushes never reach it)
        fake = subprocess.Popen([sys.executable, "-m", "csbot.testing.fake_wechat", "--port", str(fake_port),
                                 "--app", f"{APPID}:{SECRET}", "--no-reply-window"],
                                stdout=open(OUT / "fake_wechat.log", "wb"), stderr=subprocess.STDOUT)
        bare = subprocess.Popen([sys.executable, str(HERE / "bare_app.py"), "--port", str(bare_port)],
                                stdout=open(OUT / "bare_app.log", "wb"), stderr=subprocess.STDOUT)
        wait_http(f"http://127.0.0.1:{bare_port}/healthz", bare)
        deadline = time.monotonic() + 15
        while True:
            try:
                fake_sent(fake_port)
                break
            except OSError:
                if fake.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("FakeWeChat did not start; see bench/out/fake_wechat.log")
                time.sleep(0.1)
        for i in range(1, args.rounds + 1):
            runs: dict[str, Any] = {}
            print(f"round {i}/{args.rounds}: bare ...", end="", flush=True)
            runs["bare"] = run_wrk(f"http://127.0.0.1:{bare_port}/wechat", args, pushes_file, f"bare-round{i}")
            print(f" {runs['bare']['req_per_s']:.0f} req/s", end="", flush=True)
            for v in variants:
                print(f"; {v} ...", end="", flush=True)
                c = runs[v] = csbot_round(i, v, args, pushes_file, n_pushes, warmup, fake_port)
                print(f" {c['ok_per_s']:.0f} acked/s ({c['replies_per_s']:.0f} replies/s), "
                      f"p99 {c['latency_us']['p99'] / 1000:.1f} ms, drained in "
                      f"{'n/a' if c['drain_s'] is None else format(c['drain_s'], '.2f')} s", end="", flush=True)
            print(flush=True)
            rounds.append({"round": i, "runs": runs})
    finally:
        stop(bare)
        stop(fake)

    summary = summarize(rounds, variants)
    result = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"nproc": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform(), "cpu": _cpu_model()},
        "params": {"duration_s": args.duration, "connections": args.connections, "wrk_threads": args.threads,
                   "rounds": args.rounds, "pushes": n_pushes, "openids": corpus.N_OPENIDS, "text_lengths": lengths,
                   "mode": "safe", "format": "xml", "sqlite": "WAL, synchronous=FULL", "variants": variants},
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
    print(f"bare app: {summary['bare_req_per_s_median']:.0f} req/s (median)")
    for v in variants:
        s = summary[v]
        line = (f"{v}: {s['acked_per_s_median']:.0f} acked/s = {s['ratio_median']:.3f}x bare, "
                f"{s['replies_per_s_median']:.0f} replies/s, p50 {s['p50_ms_median']:.2f} ms, p99 "
                f"{s['p99_ms_median']:.2f} ms (worst {s['p99_ms_max']:.2f}), errors {s['errors_total']}, "
                f"durable {'yes' if s['all_durable'] else 'NO'}, drain {s['drain_s_max']} s, "
                f"{s['cpu_us_per_push_median']:.0f} µs CPU/push")
        if "target" in s:
            line += ("\n   target " + ("MET" if s["target"]["met"] else "NOT met") + ": "
                     + ", ".join(f"{k}={'ok' if ok else 'FAIL'}" for k, ok in s["target"].items() if k != "met"))
        print(line)
    if "pg_scaling_2_over_1" in summary:
        print(f"PostgreSQL: two processes ack {summary['pg_scaling_2_over_1']:.2f}x what one does")
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
