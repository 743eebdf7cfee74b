#!/usr/bin/env python
"""Where the ack path's CPU goes, piece by piece (diagnosis for bench/RESULTS.md).

    python bench/microbench.py [--n 3000]

Measures CPU time per push (``time.process_time``: all threads, so aiosqlite's thread counts)
of: decode_push (signature + AES + XML parse), Inbox.row_for (JSON dump), and committing
pushes to a fresh SQLite file (WAL, synchronous=FULL, csbot's schema) through csbot's
BatchWriter + IntakeOp at several group sizes, next to two leaner ways to write the same rows
(Core executemany with RETURNING, and the driver directly), which shows what the SQLAlchemy
ORM insert path costs per commit.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run as bench  # noqa: E402  (the same pushes and credentials as the benchmark)


def cpu_us_per(fn, n: int) -> float:
    t = time.process_time()
    fn()
    return (time.process_time() - t) / n * 1e6


async def _store(n: int, group: int, variant: str) -> float:
    from sqlalchemy import insert as core_insert

    from csbot.config import load_settings
    from csbot.inbox import Inbox, IntakeOp
    from csbot.routing import Router
    from csbot.store import Message, make_engine, make_sessionmaker
    from csbot.store.batch import BatchWriter
    from csbot.store.migrate import ensure_schema
    from csbot.wire import decode_push

    d = tempfile.mkdtemp()
    url = f"sqlite+aiosqlite:///{d}/m.db"
    engine = make_engine(url)
    await ensure_schema(engine, url, auto_upgrade=True)
    sm = make_sessionmaker(engine)
    writer = BatchWriter(sm)
    writer.start()
    settings = load_settings(env={"CSBOT_APPID": bench.APPID, "CSBOT_TOKEN": bench.TOKEN,
                                  "CSBOT_ENCODING_AES_KEY": bench.AES_KEY, "CSBOT_DATABASE_URL": url})
    inbox = Inbox(settings, sm, writer, Router([]))
    app = settings.apps["default"]
    from urllib.parse import parse_qsl, urlsplit
    pushes = bench.make_pushes(n + 200, 5_000_000_000_000_000_000 + group * 10_000_000 + len(variant) * 100_000)
    rows = [inbox.row_for("default", decode_push(app, dict(parse_qsl(urlsplit(u).query)), b, now=0,
                                                    max_clock_skew=0)) for u, b in pushes]
    table = Message.__table__
    stmt = core_insert(table).returning(table.c.id)  # executemany + RETURNING (insertmanyvalues)
    cols = list(rows[0])
    raw_sql = (f"INSERT INTO messages ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))}) "
               "ON CONFLICT (app, dedup_key) DO NOTHING")

    async def commit_group(chunk):
        if variant == "csbot":
            await asyncio.gather(*(writer.run(IntakeOp(r)) for r in chunk))
        elif variant == "core-executemany":
            async with sm() as s, s.begin():
                await s.execute(stmt, chunk)
        else:  # driver: one executemany on the raw aiosqlite connection inside one transaction
            async with engine.begin() as conn:
                await conn.exec_driver_sql(raw_sql, [tuple(r[c] for c in cols) for r in chunk])

    # warm-up (statement caches)
    for i in range(0, 200, group):
        await commit_group(rows[i:min(i + group, 200)])
    body = rows[200:]
    t = time.process_time()
    for i in range(0, n, group):
        await commit_group(body[i:i + group])
    cpu = (time.process_time() - t) / n * 1e6
    await writer.close()
    await engine.dispose()
    return cpu


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=3000)
    args = p.parse_args()
    from urllib.parse import parse_qsl, urlsplit

    from csbot.config import load_settings
    from csbot.inbox import Inbox
    from csbot.wire import decode_push

    n = args.n
    pushes = bench.make_pushes(n, bench.MSGID_BASE)
    settings = load_settings(env={"CSBOT_APPID": bench.APPID, "CSBOT_TOKEN": bench.TOKEN,
                                  "CSBOT_ENCODING_AES_KEY": bench.AES_KEY})
    app = settings.apps["default"]
    queries = [dict(parse_qsl(urlsplit(u).query)) for u, _ in pushes]
    decoded = []
    dec = cpu_us_per(lambda: decoded.extend(decode_push(app, q, b, now=0, max_clock_skew=0)
                                            for q, (_, b) in zip(queries, pushes)), n)
    inbox = Inbox.__new__(Inbox)
    rowf = cpu_us_per(lambda: [Inbox.row_for(inbox, "default", push) for push in decoded], n)
    print(f"decode_push (signature + msg_signature + AES + 2 XML parses): {dec:6.1f} µs CPU/push")
    print(f"Inbox.row_for (json.dumps of the event):                       {rowf:6.1f} µs CPU/push")
    for variant in ("csbot", "core-executemany", "driver"):
        for group in (1, 16, 32):
            cpu = asyncio.run(_store(n, group, variant))
            print(f"commit {variant:<17} group of {group:>2}: {cpu:7.1f} µs CPU/push  "
                  f"({cpu * group / 1000:.2f} ms CPU per commit)")


if __name__ == "__main__":
    main()
