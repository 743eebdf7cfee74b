"""Lane leases: one clock (the database's), fencing, renewals that notice a takeover."""

import time

from sqlalchemy import text

from csbot.store.leases import LeaseKeeper


async def _lease_of(engine, openid: str) -> tuple:
    async with engine.connect() as conn:
        return tuple((await conn.execute(text(
            "SELECT lease_owner, lease_until FROM conversations WHERE openid = :o"), {"o": openid})).one())


async def test_a_process_whose_clock_runs_ahead_cannot_take_a_live_lease(store, monkeypatch):
    engine, writer = store
    other = LeaseKeeper(writer.run, kind="lease", owner="host:1:other", seconds=30)
    assert (await other.acquire([dict(app="default", openid="oU")]))[0] is not None
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this process's clock is an hour fast
    me = LeaseKeeper(writer.run, kind="lease", owner="host:2:me", seconds=30)
    # compared by the database's clock, the other process's lease has 30 s left: not ours
    assert await me.acquire([dict(app="default", openid="oU")]) == [None]
    monkeypatch.setattr(time, "time", real)
    owner, until = await _lease_of(engine, "oU")
    assert owner == "host:1:other" and real() + 25 < until < real() + 35


async def test_a_renewal_that_finds_the_lane_taken_over_marks_the_lease_lost(store):
    engine, writer = store
    lost = []
    mine = LeaseKeeper(writer.run, kind="lease", owner="host:1:me", seconds=30, on_lost=lost.append)
    [(lease, _)] = await mine.acquire([dict(app="default", openid="oU")])
    assert lease.valid()
    async with engine.begin() as conn:  # our lease ran out and another process took the lane
        await conn.execute(text("UPDATE conversations SET lease_owner = 'host:2:other' WHERE openid = 'oU'"))
    await mine.renew()
    assert lost == [lease] and lease.lost and not lease.valid()
    assert (await _lease_of(engine, "oU"))[0] == "host:2:other"  # and the renewal did not take it back


async def test_a_holder_stops_trusting_its_lease_before_the_database_ends_it(store):
    engine, writer = store
    keeper = LeaseKeeper(writer.run, kind="lease", owner="host:1:me", seconds=0.5)
    [(lease, _)] = await keeper.acquire([dict(app="default", openid="oU")])
    assert lease.valid()
    time.sleep(0.4)  # no renewal came through (store stalled): by its own count it is about to end
    assert not lease.valid()


# ---- named leases (the access-token fetch): the same clock and fencing, one row per name


async def test_a_named_lease_is_one_holder_at_a_time_by_the_database_clock(store, monkeypatch):
    from csbot.store.leases import take_named_lease

    engine, _ = store
    async with engine.begin() as conn:
        first = await take_named_lease(conn, "token:default", "host:1:other", 30)
    assert first is not None and first.fence == 1 and first.valid()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # this process's clock is an hour fast
    async with engine.begin() as conn:
        # the same owner name too: a lease is not re-entrant (two managers of one process)
        assert await take_named_lease(conn, "token:default", "host:1:other", 30) is None
        assert await take_named_lease(conn, "token:default", "host:2:me", 30) is None


async def test_a_named_lease_run_out_is_taken_over_and_fences_out_the_old_holder(store):
    from sqlalchemy import update

    from csbot.store.leases import held_by, release_named_lease, take_named_lease
    from csbot.store.models import AccessToken

    engine, _ = store
    async with engine.begin() as conn:
        await conn.execute(AccessToken.__table__.insert().values(app="default", token="t0", expires_at=0.0,
                                                                 fetched_at=0.0))
        old = await take_named_lease(conn, "token:default", "host:1:old", 0.3)
    assert old is not None
    time.sleep(0.4)
    assert not old.valid()
    async with engine.begin() as conn:
        new = await take_named_lease(conn, "token:default", "host:2:new", 30)
    assert new is not None and new.fence == old.fence + 1

    async def write(lease, token):
        async with engine.begin() as conn:
            res = await conn.execute(update(AccessToken).where(AccessToken.app == "default", held_by(lease))
                                     .values(token=token))
            return res.rowcount

    assert await write(new, "t-new") == 1
    async with engine.begin() as conn:
        await release_named_lease(conn, new)
        await release_named_lease(conn, old)  # a no-op: it is not the old holder's any more
    assert await write(old, "t-stale") == 0  # released or not, a newer take fenced the old holder out
    async with engine.connect() as conn:
        assert (await conn.execute(text("SELECT token FROM access_tokens"))).scalar_one() == "t-new"
        assert tuple((await conn.execute(text("SELECT owner, fence FROM leases"))).one()) == (None, 2)
