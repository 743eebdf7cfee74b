"""Full-text search over message text: substring semantics, Chinese included, and an index that
keeps it fast with a million messages (SQLite FTS5 trigram; PostgreSQL pg_trgm)."""

import asyncio
import random
import sqlite3

import pytest
from sqlalchemy import text
from sqlalchemy.dialects import postgresql, sqlite

from csbot.review.service import Review
from csbot.store import make_engine, make_sessionmaker
from csbot.store.migrate import upgrade, upgrade_async

from .support import review_of


async def openids(review, search, **kw):
    page = await review.list_conversations(search=search, **kw)
    return sorted(c["openid"] for c in page.conversations)


async def test_search_matches_substrings_of_any_message_case_insensitively_chinese_included(bot):
    await bot.send_text("oWang", "我的蓝色羊毛围巾还没有到")
    await bot.send_text("oLi", "Where is ORDER-7781?")
    await bot.send_text("oZhao", "怎么退款")  # the FAQ's answer mentions 无理由退货
    await bot.send_text("oQuote", 'he said "50% off_now" AND more')
    await bot.wait_idle()
    review = review_of(bot)
    assert await openids(review, "羊毛围巾") == ["oWang"]  # 4 characters: from the trigram index
    assert await openids(review, "围巾") == ["oWang"]  # 2 characters: a scan, same answer
    assert await openids(review, "order-7781") == ["oLi"]
    assert await openids(review, "无理由退货") == ["oZhao"]  # bot replies are searchable too
    assert await openids(review, '"50% off_now" AND') == ["oQuote"]  # query syntax is plain text
    assert await openids(review, "50%") == ["oQuote"]
    assert await openids(review, "_now") == ["oQuote"]
    assert await openids(review, "nothing like this") == []
    assert await openids(review, "围巾", status="human") == []  # filters combine
    assert await openids(review, "羊毛\x00围巾") == ["oWang"]  # a NUL is no FTS5 syntax error (was a 500)


async def test_search_follows_new_and_deleted_messages(bot):
    review = review_of(bot)
    await bot.send_text("oNew", "tracking number 99XZ")
    await bot.wait_idle()
    assert await openids(review, "99xz") == ["oNew"]
    async with bot.services.sessionmaker() as s, s.begin():
        await s.execute(text("UPDATE messages SET text = 'edited' WHERE text = 'tracking number 99XZ'"))
    assert await openids(review, "99xz") == []
    assert await openids(review, "edited") == ["oNew"]


PHRASES = ["我想查询订单{n}的物流", "退款什么时候到账", "How do I change the address of order {n}?",
           "您好，请问有优惠券吗", "商品{n}有货吗", "Thanks, that helps", "The parcel {n} arrived damaged",
           "发票怎么开", "[image]", "[event] user_enter_tempsession"]
NEEDLE = "蓝色羊毛围巾"
NEEDLE_USERS = {"oU000123", "oU031337", "oU049999"}


def fill_store(path, messages: int, per_conversation: int = 20) -> None:
    """A migrated SQLite store with ``messages`` messages in conversations of ``per_conversation``."""
    upgrade(f"sqlite+aiosqlite:///{path}")
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=OFF")
    rnd = random.Random(4)
    t0 = 1_700_000_000.0

    def rows(start, n):
        for i in range(start, start + n):
            openid = f"oU{i // per_conversation:06d}"
            phrase = rnd.choice(PHRASES).format(n=rnd.randrange(100_000))
            if openid in NEEDLE_USERS and i % per_conversation == 7:
                phrase = f"我买的{NEEDLE}颜色不对"
            yield ("default", openid, "in" if i % 2 == 0 else "out", "text", phrase, "{}", t0 + i, t0 + i,
                   "done", 0)

    batch = 100_000
    for start in range(0, messages, batch):
        with con:
            con.executemany("INSERT INTO messages (app, openid, direction, msg_type, text, raw, created_at, "
                            "received_at, status, attempts) VALUES (?,?,?,?,?,?,?,?,?,?)",
                            rows(start, min(batch, messages - start)))
    with con:
        con.execute("INSERT INTO conversations (app, openid, status, created_at, last_message_at, tags) "
                    "SELECT app, openid, 'bot', min(created_at), max(created_at), '[]' FROM messages "
                    "GROUP BY app, openid")
    con.close()


@pytest.mark.large
async def test_search_uses_the_fts_index_and_stays_fast_with_a_million_messages(tmp_path):
    """The plan proves the index serves the search; how fast it is belongs to benchmarks, not here."""
    path = tmp_path / "large.db"
    await asyncio.to_thread(fill_store, path, 1_000_000)

    settings = None  # Review needs settings only to send
    engine = make_engine(f"sqlite+aiosqlite:///{path}")
    try:
        review = Review(settings, make_sessionmaker(engine))  # type: ignore[arg-type]
        found = await openids(review, NEEDLE)
        assert set(found) == NEEDLE_USERS
        assert await openids(review, "颜色不对") == sorted(NEEDLE_USERS)

        async with review.sessionmaker() as s:
            q = (await Review.list_query(s, search=NEEDLE)).limit(50)
            sql = str(q.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
            plan = " | ".join(r[-1] for r in (await s.execute(text("EXPLAIN QUERY PLAN " + sql))).all())
        assert "messages_fts VIRTUAL TABLE" in plan, plan
        assert "SCAN messages " not in plan + " ", plan  # no full scan of the messages table
    finally:
        await engine.dispose()


async def test_postgresql_search_is_served_by_the_trigram_index(pg_url):
    await upgrade_async(pg_url)
    engine = make_engine(pg_url)
    try:
        async with engine.begin() as conn:
            raw = await conn.get_raw_connection()
            rnd = random.Random(2)
            records = [("default", f"oP{i // 10:05d}", "in", "text",
                        f"我买的{NEEDLE}颜色不对" if i == 4242 else rnd.choice(PHRASES).format(n=i),
                        "{}", 1.7e9 + i, 1.7e9 + i, "done", 0) for i in range(200_000)]
            await raw.driver_connection.copy_records_to_table(
                "messages", records=records, columns=["app", "openid", "direction", "msg_type", "text", "raw",
                                                      "created_at", "received_at", "status", "attempts"])
            await conn.execute(text(
                "INSERT INTO conversations (app, openid, status, created_at, last_message_at, tags) "
                "SELECT app, openid, 'bot', min(created_at), max(created_at), '[]' FROM messages "
                "GROUP BY app, openid"))
            await conn.execute(text("ANALYZE messages"))
        review = Review(None, make_sessionmaker(engine))  # type: ignore[arg-type]
        assert await openids(review, NEEDLE) == ["oP00424"]
        assert await openids(review, "颜色不对") == ["oP00424"]
        async with review.sessionmaker() as s:
            q = (await Review.list_query(s, search=NEEDLE)).limit(50)
            sql = str(q.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True}))
            plan = " | ".join(r[0] for r in (await s.execute(text("EXPLAIN " + sql))).all())
        assert "ix_messages_text_trgm" in plan, plan
    finally:
        await engine.dispose()
