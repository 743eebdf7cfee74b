"""``csbot serve`` with group-commit instrumentation, for diagnosis only (``run.py --probe``).

Wraps ``BatchWriter._apply`` to record each group commit: how many operations of each kind it
held and how long it took (wall). Also times the webhook's ``inbox.accept`` (wall, from submit
to commit). Writes a summary to ``$BENCH_PROBE_OUT`` when the process exits. Nothing in csbot
is changed; this only wraps methods before ``csbot.cli.main`` runs.
"""

from __future__ import annotations

import atexit
import collections
import json
import os
import sys
import time

from csbot.inbox import Inbox
from csbot.store.batch import BatchWriter

_commits: list[tuple[float, dict[str, int], float]] = []
_accept_wall: list[float] = []

_orig_apply = BatchWriter._apply
_orig_accept = Inbox.accept


async def _apply(self, batch):  # type: ignore[no-untyped-def]
    kinds = collections.Counter(op.batch_kind for op, _ in batch)
    t0 = time.perf_counter()
    try:
        return await _orig_apply(self, batch)
    finally:
        _commits.append((time.time(), dict(kinds), time.perf_counter() - t0))


async def _accept(self, app, push, *, status="pending"):  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    try:
        return await _orig_accept(self, app, push, status=status)
    finally:
        _accept_wall.append(time.perf_counter() - t0)


BatchWriter._apply = _apply  # type: ignore[method-assign]
Inbox.accept = _accept  # type: ignore[method-assign]

# ---- experiment knobs (environment), each off by default
#: BENCH_PROBE_NO_WORKERS=1: the inbox workers do not start (intake only; pushes stay pending)
#: BENCH_PROBE_POOL=N: the SQLite engine's pool holds N connections (csbot: SQLAlchemy's default 5+10 overflow)
_connects = [0]

import csbot.app as _app_mod  # noqa: E402
from sqlalchemy import event as _event  # noqa: E402

_orig_make_engine = _app_mod.make_engine


def _make_engine(url, **kw):  # type: ignore[no-untyped-def]
    if os.environ.get("BENCH_PROBE_POOL"):
        kw.update(pool_size=int(os.environ["BENCH_PROBE_POOL"]), max_overflow=0)
    engine = _orig_make_engine(url, **kw)

    @_event.listens_for(engine.sync_engine, "connect")
    def _count(*_a):  # type: ignore[no-untyped-def]
        _connects[0] += 1

    return engine


_app_mod.make_engine = _make_engine
if os.environ.get("BENCH_PROBE_LEAN_INTAKE") == "1":
    # what-if for proposal 1 in RESULTS.md: the same rows, one cached Core statement run as an
    # executemany (SQLAlchemy's insertmanyvalues), instead of a fresh multi-VALUES ORM insert
    from csbot.inbox import IntakeOp
    from csbot.store import Message
    from sqlalchemy.dialects.sqlite import insert as _sqlite_insert

    _t = Message.__table__
    _lean_stmt = (_sqlite_insert(_t).on_conflict_do_nothing(index_elements=["app", "dedup_key"])
                  .returning(_t.c.id, _t.c.app, _t.c.dedup_key))

    async def _lean_apply_many(self, session, ops):  # type: ignore[no-untyped-def]
        conn = await session.connection()
        inserted = {(r.app, r.dedup_key): r.id
                    for r in (await conn.execute(_lean_stmt, [op.row for op in ops])).all()}
        out = []
        for op in ops:
            key = (op.row["app"], op.row["dedup_key"])
            out.append((inserted.pop(key), True) if key in inserted else (None, False))
        return out

    IntakeOp.apply_many = _lean_apply_many  # type: ignore[method-assign]
if os.environ.get("BENCH_PROBE_GC"):
    # what-if: the cyclic garbage collector's pauses (count and time recorded either way)
    import gc

    _gc = {"collections": [0, 0, 0], "ms": [0.0, 0.0, 0.0]}
    _gc_t0 = [0.0]

    def _gc_cb(phase, info):  # type: ignore[no-untyped-def]
        if phase == "start":
            _gc_t0[0] = time.perf_counter()
        else:
            _gc["collections"][info["generation"]] += 1
            _gc["ms"][info["generation"]] += (time.perf_counter() - _gc_t0[0]) * 1000

    gc.callbacks.append(_gc_cb)
    if os.environ["BENCH_PROBE_GC"] == "off":
        gc.disable()
if os.environ.get("BENCH_PROBE_NO_WORKERS") == "1":
    Inbox.start = lambda self: None  # type: ignore[method-assign]


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _heap_top() -> list[tuple[str, int]]:
    import gc

    objs = gc.get_objects()
    counts = collections.Counter(type(o).__name__ for o in objs)
    return [("total", len(objs)), *counts.most_common(15)]


@atexit.register
def _dump() -> None:
    out = os.environ.get("BENCH_PROBE_OUT")
    if not out:
        return
    by_kind: collections.Counter[str] = collections.Counter()
    batches_with: collections.Counter[str] = collections.Counter()
    for _, kinds, _ in _commits:
        by_kind.update(kinds)
        batches_with.update(kinds.keys())
    durs = [d for _, _, d in _commits]
    sizes = [sum(k.values()) for _, k, _ in _commits]
    intake_sizes = [k.get("intake", 0) for _, k, _ in _commits if k.get("intake")]
    data = {
        "db_connections_opened": _connects[0],
        "knobs": {k: v for k, v in os.environ.items() if k.startswith("BENCH_PROBE_")},
        "commits": len(_commits),
        "ops_by_kind": dict(by_kind),
        "commits_containing_kind": dict(batches_with),
        "ops_per_commit_mean": sum(sizes) / len(sizes) if sizes else 0,
        "intake_ops_per_intake_commit_mean": sum(intake_sizes) / len(intake_sizes) if intake_sizes else 0,
        "commit_wall_ms": {"mean": 1e3 * sum(durs) / len(durs) if durs else 0, "p50": 1e3 * _pct(durs, .5),
                           "p99": 1e3 * _pct(durs, .99), "max": 1e3 * max(durs, default=0)},
        "accept_wall_ms": {"n": len(_accept_wall), "p50": 1e3 * _pct(_accept_wall, .5),
                           "p99": 1e3 * _pct(_accept_wall, .99)},
        "gc": globals().get("_gc"),
        "heap_top_types": _heap_top(),
        "commit_log_tail": [{"t": t, "ops": k, "ms": round(d * 1e3, 2)} for t, k, d in _commits[-40:]],
    }
    with open(out, "w") as f:
        json.dump(data, f, indent=2)


if __name__ == "__main__":
    from csbot.cli import main

    sys.exit(main(sys.argv[1:]))
