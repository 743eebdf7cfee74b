"""The durable outbox: delivers queued replies through the customer-service send API.

Replies are rows of ``messages`` (direction ``out``), written in the same transaction as the
handler outcome that produced them. A sender lane per user (the ``send_lease`` of the
conversation row, csbot.store.leases, so several processes never send one user's replies
concurrently) delivers them in order:

    queued → sending → sent
                     → queued again (WeChat busy, or the request never left: refused, DNS) with
                       exponential backoff and jitter, → dead after ``max_send_attempts``
                     → in_doubt (the request was written but its answer was lost: read timeout,
                       dropped connection, 5xx): sent again after a backoff (``at_least_once``)
                       or ``failed`` as in doubt (``at_most_once``); the transport error is kept
                     → failed (permanent errcode, recorded with errmsg; not retried)
           → quota_exceeded (WeChat's reply quota would refuse it; not sent blindly)

A lane's head is the user's oldest *unfinished* reply in any state (queued, sending,
in_doubt): nothing later leaves while it is unsettled. A ``sending`` head found by a lane that
just took the lease was abandoned by a holder that died (or lost its lease): it is settled
first, under the ambiguous-send policy. ``sending`` is marked only once the rate limiter has
granted the request and the token and media are ready, so it covers only the moment the
request is on the wire; the mark is fenced (it applies only while the lease is this
process's). A user whose head waits out a backoff costs nothing: the dispatcher sleeps until
the earliest head is due.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from sqlalchemy import bindparam, exists, func, literal_column, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from csbot.aio import wait_event
from csbot.config import Settings
from csbot.messages import FALLBACK_KEY, NOTICE_TYPES, SubscribeMessage, TemplateMessage
from csbot.statuses import OUTBOUND_DUE, OUTBOUND_UNDELIVERED, OUTBOUND_UNSETTLED, OutboundStatus
from csbot.store import Conversation, Message
from csbot.store.batch import BatchWriter
from csbot.store.engine import read_connection
from csbot.store.leases import Lease, LeaseKeeper, db_now
from csbot.subscriptions import consents_left, forget_consents, spend_consent

log = logging.getLogger("csbot.outbox")

QUEUED, SENDING, SENT, FAILED, DEAD, QUOTA, IN_DOUBT = (
    OutboundStatus.QUEUED, OutboundStatus.SENDING, OutboundStatus.SENT, OutboundStatus.FAILED,
    OutboundStatus.DEAD, OutboundStatus.QUOTA_EXCEEDED, OutboundStatus.IN_DOUBT)
DUE_STATUSES = OUTBOUND_DUE
#: a reply in one of these is not finished: the first of a user's is the lane's head
UNFINISHED = OUTBOUND_UNSETTLED
#: the dispatcher looks for work at least this often (other processes, CLI replies)
POLL_SECONDS = 1.0
#: pause after each dispatcher scan (wake-ups arrive with every commit that queues a reply)
DISPATCH_PAUSE = 0.005
#: end states of a reply that never reached the customer; an operator may queue it again
RETRYABLE = OUTBOUND_UNDELIVERED


@dataclass
class MarkOp:
    """Move one outbound row from one of ``expect`` to a new state.

    ``fence``: the owner that must still hold the user's send lease for the mark to apply
    (the ``sending`` mark: a lane that lost its lease never starts a send).
    """

    message_id: int
    expect: tuple[str, ...]
    values: dict[str, Any]
    fence: str | None = None
    batch_kind: str = "mark"

    async def apply_many(self, session: AsyncSession, ops: Sequence["MarkOp"]) -> list[bool]:
        """Marks of one shape (expected states, columns, fence) in two statements, whatever their
        number: which rows may move (and, on PostgreSQL, lock them, in id order), then one
        executemany. Marks of one row apply in submission order, each seeing the one before."""
        conn = await session.connection()
        dialect = conn.dialect.name
        if dialect == "postgresql":
            await conn.execute(_lock_messages(dialect), {"ids": sorted({op.message_id for op in ops})})
        shapes: dict[tuple[Any, ...], list[MarkOp]] = {}
        for op in ops:
            shapes.setdefault((tuple(op.expect), tuple(sorted(op.values)), op.fence), []).append(op)
        applied: set[int] = set()
        for (expect, columns, fence), group in shapes.items():
            ids = sorted({op.message_id for op in group})
            movable = {r.id for r in (await conn.execute(_mark_match_statement(dialect, expect, fence is not None),
                                                         {"ids": ids, "fence": fence})).all()}
            first: dict[int, MarkOp] = {}
            for op in group:  # a row marked twice here: only the first finds it in an expected state
                if op.message_id in movable and op.message_id not in first:
                    first[op.message_id] = op
            if first:
                await conn.execute(_mark_statement(dialect, expect, columns, fence is not None),
                                   [{**{f"v_{k}": v for k, v in op.values.items()}, "mid": op.message_id,
                                     "fence": op.fence} for _, op in sorted(first.items())])
                applied.update(id(op) for op in first.values())
        return [id(op) in applied for op in ops]


def _fence_condition(dialect: str) -> Any:
    table, conv = Message.__table__, Conversation.__table__
    return exists().where(conv.c.app == table.c.app, conv.c.openid == table.c.openid,
                          conv.c.send_lease_owner == bindparam("fence"),
                          # the clock as the statement applies (a mark that waited for locks is
                          # checked against the moment it applies, not its transaction's start)
                          conv.c.send_lease_until > db_now(dialect, live=True))


def _mark_match_statement(dialect: str, expect: tuple[str, ...], fenced: bool) -> Any:
    """Which of the given rows are in one of ``expect`` (and, fenced, still under this sender's lease)."""
    from csbot.store.statements import cached

    def build(_: Any) -> Any:
        table = Message.__table__
        where = [table.c.id.in_(bindparam("ids", expanding=True)), table.c.status.in_(expect)]
        if fenced:
            where.append(_fence_condition(dialect))
        return select(table.c.id).where(*where)
    return cached(dialect, f"outbox_mark_match:{','.join(expect)}:{fenced}", build)


def _lock_messages(dialect: str) -> Any:
    """SELECT … FOR UPDATE of the given message rows, in id order (PostgreSQL)."""
    from csbot.store.statements import cached

    table = Message.__table__
    return cached(dialect, "lock_messages", lambda _: (
        select(table.c.id).where(table.c.id.in_(bindparam("ids", expanding=True)))
        .order_by(table.c.id).with_for_update()))


def _mark_statement(dialect: str, expect: tuple[str, ...], columns: tuple[str, ...], fenced: bool) -> Any:
    """The UPDATE of one mark's shape (expected states, columns set, fenced or not), built once."""
    from csbot.store.statements import cached

    def build(_: Any) -> Any:
        table = Message.__table__
        # the states inline, not as an expanding parameter: executemany cannot expand one
        states = [literal_column("'%s'" % OutboundStatus(state).value) for state in expect]
        where = [table.c.id == bindparam("mid"), table.c.status.in_(states)]
        if fenced:
            where.append(_fence_condition(dialect))
        return update(table).where(*where).values({c: bindparam(f"v_{c}") for c in columns})
    return cached(dialect, f"outbox_mark:{','.join(expect)}:{','.join(columns)}:{fenced}", build)


# --------------------------------------------------------------------------- creating outbound rows
# The outbox is the one place that makes outbound rows: handlers' replies (through the inbox),
# agents' and operators' messages (through the review) all become rows here.


class ReplyNotSendable(ValueError):
    """A reply whose send body cannot be built or stored (e.g. a ``Decimal`` in a text)."""


@dataclass(frozen=True)
class OutboundMessage:
    """One reply, checked and serialised, ready to be queued in some transaction."""

    app: str
    openid: str
    msg_type: str
    text: str | None
    raw: str
    author: str
    in_reply_to: int | None
    #: unique per app in the store: queuing the same key twice queues it once
    key: str


def outbound_message(app: str, openid: str, reply: Any, *, author: str, in_reply_to: int | None = None,
                     key: str | None = None) -> OutboundMessage:
    """Check and serialise ``reply`` now, so a reply that cannot be sent fails where it is made.

    ``key`` makes queuing idempotent (a handler's reply: push id and reply index); without one
    the message is new each time. Raises :class:`ReplyNotSendable`.
    """
    from csbot.messages import as_reply, send_body

    try:
        message = as_reply(reply)
        if message is None:
            raise ReplyNotSendable("nothing to send")
        raw = json.dumps(send_body(message, openid), ensure_ascii=False)
        text = message.describe()
        if text is not None and not isinstance(text, str):
            raise TypeError(f"its text is a {type(text).__name__}, not a str")
        raw.encode("utf-8")  # a lone surrogate would fail the whole commit later
        (text or "").encode("utf-8")
    except ReplyNotSendable:
        raise
    except (TypeError, ValueError, UnicodeError, AttributeError) as exc:
        kind = getattr(reply, "msgtype", None) or type(reply).__name__
        raise ReplyNotSendable(f"reply ({kind}) cannot be sent: {exc}") from exc
    return OutboundMessage(app=app, openid=openid, msg_type=message.msgtype, text=text, raw=raw,
                           author=author, in_reply_to=in_reply_to, key=f"out:{key or uuid.uuid4().hex}")


async def queue_messages(conn: Any, messages: Sequence[OutboundMessage], *, now: float | None = None
                         ) -> list[int | None]:
    """Insert ``messages`` as ``queued`` rows in the caller's transaction, in order.

    Returns each row's id, or None where a message with the same key is already stored (a
    handler re-run after a crash does not send its replies twice). Wake the sender after commit.
    """
    if not messages:
        return []
    from csbot.store.statements import cached

    now = time.time() if now is None else now
    table = Message.__table__
    stmt = cached(conn.dialect.name, "queue_outbound", lambda insert: (
        insert(table).on_conflict_do_nothing(index_elements=["app", "dedup_key"])
        .returning(table.c.id, table.c.app, table.c.dedup_key)))
    rows = [dict(app=m.app, openid=m.openid, direction="out", msg_type=m.msg_type, event=None, text=m.text,
                 raw=m.raw, dedup_key=m.key, created_at=now, received_at=now, status=QUEUED, author=m.author,
                 in_reply_to=m.in_reply_to, attempts=0, next_attempt_at=now) for m in messages]
    result = await conn.execute(stmt, rows)
    ids = {(r.app, r.dedup_key): r.id for r in result.all()}
    return [ids.get((m.app, m.key)) for m in messages]


def backoff_delay(attempt: int, base: float, cap: float = 600.0) -> float:
    """Exponential backoff with full jitter: uniform(base/2, base * 2**(attempt-1)), capped."""
    high = min(cap, base * (2 ** max(attempt - 1, 0)))
    return random.uniform(min(base / 2, high), high)


class Outbox:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        writer: BatchWriter,
        openapi_for: Callable[[str], Any],
        *,
        instance_id: str | None = None,
        metrics: Any = None,
    ) -> None:
        from csbot.openapi.client import default_instance_id

        self.metrics = metrics
        #: called with (row, state) when a reply reaches a state; set by the app (webhooks)
        self.on_state: Callable[[Any, str], None] | None = None
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.writer = writer
        self.openapi_for = openapi_for
        self.instance_id = instance_id or default_instance_id()
        self.leases = LeaseKeeper(lambda op: self.writer.run(op), kind="send_lease", owner=self.instance_id,
                                  seconds=settings.lease_seconds)
        self._wake = asyncio.Event()
        self._lanes: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._sem = asyncio.Semaphore(settings.worker_concurrency)

    def wake(self) -> None:
        self._wake.set()

    def _reads(self) -> Any:
        """A connection for the hot path's reads (no ORM session: nothing to track)."""
        return read_connection(self.sessionmaker)

    async def enqueue(self, app: str, openid: str, reply: Any, *, author: str,
                      in_reply_to: int | None = None, key: str | None = None) -> int | None:
        """Queue a message in a transaction of its own and wake the sender; returns its id.

        For a message that is part of a larger change, call :func:`queue_messages` inside that
        change's transaction and :meth:`wake` after it commits.
        """
        message = outbound_message(app, openid, reply, author=author, in_reply_to=in_reply_to, key=key)
        async with self.sessionmaker() as s, s.begin():
            (message_id,) = await queue_messages(await s.connection(), [message])
        self._wake.set()
        return message_id

    async def retry(self, message_id: int, *, actor: str | None = None) -> bool:
        """Queue a ``failed``, ``dead`` or ``quota_exceeded`` reply again, as if new.

        It goes through the same path as every reply: the user's lane (in order), the quota
        check, backoff and ``max_send_attempts`` afresh. False if the row is not in one of
        those states (already retried, or never failed).
        """
        now = time.time()
        async with self.sessionmaker() as s, s.begin():
            res = await s.execute(update(Message).where(
                Message.id == message_id, Message.direction == "out", Message.status.in_(RETRYABLE))
                .values(status=QUEUED, attempts=0, next_attempt_at=now, errcode=None, errmsg=None,
                        error=f"retried by {actor}" if actor else "retried"))
        if res.rowcount != 1:  # type: ignore[attr-defined]
            return False
        log.info("reply %s queued again by %s", message_id, actor or "an operator")
        self._wake.set()
        return True

    async def outcome(self, message_id: int, *, wait: float = 0.0) -> dict[str, Any]:
        """Where an outbound message stands, ``{"status", "errcode", "errmsg"}``, waiting up to
        ``wait`` seconds for it to leave the queue (e.g. a function that reports the send)."""
        deadline = time.monotonic() + wait
        while True:
            async with self.sessionmaker() as s:
                row = (await s.execute(select(Message.status, Message.errcode, Message.errmsg, Message.error)
                                       .where(Message.id == message_id, Message.direction == "out"))).first()
            if row is None:
                raise KeyError(f"no outbound message {message_id}")
            if row.status not in OUTBOUND_UNSETTLED or time.monotonic() >= deadline:
                return {"status": OutboundStatus(row.status), "errcode": row.errcode,
                        "errmsg": row.errmsg or row.error}
            await asyncio.sleep(0.05)

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._dispatch_loop(), name="csbot-outbox-dispatch"))
        self.leases.start()

    async def drain(self, seconds: float) -> None:
        """Stop taking work; let the sends in flight finish (at most ``seconds``)."""
        self._stopping = True
        self._wake.set()
        lanes = list(self._lanes.values())
        if lanes:
            await asyncio.wait(lanes, timeout=max(seconds, 0.0))

    async def close(self) -> None:
        """Stop now: what is still running is cancelled (its ``sending`` row stays in doubt)."""
        self._stopping = True
        for t in [*self._tasks, *self._lanes.values()]:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._lanes.values(), return_exceptions=True)
        self._tasks.clear()
        await self.leases.stop()
        try:
            await asyncio.wait_for(self.leases.release_all(), 5)
        except Exception:
            pass

    async def recover(self) -> None:
        """At start on SQLite (one process, csbot.store.engine.hold_sqlite_file): every send
        lease belongs to a process that is gone, so lanes with a ``sending`` head are free to be
        settled at once instead of after the lease runs out."""
        if self.settings.is_sqlite:
            async with self.sessionmaker() as s, s.begin():
                await s.execute(update(Conversation).where(Conversation.send_lease_owner.is_not(None))
                                .values(send_lease_owner=None, send_lease_until=None))

    async def _dispatch_loop(self) -> None:
        next_due: float | None = None
        while not self._stopping:
            timeout = POLL_SECONDS if next_due is None else min(POLL_SECONDS, max(next_due, 0.0))
            await wait_event(self._wake, timeout)
            self._wake.clear()
            if self._stopping:
                return
            try:
                next_due = await self._dispatch_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("outbox dispatch failed; retrying")
                await asyncio.sleep(1.0)
            # a short pause lets one scan serve the many commits that woke it meanwhile
            await asyncio.sleep(DISPATCH_PAUSE)

    async def _dispatch_once(self) -> float | None:
        """Start a lane for every user whose head reply is due and whose lane is free.

        Returns the seconds until the earliest head still waiting out a backoff is due.
        """
        async with self._reads() as conn:
            rows = (await conn.execute(_heads_statement(conn.dialect.name))).all()
        keys: list[tuple[str, str]] = []
        next_due: float | None = None
        for r in rows:
            key = (r.app, r.openid)
            if key in self._lanes:
                continue
            if r.send_lease_owner not in (None, self.instance_id) and (r.send_lease_until or 0) >= r.now:
                continue  # another live process holds this lane; it is that process's work
            wait = (r.next_attempt_at or 0) - r.now if r.status != SENDING else 0.0
            if wait > 0:
                next_due = wait if next_due is None else min(next_due, wait)
                continue  # in backoff: costs nothing until due
            keys.append(key)
        if keys:
            got = await self.leases.acquire([dict(app=app, openid=openid) for app, openid in keys])
            for key, taken in zip(keys, got):
                if taken is not None:
                    lease = taken[0]
                    self._lanes[key] = asyncio.create_task(self._run_lane(lease), name=f"csbot-send-{key[1]}")
        return next_due

    async def _run_lane(self, lease: Lease) -> None:
        app, openid = lease.key
        try:
            async with self._sem:
                while not self._stopping and lease.valid():
                    async with self._reads() as conn:
                        unfinished = (await conn.execute(_lane_head_statement(conn.dialect.name),
                                                         {"app": app, "openid": openid})).all()
                    if not unfinished:
                        break
                    head = unfinished[0]
                    if head.status == SENDING:
                        # we hold the lease, so whoever marked it is gone: settle it before anything later
                        if not await self._settle_abandoned(head):
                            break
                        continue
                    if (head.next_attempt_at or 0) > time.time():
                        break  # in order: a reply in backoff holds back the later ones
                    if not await self._deliver(head, lease):
                        break
                    if len(unfinished) == 1:
                        break  # that was the last: a reply queued since wakes the dispatcher, which
                        # starts the lane again once this one is released
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("send lane %s/%s stopped on an error; it will be retried", app, openid)
            await asyncio.sleep(1.0)
        finally:
            self._lanes.pop(lease.key, None)
            if not self._stopping:
                try:
                    await self.leases.release(lease)
                except Exception:
                    log.warning("could not release send lane %s/%s; its lease will expire", app, openid)
                self._wake.set()

    def _ambiguous(self, row: Message, attempt: int, what: str) -> dict[str, Any]:
        """The row's next state when its request may have reached WeChat."""
        note = f"in doubt: {what}"[:2000]
        if self.settings.ambiguous_sends == "at_most_once":
            log.warning("reply %s to %s is in doubt (%s); not sent again (at_most_once)", row.id, row.openid, what)
            return {"status": FAILED, "error": note + "; not sent again (at_most_once)"}
        if attempt >= self.settings.max_send_attempts:
            return {"status": DEAD, "error": note + f"; dead after {attempt} attempts"}
        delay = backoff_delay(attempt, self.settings.retry_base_delay)
        log.warning("reply %s to %s is in doubt (%s); sending it again in %.1fs (at_least_once)",
                    row.id, row.openid, what, delay)
        return {"status": IN_DOUBT, "error": note + "; sent again (the customer may see it twice)",
                "next_attempt_at": time.time() + delay}

    async def _settle_abandoned(self, row: Message) -> bool:
        """A ``sending`` row whose sender died (or lost its lease) mid-send; False if our own
        lease is gone meanwhile (the mark is fenced: only the lane's holder settles it)."""
        values = self._ambiguous(row, row.attempts, "the process sending it stopped during the send")
        if values["status"] == IN_DOUBT:
            values["next_attempt_at"] = time.time()  # it waited long enough: the lease ran out
        if not await self.writer.run(MarkOp(row.id, (SENDING,), values, fence=self.instance_id)):
            return False
        self._count(row, values["status"])
        return True

    def _quota_refusal(self, row: Any) -> str | None:
        """Why WeChat's reply quota would refuse this reply now, or None if it is within quota.

        The allowance starts again at each user action (a message, or entering the chat), as
        WeChat counts it: from the latest action received, handled or not. ``row`` is a lane
        head: it carries the user's latest action and the replies sent since (``quota_*``).
        """
        if row.quota_action_at is None:
            return None  # nothing known about the window (e.g. an Official Account): WeChat decides
        if row.quota_action_type == "event":
            limit, window = self.settings.quota_replies_on_enter, self.settings.quota_enter_window_seconds
        else:
            limit, window = self.settings.quota_replies_per_message, self.settings.quota_window_seconds
        age = time.time() - row.quota_action_at
        if age > window:
            return f"reply window closed: the user's last action was {int(age)}s ago (window {window}s)"
        if row.quota_used >= limit:
            return f"reply quota used: {row.quota_used} of {limit} replies since the user's last action"
        return None

    def _count(self, row: Message, state: str) -> None:
        if self.metrics is not None:
            self.metrics.sends.labels(row.app, state).inc()
        if self.on_state is not None:  # outbound webhooks (csbot.outbound_webhooks): message.sent / .failed
            self.on_state(row, state)

    async def _deliver(self, row: Message, lease: Lease) -> bool:
        """Send one reply; False when the lane must stop (its lease is gone)."""
        # subscribe/template messages need a consent (or form_id), not the reply window
        refusal = self._quota_refusal(row) if row.msg_type not in NOTICE_TYPES else None
        if row.msg_type == SubscribeMessage.msgtype and not await self._has_consent(row.app, row.openid, row.raw):
            await self.writer.run(MarkOp(row.id, DUE_STATUSES, {
                "status": FAILED, "errcode": 43101,
                "errmsg": "not sent: the user has no consent left for this template (csbot's record)"}))
            self._count(row, FAILED)
            return True
        if refusal is not None:
            refusal += await self._subscribe_fallback(row)
            await self.writer.run(MarkOp(row.id, DUE_STATUSES, {"status": QUOTA, "error": refusal}))
            self._count(row, QUOTA)
            log.info("reply %s to %s not sent: %s", row.id, row.openid, refusal)
            return True
        attempt = row.attempts + 1
        openapi = self.openapi_for(row.app)
        body = json.loads(row.raw)
        body.pop(FALLBACK_KEY, None)
        try:
            # everything that may wait comes before the `sending` mark: media upload, the
            # token, the rate limiter's slot
            body = await self._resolve_media(openapi, body)
            await openapi.tokens.get()
            await openapi.transport.reserve()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            values = self._failure(row, attempt, exc, sent=False)
            await self.writer.run(MarkOp(row.id, DUE_STATUSES, {**values, "attempts": attempt}))
            self._count(row, "retry" if values["status"] == QUEUED else values["status"])
            return True
        if not lease.valid():
            return False
        marked = await self.writer.run(MarkOp(row.id, DUE_STATUSES, {
            "status": SENDING, "attempts": attempt, "sent_at": time.time()}, fence=self.instance_id))
        if not marked:
            log.warning("send lane %s/%s: lease lost before reply %s; stopping", row.app, row.openid, row.id)
            lease.lose()
            return False
        if not lease.valid():
            # the mark came back late (a stalled writer or loop): the lease may have run out
            # meanwhile and another process be settling this row; nothing has left, give it back
            log.warning("send lane %s/%s: lease ran out while reply %s was marked; stopping", row.app,
                        row.openid, row.id)
            await self.writer.run(MarkOp(row.id, (SENDING,), {
                "status": row.status, "attempts": row.attempts, "sent_at": row.sent_at}))
            return False
        try:
            await self._send(openapi, body)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            values = self._failure(row, attempt, exc, sent=True)
            if values["status"] == QUOTA:
                values["error"] += await self._subscribe_fallback(row)
            if getattr(exc, "errcode", None) == 43101 and row.msg_type == SubscribeMessage.msgtype:
                await forget_consents(self.sessionmaker, row.app, row.openid, body["subscribe"]["template_id"])
            await self._mark_after_send(row, values)
            return True
        if row.msg_type == SubscribeMessage.msgtype:  # spent before the row says sent: readers see both
            await spend_consent(self.sessionmaker, row.app, row.openid, body["subscribe"]["template_id"])
        await self._mark_after_send(row, {"status": SENT, "sent_at": time.time(), "errcode": 0, "errmsg": None})
        return True

    async def _mark_after_send(self, row: Message, values: dict[str, Any]) -> None:
        applied = await self.writer.run(MarkOp(row.id, (SENDING,), values))
        state = values["status"]
        if not applied:
            # another process settled it meanwhile (our lease ran out during the send)
            log.warning("reply %s to %s: could not record %s (the row was settled by another sender "
                        "after this lane's lease ran out); it may be sent twice", row.id, row.openid, state)
        self._count(row, "retry" if state == QUEUED else state)

    def _failure(self, row: Message, attempt: int, exc: Exception, *, sent: bool) -> dict[str, Any]:
        """The row's next state after ``exc``; ``sent``: the request may have been written."""
        from csbot.openapi import APITransportError, WeChatAPIError, is_transient  # local: openapi imports the store

        errcode = getattr(exc, "errcode", None)
        errmsg = getattr(exc, "errmsg", None) or str(exc) or type(exc).__name__
        if sent and isinstance(exc, APITransportError) and exc.maybe_delivered:
            return {**self._ambiguous(row, attempt, errmsg), "errcode": None, "errmsg": errmsg}
        if is_transient(exc) or (isinstance(exc, WeChatAPIError) and exc.errcode in (40001, 40014, 42001)):
            if attempt >= self.settings.max_send_attempts:
                log.warning("reply %s to %s dead-lettered after %d attempts: %s", row.id, row.openid,
                            attempt, errmsg)
                return {"status": DEAD, "errcode": errcode, "errmsg": errmsg,
                        "error": f"dead after {attempt} attempts"}
            delay = backoff_delay(attempt, self.settings.retry_base_delay)
            log.info("reply %s to %s: transient failure (%s), retry in %.1fs", row.id, row.openid, errmsg, delay)
            return {"status": QUEUED, "errcode": errcode, "errmsg": errmsg, "next_attempt_at": time.time() + delay}
        if isinstance(exc, WeChatAPIError) and exc.errcode in (45015, 45047):
            # WeChat's window or quota refused it after all: same as our own quota check
            log.info("reply %s to %s refused by WeChat's quota: %s", row.id, row.openid, errmsg)
            return {"status": QUOTA, "errcode": errcode, "errmsg": errmsg,
                    "error": "refused by WeChat's reply quota"}
        if isinstance(exc, WeChatAPIError):
            log.warning("reply %s to %s failed permanently: %s %s", row.id, row.openid, errcode, errmsg)
            return {"status": FAILED, "errcode": errcode, "errmsg": errmsg}
        log.warning("reply %s to %s failed: %r", row.id, row.openid, exc)
        return {"status": FAILED, "errmsg": errmsg, "error": repr(exc)[:2000]}

    @staticmethod
    async def _send(openapi: Any, body: dict[str, Any]) -> None:
        """One send through the API its kind needs (customer service, subscribe, template)."""
        kind = body.get("msgtype")
        if kind == SubscribeMessage.msgtype:
            await openapi.subscribe_message.send(touser=body["touser"], **body[kind])
        elif kind == TemplateMessage.msgtype:
            await openapi.template_message.send(touser=body["touser"], **body[kind])
        else:
            await openapi.customer_service_message.send(**body)

    async def _has_consent(self, app: str, openid: str, raw: str) -> bool:
        """False only when csbot knows the user has no consent left for the template."""
        template_id = (json.loads(raw).get(SubscribeMessage.msgtype) or {}).get("template_id", "")
        return await consents_left(self.sessionmaker, app, openid, template_id) != 0

    async def _subscribe_fallback(self, row: Message) -> str:
        """Send the reply's subscribe fallback, if it has one; returns a note for the row."""
        fallback = json.loads(row.raw).get(FALLBACK_KEY)
        if not fallback or not self.settings.quota_subscribe_fallback:
            return ""
        template_id = fallback.get("template_id", "")
        if await consents_left(self.sessionmaker, row.app, row.openid, template_id) == 0:
            return f"; subscribe fallback {template_id} not sent: the user has no consent left"
        try:
            await self.openapi_for(row.app).subscribe_message.send(touser=row.openid, **fallback)
        except Exception as exc:
            code = getattr(exc, "errcode", None)
            log.info("subscribe fallback for reply %s failed: %s", row.id, exc)
            if code == 43101:
                await forget_consents(self.sessionmaker, row.app, row.openid, template_id)
            return f"; subscribe fallback {template_id} failed ({code}: {getattr(exc, 'errmsg', exc)})"
        await spend_consent(self.sessionmaker, row.app, row.openid, template_id)
        return f"; sent subscribe message {template_id} instead"

    async def _resolve_media(self, openapi: Any, body: dict[str, Any]) -> dict[str, Any]:
        """An image reply given as bytes or a path is uploaded (media_id cached 3 days)."""
        image = body.get("image")
        if not isinstance(image, dict) or "media_id" in image:
            return body
        from csbot.openapi.media import upload_image_cached
        if "data_hex" in image:
            data = bytes.fromhex(image["data_hex"])
        else:
            data = await asyncio.to_thread(lambda: open(image["path"], "rb").read())
        media_id = await upload_image_cached(openapi, self.sessionmaker, data)
        return {**body, "image": {"media_id": media_id}}



# --------------------------------------------------------------------------- hot statements, built once


def _heads_statement(dialect: str) -> Any:
    """Every user's head reply (oldest unfinished) whose send lane is free, with the database's now.

    Lanes held by a live sender, this process's running lanes included, are left out in SQL:
    under load most heads are in a running lane, and reading them again on every wake-up
    would cost as much as sending.
    """
    from csbot.store.statements import cached

    def build(_: Any) -> Any:
        now = db_now(dialect)
        heads = (select(func.min(Message.id)).where(Message.direction == "out", Message.status.in_(UNFINISHED))
                 .group_by(Message.app, Message.openid))
        return (select(Message.id, Message.app, Message.openid, Message.status, Message.next_attempt_at,
                       Conversation.send_lease_owner, Conversation.send_lease_until, now.label("now"))
                .select_from(Message.__table__.outerjoin(
                    Conversation.__table__,
                    (Conversation.app == Message.app) & (Conversation.openid == Message.openid)))
                .where(Message.id.in_(heads),
                       or_(Conversation.send_lease_owner.is_(None), Conversation.send_lease_until < now))
                .order_by(Message.id).limit(2000))
    return cached(dialect, "outbox_heads", build)


def _lane_head_statement(dialect: str) -> Any:
    """One user's oldest unfinished replies (the lane's head, and whether another follows),
    every column, with what the reply quota needs: the user's latest action (a message, or
    entering the chat) and how many replies were sent since, besides the row itself.

    One round trip per reply. WeChat's allowance starts again at each user action, counted
    from the latest action received, handled or not.
    """
    from csbot.inbox import USER_MESSAGE_TYPES
    from csbot.store.statements import cached

    def build(_: Any) -> Any:
        table = Message.__table__
        action = table.alias("action")
        latest = table.alias("latest")
        sent = table.alias("sent")
        latest_id = (select(latest.c.id).where(
            latest.c.app == table.c.app, latest.c.openid == table.c.openid, latest.c.direction == "in",
            or_(latest.c.msg_type.in_(USER_MESSAGE_TYPES),
                (latest.c.msg_type == "event") & (latest.c.event == "user_enter_tempsession")))
            .order_by(latest.c.id.desc()).limit(1).scalar_subquery())
        used = (select(func.count()).select_from(sent).where(
            sent.c.app == table.c.app, sent.c.openid == table.c.openid, sent.c.direction == "out",
            sent.c.status.in_((SENT, SENDING, IN_DOUBT)), sent.c.id != table.c.id,
            sent.c.msg_type.notin_(NOTICE_TYPES), sent.c.sent_at >= action.c.received_at)
            .scalar_subquery())
        return (select(table, action.c.received_at.label("quota_action_at"),
                       action.c.msg_type.label("quota_action_type"), used.label("quota_used"))
                .select_from(table.outerjoin(action, action.c.id == latest_id))
                .where(table.c.app == bindparam("app"), table.c.openid == bindparam("openid"),
                       table.c.direction == "out", table.c.status.in_(UNFINISHED))
                .order_by(table.c.id).limit(2))
    return cached(dialect, "outbox_lane_head", build)
