"""Cloud database benchmark: indexed ``where().get()`` through ``/cloud/db`` (rules on) next to
the same query as a hand-written aiohttp handler with hand-written SQL through the same driver,
interleaved, on SQLite and PostgreSQL; plus the cost of an unindexed query at two sizes.

    python bench/db_bench.py                                   # SQLite, and PostgreSQL when
    CSBOT_TEST_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test python bench/db_bench.py
    python bench/db_bench.py --rounds 5 --duration 4 --connections 8 --backends sqlite

Method. A fresh database per backend; 100,000 documents ``{status: "s<i mod 1000>", createdAt:
i, total: i mod 97, note}`` in collection ``orders`` with the declared index
``[["status", "createdAt"]]`` and the rule ``read = "doc.status != 'hidden'"`` (every query is
rule-checked and must pin ``status``); 10,000 documents of the same shape in ``orders_small``.

Two HTTP servers run in this process on one event loop (only one is under load at a time):

- ``csbot``: ``csbot.app.create_app`` (workers off), the real ``POST /cloud/db/orders/get`` with
  a session token: session lookup, body parse, rule check, query parse and compilation,
  the query, the JSON answer, the Prometheus counter.
- ``hand``: a plain aiohttp app whose handler does what an operator would write by hand for
  this one query: parse the JSON body, take ``where.status`` and ``limit``, run
  ``SELECT body FROM cloud_documents WHERE collection = 'orders' AND app = 'default' AND
  <status> = ? LIMIT ?`` through the same SQLAlchemy engine (same driver, same pool), and
  answer ``{"data": [...]}``. Two variants: ``hand`` runs it through SQLAlchemy
  (``text()``), decodes each stored body and re-encodes the answer with ``json.dumps``;
  ``hand_raw`` runs it through the driver itself (aiosqlite / asyncpg, on a connection of the
  same pool) and splices the stored JSON text into the answer without decoding: the cheapest
  correct handler, and the same execution path csbot's reads take. The status expression is
  the one the declared index is built on, so every side uses the index; the hand-written SQL
  has no ORDER BY (csbot's has ``ORDER BY seq``, insertion order): on this data both return
  the same 20 documents (checked before the rounds).

The load comes from ``wrk`` (a separate process, ``-t1 -c<connections>``,
``bench/wrk_db.lua``: a random status per request, so every request returns 20 documents).
Each round runs every side for ``--duration`` seconds after a 1 s warm-up, rotating which side
goes first; the ratio of a round is csbot/hand throughput in that round, and the headline is
the median over rounds (the machine may be shared: only interleaved ratios mean much).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from aiohttp import web  # noqa: E402
from sqlalchemy import text  # noqa: E402

from csbot.app import create_app  # noqa: E402
from csbot.cloud.database.query import parse_query  # noqa: E402
from csbot.cloud.database.rules import rules_from_config  # noqa: E402
from csbot.services import SERVICES  # noqa: E402
from csbot.store.migrate import upgrade_async  # noqa: E402
from csbot.testing.harness import test_settings  # noqa: E402

HERE = Path(__file__).resolve().parent
STATUSES = 1000


def _docs(n: int) -> list[dict]:
    return [{"status": f"s{i % STATUSES}", "createdAt": i, "total": i % 97, "note": f"order {i} 备注"}
            for i in range(n)]


async def _load(store: Any, collection: str, n: int) -> float:
    start = time.perf_counter()
    docs = _docs(n)
    for i in range(0, n, 2000):
        await store.insert("default", collection, [store.prepare_new(d) for d in docs[i:i + 2000]])
    return time.perf_counter() - start


def hand_app(store: Any, backend: str, *, raw: bool) -> web.Application:
    """The hand-written handler: this one query, no session, no rules, no query language."""
    status_expr = ("json_extract(body,'$.\"status\"') = :s" if backend == "sqlite"
                   else "(body #> '{status}') = CAST(:s AS jsonb)")
    sql = text(f"SELECT body{'::text' if backend == 'postgresql' else ''} FROM cloud_documents "
               f"WHERE collection = 'orders' AND app = 'default' AND {status_expr} LIMIT :n")
    engine = store.engine

    driver_sql = sql.text.replace(":s", "$1" if backend == "postgresql" else "?").replace(
        ":n", "$2" if backend == "postgresql" else "?")

    async def get(request: web.Request) -> web.Response:
        body = await request.json()
        status = body["where"]["status"]
        value = status if backend == "sqlite" else json.dumps(status)
        limit = int(body.get("limit", 20))
        if raw:  # the driver itself on a connection of the same pool, the stored text spliced
            async with engine.connect() as conn:
                driver = (await conn.get_raw_connection()).driver_connection
                if backend == "postgresql":
                    rows = await driver.fetch(driver_sql, value, limit)
                else:
                    async with driver.execute(driver_sql, (value, limit)) as cursor:
                        rows = await cursor.fetchall()
            return web.Response(body=('{"data":[' + ",".join(r[0] for r in rows) + "]}").encode(),
                                content_type="application/json")
        async with engine.connect() as conn:
            rows = (await conn.execute(sql, {"s": value, "n": limit})).all()
        return web.Response(text=json.dumps({"data": [json.loads(r[0]) for r in rows]}, ensure_ascii=False),
                            content_type="application/json")

    app = web.Application()
    app.router.add_post("/cloud/db/orders/get", get)
    return app


async def _serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]


async def wrk(port: int, token: str, seconds: float, connections: int) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--timeout", "10s", "-s", str(HERE / "wrk_db.lua"),
        f"http://127.0.0.1:{port}/cloud/db/orders/get", "--", token, str(STATUSES),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    match = re.search(r"WRKJSON (\{.*\})", out.decode())
    if not match:
        raise RuntimeError(f"wrk failed: {out.decode()[-2000:]}")
    return json.loads(match.group(1))


async def check_same_answer(ports: dict[str, int], token: str) -> None:
    """Every side answers the same 20 documents (the comparison is of equal work)."""
    import aiohttp

    async with aiohttp.ClientSession() as http:
        answers = {}
        for side, port in ports.items():
            async with http.post(f"http://127.0.0.1:{port}/cloud/db/orders/get",
                                 json={"where": {"status": "s7"}, "limit": 20},
                                 headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200, (side, await resp.text())
                data = (await resp.json())["data"]
                answers[side] = sorted(json.dumps(d, sort_keys=True) for d in data)
        first = next(iter(answers.values()))
        assert len(first) == 20 and all(a == first for a in answers.values()), answers


async def bench_backend(name: str, url: str, tmp: Path, args: argparse.Namespace) -> dict[str, Any]:
    settings = test_settings(tmp / "csbot.db", "http://127.0.0.1:9", handlers_dir=None, data_dir=tmp / "data",
                             collection_rules={"orders": rules_from_config({"read": "doc.status != 'hidden'"},
                                                                           where="orders")},
                             collection_indexes={"orders": [["status", "createdAt"]]})
    settings = replace(settings, database_url=url)
    if name == "postgresql":
        await upgrade_async(url)
    app = create_app(settings, run_workers=False)
    csbot_runner, csbot_port = await _serve(app)
    services = app[SERVICES]
    store = services.database
    runners = [csbot_runner]
    out: dict[str, Any] = {"backend": name, "documents": args.docs, "connections": args.connections,
                           "duration": args.duration, "rounds": []}
    try:
        out["load_seconds"] = round(await _load(store, "orders", args.docs), 1)
        await _load(store, "orders_small", args.docs // 10)
        async with store.engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
        token = await services.sessions.create("default", "oBench", "c2Vzc2lvbmtleTEyMzQ1Ng==")
        ports = {"csbot": csbot_port}
        for side, raw in (("hand", False), ("hand_raw", True)):
            runner, ports[side] = await _serve(hand_app(store, name, raw=raw))
            runners.append(runner)
        await check_same_answer(ports, token)
        sides = [s for s in ports if s in args.sides.split(",")]
        for r in range(args.rounds):
            order = sides[r % len(sides):] + sides[:r % len(sides)]
            row: dict[str, Any] = {"load": os.getloadavg()[0]}
            for side in order:
                await wrk(ports[side], token, 1, args.connections)  # warm-up
                row[side] = await wrk(ports[side], token, args.duration, args.connections)
            if len(sides) == 3:
                row["ratio"] = row["csbot"]["per_second"] / row["hand"]["per_second"]
                row["ratio_raw"] = row["csbot"]["per_second"] / row["hand_raw"]["per_second"]
            out["rounds"].append(row)
            print(f"{name} round {r + 1}: " + " | ".join(
                f"{s} {row[s]['per_second']:.0f}/s p50 {row[s]['p50_ms']:.1f} p99 {row[s]['p99_ms']:.1f}"
                for s in sides) + f" | ratio {row.get('ratio', 0):.2f} raw {row.get('ratio_raw', 0):.2f} load {row['load']:.1f}",
                flush=True)
        if len(sides) == 3:
            out["median_ratio"] = statistics.median(r["ratio"] for r in out["rounds"])
            out["median_ratio_raw"] = statistics.median(r["ratio_raw"] for r in out["rounds"])

        unindexed = {}
        for collection, size in (("orders_small", args.docs // 10), ("orders", args.docs)):
            times = []
            for i in range(5):
                t0 = time.perf_counter()
                # count() of a condition on unindexed fields reads every document of the collection
                await store.count("default", collection, parse_query({"total": i, "note": {"$regex": "^order 1"}}))
                times.append(time.perf_counter() - t0)
            unindexed[size] = round(statistics.median(times) * 1000, 1)
        out["unindexed_count_ms"] = unindexed
    finally:
        for runner in runners:
            await runner.cleanup()
    return out


async def main(args: argparse.Namespace) -> None:
    results = []
    backends = args.backends.split(",")
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory(prefix="csbot-dbbench-") as tmp:
            results.append(await bench_backend("sqlite", f"sqlite+aiosqlite:///{tmp}/bench.db", Path(tmp), args))
    base = os.environ.get("CSBOT_TEST_DATABASE_URL")
    if "postgresql" in backends and not base:
        print("PostgreSQL skipped: CSBOT_TEST_DATABASE_URL is not set", file=sys.stderr)
    elif "postgresql" in backends:
        import asyncpg

        dbname = f"csbot_dbbench_{uuid.uuid4().hex[:8]}"
        admin = base.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(admin)
        await conn.execute(f'CREATE DATABASE "{dbname}"')
        await conn.close()
        try:
            with tempfile.TemporaryDirectory(prefix="csbot-dbbench-") as tmp:
                results.append(await bench_backend("postgresql", f"{base.rpartition('/')[0]}/{dbname}",
                                                   Path(tmp), args))
        finally:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
            await conn.close()
    (HERE / "out").mkdir(exist_ok=True)
    (HERE / "out" / "db-latest.json").write_text(json.dumps(results, indent=2))
    for r in results:
        print(f"{r['backend']:10} median ratio csbot/hand {r.get('median_ratio', 0):.2f}, csbot/hand_raw "
              f"{r.get('median_ratio_raw', 0):.2f} over {len(r['rounds'])} rounds; unindexed count() "
              f"{r['unindexed_count_ms']} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--duration", type=int, default=4)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--backends", default="sqlite,postgresql")
    parser.add_argument("--sides", default="csbot,hand,hand_raw", help="a subset to profile one side")
    asyncio.run(main(parser.parse_args()))
