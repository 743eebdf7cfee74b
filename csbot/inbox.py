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
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Sequence

from sqlalchemy import and_, case, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from csbot.config import Settings
from csbot.context import ConversationInfo, Context, MessageInfo
from csbot.messages import Reply, Text, as_reply, send_body
from csbot.routing import NEXT, Route, Router
from csbot.store import Conversation, Message, User, dialect_insert
from csbot.store.batch import BatchWriter
from csbot.wire import Push

log = logging.getLogger("csbot.inbox")

# inbound statuses
PENDING, INLINE, DONE, FAILED = "pending", "inline", "done", "failed"
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


@dataclass
class IntakeOp:
    """Insert one verified push; ON CONFLICT DO NOTHING makes retries free."""

    row: dict[str, Any]
    batch_kind: str = "intake"

    async def apply_many(self, session: AsyncSession, ops: Sequence["IntakeOp"]) -> list[tuple[int | None, bool]]:
        insert = dialect_insert(session.bind.dialect.name)  # type: ignore[union-attr]
        stmt = (
            insert(Message)
            .values([op.row for op in ops])
            .on_conflict_do_nothing(index_elements=["app", "dedup_key"])
            .returning(Message.id, Message.app, Message.dedup_key)
        )
        inserted = {(r.app, r.dedup_key): r.id for r in (await session.execute(stmt)).all()}
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
    expect: tuple[str, ...] = (PENDING,)
    batch_kind: str = "outcome"

    async def apply_many(self, session: AsyncSession, ops: Sequence["OutcomeOp"]) -> list[bool]:
        now = time.time()
        results = []
        for op in ops:
            res = await session.execute(
                update(Message)
                .where(Message.id == op.message_id, Message.status.in_(op.expect))
                .values(status=op.status, handler=op.handler, error=op.error, handled_at=now,
                        passive_reply=op.passive_reply,
                        **({"media_path": op.media_path} if op.media_path else {}))
            )
            if res.rowcount != 1:  # type: ignore[attr-defined]
                results.append(False)  # someone else finished it: its replies are not ours to send
                continue
            for reply, author in op.replies:
                body = send_body(reply, op.openid)
                session.add(Message(
                    app=op.app, openid=op.openid, direction="out", msg_type=reply.msgtype,
                    text=reply.describe(), raw=json.dumps(body, ensure_ascii=False),
                    created_at=now, received_at=now, status="queued", author=author,
                    in_reply_to=op.message_id, attempts=0, next_attempt_at=now,
                ))
            values: dict[str, Any] = {"last_message_at": now}
            if op.action_kind is not None:
                values.update(last_user_action_at=op.action_at, last_user_action_kind=op.action_kind)
            if op.action_kind == "message":  # csbot.review: writing again reopens a closed conversation
                values["status"] = case((Conversation.status == "closed", "bot"), else_=Conversation.status)
            if op.passive_reply is not None:
                # the hand-off to WeChat's customer-service tool shows on the thread
                values["transferred_at"] = now
            if op.conversation_id is not None:
                await session.execute(update(Conversation).where(Conversation.id == op.conversation_id)
                                      .values(**values))
            else:  # inline: the lane (and so the conversation row) may not exist yet
                insert = dialect_insert(session.bind.dialect.name)  # type: ignore[union-attr]
                await session.execute(insert(Conversation).values(
                    app=op.app, openid=op.openid, status="bot", created_at=now, last_message_at=now,
                ).on_conflict_do_nothing(index_elements=["app", "openid"]))
                await session.execute(update(Conversation).where(
                    Conversation.app == op.app, Conversation.openid == op.openid).values(**values))
            results.append(True)
        await session.flush()
        return results


@dataclass
class LeaseOp:
    """Take (or renew) the handling lease of one user's lane; upserts the user and conversation."""

    app: str
    openid: str
    owner: str
    until: float
    seen_at: float
    batch_kind: str = "lease"

    async def apply_many(self, session: AsyncSession, ops: Sequence["LeaseOp"]) -> list[ConversationInfo | None]:
        insert = dialect_insert(session.bind.dialect.name)  # type: ignore[union-attr]
        now = time.time()
        await session.execute(
            insert(Conversation).values([
                dict(app=op.app, openid=op.openid, status="bot", created_at=now, last_message_at=now)
                for op in ops
            ]).on_conflict_do_nothing(index_elements=["app", "openid"])
        )
        user_rows = {}
        for op in ops:
            user_rows[(op.app, op.openid)] = dict(app=op.app, openid=op.openid, first_seen=op.seen_at,
                                                  last_seen=op.seen_at)
        ins = insert(User).values(list(user_rows.values()))
        await session.execute(ins.on_conflict_do_update(
            index_elements=["app", "openid"], set_={"last_seen": ins.excluded.last_seen}))
        results: list[ConversationInfo | None] = []
        for op in ops:
            row = (await session.execute(
                update(Conversation)
                .where(Conversation.app == op.app, Conversation.openid == op.openid,
                       or_(Conversation.lease_owner.is_(None), Conversation.lease_owner == op.owner,
                           Conversation.lease_until < now))
                .values(lease_owner=op.owner, lease_until=op.until)
                .returning(Conversation.id, Conversation.status)
            )).first()
            results.append(ConversationInfo(id=row.id, status=row.status) if row else None)
        return results


@dataclass
class ReleaseOp:
    conversation_ids: list[int]
    owner: str
    until: float | None = None  # set: renew instead of release
    batch_kind: str = "release"

    async def apply_many(self, session: AsyncSession, ops: Sequence["ReleaseOp"]) -> list[None]:
        for op in ops:
            if not op.conversation_ids:
                continue
            values = ({"lease_owner": None, "lease_until": None} if op.until is None
                      else {"lease_until": op.until})
            await session.execute(
                update(Conversation)
                .where(Conversation.id.in_(op.conversation_ids), Conversation.lease_owner == op.owner)
                .values(**values)
            )
        return [None] * len(ops)


# --------------------------------------------------------------------------- the inbox


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
        media_store: Any = None,
        instance_id: str | None = None,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.writer = writer
        self.router = router
        self.openapi_for = openapi_for or (lambda _app: None)
        self.on_replies = on_replies or (lambda: None)
        self.media_store = media_store
        self.instance_id = instance_id or uuid.uuid4().hex[:16]
        self._wake = asyncio.Event()
        self._lanes: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._lane_conv: dict[tuple[str, str], int] = {}
        self._sem = asyncio.Semaphore(settings.worker_concurrency)
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self.handled = 0

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
        budget = min(r.budget for r in routes)
        try:
            result = await asyncio.wait_for(
                self._run_routes(app, appid, info, dict(push.event), ConversationInfo(id=None),
                                 routes, source="inline"),
                timeout=budget,
            )
        except asyncio.TimeoutError:
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
            expect=(INLINE,),
        ))
        if result.replies:
            self.on_replies()
        return passive

    async def _to_normal_path(self, message_id: int) -> None:
        async with self.sessionmaker() as s, s.begin():
            await s.execute(update(Message).where(Message.id == message_id, Message.status == INLINE)
                            .values(status=PENDING))
        self._wake.set()

    # ---- routing and running handlers

    async def _run_routes(self, app: str, appid: str, info: MessageInfo, event: dict[str, Any],
                          conv: ConversationInfo, routes: list[Route], *, source: str) -> HandlerResult:
        logger = logging.LoggerAdapter(logging.getLogger("csbot.handler"),
                                       {"push_id": info.id, "app": app})
        for r in routes:
            ctx = Context(OPENID=info.openid, APPID=appid, app=app, message=info, conversation=conv,
                          logger=logger, openapi=self.openapi_for(app), options=r.options, SOURCE=source)
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
                if reply is not None:
                    replies.append((reply, r.name))
            return HandlerResult(DONE, r.name, None, replies, passive)
        return HandlerResult(DONE, None, None)

    # ---- the worker side

    def start(self) -> None:
        self._tasks.append(asyncio.create_task(self._dispatch_loop(), name="csbot-inbox-dispatch"))
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="csbot-inbox-heartbeat"))

    async def close(self) -> None:
        self._closing = True
        for t in self._tasks:
            t.cancel()
        lanes = list(self._lanes.values())
        for t in lanes:
            t.cancel()
        await asyncio.gather(*self._tasks, *lanes, return_exceptions=True)
        self._tasks.clear()
        if self._lane_conv:
            try:
                await asyncio.wait_for(self.writer.run(ReleaseOp(list(self._lane_conv.values()),
                                                                 self.instance_id)), 5)
            except Exception:
                pass

    async def recover(self) -> None:
        """At start: pushes caught mid-inline go to the normal path; SQLite leases are cleared.

        SQLite serves one process, so any lease found at start belongs to a dead process.
        On PostgreSQL other processes may be alive: their leases are left to expire.
        """
        async with self.sessionmaker() as s, s.begin():
            cutoff = time.time() - 10
            await s.execute(update(Message).where(Message.direction == "in", Message.status == INLINE,
                                                  Message.received_at < cutoff).values(status=PENDING))
            if self.settings.is_sqlite:
                await s.execute(update(Conversation).values(lease_owner=None, lease_until=None))

    def wake(self) -> None:
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        idle = 1.0
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=idle)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            try:
                await self._dispatch_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("inbox dispatch failed; retrying")
                await asyncio.sleep(1.0)

    async def _dispatch_once(self) -> None:
        now = time.time()
        async with self.sessionmaker() as s:
            rows = (await s.execute(
                select(Message.app, Message.openid, Message.created_at)
                .where(Message.direction == "in", Message.status == PENDING)
                .order_by(Message.id).limit(2000)
            )).all()
        lanes: dict[tuple[str, str], float] = {}
        for r in rows:
            key = (r.app, r.openid)
            if key not in self._lanes:
                lanes[key] = max(lanes.get(key, 0.0), r.created_at)
        if not lanes:
            return
        until = now + self.settings.lease_seconds
        ops = [LeaseOp(app, openid, self.instance_id, until, seen) for (app, openid), seen in lanes.items()]
        results = await asyncio.gather(*(self.writer.run(op) for op in ops))
        for op, conv in zip(ops, results):
            if conv is None:
                continue  # another process holds this user's lane
            key = (op.app, op.openid)
            self._lane_conv[key] = conv.id  # type: ignore[assignment]
            self._lanes[key] = asyncio.create_task(self._run_lane(key, conv), name=f"csbot-lane-{op.openid}")

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(max(self.settings.lease_seconds / 3, 0.2))
            if self._lane_conv:
                try:
                    await self.writer.run(ReleaseOp(list(self._lane_conv.values()), self.instance_id,
                                                    until=time.time() + self.settings.lease_seconds))
                except Exception:
                    log.warning("could not renew handling leases", exc_info=True)

    async def _run_lane(self, key: tuple[str, str], conv: ConversationInfo) -> None:
        app, openid = key
        try:
            async with self._sem:
                while True:
                    async with self.sessionmaker() as s:
                        rows = (await s.execute(
                            select(Message).where(Message.app == app, Message.openid == openid,
                                                  Message.direction == "in", Message.status == PENDING)
                            .order_by(Message.id).limit(50)
                        )).scalars().all()
                    if not rows:
                        break
                    for row in rows:
                        await self._handle_row(row, conv)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("lane %s/%s stopped on a store error; it will be retried", app, openid)
            await asyncio.sleep(1.0)
        finally:
            conv_id = self._lane_conv.pop(key, None)
            self._lanes.pop(key, None)
            if conv_id is not None and not self._closing:
                try:
                    await self.writer.run(ReleaseOp([conv_id], self.instance_id))
                except Exception:
                    log.warning("could not release lane %s/%s; its lease will expire", app, openid)
                self._wake.set()

    async def _handle_row(self, row: Message, conv: ConversationInfo) -> None:
        event = json.loads(row.raw)
        app_cfg = self.settings.apps.get(row.app)
        appid = app_cfg.appid if app_cfg else ""
        media_path = row.media_path
        if row.msg_type == "image" and not media_path and self.media_store is not None:
            media_path = await self._keep_image(row, event)
        info = MessageInfo(id=row.id, app=row.app, openid=row.openid, msg_type=row.msg_type,
                           event=row.event, text=row.text, dedup_key=row.dedup_key, status=row.status,
                           attempts=row.attempts, media_path=media_path)
        routes = [r for r in self.router.candidates(event, human=conv.status == "human") if not r.inline]
        result = await self._run_routes(row.app, appid, info, event, conv, routes, source="push")
        applied = await self.writer.run(OutcomeOp(
            message_id=row.id, app=row.app, openid=row.openid, status=result.status,
            handler=result.handler, error=result.error, replies=result.replies,
            conversation_id=conv.id, action_at=row.received_at, action_kind=user_action_kind(event),
            media_path=media_path,
        ))
        self.handled += 1
        if applied and result.replies:
            self.on_replies()

    async def _keep_image(self, row: Message, event: dict[str, Any]) -> str | None:
        """Fetch an image the user sent and keep it in the media store (WeChat's copy expires)."""
        from csbot.media import fetch_user_image, media_key

        data = await fetch_user_image(self.openapi_for(row.app), event)
        if not data:
            return None
        try:
            return await self.media_store.put(media_key(row.app, row.openid, row.id, data), data)
        except OSError as exc:
            log.warning("could not keep the image of push %s: %s", row.id, exc)
            return None
