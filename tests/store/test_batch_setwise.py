"""Group commits apply each kind of write set-wise: many lanes, claims and marks in one
transaction and a few statements, never falling back to one-by-one (which would hide a
statement that cannot run batched), and each op still gets its own answer."""

import asyncio
import logging
import time

from sqlalchemy import text

from csbot.inbox import BLOCKED, Claim, ClaimOp
from csbot.outbox import MarkOp, outbound_message, queue_messages
from csbot.statuses import OutboundStatus
from csbot.store.leases import LeaseKeeper

USERS = [f"oSet{i:02d}" for i in range(12)]


def _no_fallback(caplog) -> None:
    assert not [r for r in caplog.records if "one by one" in r.getMessage()], "a batch fell back to one-by-one"


async def test_many_lanes_are_taken_and_released_in_one_group_commit(store, caplog):
    engine, writer = store
    caplog.set_level(logging.INFO, "csbot.store")
    keeper = LeaseKeeper(writer.run, kind="send_lease", owner="host:1:me", seconds=30)
    other = LeaseKeeper(writer.run, kind="send_lease", owner="host:2:other", seconds=30)
    assert (await other.acquire([dict(app="default", openid=USERS[0])]))[0] is not None
    before = writer.commits
    got = await keeper.acquire([dict(app="default", openid=u) for u in USERS])
    assert writer.commits - before <= 2  # one group commit (two when it straddles another)
    assert got[0] is None  # held by a live other process
    assert all(g is not None for g in got[1:])
    await asyncio.gather(*(keeper.release(g[0]) for g in got[1:]))
    async with engine.connect() as conn:
        owners = dict((await conn.execute(text("SELECT openid, send_lease_owner FROM conversations"))).all())
    assert owners[USERS[0]] == "host:2:other" and all(owners[u] is None for u in USERS[1:])
    _no_fallback(caplog)


async def test_marks_of_many_replies_apply_together_each_with_its_own_answer(store, caplog):
    engine, writer = store
    caplog.set_level(logging.INFO, "csbot.store")
    keeper = LeaseKeeper(writer.run, kind="send_lease", owner="host:1:me", seconds=30)
    got = await keeper.acquire([dict(app="default", openid=u) for u in USERS])
    async with engine.begin() as conn:
        ids = await queue_messages(conn, [outbound_message("default", u, "hi", author="t", key=f"k{u}")
                                          for u in USERS])
    async with engine.begin() as conn:  # the last user's lease was taken over meanwhile
        await conn.execute(text("UPDATE conversations SET send_lease_owner = 'host:2:other' WHERE openid = :o"),
                           {"o": USERS[-1]})
    now = time.time()
    sending = [MarkOp(i, (OutboundStatus.QUEUED, OutboundStatus.IN_DOUBT),
                      {"status": OutboundStatus.SENDING, "attempts": 1, "sent_at": now}, fence="host:1:me")
               for i in ids]
    stale = MarkOp(ids[0], (OutboundStatus.QUEUED,), {"status": OutboundStatus.DEAD})  # after the first: no longer queued
    before = writer.commits
    marked = await asyncio.gather(*(writer.run(op) for op in [*sending, stale]))
    assert writer.commits - before <= 2
    assert marked == [True] * (len(USERS) - 1) + [False, False]  # the fenced-out lane and the stale mark
    sent = await asyncio.gather(*(writer.run(MarkOp(i, (OutboundStatus.SENDING,), {
        "status": OutboundStatus.SENT, "sent_at": time.time(), "errcode": 0, "errmsg": None})) for i in ids))
    assert sent == [True] * (len(USERS) - 1) + [False]
    async with engine.connect() as conn:
        states = dict((await conn.execute(text("SELECT openid, status FROM messages WHERE direction = 'out'"))).all())
    assert all(states[u] == "sent" for u in USERS[:-1]) and states[USERS[-1]] == "queued"
    assert got  # (the leases were held throughout)
    _no_fallback(caplog)


async def test_claims_of_many_pushes_count_attempts_together_and_block_a_later_push(store, caplog):
    engine, writer = store
    caplog.set_level(logging.INFO, "csbot.store")
    now = time.time()
    async with engine.begin() as conn:
        for n, u in enumerate(USERS):
            await conn.execute(text(
                "INSERT INTO messages (app, openid, direction, msg_type, raw, dedup_key, created_at, received_at,"
                " status, attempts) VALUES ('default', :o, 'in', 'text', '{}', :k, :t, :t, 'pending', 0)"),
                {"o": u, "k": f"d{n}", "t": now})
        # the first user has a second push, behind the first
        await conn.execute(text(
            "INSERT INTO messages (app, openid, direction, msg_type, raw, dedup_key, created_at, received_at,"
            " status, attempts) VALUES ('default', :o, 'in', 'text', '{}', 'later', :t, :t, 'pending', 0)"),
            {"o": USERS[0], "t": now})
        rows = (await conn.execute(text("SELECT id, openid FROM messages ORDER BY id"))).all()
        await conn.execute(text("UPDATE messages SET status = 'done' WHERE id = :i"), {"i": rows[1].id})
    ops = [ClaimOp(r.id, "default", r.openid) for r in rows]
    before = writer.commits
    claims = await asyncio.gather(*(writer.run(op) for op in ops))
    assert writer.commits - before <= 2
    assert claims[-1] == BLOCKED  # the first user's earlier push is still pending
    assert claims[1] is None  # already done: not pending any more
    assert all(isinstance(c, Claim) and c.attempts == 1 and c.conversation_status == "bot"
               for i, c in enumerate(claims[:-1]) if i != 1)
    _no_fallback(caplog)
