"""Leases on conversation rows: which process handles (or sends for) one user right now.

One mechanism for both lanes of a user: ``lease`` (handling pushes, csbot.inbox) and
``send_lease`` (sending replies, csbot.outbox), held by one instance identity per process.

* **One clock.** Expiry times are written and compared by the database's clock
  (``now()`` on PostgreSQL; on SQLite, which serves one process, its ``julianday('now')``),
  never by comparing one process's wall clock with another's.
* **Taking** is atomic: on SQLite a conditional ``UPDATE``; on PostgreSQL the row is first
  locked with ``FOR UPDATE SKIP LOCKED``, so a process never waits behind another that is
  taking the same lane, it just moves on.
* **Fencing.** A holder knows how long its lease is good for by its own monotonic clock,
  counted from *before* the statement that took or renewed it (so it always ends before the
  database thinks it does). ``Lease.valid()`` is checked before every side effect (a handler
  run, a send); a renewal that finds the row no longer ours marks the lease lost at once.
  The outbox's ``sending`` mark is also conditional on the row still naming this owner.
* **Lock order.** Batched statements lock conversation rows in ``id`` order (the batch
  writer locks every row a batch will update first, sorted), or take them with SKIP LOCKED,
  which never waits; a user row is written only by a transaction holding that user's
  conversation row. So two processes never lock two lanes in opposite orders.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

from sqlalchemy import Float, bindparam, cast, func, literal_column, or_, select, tuple_, update
from sqlalchemy.ext.asyncio import AsyncSession

from csbot.store.models import Conversation, Message, User
from csbot.store.statements import cached

log = logging.getLogger("csbot.store.leases")

_CONV = Conversation.__table__
_USER = User.__table__
_MSG = Message.__table__

#: a holder stops trusting its lease this long before its own count says it ends
SAFETY_MARGIN = 0.2


def db_now(dialect: str, *, live: bool = False) -> Any:
    """The database's clock in Unix seconds, as an SQL expression.

    PostgreSQL's ``now()`` is the transaction's start; ``live`` reads the clock as the statement
    runs (``clock_timestamp()``), for fences: a write that waited for locks is checked against
    the moment it applies, not the moment its transaction began.
    """
    if dialect == "postgresql":
        return cast(func.extract("epoch", func.clock_timestamp() if live else func.now()), Float)
    return literal_column("((julianday('now') - 2440587.5) * 86400.0)", Float)


def _user_upsert(insert: Any) -> Any:
    ins = insert(_USER)
    return ins.on_conflict_do_update(index_elements=["app", "openid"],
                                     set_={"last_seen": ins.excluded.last_seen})


def _cols(kind: str) -> tuple[Any, Any]:
    return _CONV.c[f"{kind}_owner"], _CONV.c[f"{kind}_until"]


def _lease_statements(dialect: str, kind: str) -> tuple[Any, Any, Any, Any]:
    """The cached statements of one lease kind: take (by keys), lock-free rows (PostgreSQL),
    renew and release (by ids). Built once, so every batch reuses SQLAlchemy's compiled form."""
    owner_col, until_col = _cols(kind)
    now = db_now(dialect)
    free = or_(owner_col.is_(None), owner_col == bindparam("owner"), until_col < now)
    keys = tuple_(_CONV.c.app, _CONV.c.openid).in_(bindparam("keys", expanding=True))

    def take(_: Any) -> Any:
        if dialect == "postgresql":  # the rows were locked (SKIP LOCKED) by ``lock_free`` just before
            where = [_CONV.c.id.in_(bindparam("ids", expanding=True))]
        else:
            where = [keys, free]
        return (update(_CONV).where(*where)
                .values({owner_col: bindparam("owner"), until_col: now + bindparam("seconds", type_=Float)})
                .returning(_CONV.c.id, _CONV.c.app, _CONV.c.openid, _CONV.c.status))

    def lock_free(_: Any) -> Any:
        return select(_CONV.c.id).where(keys, free).order_by(_CONV.c.id).with_for_update(skip_locked=True)

    def renew(_: Any) -> Any:
        return (update(_CONV).where(_CONV.c.id.in_(bindparam("ids", expanding=True)), owner_col == bindparam("owner"))
                .values({until_col: now + bindparam("seconds", type_=Float)}).returning(_CONV.c.id))

    def release(_: Any) -> Any:
        return (update(_CONV).where(_CONV.c.id.in_(bindparam("ids", expanding=True)), owner_col == bindparam("owner"))
                .values({owner_col: None, until_col: None}).returning(_CONV.c.id))

    return (cached(dialect, f"{kind}_take", take), cached(dialect, f"{kind}_lock_free", lock_free),
            cached(dialect, f"{kind}_renew", renew), cached(dialect, f"{kind}_release", release))


def _earliest_statements(dialect: str) -> tuple[Any, Any]:
    """Per user, the earliest push still waiting or in an inline handler; and statuses by id."""
    earliest = cached(dialect, "lane_earliest_push", lambda _: (
        select(_MSG.c.app, _MSG.c.openid, func.min(_MSG.c.id).label("id"))
        .where(_MSG.c.direction == "in", _MSG.c.status.in_(("pending", "inline")),
               tuple_(_MSG.c.app, _MSG.c.openid).in_(bindparam("keys", expanding=True)))
        .group_by(_MSG.c.app, _MSG.c.openid)))
    statuses = cached(dialect, "push_statuses", lambda _: (
        select(_MSG.c.id, _MSG.c.status).where(_MSG.c.id.in_(bindparam("ids", expanding=True)))))
    return earliest, statuses


async def take_leases(conn: Any, *, kind: str, keys: Sequence[tuple[str, str]], owner: str,
                      seconds: float) -> dict[tuple[str, str], Any]:
    """Take the ``kind`` leases ("lease": handling, "send_lease": sending) of many lanes at once.

    Returns the rows (``id``, ``status``) of the lanes this owner now holds, by (app, openid);
    a lane another live owner holds is simply absent. On PostgreSQL the free rows are locked
    first with ``FOR UPDATE SKIP LOCKED`` in id order, so a process never waits behind another
    that is taking the same lane, and never locks two lanes in the opposite order of another.
    """
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    dialect = conn.dialect.name
    take, lock_free, _, _ = _lease_statements(dialect, kind)
    params: dict[str, Any] = {"keys": wanted, "owner": owner, "seconds": seconds}
    if dialect == "postgresql":
        ids = [r.id for r in (await conn.execute(lock_free, params)).all()]
        if not ids:
            return {}
        params = {"ids": ids, "owner": owner, "seconds": seconds}
    return {(r.app, r.openid): r for r in (await conn.execute(take, params)).all()}


async def ensure_conversations(conn: Any, keys: Iterable[tuple[str, str]], now: float) -> None:
    """Create the conversation rows that do not exist yet, in key order.

    Existing rows are looked up first (no lock taken), so the insert never waits on a row
    another transaction is updating; new keys are inserted sorted, so two processes creating
    the same new users never wait on each other in a cycle.
    """
    wanted = sorted(set(keys))
    if not wanted:
        return
    dialect = conn.dialect.name
    existing_stmt = cached(dialect, "conv_existing", lambda _: select(_CONV.c.app, _CONV.c.openid).where(
        tuple_(_CONV.c.app, _CONV.c.openid).in_(bindparam("keys", expanding=True))))
    existing = {(r.app, r.openid) for r in (await conn.execute(existing_stmt, {"keys": wanted})).all()}
    missing = [k for k in wanted if k not in existing]
    if missing:
        await conn.execute(
            cached(dialect, "conv_upsert", lambda ins: ins(_CONV).on_conflict_do_nothing(
                index_elements=["app", "openid"])),
            [dict(app=app, openid=openid, status="bot", created_at=now, last_message_at=now, tags="[]")
             for app, openid in missing])


@dataclass
class LaneOp:
    """Acquire, renew or release leases of users' lanes, as one group-committed write.

    ``kind`` is "lease" (handling pushes) or "send_lease" (sending replies). Applied in
    submission order per lane: a release queued before a new acquire of the same lane does
    not run after it. Acquiring a handling lease also records the user (first/last seen) and
    checks, in the same transaction, that no earlier push of the user is unfinished: the
    result says from which push the lane must start (``first_pending``), or refuses the lane
    while an earlier push is still in an inline handler.

    A batch's ops are applied set-wise: each run of consecutive ops of one action, kind and
    owner is one statement (a few for acquires), whatever the number of lanes.
    """

    action: str  # "acquire" | "renew" | "release"
    owner: str
    seconds: float = 30.0
    app: str = ""
    openid: str = ""
    seen_at: float = 0.0
    #: acquire (handling): the lowest push id the caller has for this lane
    first_id: int | None = None
    conversation_ids: tuple[int, ...] = ()
    kind: str = "lease"
    batch_kind: str = "lane"

    def locks(self) -> tuple[int, ...]:
        """Conversation rows this op updates by id (locked up front by the writer, sorted)."""
        return self.conversation_ids

    async def apply_many(self, session: AsyncSession, ops: Sequence["LaneOp"]) -> list[Any]:
        """Per op: acquire → an ``Acquired`` (or None); renew/release → the set of ids still ours."""
        conn = await session.connection()
        now = time.time()
        acquiring = [op for op in ops if op.action == "acquire"]
        if acquiring:
            await ensure_conversations(conn, ((op.app, op.openid) for op in acquiring), now)
        results: dict[int, Any] = {}
        i = 0
        while i < len(ops):  # runs of consecutive ops alike: order across different actions is kept
            head = ops[i]
            j = i + 1
            while j < len(ops) and (ops[j].action, ops[j].kind, ops[j].owner, ops[j].seconds) == \
                    (head.action, head.kind, head.owner, head.seconds):
                j += 1
            run = ops[i:j]
            if head.action == "acquire":
                results.update(await _acquire_many(conn, run))
            else:
                results.update(await _renew_or_release(conn, run))
            i = j
        # users (first/last seen) only of the lanes this transaction took (their conversation row
        # is held): a user row is never locked by two transactions that do not both hold that lane
        users = {(op.app, op.openid): dict(app=op.app, openid=op.openid, first_seen=op.seen_at, last_seen=op.seen_at)
                 for op in acquiring if op.kind == "lease" and results[id(op)] is not None}
        if users:
            await conn.execute(cached(conn.dialect.name, "user_upsert", _user_upsert), [users[k] for k in sorted(users)])
        return [results[id(op)] for op in ops]


async def _renew_or_release(conn: Any, ops: Sequence[LaneOp]) -> dict[int, set[int]]:
    head = ops[0]
    ids = sorted({cid for op in ops for cid in op.conversation_ids})
    if not ids:
        return {id(op): set() for op in ops}
    _, _, renew, release = _lease_statements(conn.dialect.name, head.kind)
    stmt = release if head.action == "release" else renew
    ours = {r.id for r in (await conn.execute(stmt, {"ids": ids, "owner": head.owner,
                                                     "seconds": head.seconds})).all()}
    return {id(op): ours.intersection(op.conversation_ids) for op in ops}


async def _acquire_many(conn: Any, ops: Sequence[LaneOp]) -> dict[int, "Acquired | None"]:
    """Take the lanes of ``ops`` (one kind, one owner) and, for handling leases, check each
    user's earliest unfinished push in the same transaction."""
    head = ops[0]
    taken = await take_leases(conn, kind=head.kind, keys=[(op.app, op.openid) for op in ops],
                              owner=head.owner, seconds=head.seconds)
    out: dict[int, Acquired | None] = {}
    checked = [op for op in ops if head.kind == "lease" and op.first_id is not None and (op.app, op.openid) in taken]
    earliest: dict[tuple[str, str], tuple[int, str]] = {}
    if checked:
        earliest_stmt, statuses_stmt = _earliest_statements(conn.dialect.name)
        first = {(r.app, r.openid): r.id for r in (await conn.execute(
            earliest_stmt, {"keys": sorted({(op.app, op.openid) for op in checked})})).all()}
        before = {k: i for k, i in first.items()
                  if any(i < op.first_id for op in checked if (op.app, op.openid) == k)}  # type: ignore[operator]
        if before:
            status = {r.id: r.status for r in (await conn.execute(
                statuses_stmt, {"ids": sorted(before.values())})).all()}
            earliest = {k: (i, status.get(i, "pending")) for k, i in before.items()}
    give_back: list[int] = []
    for op in ops:
        key = (op.app, op.openid)
        row = taken.get(key)
        if row is None:
            out[id(op)] = None
            continue
        found = earliest.get(key)
        if found is not None and op.first_id is not None and found[0] < op.first_id and found[1] == "inline":
            # an earlier push is still in an inline handler (or was abandoned in one): the lane
            # must not start with a later push; give the lease back and try again later
            give_back.append(row.id)
            out[id(op)] = None
            continue
        first_pending = found[0] if found is not None and op.first_id is not None and found[0] < op.first_id else None
        out[id(op)] = Acquired(row.id, row.status, first_pending)
    if give_back:
        _, _, _, release = _lease_statements(conn.dialect.name, head.kind)
        await conn.execute(release, {"ids": sorted(set(give_back)), "owner": head.owner, "seconds": head.seconds})
    return out


@dataclass
class Acquired:
    """A lease just taken: the conversation row, and (handling) an earlier pending push."""

    id: int
    status: str
    first_pending: int | None = None


@dataclass(eq=False)
class Lease:
    """This process's view of one lease it holds."""

    key: tuple[str, str]
    conversation_id: int
    #: monotonic time after which the lease may no longer be ours
    good_until: float
    lost: bool = False
    #: set when the lease is lost, so a lane waiting on something can stop at once
    lost_event: asyncio.Event = field(default_factory=asyncio.Event)

    def valid(self) -> bool:
        """May the holder still act (send, run a handler) under this lease?"""
        return not self.lost and time.monotonic() < self.good_until - SAFETY_MARGIN

    def lose(self) -> None:
        self.lost = True
        self.lost_event.set()


class LeaseKeeper:
    """The leases of one kind this process holds: taken, renewed in the background, released.

    ``run`` is the group-commit writer's ``run``. A renewal that fails (store down) leaves the
    leases to run out by the holder's own clock; one that finds a row taken over marks it lost.
    """

    def __init__(self, run: Callable[[Any], Any], *, kind: str, owner: str, seconds: float,
                 on_lost: Callable[[Lease], None] | None = None) -> None:
        self._run = run
        self.kind = kind
        self.owner = owner
        self.seconds = seconds
        self.on_lost = on_lost or (lambda _lease: None)
        self.held: dict[tuple[str, str], Lease] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._heartbeat(), name=f"csbot-{self.kind}-heartbeat")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def acquire(self, requests: Sequence[dict[str, Any]]) -> list[tuple[Lease, Acquired] | None]:
        """Take the lanes of ``requests`` (dicts of LaneOp fields: app, openid, …), concurrently
        in one group commit; returns a lease (and what the transaction found) per request."""
        started = time.monotonic()
        ops = [LaneOp("acquire", self.owner, self.seconds, kind=self.kind, **req) for req in requests]
        results = await asyncio.gather(*(self._run(op) for op in ops))
        out: list[tuple[Lease, Acquired] | None] = []
        for op, got in zip(ops, results):
            if got is None:
                out.append(None)
                continue
            lease = Lease((op.app, op.openid), got.id, started + self.seconds)
            self.held[lease.key] = lease
            out.append((lease, got))
        return out

    async def release(self, lease: Lease) -> None:
        if self.held.get(lease.key) is lease:
            del self.held[lease.key]
        await self._run(LaneOp("release", self.owner, kind=self.kind, conversation_ids=(lease.conversation_id,)))

    async def release_all(self) -> None:
        leases, self.held = list(self.held.values()), {}
        if leases:
            await self._run(LaneOp("release", self.owner, kind=self.kind,
                                   conversation_ids=tuple(lease.conversation_id for lease in leases)))

    async def renew(self) -> None:
        leases = list(self.held.values())
        if not leases:
            return
        started = time.monotonic()
        still = await self._run(LaneOp("renew", self.owner, self.seconds, kind=self.kind,
                                       conversation_ids=tuple(lease.conversation_id for lease in leases)))
        for lease in leases:
            if lease.conversation_id in still:
                lease.good_until = started + self.seconds
            elif not lease.lost and self.held.get(lease.key) is lease:  # (not released meanwhile)
                log.warning("%s of %s/%s was taken over by another process; its lane stops",
                            self.kind, *lease.key)
                lease.lose()
                self.on_lost(lease)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(max(self.seconds / 3, 0.2))
            try:
                await self.renew()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("could not renew %s leases (%s); they run out by themselves", self.kind, exc)


# --------------------------------------------------------------------------- named leases
# Leases on resources that are not a user's lane (the access-token fetch of an app): the same
# rules, one row per name in ``leases``. The database's clock times them; a holder trusts its
# lease by its own monotonic count from before the take, less SAFETY_MARGIN (``valid()``); and
# every take raises the row's ``fence``, so a write made under a lease can be made conditional on
# no other holder having taken it since (``held_by``): a holder that stalled past its lease and
# wakes up after a takeover cannot overwrite the newer holder's work.


@dataclass(frozen=True)
class NamedLease:
    """A named lease this process holds: ``fence`` is the take it was."""

    name: str
    owner: str
    fence: int
    #: monotonic time after which the lease may no longer be ours
    good_until: float

    def valid(self) -> bool:
        """May the holder still act (start a side effect) under this lease?"""
        return time.monotonic() < self.good_until - SAFETY_MARGIN


def _named_table() -> Any:
    from csbot.store.models import NamedLeaseRow

    return NamedLeaseRow.__table__


async def take_named_lease(conn: Any, name: str, owner: str, seconds: float) -> NamedLease | None:
    """Take lease ``name`` for ``seconds`` (database clock) in the caller's transaction, or None
    while another holder's lease runs. Not re-entrant: a second taker with the same owner (two
    managers in one process) waits like any other."""
    table = _named_table()
    started = time.monotonic()
    await conn.execute(cached(conn.dialect.name, "named_lease_row", lambda ins: ins(table).on_conflict_do_nothing(
        index_elements=["name"])), {"name": name, "owner": None, "until": None, "fence": 0})
    now = db_now(conn.dialect.name)
    row = (await conn.execute(
        update(table).where(table.c.name == name, or_(table.c.owner.is_(None), table.c.until < now))
        .values(owner=owner, until=now + seconds, fence=table.c.fence + 1)
        .returning(table.c.fence))).first()
    return None if row is None else NamedLease(name, owner, int(row.fence), started + seconds)


def held_by(lease: NamedLease) -> Any:
    """SQL condition: nobody has taken ``lease`` since this holder did (for fenced writes)."""
    from sqlalchemy import exists

    table = _named_table()
    return exists().where(table.c.name == lease.name, table.c.owner == lease.owner, table.c.fence == lease.fence)


async def release_named_lease(conn: Any, lease: NamedLease) -> None:
    """Give ``lease`` back (a no-op once another holder took it)."""
    table = _named_table()
    await conn.execute(update(table).where(table.c.name == lease.name, table.c.owner == lease.owner,
                                           table.c.fence == lease.fence).values(owner=None, until=None))


async def clear_named_leases(conn: Any) -> int:
    """At start on SQLite, which serves one process (csbot.store.engine.hold_sqlite_file): every
    named lease found belongs to a process that is gone, so it need not be waited out."""
    table = _named_table()
    result = await conn.execute(update(table).where(table.c.owner.is_not(None)).values(owner=None, until=None))
    return int(result.rowcount or 0)
