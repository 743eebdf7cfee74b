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
import json
import logging
import time
import traceback
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from sqlalchemy import case, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from csbot.aio import wait_event
from csbot.config import Settings
from csbot.context import ConversationInfo, Context, MessageInfo, PushLogger
from csbot.messages import (OFFICIAL_ACCOUNT_ONLY, PASSIVE_TYPES, Image, PassiveReply, Reply, Text, as_reply,
                            send_body)
from csbot.routing import NEXT, Route, Router
from csbot.statuses import ConversationStatus, InboundStatus, OutboundStatus
from csbot.store import Conversation, Message
from csbot.store.batch import BatchWriter
from csbot.store.leases import LaneOp
from csbot.store.statements import cached as _cached, dialect_of as _dialect
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
        result = await conn.execute(stmt, [op.row for op in ops])
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
    """Record a handler's outcome and queue its replies, atomically."""

    message_id: int
    app: str
    openid: str
    status: str
    handler: str | None
    error: str | None
    replies: list[tuple[Reply, str]]
    conversation_id: int | None
    #: when the push was received (our clock): the reply window and quota count from here
    action_at: float
    action_kind: str | None
    passive_reply: str | None = None
    media_path: str | None = None
    #: fileID of the image the customer sent, kept in storage
    file_id: str | None = None
    expect: str = PENDING
    batch_kind: str = "outcome"

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
        # outcomes without replies: one executemany (nothing else depends on their row count)
        plain = [op for op in ops if not op.replies and op.conversation_id is not None]
        if plain:
            await conn.execute(set_outcome, [op._params(now) for op in plain])
        applied: dict[int, bool] = {id(op): True for op in plain}
        replies: list[dict[str, Any]] = []
        for op in ops:
            if id(op) in applied:
                continue
            res = await conn.execute(set_outcome, op._params(now))
            ok = res.rowcount == 1
            applied[id(op)] = ok  # not 1: someone else finished it, its replies are not ours to send
            if ok:
                for reply, author in op.replies:
                    body = send_body(reply, op.openid)
                    replies.append(dict(
                        app=op.app, openid=op.openid, direction="out", msg_type=reply.msgtype, event=None,
                        text=reply.describe(), raw=json.dumps(body, ensure_ascii=False), dedup_key=None,
                        created_at=now, received_at=now, status=OutboundStatus.QUEUED, author=author,
                        in_reply_to=op.message_id, attempts=0, next_attempt_at=now))
        if replies:
            await conn.execute(_MSG.insert(), replies)
        await self._touch_conversations(conn, dialect, [op for op in ops if applied[id(op)]], now)
        return [applied[id(op)] for op in ops]

    @staticmethod
    async def _touch_conversations(conn: Any, dialect: str, ops: Sequence["OutcomeOp"], now: float) -> None:
        """One cached UPDATE per batch: activity, the user's last action, reopening, transfers."""
        from sqlalchemy import and_, bindparam, func

        latest: dict[tuple[str, str], dict[str, Any]] = {}
        for op in ops:
            values = latest.setdefault((op.app, op.openid), {
                "c_app": op.app, "c_openid": op.openid, "lma": now, "action_at": None, "action_kind": None,
                "reopen": False, "transferred_at": None, "cid": op.conversation_id})
            if op.action_kind is not None:
                values.update(action_at=op.action_at, action_kind=op.action_kind)
            if op.action_kind == "message":  # csbot.review: writing again reopens a closed conversation
                values["reopen"] = True
            if op.passive_reply is not None and "transfer_customer_service" in op.passive_reply:
                # the hand-off to WeChat's customer-service tool shows on the thread
                values["transferred_at"] = now
        touch = _cached(dialect, "touch_conversation", lambda _: (
            update(_CONV).where(_CONV.c.app == bindparam("c_app"), _CONV.c.openid == bindparam("c_openid"))
            .values(last_message_at=bindparam("lma"),
                    last_user_action_at=func.coalesce(bindparam("action_at"), _CONV.c.last_user_action_at),
                    last_user_action_kind=func.coalesce(bindparam("action_kind"), _CONV.c.last_user_action_kind),
                    transferred_at=func.coalesce(bindparam("transferred_at"), _CONV.c.transferred_at),
                    status=case((and_(_CONV.c.status == ConversationStatus.CLOSED, bindparam("reopen") == True),  # noqa: E712
                                 ConversationStatus.BOT),
                                else_=_CONV.c.status))))
        missing = [v for v in latest.values() if v["cid"] is None]
        if missing:  # inline: the lane (and so the conversation row) may not exist yet
            await conn.execute(
                _cached(dialect, "conv_upsert", lambda ins: ins(_CONV).on_conflict_do_nothing(
                    index_elements=["app", "openid"])),
                [dict(app=v["c_app"], openid=v["c_openid"], status=ConversationStatus.BOT, created_at=now, last_message_at=now,
                      tags="[]") for v in missing])
        params = [{k: v for k, v in values.items() if k != "cid"} for values in latest.values()]
        if params:
            await conn.execute(touch, params)


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
        await conn.execute(stmt, [{"mid": op.message_id, "expect": op.expect, "new": op.status} for op in ops])
        return [None] * len(ops)


#: seconds an idle lane keeps its lease, waiting for the user's next push
LANE_LINGER = 1.0
#: an ``inline`` push older than this was abandoned by a process that died (budgets are < 5 s)
INLINE_ABANDONED_AFTER = 10.0
#: how often a running process looks for work abandoned by a process that died
SWEEP_SECONDS = 5.0


class _Lane:
    """One user's pushes, queued for the task that handles them in order."""

    def __init__(self, key: tuple[str, str], conversation_id: int) -> None:
        self.key = key
        self.conversation_id = conversation_id
        self.queue: deque[Any] = deque()
        self.last_id = 0
        self.ready = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def offer(self, row: Any) -> None:
        if row.id > self.last_id:  # rescans offer rows again: take each once, in id order
            self.last_id = row.id
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
    replies: list[tuple[Reply, str]] = field(default_factory=list)
    passive: Any = None


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
        self.instance_id = instance_id or uuid.uuid4().hex[:16]
        self._wake = asyncio.Event()
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._cursor = 0
        self._sem = asyncio.Semaphore(settings.worker_concurrency)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

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
        """
        info = MessageInfo(id=message_id, app=app, openid=push.openid, msg_type=push.msg_type,
                           event=push.event_name, text=push.text, dedup_key=push.dedup_key, status=INLINE)
        async with self.sessionmaker() as s:
            conv_status = (await s.execute(select(_CONV.c.status).where(
                _CONV.c.app == app, _CONV.c.openid == push.openid))).scalar_one_or_none() or ConversationStatus.BOT
        if conv_status == ConversationStatus.HUMAN:  # a person has this customer: only routes that asked to run
            routes = [r for r in routes if r.while_human]
        if not routes:
            await self._to_normal_path(message_id)
            return None
        budget = min(r.budget for r in routes)
        try:
            async with asyncio.timeout(budget):
                result = await self._run_routes(app, appid, info, dict(push.event),
                                                ConversationInfo(id=None, status=conv_status),
                                                routes, source="inline")
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
        await self.writer.run(OutcomeOp(
            message_id=message_id, app=app, openid=push.openid, status=result.status,
            handler=result.handler, error=result.error, replies=result.replies, conversation_id=None,
            action_at=time.time(), action_kind=user_action_kind(push.event),
            passive_reply=json.dumps(passive, ensure_ascii=False) if passive is not None else None,
            expect=INLINE,
        ))
        if result.replies:
            self.on_replies()
        return passive

    async def _to_normal_path(self, message_id: int) -> None:
        await self.writer.run(StatusOp(message_id, INLINE, PENDING))
        self._wake.set()

    # ---- routing and running handlers

    async def _run_routes(self, app: str, appid: str, info: MessageInfo, event: dict[str, Any],
                          conv: ConversationInfo, routes: list[Route], *, source: str) -> HandlerResult:
        logger = PushLogger(logging.getLogger("csbot.handler"),
                            {"push_id": info.id, "app": app, "openid": info.openid})
        for r in routes:
            ctx = Context(OPENID=info.openid, APPID=appid, app=app, message=info, conversation=conv,
                          logger=logger, openapi=self.openapi_for(app), options=r.options, SOURCE=source,
                          match=r.match(event), services=self.services)
            try:
                value = await r.func(dict(event), ctx)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("handler %s raised on push %s: %s", r.name, info.id, exc,
                            exc_info=exc)
                err = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                replies: list[tuple[Reply, str]] = []
                apology = self.settings.apps[app].apology_text if app in self.settings.apps else ""
                if apology and source != "inline":
                    replies.append((Text(apology), "apology"))
                return HandlerResult(FAILED, r.name, err[:2000], replies)
            if value is NEXT:
                continue
            passive = None
            replies = [(reply, r.name) for reply in ctx.replies]
            from csbot.messages import TransferCustomerService  # local: keeps the import list short
            if isinstance(value, TransferCustomerService):
                if info.msg_type == "event":
                    log.warning("handler %s asked to transfer an event (push %s); WeChat only transfers "
                                "user messages, ignored", r.name, info.id)
                elif source == "inline":
                    passive = value
                else:
                    log.warning("handler %s returned transfer_customer_service outside an inline route "
                                "(push %s): a passive reply is only possible before the ack", r.name, info.id)
            else:
                try:
                    reply = as_reply(value)
                except TypeError as exc:
                    return HandlerResult(FAILED, r.name, str(exc), replies)
                if reply is not None and source == "inline" and self._passive_allowed(app, reply):
                    passive = PassiveReply(reply)  # an Official Account answers in the webhook's response
                elif reply is not None:
                    replies.append((reply, r.name))
            wrong_kind = next((self._kind_error(app, reply) for reply, _ in replies
                               if self._kind_error(app, reply)), None)
            if wrong_kind:
                return HandlerResult(FAILED, r.name, wrong_kind, [])
            return HandlerResult(DONE, r.name, None, replies, passive)
        return HandlerResult(DONE, None, None)

    def _is_official_account(self, app: str) -> bool:
        cfg = self.settings.apps.get(app)
        return cfg is not None and cfg.is_official_account

    def _passive_allowed(self, app: str, reply: Reply) -> bool:
        """Official Accounts answer inline routes with a passive reply (text, image by media_id,
        voice, video, music, news); Mini Programs only with transfer_customer_service."""
        if not self._is_official_account(app) or not isinstance(reply, PASSIVE_TYPES):
            return False
        return not (isinstance(reply, Image) and reply.media_id is None)

    def _kind_error(self, app: str, reply: Reply) -> str | None:
        if isinstance(reply, OFFICIAL_ACCOUNT_ONLY) and not self._is_official_account(app):
            return (f"a {reply.msgtype} message is for Official Account apps only; app {app} is a Mini Program "
                    "(kind = \"miniprogram\"), whose send API takes text, image, link and miniprogrampage")
        return None

    # ---- the worker side

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._dispatch_loop(), name="csbot-inbox-dispatch"))
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="csbot-inbox-heartbeat"))

    async def close(self) -> None:
        self._closing = True
        lanes = list(self._lanes.values())
        for t in [*self._tasks, *(lane.task for lane in lanes if lane.task)]:
            t.cancel()
        await asyncio.gather(*self._tasks, *(lane.task for lane in lanes if lane.task), return_exceptions=True)
        self._tasks.clear()
        held = tuple(lane.conversation_id for lane in lanes)
        if held:
            try:
                await asyncio.wait_for(self.writer.run(LaneOp("release", self.instance_id,
                                                              conversation_ids=held)), 5)
            except Exception:
                pass

    async def recover(self) -> None:
        """At start: pushes caught mid-inline go to the normal path; SQLite leases are cleared.

        SQLite serves one process, so any lease found at start belongs to a dead process.
        On PostgreSQL other processes may be alive: their leases are left to expire.
        """
        await self._release_stale_inline(at_start=True)
        if self.settings.is_sqlite:
            async with self.sessionmaker() as s, s.begin():
                await s.execute(update(Conversation).values(lease_owner=None, lease_until=None))

    async def _release_stale_inline(self, *, at_start: bool = False) -> None:
        """Pushes left ``inline`` by a process that died before answering go to the normal path.

        An inline run lasts at most its budget (< 5 s), so an older ``inline`` row is abandoned.
        At start on SQLite (one process) every ``inline`` row is.
        """
        cutoff = (time.time() + 1 if (at_start and self.settings.is_sqlite)
                  else time.time() - INLINE_ABANDONED_AFTER)
        async with self.sessionmaker() as s, s.begin():
            res = await s.execute(update(Message).where(
                Message.direction == "in", Message.status == INLINE, Message.received_at < cutoff)
                .values(status=PENDING))
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
        while True:
            await wait_event(self._wake, 1.0)
            self._wake.clear()
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
        async with self.sessionmaker() as s:
            rows = (await s.execute(
                select(_MSG.c.id, _MSG.c.app, _MSG.c.openid, _MSG.c.msg_type, _MSG.c.event, _MSG.c.text,
                       _MSG.c.raw, _MSG.c.dedup_key, _MSG.c.attempts, _MSG.c.media_path, _MSG.c.file_id,
                       _MSG.c.received_at, _CONV.c.status.label("conversation_status"))
                .select_from(_MSG.outerjoin(_CONV, (_CONV.c.app == _MSG.c.app) & (_CONV.c.openid == _MSG.c.openid)))
                .where(_MSG.c.direction == "in", _MSG.c.status == PENDING, _MSG.c.id > after_id)
                .order_by(_MSG.c.id).limit(2000)
            )).all()
        if not rows:
            return
        self._cursor = max(self._cursor, rows[-1].id)
        waiting: dict[tuple[str, str], list[Any]] = {}
        for r in rows:
            key = (r.app, r.openid)
            lane = self._lanes.get(key)
            if lane is not None:
                lane.offer(r)
            else:
                waiting.setdefault(key, []).append(r)
        if not waiting:
            return
        until = time.time() + self.settings.lease_seconds
        ops = [LaneOp("acquire", self.instance_id, until, app=app, openid=openid,
                      seen_at=max(r.received_at for r in lane_rows))
               for (app, openid), lane_rows in waiting.items()]
        results = await asyncio.gather(*(self.writer.run(op) for op in ops))
        for (key, lane_rows), conv in zip(waiting.items(), results):
            if conv is None or key in self._lanes:
                continue  # another process holds this user's lane
            lane = _Lane(key, conv.id)
            for r in lane_rows:
                lane.offer(r)
            self._lanes[key] = lane
            lane.task = asyncio.create_task(self._run_lane(lane), name=f"csbot-lane-{key[1]}")

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(max(self.settings.lease_seconds / 3, 0.2))
            held = tuple(lane.conversation_id for lane in self._lanes.values())
            if held:
                try:
                    await self.writer.run(LaneOp("renew", self.instance_id,
                                                 time.time() + self.settings.lease_seconds,
                                                 conversation_ids=held))
                except Exception:
                    log.warning("could not renew handling leases", exc_info=True)

    async def _run_lane(self, lane: "_Lane") -> None:
        """Handle one user's pushes in order, one at a time; linger a moment before letting go."""
        try:
            while True:
                if not lane.queue:
                    lane.ready.clear()
                    if not await wait_event(lane.ready, LANE_LINGER):
                        break
                    continue
                row = lane.queue.popleft()
                async with self._sem:
                    await self._handle_row(row, lane)
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
                    await self.writer.run(LaneOp("release", self.instance_id,
                                                 conversation_ids=(lane.conversation_id,)))
                except Exception:
                    log.warning("could not release lane %s/%s; its lease will expire", *lane.key)
                self._wake.set()

    async def _handle_row(self, row: Any, lane: "_Lane") -> None:
        event = json.loads(row.raw)
        app_cfg = self.settings.apps.get(row.app)
        appid = app_cfg.appid if app_cfg else ""
        file_id = row.file_id
        if row.msg_type == "image" and not file_id and not row.media_path and self.storage is not None:
            file_id = await self._keep_image(row, event)
        info = MessageInfo(id=row.id, app=row.app, openid=row.openid, msg_type=row.msg_type,
                           event=row.event, text=row.text, dedup_key=row.dedup_key, status=PENDING,
                           attempts=row.attempts, media_path=row.media_path, file_id=file_id)
        status = row.conversation_status or ConversationStatus.BOT
        conv = ConversationInfo(id=lane.conversation_id, status=status)
        routes = [r for r in self.router.candidates(event, human=status == ConversationStatus.HUMAN)
                  if not r.inline]
        result = await self._run_routes(row.app, appid, info, event, conv, routes, source="push")
        applied = await self.writer.run(OutcomeOp(
            message_id=row.id, app=row.app, openid=row.openid, status=result.status,
            handler=result.handler, error=result.error, replies=result.replies,
            conversation_id=lane.conversation_id, action_at=row.received_at,
            action_kind=user_action_kind(event), file_id=file_id,
        ))
        if self.metrics is not None:
            self.metrics.handled.labels(row.app, result.status).inc()
        if applied and result.replies:
            self.on_replies()
        webhooks = getattr(self.services, "webhooks", None)
        if applied and webhooks is not None and status == ConversationStatus.CLOSED \
                and user_action_kind(event) == "message":  # the customer wrote again: reopened as bot
            webhooks.status_changed(row.app, row.openid)

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
