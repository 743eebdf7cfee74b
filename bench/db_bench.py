"""Cloud database benchmark: indexed ``where().get()`` through ``/cloud/db`` (rules on) next to
the same query as hand-written SQL through the same driver, on SQLite and PostgreSQL; plus the
cost of an unindexed query at two collection sizes.

    python bench/db_bench.py                      # SQLite, and PostgreSQL when
    CSBOT_TEST_DATABASE_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/test python bench/db_bench.py

Method: a fresh database per backend; 100,000 documents ``{status: "s<i mod 1000>", createdAt:
i, total: i mod 97, note}`` in collection ``orders`` with the declared index
``[["status", "createdAt"]]`` and the rule ``read = "doc.status != 'hidden'"`` (a query must pin
``status``); 10,000 documents of the same shape in ``orders_small``. csbot runs in this process
(aiohttp on 127.0.0.1); ``CONCURRENCY`` clients each send ``POST /cloud/db/orders/get
{"where": {"status": "s<random>"}, "limit": 20}`` with a session token for ``SECONDS``. The
hand-written variant runs ``SELECT body … WHERE collection='orders' AND app='default' AND
<status expression> = ? LIMIT 20`` through the same SQLAlchemy engine and decodes the JSON
bodies, with the same concurrency and duration. Both return the same 20 documents.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402
from sqlalchemy import text  # noqa: E402

from csbot.app import create_app  # noqa: E402
from csbot.cloud.database.query import parse_query  # noqa: E402
from csbot.cloud.database.rules import rules_from_config  # noqa: E402
from csbot.services import SERVICES  # noqa: E402
from csbot.store.migrate import upgrade_async  # noqa: E402
from csbot.testing.harness import test_settings  # noqa: E402

DOCS = int(os.environ.get("BENCH_DOCS", "100000"))
SMALL = DOCS // 10
CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "8"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "8"))
STATUSES = 1000


def _docs(n: int) -> list[dict]:
    return [{"status": f"s{i % STATUSES}", "createdAt": i, "total": i % 97, "note": f"order {i} 备注"}
            for i in range(n)]


async def _load(store, collection: str, n: int) -> float:
    start = time.perf_counter()
    docs = _docs(n)
    for i in range(0, n, 2000):
        await store.insert("default", collection, [store.prepare_new(d) for d in docs[i:i + 2000]])
    return time.perf_counter() - start


async def _drive(fn) -> dict:
    latencies: list[float] = []
    deadline = time.perf_counter() + SECONDS

    async def worker() -> None:
        while time.perf_counter() < deadline:
            status = f"s{random.randrange(STATUSES)}"
            t0 = time.perf_counter()
            n = await fn(status)
            latencies.append(time.perf_counter() - t0)
            assert n == 20, n

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    elapsed = time.perf_counter() - start
    latencies.sort()
    return {"requests": len(latencies), "per_second": len(latencies) / elapsed,
            "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000}


async def bench_backend(name: str, url: str, tmp: Path) -> dict:
    settings = test_settings(tmp / "csbot.db", "http://127.0.0.1:9", handlers_dir=None, data_dir=tmp / "data",
                             collection_rules={"orders": rules_from_config({"read": "doc.status != 'hidden'"},
                                                                           where="orders")},
                             collection_indexes={"orders": [["status", "createdAt"]]})
    settings = replace(settings, database_url=url)
    if name == "postgresql":
        await upgrade_async(url)
    app = create_app(settings, run_workers=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    services = app[SERVICES]
    store = services.database
    out: dict = {"backend": name}
    try:
        out["load_seconds"] = await _load(store, "orders", DOCS)
        await _load(store, "orders_small", SMALL)
        async with store.engine.begin() as conn:
            await conn.execute(text("ANALYZE"))
        token = await services.sessions.create("default", "oBench", "c2Vzc2lvbmtleTEyMzQ1Ng==")
        headers = {"Authorization": f"Bearer {token}"}
        base = f"http://127.0.0.1:{port}/cloud/db/orders/get"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=CONCURRENCY)) as http:
            async def via_http(status: str) -> int:
                async with http.post(base, json={"where": {"status": status}, "limit": 20}, headers=headers) as resp:
                    body = await resp.json()
                    assert resp.status == 200, body
                    return len(body["data"])

            out["cloud_db"] = await _drive(via_http)

        status_expr = ("json_extract(body,'$.\"status\"') = :s" if name == "sqlite"
                       else "(body #> '{status}') = CAST(:s AS jsonb)")
        sql = text(f"SELECT body{'::text' if name == 'postgresql' else ''} FROM cloud_documents "
                   f"WHERE collection = 'orders' AND app = 'default' AND {status_expr} LIMIT 20")

        async def hand_sql(status: str) -> int:
            value = status if name == "sqlite" else json.dumps(status)
            async with store.engine.connect() as conn:
                rows = (await conn.execute(sql, {"s": value})).all()
            return len([json.loads(r[0]) for r in rows])

        out["hand_sql"] = await _drive(hand_sql)
        out["ratio"] = out["cloud_db"]["per_second"] / out["hand_sql"]["per_second"]

        unindexed = {}
        for collection, size in (("orders_small", SMALL), ("orders", DOCS)):
            times = []
            for i in range(5):
                t0 = time.perf_counter()
                # count() of a condition on an unindexed field reads every document of the collection
                await store.count("default", collection, parse_query({"total": i, "note": {"$regex": "^order 1"}}))
                times.append(time.perf_counter() - t0)
            unindexed[size] = statistics.median(times) * 1000
        out["unindexed_ms"] = unindexed
    finally:
        await runner.cleanup()
    return out


async def main() -> None:
    results = []
    with tempfile.TemporaryDirectory(prefix="csbot-dbbench-") as tmp:
        results.append(await bench_backend("sqlite", f"sqlite+aiosqlite:///{tmp}/bench.db", Path(tmp)))
    base = os.environ.get("CSBOT_TEST_DATABASE_URL")
    if base and os.environ.get("BENCH_BACKENDS", "sqlite,postgresql") != "sqlite":
        import asyncpg

        name = f"csbot_dbbench_{uuid.uuid4().hex[:8]}"
        admin = base.replace("postgresql+asyncpg://", "postgresql://")
        conn = await asyncpg.connect(admin)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        try:
            with tempfile.TemporaryDirectory(prefix="csbot-dbbench-") as tmp:
                results.append(await bench_backend("postgresql", f"{base.rpartition('/')[0]}/{name}", Path(tmp)))
        finally:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()
    print(json.dumps(results, indent=2))
    for r in results:
        c, h = r["cloud_db"], r["hand_sql"]
        print(f"{r['backend']:10} /cloud/db {c['per_second']:7.0f}/s p50 {c['p50_ms']:.1f} ms p99 {c['p99_ms']:.1f} ms | "
              f"hand SQL {h['per_second']:7.0f}/s p50 {h['p50_ms']:.1f} ms p99 {h['p99_ms']:.1f} ms | "
              f"ratio {r['ratio']:.2f} | unindexed {r['unindexed_ms']}")


if __name__ == "__main__":
    asyncio.run(main())
