"""The durable inbox: intake (deduplicated, group-committed) and the workers that handle it.

Intake: the webhook calls ``Inbox.accept`` and answers WeChat only once the push is committed.
Pushes are keyed per app for deduplication, so a retry or a concurrent duplicate makes no
second record.

Handling: each user's pushes are a lane. A worker takes a lane by leasing its conversation row
(an atomic UPDATE, so two processes on one PostgreSQL database never hold the same lane),
handles that user's pending pushes in order, one at a time, and writes each outcome together
with the replies it produced (one transaction, group-committed across lanes). Different users
run in parallel. Pushes left pending by a crash are found again at start and when leases expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import traceback
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Any, Awaitable, Callable, Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from csbot.aio import wait_event
from csbot.config import Settings
from csbot import conversations
from csbot.context import ConversationInfo, Context, HandlerOpenAPI, MessageInfo, PushLogger
from csbot.conversations import Activity
from csbot.messages import (OFFICIAL_ACCOUNT_ONLY, PASSIVE_TYPES, Image, PassiveReply, Reply, Text,
                            TransferCustomerService, as_reply)
from csbot.outbox import OutboundMessage, ReplyNotSendable, outbound_message, queue_messages
from csbot.routing import NEXT, Route, Router
from csbot.statuses import INBOUND_UNSETTLED, OUTBOUND_UNSETTLED, ConversationStatus, InboundStatus
from csbot.store import Conversation, Message, User
from csbot.store.batch import BatchWriter
from csbot.store.engine import read_connection
from csbot.store.leases import Lease, LeaseKeeper, db_now
from csbot.store.statements import cached as _cached, dialect_of as _dialect
from csbot.store.users import remember_unionid
from csbot.wire import Push

log = logging.getLogger("csbot.inbox")

PENDING, INLINE, DONE, FAILED = (InboundStatus.PENDING, InboundStatus.INLINE, InboundStatus.DONE,
                                 InboundStatus.FAILED)
USER_MESSAGE_TYPES = frozenset({"text", "image", "voice", "video", "shortvideo", "location", "link",
                                "file", "miniprogrampage"})


def user_action_kind(event: dict[str, Any]) -> str | None:
    """What opens WeChat's reply window: a user message, or entering the chat."""
    if event.get("MsgType") in USER_MESSAGE_TYPES:
        return "message"
    if event.get("MsgType") == "event" and str(event.get("Event", "")).lower() == "user_enter_tempsession":
        return "enter"
    return None


# --------------------------------------------------------------------------- write operations


_MSG = Message.__table__
_CONV = Conversation.__table__
_USER = User.__table__
def _intake_order(op: "IntakeOp") -> tuple[str, str, float]:
    """Rows of an intake batch in user order, then WeChat's CreateTime (a stable sort: then arrival).

    A row inserted waits on a duplicate another process inserted and has not committed yet
    (WeChat resends a push, maybe to the other process). Two processes holding the same pushes
    of two users in opposite arrival orders would wait on each other; in user order they cannot.
    A user's pushes keep the order WeChat gave them, so ids (handling order) are not reshuffled.
    """
    return op.row["app"], op.row["openid"], op.row["created_at"]


@dataclass
class IntakeOp:
    """Insert one verified push; ON CONFLICT DO NOTHING makes retries free."""

    row: dict[str, Any]
    batch_kind: str = "intake"

    async def apply_many(self, session: AsyncSession, ops: Sequence["IntakeOp"]) -> list[tuple[int | None, bool]]:
        stmt = _cached(_dialect(session), "intake", lambda insert: (
            insert(_MSG).on_conflict_do_nothing(index_elements=["app", "dedup_key"])
            .returning(_MSG.c.id, _MSG.c.app, _MSG.c.dedup_key)))
        conn = await session.connection()
        result = await conn.execute(stmt, [op.row for op in sorted(ops, key=_intake_order)])
        inserted = {(r.app, r.dedup_key): r.id for r in result.all()}
        results: list[tuple[int | None, bool]] = []
        for op in ops:
            key = (op.row["app"], op.row["dedup_key"])
            if key in inserted:
                results.append((inserted.pop(key), True))  # first of a duplicate pair is "new"
            else:
                results.append((None, False))
        return results


@dataclass
class OutcomeOp:
    """Record a handler's outcome and queue its replies, atomically.

    Whether the replies may go out is decided here, inside the transaction that queues them:
    if a person took the conversation over while the handler ran, they are withheld (noted on
    the push) unless the route runs ``while_human``.
    """

    message_id: int
    status: str
    handler: str | None
    error: str | None
    #: prepared by the outbox (:func:`csbot.outbox.outbound_message`)
    replies: list[OutboundMessage]
    activity: Activity
    while_human: bool = False
    passive_reply: str | None = None
    media_path: str | None = None
    #: fileID of the image the customer sent, kept in storage
    file_id: str | None = None
    expect: str = PENDING
    #: the lane's conversation row (None inline): locked up front by the writer, in id order
    conversation_id: int | None = None
    batch_kind: str = "outcome"
    #: set when applied: replies were queued / withheld because a person has the conversation
    queued: bool = field(default=False, init=False)
    withheld: bool = field(default=False, init=False)

    def locks(self) -> tuple[int | tuple[str, str], ...]:
        """The conversation row this outcome updates: the lane's, or (inline) the user's."""
        if self.conversation_id is not None:
            return (self.conversation_id,)
        return ((self.activity.app, self.activity.openid),)

    def _params(self, now: float) -> dict[str, Any]:
        return {"mid": self.message_id, "expect": self.expect, "status": self.status,
                "handler": self.handler, "error": self.error, "handled_at": now,
                "passive_reply": self.passive_reply, "media_path": self.media_path,
                "file_id": self.file_id}

    async def apply_many(self, session: AsyncSession, ops: Sequence["OutcomeOp"]) -> list[bool]:
        from sqlalchemy import bindparam, func

        dialect = _dialect(session)
        conn = await session.connection()
        now = time.time()
        set_outcome = _cached(dialect, "outcome", lambda _: (
            update(_MSG).where(_MSG.c.id == bindparam("mid"), _MSG.c.status == bindparam("expect"))
            .values(status=bindparam("status"), handler=bindparam("handler"), error=bindparam("error"),
                    handled_at=bindparam("handled_at"), passive_reply=bindparam("passive_reply"),
                    media_path=func.coalesce(bindparam("media_path"), _MSG.c.media_path),
                    file_id=func.coalesce(bindparam("file_id"), _MSG.c.file_id))))
        # inline: the lane (and so the conversation row) may not exist yet
        await conversations.ensure(conn, [(op.activity.app, op.activity.openid) for op in ops
                                          if op.expect != PENDING], now)
        # outcomes that send nothing: one executemany (nothing else depends on their row count)
        plain = [op for op in ops if not op.replies and op.passive_reply is None and op.expect == PENDING]
        if plain:
            await conn.execute(set_outcome, [op._params(now) for op in sorted(plain, key=lambda o: o.message_id)])
            await conversations.record_activity(conn, [op.activity for op in plain], now)
        results: dict[int, bool] = {id(op): True for op in plain}
        answering = [op for op in ops if id(op) not in results]
        queued: list[OutboundMessage] = []
        if answering:
            # which pushes are still this run's (PostgreSQL: locked, in id order), and each
            # conversation's status as of this transaction (its row is updated, so held to commit)
            current = await _statuses_for_update(conn, sorted({op.message_id for op in answering}))
            statuses = await conversations.record_activity_and_statuses(
                conn, [replace(op.activity, transferred=False) for op in answering], now)
            mine: dict[int, OutcomeOp] = {}
            transferred: list[Activity] = []
            params = []
            for op in sorted(answering, key=lambda o: o.message_id):
                if current.get(op.message_id) != op.expect or op.message_id in mine:
                    results[id(op)] = False  # someone else finished it; its replies are not ours
                    continue
                mine[op.message_id] = op
                results[id(op)] = True
                p = op._params(now)
                allowed = conversations.bot_may_answer(statuses.get((op.activity.app, op.activity.openid)),
                                                       while_human=op.while_human)
                if not allowed:
                    p["passive_reply"] = None
                    p["error"] = "; ".join(filter(None, [op.error, WITHHELD]))
                params.append(p)
                op.withheld = not allowed and bool(op.replies or op.passive_reply)
                if allowed:
                    queued.extend(op.replies)
                    op.queued = bool(op.replies)
                    if op.activity.transferred:
                        transferred.append(op.activity)
            if params:
                await conn.execute(set_outcome, params)
            if transferred:
                await conversations.record_activity(conn, transferred, now)
        await queue_messages(conn, queued, now=now)
        return [results[id(op)] for op in ops]


async def _statuses_for_update(conn: Any, ids: list[int]) -> dict[int, str]:
    """The statuses of pushes ``ids``; on PostgreSQL their rows are locked, in id order."""
    from sqlalchemy import bindparam

    dialect = conn.dialect.name

    def build(_: Any) -> Any:
        stmt = select(_MSG.c.id, _MSG.c.status).where(_MSG.c.id.in_(bindparam("ids", expanding=True)))
        return stmt.order_by(_MSG.c.id).with_for_update() if dialect == "postgresql" else stmt
    return {r.id: r.status for r in (await conn.execute(_cached(dialect, "push_statuses_for_update", build),
                                                        {"ids": ids})).all()}


WITHHELD = "replies withheld: a person has taken the conversation over"


@dataclass
class Claim:
    """One handling attempt, started: its number and the conversation as it is now."""

    attempts: int
    last_error: str | None
    conversation_status: str
    unionid: str | None


#: ClaimOp's answer when an earlier push of the user is still unsettled (e.g. in an inline handler)
BLOCKED = "blocked"
#: how long a lane that met such a push waits before it gives the user back to the dispatcher
BLOCKED_PAUSE = 0.2


@dataclass
class ClaimOp:
    """Start a handling attempt of a pending push: count it durably, read the conversation now.

    The count comes before the handler runs, so a push that kills its handler or its process
    every time is still counted, and given up after ``max_handler_attempts``. A push waits
    while an earlier push of the same user is unsettled, e.g. in an inline handler: it comes first.
    """

    message_id: int
    app: str
    openid: str
    #: a UnionID the push carried, remembered for the user
    unionid: str | None = None
    batch_kind: str = "claim"

    def locks(self) -> tuple[tuple[str, str], ...]:
        """The user's conversation, locked before the user row a UnionID updates."""
        return ((self.app, self.openid),)

    async def apply_many(self, session: AsyncSession, ops: Sequence["ClaimOp"]) -> list[Claim | str | None]:
        """All claims of a batch in three statements: count the attempts (a push whose user has
        something earlier unsettled is not counted), read the conversations, and, for pushes
        not claimed, why."""
        from sqlalchemy import and_, bindparam, exists, tuple_

        dialect = _dialect(session)
        conn = await session.connection()
        earlier = _MSG.alias("earlier")
        claim = _cached(dialect, "claim_many", lambda _: (
            update(_MSG).where(
                _MSG.c.id.in_(bindparam("ids", expanding=True)), _MSG.c.status == PENDING,
                ~exists().where(and_(earlier.c.direction == "in", earlier.c.status.in_(INBOUND_UNSETTLED),
                                     earlier.c.app == _MSG.c.app, earlier.c.openid == _MSG.c.openid,
                                     earlier.c.id < _MSG.c.id)))
            .values(attempts=_MSG.c.attempts + 1).returning(_MSG.c.id, _MSG.c.attempts, _MSG.c.error)))
        state = _cached(dialect, "claim_states", lambda _: (
            select(_CONV.c.app, _CONV.c.openid, _CONV.c.status, _USER.c.unionid).select_from(_CONV.outerjoin(
                _USER, (_USER.c.app == _CONV.c.app) & (_USER.c.openid == _CONV.c.openid)))
            .where(tuple_(_CONV.c.app, _CONV.c.openid).in_(bindparam("keys", expanding=True)))))
        still = _cached(dialect, "claim_unclaimed", lambda _: (
            select(_MSG.c.id, _MSG.c.status).where(_MSG.c.id.in_(bindparam("ids", expanding=True)))))
        claimed = {r.id: r for r in (await conn.execute(
            claim, {"ids": sorted({op.message_id for op in ops})})).all()}
        unclaimed = sorted({op.message_id for op in ops} - claimed.keys())
        pending = {r.id for r in (await conn.execute(still, {"ids": unclaimed})).all()
                   if r.status == PENDING} if unclaimed else set()
        for op in sorted(ops, key=lambda o: (o.app, o.openid)):  # user rows in key order
            if op.unionid and op.message_id in claimed:
                await remember_unionid(conn, op.app, op.openid, op.unionid)
        keys = sorted({(op.app, op.openid) for op in ops if op.message_id in claimed})
        convs = {(r.app, r.openid): r for r in (await conn.execute(state, {"keys": keys})).all()} if keys else {}
        results: list[Claim | str | None] = []
        for op in ops:
            row = claimed.get(op.message_id)
            if row is None:
                results.append(BLOCKED if op.message_id in pending else None)
                continue
            conv = convs.get((op.app, op.openid))
            results.append(Claim(row.attempts, row.error,
                                 (conv.status if conv is not None else None) or ConversationStatus.BOT,
                                 conv.unionid if conv is not None else None))
        return results


@dataclass
class AttemptFailedOp:
    """Note why a handling attempt ended without an outcome (the push stays pending)."""

    message_id: int
    error: str
    batch_kind: str = "attempt_failed"

    async def apply_many(self, session: AsyncSession, ops: Sequence["AttemptFailedOp"]) -> list[None]:
        for op in sorted(ops, key=lambda o: o.message_id):  # row locks in id order
            await session.execute(update(_MSG).where(_MSG.c.id == op.message_id, _MSG.c.status == PENDING)
                                  .values(error=op.error[:2000]))
        return [None] * len(ops)


@dataclass
class ReplyOp:
    """Queue one reply now (``context.reply``), if the push is still this run's and the bot may answer."""

    message: OutboundMessage
    push_id: int
    #: the push's status while this run handles it
    expect: str
    while_human: bool = False
    batch_kind: str = "reply"

    def locks(self) -> tuple[tuple[str, str], ...]:
        """The conversation whose activity and status this reply records and reads."""
        return ((self.message.app, self.message.openid),)

    async def apply_many(self, session: AsyncSession, ops: Sequence["ReplyOp"]) -> list[bool]:
        conn = await session.connection()
        now = time.time()
        await conversations.ensure(conn, [(op.message.app, op.message.openid) for op in ops], now)
        results = []
        for op in ops:
            current = (await conn.execute(select(_MSG.c.status).where(_MSG.c.id == op.push_id))).scalar()
            if current != op.expect:
                results.append(False)  # another run finished this push: it is not ours to answer
                continue
            status = await conversations.record_activity_and_status(
                conn, Activity(op.message.app, op.message.openid), now)
            if not conversations.bot_may_answer(status, while_human=op.while_human):
                results.append(False)
                continue
            (queued_id,) = await queue_messages(conn, [op.message], now=now)
            results.append(queued_id is not None)  # None: queued by an earlier run of this handler
        return results


@dataclass
class StatusOp:
    """Move an inbound push from one status to another (e.g. inline → pending)."""

    message_id: int
    expect: str
    status: str
    batch_kind: str = "status"

    async def apply_many(self, session: AsyncSession, ops: Sequence["StatusOp"]) -> list[None]:
        from sqlalchemy import bindparam

        stmt = _cached(_dialect(session), "status", lambda _: update(_MSG).where(
            _MSG.c.id == bindparam("mid"), _MSG.c.status == bindparam("expect")).values(status=bindparam("new")))
        conn = await session.connection()
        await conn.execute(stmt, [{"mid": op.message_id, "expect": op.expect, "new": op.status}
                                  for op in sorted(ops, key=lambda o: o.message_id)])  # row locks in id order
        return [None] * len(ops)


#: seconds an idle lane keeps its lease, waiting for the user's next push
LANE_LINGER = 1.0
#: an ``inline`` push still inline this long (database clock) after a sweep first saw it was
#: abandoned by a process that died (budgets are < 5 s)
INLINE_ABANDONED_AFTER = 10.0
#: how often a running process looks for work abandoned by a process that died
SWEEP_SECONDS = 5.0
#: pushes read per dispatcher scan
DISPATCH_BATCH = 2000
#: an inline push whose user has something earlier unsettled checks again this often (within its budget)
INLINE_WAIT_STEP = 0.05


class _Lane:
    """One user's pushes, queued for the task that handles them in order."""

    def __init__(self, lease: Lease) -> None:
        self.key = lease.key
        self.lease = lease
        self.conversation_id = lease.conversation_id
        self.queue: deque[Any] = deque()
        #: every push offered to this lane (rescans offer rows again: each is taken once)
        self.seen: set[int] = set()
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def offer(self, row: Any) -> None:
        if row.id in self.seen:
            return
        self.seen.add(row.id)
        if self.queue and row.id < self.queue[-1].id:
            # committed late (ids are taken before commit): keep the queue in id order
            self.queue = deque(sorted([*self.queue, row], key=lambda r: r.id))
        else:
            self.queue.append(row)
        self.ready.set()


@dataclass
class Accepted:
    message_id: int | None
    new: bool


@dataclass
class HandlerResult:
    """What running the routes for one push produced."""

    status: str
    handler: str | None
    error: str | None
    #: replies still to queue with the outcome (those given with ``context.reply`` already are)
    replies: list[OutboundMessage] = field(default_factory=list)
    passive: Any = None
    #: the route that produced them answers even while a person has the conversation
    while_human: bool = False


class HandlerMisuse(Exception):
    """A handler asked for something csbot cannot do where it runs."""


class _Replies:
    """The replies of one handling run, numbered in order across its routes.

    Each gets the key ``<push id>:<source>:<index>``, unique in the store: if the handler runs
    again after a crash, it gives the same keys and nothing it had already queued goes twice.
    """

    def __init__(self, inbox: "Inbox", info: MessageInfo, source: str) -> None:
        self.inbox = inbox
        self.info = info
        self.source = source
        self._next = 0

    def prepare(self, reply: Any, *, author: str, openid: str | None = None,
                key_suffix: str | None = None) -> OutboundMessage:
        message = as_reply(reply)
        if message is not None:
            self.inbox._check_kind(self.info.app, message)  # e.g. an Official-Account-only type
        if key_suffix is None:
            key_suffix = str(self._next)
            self._next += 1
        return outbound_message(self.info.app, openid or self.info.openid, reply, author=author,
                                in_reply_to=self.info.id, key=f"{self.info.id}:{self.source}:{key_suffix}")

    def sender(self, route: Route) -> Callable[..., Awaitable[bool]]:
        """``context.reply`` of ``route``: the reply is committed to the outbox before it returns."""
        async def send(reply: Any, touser: str | None = None, key: str | None = None) -> bool:
            message = self.prepare(reply, author=route.name, openid=touser,
                                   key_suffix=None if key is None else f"key:{key}")
            queued = await self.inbox.writer.run(ReplyOp(message, self.info.id, self.info.status,
                                                         while_human=route.while_human))
            if queued:
                self.inbox.on_replies()
            return bool(queued)
        return send


def unionid_of(event: dict[str, Any]) -> str | None:
    """The UnionID a push carries, if any (WeChat adds it to some pushes of bound accounts)."""
    for name in ("UnionId", "UnionID", "unionid", "unionId"):
        value = event.get(name)
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


class Inbox:
    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        writer: BatchWriter,
        router: Router,
        *,
        openapi_for: Callable[[str], Any] | None = None,
        on_replies: Callable[[], None] | None = None,
        storage: Any = None,
        media_fetcher: Any = None,
        instance_id: str | None = None,
        metrics: Any = None,
        services: Any = None,
    ) -> None:
        self.settings = settings
        #: the running service, handed to handlers' contexts (context.call_function, decrypt)
        self.services = services
        self.sessionmaker = sessionmaker
        self.writer = writer
        self.router = router
        self.openapi_for = openapi_for or (lambda _app: None)
        self.on_replies = on_replies or (lambda: None)
        #: csbot.cloud.storage.Storage: where images customers send are kept
        self.storage = storage
        #: csbot.media.MediaFetcher: PicUrl fetches (none: images come through the API only)
        self.media_fetcher = media_fetcher
        self.metrics = metrics
        if instance_id is None:
            from csbot.openapi.client import default_instance_id

            instance_id = default_instance_id()
        self.instance_id = instance_id
        self.leases = LeaseKeeper(lambda op: self.writer.run(op), kind="lease", owner=instance_id,
                                  seconds=settings.lease_seconds,
                                  on_lost=self._lease_lost)
        self._wake = asyncio.Event()
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._cursor = 0
        self._sem = asyncio.Semaphore(settings.worker_concurrency)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._stopping = False


    # ---- intake (the webhook's path: keep it lean)

    def row_for(self, app: str, push: Push, *, status: str = PENDING) -> dict[str, Any]:
        now = time.time()
        return dict(
            app=app, openid=push.openid, direction="in", msg_type=push.msg_type,
            event=push.event_name, text=push.text,
            raw=json.dumps(push.event, ensure_ascii=False, separators=(",", ":")),
            dedup_key=push.dedup_key, wechat_msg_id=push.event.get("MsgId"),
            created_at=float(push.create_time), received_at=now, status=status, attempts=0,
        )

    async def accept(self, app: str, push: Push, *, status: str = PENDING) -> Accepted:
        """Commit ``push``; returns once it is durable. Raises if the store cannot commit."""
        message_id, new = await self.writer.run(IntakeOp(self.row_for(app, push, status=status)))
        if new and status == PENDING:
            self._wake.set()
        return Accepted(message_id, new)

    async def stored_passive_reply(self, app: str, dedup_key: str) -> str | None:
        async with self.sessionmaker() as s:
            return (await s.execute(select(Message.passive_reply).where(
                Message.app == app, Message.dedup_key == dedup_key))).scalar_one_or_none()

    # ---- inline handling (before the webhook answers)

    async def run_inline(self, app: str, appid: str, message_id: int, push: Push,
                         routes: list[Route]) -> dict[str, Any] | None:
        """Run inline routes within their budget; returns the passive reply's fields or None.

        The push was stored with status ``inline`` so no worker takes it meanwhile. Whatever
        happens, it ends ``done`` (the inline handler answered) or ``pending`` (normal path).
        An inline route runs only when nothing earlier of the user is unsettled (a push waiting or
        in a handler, a reply not yet sent), so its answer cannot overtake theirs: it waits for
        them within its budget, and if they are not done by then the push takes the normal path.
        """
        info = MessageInfo(id=message_id, app=app, openid=push.openid, msg_type=push.msg_type,
                           event=push.event_name, text=push.text, dedup_key=push.dedup_key, status=INLINE)
        budget = min(min(r.budget for r in routes), self.settings.inline_budget)
        deadline = time.monotonic() + budget
        while True:
            conv_status, unionid, earlier = await self._inline_state(app, push.openid, message_id)
            if not earlier or time.monotonic() + INLINE_WAIT_STEP >= deadline:
                break
            await asyncio.sleep(INLINE_WAIT_STEP)  # the user's earlier push or reply is nearly done
        if earlier:
            log.info("push %s takes the normal path: an earlier push or reply of its user is unsettled",
                     message_id)
            routes = []
        elif conv_status == ConversationStatus.HUMAN:  # a person has this customer: only routes that asked
            routes = [r for r in routes if r.while_human]
        if not routes:
            await self._to_normal_path(message_id)
            return None
        budget = max(deadline - time.monotonic(), 0.001)
        try:
            async with asyncio.timeout(budget):
                result = await self._run_routes(app, appid, info, dict(push.event),
                                                ConversationInfo(id=None, status=conv_status),
                                                routes, source="inline", unionid=unionid)
        except TimeoutError:
            log.warning("inline handler for push %s exceeded its %.1fs budget; continuing after the ack",
                        message_id, budget)
            result = None
        if result is None or result.status == FAILED or (result.passive is None and not result.replies):
            # no passive reply in time: answer `success`, the push goes on through the normal path
            await self._to_normal_path(message_id)
            return None
        passive = (result.passive.fields(push.event, int(time.time()))
                   if result.passive is not None else None)
        op = OutcomeOp(
            message_id=message_id, status=result.status, handler=result.handler, error=result.error,
            replies=result.replies, while_human=result.while_human,
            activity=Activity(app, push.openid, user_message=user_action_kind(push.event) == "message",
                              transferred=isinstance(result.passive, TransferCustomerService)),
            passive_reply=json.dumps(passive, ensure_ascii=False) if passive is not None else None,
            expect=INLINE)
        applied = await self.writer.run(op)
        self._wake.set()  # later pushes of this user may have waited for this one
        if op.queued:
            self.on_replies()
        if not applied:
            # the push was moved to the normal path meanwhile (e.g. the run outlived the sweep):
            # the lane answers it, so the webhook must not answer it too
            log.warning("inline outcome of push %s not recorded: it went on through the normal path", message_id)
            return None
        if op.withheld:
            return None
        return passive

    async def _inline_state(self, app: str, openid: str, message_id: int) -> tuple[str, str | None, bool]:
        """The conversation's status, the user's UnionID, and whether something earlier is unsettled.

        Earlier: a push of the user still waiting or in a handler, or a reply to them not yet sent.
        """
        async with self.sessionmaker() as s:
            conv = (await s.execute(
                select(_CONV.c.status, _USER.c.unionid).select_from(_CONV.outerjoin(
                    _USER, (_USER.c.app == _CONV.c.app) & (_USER.c.openid == _CONV.c.openid)))
                .where(_CONV.c.app == app, _CONV.c.openid == openid))).first()
            earlier = (await s.execute(
                select(_MSG.c.id).where(
                    _MSG.c.app == app, _MSG.c.openid == openid,
                    ((_MSG.c.direction == "in") & _MSG.c.status.in_(INBOUND_UNSETTLED) & (_MSG.c.id < message_id))
                    | ((_MSG.c.direction == "out") & _MSG.c.status.in_(OUTBOUND_UNSETTLED)))
                .limit(1))).first()
        status = (conv.status if conv is not None else None) or ConversationStatus.BOT
        return status, conv.unionid if conv is not None else None, earlier is not None

    async def _to_normal_path(self, message_id: int) -> None:
        await self.writer.run(StatusOp(message_id, INLINE, PENDING))
        self._wake.set()

    # ---- routing and running handlers

    async def _run_routes(self, app: str, appid: str, info: MessageInfo, event: dict[str, Any],
                          conv: ConversationInfo, routes: list[Route], *, source: str,
                          unionid: str | None = None) -> HandlerResult:
        """Run the first matching route (or the next ones, while they return ``NEXT``).

        Whatever a handler gets wrong ends here as a ``failed`` result with the error and the
        app's apology: an exception, a reply that cannot be sent, a transfer outside an inline
        route. Replies given with ``context.reply`` are queued as they are given.
        """
        logger = PushLogger(logging.getLogger("csbot.handler"),
                            {"push_id": info.id, "app": app, "openid": info.openid})
        replies = _Replies(self, info, source)
        openapi = self.openapi_for(app)
        for r in routes:
            send = replies.sender(r)
            ctx = Context(OPENID=info.openid, APPID=appid, app=app, message=info, conversation=conv,
                          logger=logger, openapi=HandlerOpenAPI(openapi, send) if openapi is not None else None,
                          options=r.options, UNIONID=unionid, SOURCE=source, send=send,
                          match=r.match(event), services=self.services)
            try:
                value = await r.func(dict(event), ctx)
                if value is NEXT:
                    continue
                passive = None
                final: list[OutboundMessage] = []
                if isinstance(value, TransferCustomerService):
                    if source != "inline":
                        raise HandlerMisuse(
                            "transfer_customer_service is a passive reply: only a route declared with "
                            "inline=True can return it (WeChat takes it only as the webhook's answer)")
                    if info.msg_type == "event":
                        log.warning("handler %s asked to transfer an event (push %s); WeChat only transfers "
                                    "user messages, ignored", r.name, info.id)
                    else:
                        passive = value
                elif value is not None:
                    reply = as_reply(value)
                    if reply is not None and source == "inline" and self._passive_allowed(app, reply):
                        self._check_kind(app, reply)
                        passive = PassiveReply(reply)  # an Official Account answers in the webhook's response
                    elif reply is not None:
                        final.append(replies.prepare(reply, author=r.name))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("handler %s failed on push %s: %s", r.name, info.id, exc,
                            exc_info=None if isinstance(exc, (HandlerMisuse, ReplyNotSendable)) else exc)
                err = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                return HandlerResult(FAILED, r.name, err[:2000], self._apology(replies, source),
                                     while_human=r.while_human)
            return HandlerResult(DONE, r.name, None, final, passive, while_human=r.while_human)
        return HandlerResult(DONE, None, None)

    def _apology(self, replies: "_Replies", source: str) -> list[OutboundMessage]:
        """The app's apology for a failed push (none inline: the normal path takes the push over)."""
        app = replies.info.app
        apology = self.settings.apps[app].apology_text if app in self.settings.apps else ""
        if not apology or source == "inline":
            return []
        return [replies.prepare(Text(apology), author="apology", key_suffix="apology")]

    def _is_official_account(self, app: str) -> bool:
        cfg = self.settings.apps.get(app)
        return cfg is not None and cfg.is_official_account

    def _passive_allowed(self, app: str, reply: Reply) -> bool:
        """Official Accounts answer inline routes with a passive reply (text, image by media_id,
        voice, video, music, news); Mini Programs only with transfer_customer_service."""
        if not self._is_official_account(app) or not isinstance(reply, PASSIVE_TYPES):
            return False
        return not (isinstance(reply, Image) and reply.media_id is None)

    def _check_kind(self, app: str, reply: Reply) -> None:
        error = self._kind_error(app, reply)
        if error:
            raise HandlerMisuse(error)

    def _kind_error(self, app: str, reply: Reply) -> str | None:
        if isinstance(reply, OFFICIAL_ACCOUNT_ONLY) and not self._is_official_account(app):
            return (f"a {reply.msgtype} message is for Official Account apps only; app {app} is a Mini Program "
                    "(kind = \"miniprogram\"), whose send API takes text, image, link and miniprogrampage")
        return None

    # ---- the worker side

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._dispatch_loop(), name="csbot-inbox-dispatch"))
        self.leases.start()

    async def drain(self, seconds: float) -> None:
        """Stop taking work; let the handlers running now finish (at most ``seconds``).

        Lanes end after their current push; pushes not started stay ``pending`` for the next
        process (or this one's successor after a restart).
        """
        self._stopping = True
        self._wake.set()
        for lane in self._lanes.values():
            lane.ready.set()
        tasks = [lane.task for lane in self._lanes.values() if lane.task]
        if tasks:
            await asyncio.wait(tasks, timeout=max(seconds, 0.0))

    async def close(self) -> None:
        self._closing = self._stopping = True
        lanes = list(self._lanes.values())
        for t in [*self._tasks, *(lane.task for lane in lanes if lane.task)]:
            t.cancel()
        await asyncio.gather(*self._tasks, *(lane.task for lane in lanes if lane.task), return_exceptions=True)
        self._tasks.clear()
        await self.leases.stop()
        try:
            await asyncio.wait_for(self.leases.release_all(), 5)
        except Exception:
            pass

    def _lease_lost(self, lease: Lease) -> None:
        lane = self._lanes.get(lease.key)
        if lane is not None:
            lane.ready.set()  # a lane waiting for pushes notices at once

    async def recover(self) -> None:
        """At start: pushes caught mid-inline go to the normal path; SQLite leases are cleared.

        SQLite serves one process (csbot.store.engine.hold_sqlite_file), so any lease found at
        start belongs to a dead process. On PostgreSQL other processes may be alive: their
        leases are left to expire.
        """
        await self._release_stale_inline(at_start=True)
        if self.settings.is_sqlite:
            async with self.sessionmaker() as s, s.begin():
                await s.execute(update(Conversation).where(Conversation.lease_owner.is_not(None))
                                .values(lease_owner=None, lease_until=None))

    async def _release_stale_inline(self, *, at_start: bool = False) -> None:
        """Pushes left ``inline`` by a process that died before answering go to the normal path.

        An inline run lasts at most its budget (< 5 s). Judged by the database's clock alone (the
        receiving process's clock, which wrote ``received_at``, may differ from this one's): the
        first sweep that finds a push ``inline`` stamps it with ``next_attempt_at`` = the
        database's now + ``INLINE_ABANDONED_AFTER``; a push still ``inline`` when a later sweep
        finds that time passed was abandoned. At start on SQLite (one process) every one is.
        """
        is_inline = (Message.direction == "in") & (Message.status == INLINE)

        async def update_in_id_order(s: AsyncSession, where: Any, values: dict[str, Any]) -> Any:
            # rows locked in id order, as the batch writer's status and outcome writes lock them
            locked = select(Message.id).where(where).order_by(Message.id).with_for_update()
            return await s.execute(update(Message).where(Message.id.in_(locked), where).values(**values))

        async with self.sessionmaker() as s, s.begin():
            now = db_now(_dialect(s))
            if at_start and self.settings.is_sqlite:
                res = await update_in_id_order(s, is_inline, {"status": PENDING})
            else:
                res = await update_in_id_order(s, is_inline & (Message.next_attempt_at < now), {"status": PENDING})
                await update_in_id_order(s, is_inline & Message.next_attempt_at.is_(None),
                                         {"next_attempt_at": now + INLINE_ABANDONED_AFTER})
        if res.rowcount:  # type: ignore[attr-defined]
            log.warning("%d push(es) abandoned during an inline handler go on through the normal path",
                        res.rowcount)  # type: ignore[attr-defined]

    def wake(self) -> None:
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        """Find pending pushes and hand them to lanes.

        A wake-up (a commit of new pushes) scans only rows after the last one seen; once a second
        everything pending is scanned again, for pushes whose lane another process held, or
        that a lane gave back. A short pause after each scan lets one scan serve many commits.
        """
        last_full = 0.0
        last_sweep = time.monotonic()
        while not self._stopping:
            await wait_event(self._wake, 1.0)
            self._wake.clear()
            if self._stopping:
                return
            full = time.monotonic() - last_full >= 1.0
            if full:
                last_full = time.monotonic()
            try:
                if full and time.monotonic() - last_sweep >= SWEEP_SECONDS:
                    last_sweep = time.monotonic()
                    await self._release_stale_inline()
                await self._dispatch_once(0 if full else self._cursor)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("inbox dispatch failed; retrying")
                await asyncio.sleep(1.0)
            await asyncio.sleep(0.005)

    async def _dispatch_once(self, after_id: int) -> None:
        rows = await self._pending(_MSG.c.id > after_id)
        if not rows:
            return
        waiting: dict[tuple[str, str], list[Any]] = {}
        for r in rows:
            key = (r.app, r.openid)
            lane = self._lanes.get(key)
            if lane is not None:
                lane.offer(r)
            else:
                waiting.setdefault(key, []).append(r)
        refused: list[int] = []
        if waiting:
            got = await self.leases.acquire([
                dict(app=app, openid=openid, seen_at=max(r.received_at for r in lane_rows),
                     first_id=lane_rows[0].id)
                for (app, openid), lane_rows in waiting.items()])
            for (key, lane_rows), taken in zip(waiting.items(), got):
                if taken is None or key in self._lanes:
                    refused.append(lane_rows[0].id)  # another process holds this user's lane
                    continue
                lease, acquired = taken
                if acquired.first_pending is not None:
                    # an earlier push of this user is pending but was not in this scan (committed
                    # late, or skipped while another process held the lane): start from it
                    lane_rows = list(await self._pending(
                        _MSG.c.app == key[0], _MSG.c.openid == key[1], _MSG.c.id >= acquired.first_pending))
                lane = _Lane(lease)
                for r in lane_rows:
                    lane.offer(r)
                self._lanes[key] = lane
                lane.task = asyncio.create_task(self._run_lane(lane), name=f"csbot-lane-{key[1]}")
        # the cursor never moves past a push whose lane could not be taken: the next scan from
        # the cursor sees it again, so its user's later pushes never start a lane before it
        self._cursor = min(refused) - 1 if refused else max(self._cursor, rows[-1].id)

    async def _pending(self, *where: Any) -> Sequence[Any]:
        async with read_connection(self.sessionmaker) as conn:
            return (await conn.execute(
                select(_MSG.c.id, _MSG.c.app, _MSG.c.openid, _MSG.c.msg_type, _MSG.c.event, _MSG.c.text,
                       _MSG.c.raw, _MSG.c.dedup_key, _MSG.c.attempts, _MSG.c.media_path, _MSG.c.file_id,
                       _MSG.c.received_at, _CONV.c.status.label("conversation_status"))
                .select_from(_MSG.outerjoin(_CONV, (_CONV.c.app == _MSG.c.app) & (_CONV.c.openid == _MSG.c.openid)))
                .where(_MSG.c.direction == "in", _MSG.c.status == PENDING, *where)
                .order_by(_MSG.c.id).limit(DISPATCH_BATCH)
            )).all()

    async def _run_lane(self, lane: "_Lane") -> None:
        """Handle one user's pushes in order, one at a time; linger a moment before letting go.

        Before each push the lane checks that its lease still holds (fencing): a lane whose
        lease ran out or was taken over stops before running another handler.
        """
        try:
            while not self._stopping and lane.lease.valid():
                if not lane.queue:
                    lane.ready.clear()
                    if not await wait_event(lane.ready, LANE_LINGER):
                        break
                    continue
                row = lane.queue.popleft()
                async with self._sem:
                    if self._stopping or not lane.lease.valid():
                        break
                    if not await self._handle_row(row, lane):
                        break
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("lane %s/%s stopped on a store error; its pushes will be retried", *lane.key)
            await asyncio.sleep(1.0)
        finally:
            # leave the map first: the dispatcher then starts a new lane instead of feeding this one,
            # and the release is queued before that lane's acquire
            if self._lanes.get(lane.key) is lane:
                del self._lanes[lane.key]
            if not self._closing:
                try:
                    await self.leases.release(lane.lease)
                except Exception:
                    log.warning("could not release lane %s/%s; its lease will expire", *lane.key)
                self._wake.set()

    async def _handle_row(self, row: Any, lane: "_Lane") -> bool:
        """One handling attempt of one push. False: the lane must stop here and try again later."""
        event = json.loads(row.raw)
        claim = await self.writer.run(ClaimOp(row.id, row.app, row.openid, unionid=unionid_of(event)))
        if claim is None:
            return True  # no longer pending: handled elsewhere
        if claim == BLOCKED:
            # an earlier push of this user is still unsettled (in an inline handler, or given back
            # to the normal path): stop; the next lane starts from the earliest one
            await asyncio.sleep(BLOCKED_PAUSE)
            return False
        app_cfg = self.settings.apps.get(row.app)
        appid = app_cfg.appid if app_cfg else ""
        info = MessageInfo(id=row.id, app=row.app, openid=row.openid, msg_type=row.msg_type,
                           event=row.event, text=row.text, dedup_key=row.dedup_key, status=PENDING,
                           attempts=claim.attempts, media_path=row.media_path, file_id=row.file_id)
        activity = Activity(row.app, row.openid, user_message=user_action_kind(event) == "message")
        if claim.attempts > self.settings.max_handler_attempts:
            last = claim.last_error or "the process stopped or lost the push during handling"
            error = f"gave up after {claim.attempts - 1} attempts; last: {last}"
            log.error("push %s of %s/%s %s", row.id, row.app, row.openid, error)
            result = HandlerResult(FAILED, None, error[:2000], self._apology(_Replies(self, info, "push"), "push"))
        else:
            if row.msg_type == "image" and not info.file_id and not row.media_path and self.storage is not None:
                info.file_id = await self._keep_image(row, event)
            conv = ConversationInfo(id=lane.conversation_id, status=claim.conversation_status)
            human = claim.conversation_status == ConversationStatus.HUMAN
            routes = [r for r in self.router.candidates(event, human=human) if not r.inline]
            result = await self._run_routes(row.app, appid, info, event, conv, routes, source="push",
                                            unionid=claim.unionid)
        op = OutcomeOp(message_id=row.id, status=result.status, handler=result.handler, error=result.error,
                       replies=result.replies, while_human=result.while_human, activity=activity,
                       file_id=info.file_id, conversation_id=lane.conversation_id)
        try:
            await self.writer.run(op)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the attempt is counted; say why it did not end
            with contextlib.suppress(Exception):
                await self.writer.run(AttemptFailedOp(row.id, f"could not record the outcome: {exc!r}"))
            raise
        if self.metrics is not None:
            self.metrics.handled.labels(row.app, result.status).inc()
        if op.queued:
            self.on_replies()
        webhooks = getattr(self.services, "webhooks", None)
        if webhooks is not None and claim.conversation_status == ConversationStatus.CLOSED \
                and activity.user_message:  # the customer wrote again: the conversation reopened as bot
            webhooks.status_changed(row.app, row.openid)
        return True

    async def _keep_image(self, row: Message, event: dict[str, Any]) -> str | None:
        """Fetch an image the user sent and keep it in storage (WeChat's copy expires); its fileID."""
        from csbot.cloud.storage import StorageError
        from csbot.media import fetch_user_image, keep_customer_media

        app_cfg = self.settings.apps.get(row.app)
        # PicUrl is trusted only when the push was authenticated: the app takes encrypted pushes only
        data = await fetch_user_image(self.openapi_for(row.app), event, fetcher=self.media_fetcher,
                                      authenticated=bool(app_cfg and app_cfg.require_encryption))
        if not data:
            return None
        try:
            return await keep_customer_media(self.storage, row.app, row.openid, row.id, data)
        except (OSError, StorageError) as exc:
            log.warning("could not keep the image of push %s: %s", row.id, exc)
            return None
