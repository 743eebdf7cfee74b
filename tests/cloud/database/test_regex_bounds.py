"""``$regex`` cannot hang the server: a pattern that backtracks exponentially (ReDoS) against a
long stored value is a 400 within a bounded time, on both backends, and SQLite's search (in the
database thread) never stalls the event loop."""

from __future__ import annotations

import asyncio
import time

import pytest

from csbot.cloud.database import matcher
from csbot.cloud.database.errors import QueryError, RegexTooSlow
from csbot.cloud.database.query import parse_query
from csbot.cloud.database.store import FindSpec
from csbot.cloud.database.update import parse_update

HOSTILE = "(a|aa)+$"  # exponential in Python's re: 2^n ways to split a run of a's
LONG = "a" * 5000 + "!"


def _collection(backend, name):
    store = backend.store
    backend.run(store.insert("default", name, [store.prepare_new({"_id": "evil", "text": LONG, "tags": [LONG]}),
                                               store.prepare_new({"_id": "fine", "text": "aaa"})]))
    return store


def test_the_reference_matcher_bounds_a_hostile_pattern():
    start = time.perf_counter()
    with pytest.raises(RegexTooSlow, match=r"\$regex: the pattern took too long"):
        matcher.matches(parse_query({"text": {"$regex": HOSTILE}}), {"text": LONG})
    assert time.perf_counter() - start < 5
    assert matcher.matches(parse_query({"text": {"$regex": HOSTILE}}), {"text": "aaa"})


def test_a_hostile_where_regex_is_a_query_error_not_a_hang(backend):
    store = _collection(backend, f"redos_{backend.name}")
    name = f"redos_{backend.name}"
    spec = FindSpec(query=parse_query({"text": {"$regex": HOSTILE}}), limit=10)

    async def run_with_ticker():
        gaps = []

        async def ticker():
            last = time.perf_counter()
            while True:
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        tick = asyncio.ensure_future(ticker())
        start = time.perf_counter()
        try:
            return await store.find("default", name, spec), time.perf_counter() - start, gaps
        except QueryError as exc:
            return exc, time.perf_counter() - start, gaps
        finally:
            tick.cancel()

    outcome, elapsed, gaps = backend.run(run_with_ticker())
    assert elapsed < 15, elapsed
    if backend.name == "sqlite":
        # Python's re would run for ages holding the GIL; the bounded search gives up and says so
        assert isinstance(outcome, RegexTooSlow), outcome
        assert max(gaps) < 1.0, max(gaps)  # the event loop kept running meanwhile
    else:
        # PostgreSQL's regex engine is not backtracking-exponential here: an answer, fast
        assert not isinstance(outcome, Exception), outcome
        assert [d["_id"] for d in outcome] == ["fine"]


def test_a_hostile_regex_in_an_update_pull_is_a_query_error(backend):
    store = _collection(backend, f"redos_pull_{backend.name}")
    update = parse_update({"$pull": {"tags": {"$regex": HOSTILE}}})
    start = time.perf_counter()
    with pytest.raises(RegexTooSlow):
        backend.run(store.update_where("default", f"redos_pull_{backend.name}", parse_query({"_id": "evil"}), update))
    assert time.perf_counter() - start < 10
    # nothing was changed
    assert backend.run(store.get("default", f"redos_pull_{backend.name}", "evil"))["tags"] == [LONG]


def test_one_sqlite_statement_shares_one_time_budget(monkeypatch):
    monkeypatch.setattr(matcher, "REGEX_STATEMENT_SECONDS", 0.0)
    with pytest.raises(RegexTooSlow):
        matcher.regexp_sql_function("a", "", "a", "statement-1")
    monkeypatch.setattr(matcher, "REGEX_STATEMENT_SECONDS", 5.0)
    assert matcher.regexp_sql_function("a", "", "xa", "statement-2") == 1
    assert matcher.regexp_sql_function("b", "", "xa", "statement-2") == 0
    assert matcher.regexp_sql_function("b", "", 3, "statement-2") is None
    assert matcher._BUDGETS.left("statement-2") > 4.9


def test_statement_budgets_are_bounded_in_memory():
    budgets = matcher._StatementBudgets()
    for i in range(matcher._STATEMENTS_TRACKED + 50):
        budgets.spend(f"s{i}", 0.001)
    assert len(budgets._spent) == matcher._STATEMENTS_TRACKED
