"""Conversation review and human takeover: the queries and actions behind the CLI, API and console.

Status of a conversation (one per app and openid):

    bot ──takeover──▶ human ──handback──▶ bot
     │                  │  └─(no agent reply for CSBOT_HUMAN_TIMEOUT s)─▶ bot
     └──────close───────┴──────close──────▶ closed ──(the customer writes again)──▶ bot

- ``human``: a person has the conversation (``assigned_agent``); handlers do not answer
  (except routes declared ``while_human=True``), pushes are shown to agents. An agent's reply
  takes the conversation over if it was not already.
- ``closed``: done. The bot still answers a customer who writes again, and that message
  reopens the conversation as ``bot`` (recorded with the push's outcome).

The transitions themselves live in :mod:`csbot.conversations`, shared with the inbox. Every
change made here is recorded as a ``conversation_events`` row and shows on the thread.
Everything here is async; nothing blocks the event loop.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, AsyncIterator, Callable

from sqlalchemy import and_, case, exists, func, or_, select, tuple_, update
from sqlalchemy.orm import aliased
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from csbot import conversations
from csbot.config import Settings
from csbot.messages import MAX_TEXT, Reply, Text, reply_from_send_body
from csbot.outbox import outbound_message, queue_messages
from csbot.review import i18n
from csbot.review.audit import Actor, record
from csbot.review.i18n import N_
from csbot.review.models import AuditEntry, ConversationEvent
from csbot.review.search import matching_ids
from csbot.statuses import OUTBOUND_UNDELIVERED, ConversationStatus
from csbot.store import Conversation, Message, Note

STATUSES = tuple(ConversationStatus)
#: outbound states of a reply that never reached the customer (and can be retried)
UNDELIVERED = OUTBOUND_UNDELIVERED
#: audited actions whose thread item (the note, the message) already says who and when
IN_THREAD_ALREADY = ("note", "reply", "image")
MAX_TAGS = 20
MAX_TAG_LENGTH = 32
MAX_NAME = 64
MAX_LIMIT = 500
#: fields of an inbound push that are about the envelope, not what the customer sent
_ENVELOPE = {"ToUserName", "FromUserName", "CreateTime", "MsgType", "Encrypt", "MsgId"}

class ReviewError(Exception):
    """Something the caller asked for cannot be done; the message says why (safe to show).

    The message is a catalog id with named placeholders (``Invalid(N_("no agent named
    %(name)s"), name=name)``): ``str()`` is the English text (CLI, logs), :meth:`localized`
    the text in the language of the request showing it (console, ``/api/``)."""

    status = 400

    def __init__(self, message: str, /, **params: Any) -> None:
        self.message_id = message
        self.params = params
        super().__init__(message % params if params else message)

    def localized(self) -> str:
        return i18n.translate(self.message_id, self.params)


class NotFound(ReviewError):
    status = 404


class Invalid(ReviewError):
    status = 400


class Conflict(ReviewError):
    status = 409


class NotYours(ReviewError):
    """An agent (not an admin) acting on a conversation another agent has."""

    status = 403


ASSIGNED_FILTERS = ("mine", "unassigned")

#: what an audit entry or status event on a conversation says (stored in English, for the CLI and
#: the audit log); the console shows each through the catalogs (:func:`localized_detail`)
DETAILS = {
    "assigned": N_("assigned to %(agent)s"),
    "by_replying": N_("by replying"),
    "message": N_("message %(id)s"),
    "message_of_type": N_("message %(id)s (%(type)s)"),
    "retried": N_("reply %(id)s (%(status)s)"),
    "assign_to": N_("to %(agent)s"),
    "unassign": N_("unassigned"),
    "note": N_("note %(id)s"),
    # written by csbot.conversations.return_idle_to_bot
    "timeout": N_("no agent reply for %(n)s s: back to the bot"),
}
_DETAIL_SHAPES = [
    (re.compile("^" + re.sub(r"%\\\((\w+)\\\)s", r"(?P<\1>.+?)", re.escape(fmt)) + "$", re.S), fmt)
    for fmt in sorted(DETAILS.values(), key=len, reverse=True)]


def detail(kind: str, **params: Any) -> str:
    """The stored (English) detail of an action on a conversation."""
    return DETAILS[kind] % params


def localized_detail(text: str | None) -> str:
    """A stored detail in the request's language, when it has one of :data:`DETAILS`' shapes
    (tags' ``+vip -old`` and anything older stay as they are)."""
    if not text:
        return ""
    for shape, fmt in _DETAIL_SHAPES:
        m = shape.match(text)
        if m:
            return i18n.translate(fmt, m.groupdict())
    return text


def as_actor(by: Actor | None, name: str | None = None) -> Actor:
    """Who acts: ``by`` when the caller knows (console, API token), else the admin-level ``name``."""
    return by if by is not None else Actor(name=name or "api")


def check_access(conv: Conversation, by: Actor | None) -> None:
    """Agents see and act on conversations that are theirs or nobody's; admins on every one."""
    if by is not None and not by.is_admin and conv.assigned_agent not in (None, by.name):
        raise NotYours(N_("this conversation is assigned to %(agent)s; ask an admin to reassign it"),
                       agent=conv.assigned_agent)


# --------------------------------------------------------------------------- input parsing


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d|w)\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str | None, *, now: float | None = None) -> float | None:
    """``2h``, ``30m``, ``3d``, ``1w`` (that long ago), an ISO date ``2026-11-20`` or date-time
    ``2026-11-20T10:00[:00][+08:00]`` (local time when no offset), or Unix seconds."""
    if value is None or str(value).strip() == "":
        return None
    value = str(value).strip()
    now = time.time() if now is None else now
    m = _RELATIVE.match(value)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2).lower()]
    if re.fullmatch(r"\d{9,11}(\.\d+)?", value):
        return float(value)
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise Invalid(N_("not a time: %(value)r (use e.g. 2h, 3d, 2026-11-20 or 2026-11-20T10:00)"),
                      value=value[:40]) from None
    if dt.tzinfo is None:
        dt = dt.astimezone()  # local time
    return dt.timestamp()


#: per field a name is checked for: (its message when empty, when too long), whole sentences
NAME_MESSAGES = {
    "agent": (N_("agent must be a non-empty string"),
              N_("agent must be at most %(n)s printable characters")),
    "author": (N_("author must be a non-empty string"),
               N_("author must be at most %(n)s printable characters")),
    "new_agent": (N_("an agent's name must be a non-empty string"),
                  N_("an agent's name must be at most %(n)s printable characters")),
    "your_name": (N_("enter your name"),
                  N_("your name must be at most %(n)s printable characters")),
}
#: per field a text is checked for: (its message when empty, when too long)
TEXT_MESSAGES = {
    "text": (N_("text must be a non-empty string"), N_("text must be at most %(n)s characters")),
    "saved_reply": (N_("the saved reply must not be empty"),
                    N_("the saved reply must be at most %(n)s characters")),
}


def check_name(value: Any, field: str = "agent") -> str:
    """A person's name (``field``: a key of :data:`NAME_MESSAGES`, which says what to answer)."""
    empty, too_long = NAME_MESSAGES[field]
    if not isinstance(value, str) or not value.strip():
        raise Invalid(empty)
    value = value.strip()
    if len(value) > MAX_NAME or any(ord(c) < 32 for c in value):
        raise Invalid(too_long, n=MAX_NAME)
    return value


def check_text(value: Any, field: str = "text") -> str:
    """A message's or note's text (``field``: a key of :data:`TEXT_MESSAGES`)."""
    empty, too_long = TEXT_MESSAGES[field]
    if not isinstance(value, str) or not value.strip():
        raise Invalid(empty)
    if len(value) > MAX_TEXT:
        raise Invalid(too_long, n=MAX_TEXT)
    return value


def check_key(app: Any, openid: Any) -> tuple[str, str]:
    if not isinstance(app, str) or not 0 < len(app) <= 64:
        raise NotFound(N_("no such conversation"))
    if not isinstance(openid, str) or not 0 < len(openid) <= 128:
        raise NotFound(N_("no such conversation"))
    return app, openid


def encode_cursor(at: float, conv_id: int) -> str:
    return base64.urlsafe_b64encode(f"{at!r}:{conv_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, int]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, _, conv_id = raw.partition(":")
        return float(at), int(conv_id)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise Invalid(N_("bad cursor")) from None


# --------------------------------------------------------------------------- shapes


def _loads(raw: str | None) -> dict[str, Any]:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def tags_of(conv: Conversation) -> list[str]:
    try:
        tags = json.loads(conv.tags or "[]")
    except ValueError:
        return []
    return [t for t in tags if isinstance(t, str)] if isinstance(tags, list) else []


def message_item(m: Message) -> dict[str, Any]:
    """One message of a thread, as the CLI (--json), the API and the console's live view show it."""
    raw = _loads(m.raw)
    if m.direction == "in":
        content = {k: v for k, v in raw.items() if k not in _ENVELOPE}
    else:
        part = raw.get(m.msg_type)
        content = {k: v for k, v in part.items() if k != "data_hex"} if isinstance(part, dict) else {}
    item: dict[str, Any] = {
        "kind": "message", "id": m.id, "app": m.app, "openid": m.openid, "direction": m.direction,
        "type": m.msg_type, "event": m.event, "text": m.text, "content": content,
        "at": iso(m.created_at), "received_at": iso(m.received_at), "status": m.status,
    }
    if m.direction == "in":
        passive = _loads(m.passive_reply) if m.passive_reply else None
        item.update(handler=m.handler, error=m.error,
                    transferred=bool(m.passive_reply and "transfer_customer_service" in m.passive_reply),
                    passive_reply=passive,
                    media_stored=bool(m.media_path or m.file_id), file_id=m.file_id)
    else:
        item.update(author=m.author, in_reply_to=m.in_reply_to, attempts=m.attempts, errcode=m.errcode,
                    errmsg=m.errmsg, error=m.error, sent_at=iso(m.sent_at),
                    retryable=m.status in UNDELIVERED)
    return item


def note_item(n: Note) -> dict[str, Any]:
    return {"kind": "note", "id": n.id, "author": n.author, "text": n.text, "at": iso(n.created_at)}


def event_item(e: ConversationEvent) -> dict[str, Any]:
    return {"kind": "event", "id": e.id, "event": e.kind, "actor": e.actor, "detail": e.detail, "at": iso(e.at)}


def audit_thread_item(e: AuditEntry) -> dict[str, Any]:
    return {"kind": "audit", "id": e.id, "action": e.action, "agent": e.agent, "address": e.address,
            "detail": e.detail, "at": iso(e.at)}


def conversation_item(c: Conversation, stats: dict[str, Any] | None = None) -> dict[str, Any]:
    stats = stats or {}
    return {
        "kind": "conversation", "id": c.id, "app": c.app, "openid": c.openid, "status": c.status,
        "assigned_agent": c.assigned_agent, "tags": tags_of(c), "created_at": iso(c.created_at),
        "last_message_at": iso(c.last_message_at), "human_since": iso(c.human_since),
        "last_agent_reply_at": iso(c.last_agent_reply_at), "transferred_at": iso(c.transferred_at),
        "closed_at": iso(c.closed_at), "unanswered": bool(stats.get("unanswered", False)),
        "undelivered": bool(stats.get("undelivered", False)),
        "last_message": stats.get("last_message"),
    }


def summary(m: Message) -> str:
    """One line saying what a message was (for lists and the CLI)."""
    if m.text:
        return m.text
    return f"[{m.event or m.msg_type}]"


# --------------------------------------------------------------------------- the service


@dataclass
class Page:
    conversations: list[dict[str, Any]]
    next_cursor: str | None


class Review:
    """Queries and actions on conversations, over one store."""

    def __init__(self, settings: Settings, sessionmaker: async_sessionmaker[AsyncSession],
                 outbox: Any = None) -> None:
        """``outbox`` (a :class:`~csbot.outbox.Outbox`) is needed only to send and to retry."""
        self.settings = settings
        self.sessionmaker = sessionmaker
        self._outbox = outbox
        #: called with (app, openid) after a conversation's status changed (outbound webhooks)
        self.on_status: Callable[[str, str], None] | None = None

    def _status_changed(self, app: str, openid: str) -> None:
        if self.on_status is not None:
            self.on_status(app, openid)

    # ---- reading

    async def list_conversations(self, *, app: str | None = None, status: str | None = None,
                                 since: float | None = None, search: str | None = None,
                                 limit: int = 50, cursor: str | None = None, assigned: str | None = None,
                                 viewer: Actor | None = None, undelivered: bool = False) -> Page:
        """Newest activity first; ``cursor`` continues after the last page.

        ``assigned``: ``mine`` (the viewer's) or ``unassigned``; a ``viewer`` who is not an admin
        sees only conversations that are theirs or nobody's; ``undelivered``: only those with a
        reply that never arrived."""
        if status is not None and status not in STATUSES:
            raise Invalid(N_("status must be one of %(choices)s"), choices=", ".join(STATUSES))
        if assigned is not None and assigned not in ASSIGNED_FILTERS:
            raise Invalid(N_("assigned must be one of %(choices)s"), choices=", ".join(ASSIGNED_FILTERS))
        limit = max(1, min(int(limit), MAX_LIMIT))
        async with self.sessionmaker() as s:
            q = await self.list_query(s, app=app, status=status, since=since, search=search, cursor=cursor,
                                      assigned=assigned, viewer=viewer, undelivered=undelivered)
            q = q.limit(limit + 1)
            convs = list((await s.execute(q)).scalars().all())
            more = len(convs) > limit
            convs = convs[:limit]
            stats = await self._stats(s, convs)
        items = [conversation_item(c, stats.get((c.app, c.openid))) for c in convs]
        next_cursor = encode_cursor(convs[-1].last_message_at, convs[-1].id) if more and convs else None
        return Page(items, next_cursor)

    @staticmethod
    async def list_query(s: AsyncSession, *, app: str | None = None, status: str | None = None,
                         since: float | None = None, search: str | None = None,
                         cursor: str | None = None, assigned: str | None = None,
                         viewer: Actor | None = None, undelivered: bool = False) -> Any:
        """The SELECT of conversations behind :meth:`list_conversations` (without the limit)."""
        q = select(Conversation)
        if viewer is not None and not viewer.is_admin:
            q = q.where(or_(Conversation.assigned_agent.is_(None), Conversation.assigned_agent == viewer.name))
        if assigned == "mine":
            q = q.where(Conversation.assigned_agent == (viewer.name if viewer else ""))
        elif assigned == "unassigned":
            q = q.where(Conversation.assigned_agent.is_(None))
        if undelivered:
            q = q.where(tuple_(Conversation.app, Conversation.openid).in_(undelivered_keys()))
        if app:
            q = q.where(Conversation.app == app)
        if status:
            q = q.where(Conversation.status == status)
        if since is not None:
            q = q.where(Conversation.last_message_at >= since)
        if search and search.strip():
            hits = select(Message.app, Message.openid).where(Message.id.in_(await matching_ids(s, search)))
            q = q.where(tuple_(Conversation.app, Conversation.openid).in_(hits))
        if cursor:
            at, conv_id = decode_cursor(cursor)
            q = q.where(or_(Conversation.last_message_at < at,
                            and_(Conversation.last_message_at == at, Conversation.id < conv_id)))
        return q.order_by(Conversation.last_message_at.desc(), Conversation.id.desc())

    async def _stats(self, s: AsyncSession, convs: list[Conversation]) -> dict[tuple[str, str], dict[str, Any]]:
        """Per conversation: the last message, and whether the customer's last message is unanswered."""
        if not convs:
            return {}
        keys = [(c.app, c.openid) for c in convs]
        user_msg = and_(Message.direction == "in", Message.msg_type != "event")
        out_in = lambda statuses: and_(Message.direction == "out", Message.status.in_(statuses))  # noqa: E731
        rows = (await s.execute(
            select(Message.app, Message.openid, func.max(Message.id).label("last_id"),
                   func.max(case((user_msg, Message.id), else_=None)).label("last_in"),
                   func.max(case((Message.direction == "out", Message.id), else_=None)).label("last_out"),
                   func.max(case((out_in(UNDELIVERED), Message.id), else_=None)).label("last_undelivered"),
                   func.max(case((out_in(("sent",)), Message.id), else_=None)).label("last_sent"))
            .where(tuple_(Message.app, Message.openid).in_(keys))
            .group_by(Message.app, Message.openid))).all()
        last_ids = [r.last_id for r in rows]
        lasts = {m.id: m for m in (await s.execute(select(Message).where(Message.id.in_(last_ids)))).scalars()}
        out: dict[tuple[str, str], dict[str, Any]] = {}
        for r in rows:
            m = lasts.get(r.last_id)
            out[(r.app, r.openid)] = {
                "unanswered": bool(r.last_in) and r.last_in > (r.last_out or 0),
                # a reply that never arrived, and no later reply did
                "undelivered": bool(r.last_undelivered) and r.last_undelivered > (r.last_sent or 0),
                "last_message": None if m is None else {
                    "id": m.id, "direction": m.direction, "type": m.msg_type, "summary": summary(m)[:200],
                    "at": iso(m.created_at)},
            }
        return out

    async def _conversation(self, s: AsyncSession, app: str, openid: str, *, lock: bool = False,
                            viewer: Actor | None = None) -> Conversation:
        check_key(app, openid)
        q = select(Conversation).where(Conversation.app == app, Conversation.openid == openid)
        if lock:
            # write the row before reading it: that takes its lock on every store. FOR UPDATE alone is
            # a no-op on SQLite, where two agents pressing Send at once both read "unassigned" and
            # both took the conversation over (and both replies went out)
            await s.execute(update(Conversation).where(Conversation.app == app, Conversation.openid == openid)
                            .values(status=Conversation.status).execution_options(synchronize_session=False))
            q = q.with_for_update()
        conv = (await s.execute(q)).scalars().first()
        if conv is None:
            raise NotFound(N_("no conversation with %(openid)s in app %(app)s"), openid=openid, app=app)
        check_access(conv, viewer)
        return conv

    async def conversations_for(self, keys: list[tuple[str, str]]) -> list[dict[str, Any]]:
        """The conversations of these (app, openid) pairs that exist."""
        if not keys:
            return []
        async with self.sessionmaker() as s:
            convs = list((await s.execute(select(Conversation).where(
                tuple_(Conversation.app, Conversation.openid).in_(keys)))).scalars().all())
            stats = await self._stats(s, convs)
        return [conversation_item(c, stats.get((c.app, c.openid))) for c in convs]

    async def conversation(self, app: str, openid: str, *, viewer: Actor | None = None) -> dict[str, Any]:
        async with self.sessionmaker() as s:
            conv = await self._conversation(s, app, openid, viewer=viewer)
            stats = await self._stats(s, [conv])
        return conversation_item(conv, stats.get((app, openid)))

    async def find_apps(self, openid: str) -> list[str]:
        """The apps in which ``openid`` has a conversation (for a CLI given no --app)."""
        async with self.sessionmaker() as s:
            return list((await s.execute(select(Conversation.app).where(Conversation.openid == openid)
                                         .order_by(Conversation.app))).scalars())

    async def thread(self, app: str, openid: str, *, limit: int | None = None,
                     before: int | None = None, after: int | None = None,
                     viewer: Actor | None = None) -> dict[str, Any]:
        """The conversation and its items (messages, notes, status events) in order.

        ``limit`` keeps the latest ones (``before``: older than that message id); ``after``
        gives only messages newer than that id (live updates)."""
        async with self.sessionmaker() as s:
            conv = await self._conversation(s, app, openid, viewer=viewer)
            stats = await self._stats(s, [conv])
            q = select(Message).where(Message.app == app, Message.openid == openid)
            if before is not None:
                q = q.where(Message.id < before)
            if after is not None:
                q = q.where(Message.id > after)
            if limit is not None:
                q = q.order_by(Message.id.desc()).limit(limit)
                messages = list(reversed((await s.execute(q)).scalars().all()))
            else:
                messages = list((await s.execute(q.order_by(Message.id))).scalars().all())
            notes = list((await s.execute(select(Note).where(Note.conversation_id == conv.id)
                                          .order_by(Note.id))).scalars().all())
            events = list((await s.execute(select(ConversationEvent).where(
                ConversationEvent.conversation_id == conv.id).order_by(ConversationEvent.id))).scalars().all())
            audits = list((await s.execute(select(AuditEntry).where(
                AuditEntry.conversation_id == conv.id).order_by(AuditEntry.id))).scalars().all())
        truncated = limit is not None and len(messages) == limit
        start = messages[0].received_at if truncated and messages else float("-inf")
        # a status change made by someone shows once: its event, with the audit entry's address
        event_items = [(e.at, event_item(e)) for e in events]
        shown: set[int] = set()
        for at, item in event_items:
            for a in audits:
                if a.id not in shown and a.action == item["event"] and abs(a.at - at) < 1.0:
                    item["address"] = a.address
                    shown.add(a.id)
                    break
        side = ([(n.created_at, note_item(n)) for n in notes] + event_items
                + [(a.at, audit_thread_item(a)) for a in audits if a.id not in shown and a.action not in IN_THREAD_ALREADY])
        side = sorted((p for p in side if p[0] >= start), key=lambda p: p[0])
        items: list[dict[str, Any]] = []
        for m in messages:
            while side and side[0][0] <= m.received_at:  # an event at the same instant caused it
                items.append(side.pop(0)[1])
            items.append(message_item(m))
        if after is None:
            items.extend(item for _, item in side)
        return {"conversation": conversation_item(conv, stats.get((app, openid))), "items": items,
                "truncated": truncated, "first_id": messages[0].id if messages else None}

    async def export(self, *, since: float | None = None, until: float | None = None,
                     app: str | None = None, batch: int = 1000) -> AsyncIterator[list[dict[str, Any]]]:
        """Every message in the range (by its time), in id order, in batches."""
        last = 0
        while True:
            async with self.sessionmaker() as s:
                q = select(Message).where(Message.id > last)
                q = self._range(q, since, until, app)
                rows = list((await s.execute(q.order_by(Message.id).limit(batch))).scalars().all())
            if not rows:
                return
            last = rows[-1].id
            yield [export_row(m) for m in rows]

    async def count(self, *, since: float | None = None, until: float | None = None,
                    app: str | None = None) -> int:
        async with self.sessionmaker() as s:
            q = self._range(select(func.count()).select_from(Message), since, until, app)
            return int((await s.execute(q)).scalar_one())

    @staticmethod
    def _range(q: Any, since: float | None, until: float | None, app: str | None) -> Any:
        if since is not None:
            q = q.where(Message.created_at >= since)
        if until is not None:
            q = q.where(Message.created_at < until)
        if app:
            q = q.where(Message.app == app)
        return q

    async def new_messages(self, after: int, *, app: str | None = None, openid: str | None = None,
                           limit: int = 200) -> list[Message]:
        """Messages with an id above ``after`` (the console's live updates)."""
        async with self.sessionmaker() as s:
            q = select(Message).where(Message.id > after)
            if app:
                q = q.where(Message.app == app)
            if openid:
                q = q.where(Message.openid == openid)
            return list((await s.execute(q.order_by(Message.id).limit(limit))).scalars().all())

    async def messages_by_id(self, ids: list[int]) -> list[Message]:
        if not ids:
            return []
        async with self.sessionmaker() as s:
            return list((await s.execute(select(Message).where(Message.id.in_(ids)))).scalars().all())

    async def max_message_id(self) -> int:
        async with self.sessionmaker() as s:
            return int((await s.execute(select(func.max(Message.id)))).scalar() or 0)

    async def media(self, message_id: int) -> Message | None:
        async with self.sessionmaker() as s:
            return (await s.execute(select(Message).where(Message.id == message_id))).scalars().first()

    async def undelivered_counts(self) -> dict[str, int]:
        """Per app, how many conversations have a reply that never arrived (the metric)."""
        keys = undelivered_keys().subquery()
        async with self.sessionmaker() as s:
            rows = (await s.execute(select(keys.c.app, func.count()).group_by(keys.c.app))).all()
        return {app: int(n) for app, n in rows}

    # ---- acting

    async def retry(self, message_id: Any, *, actor: str | None = None, by: Actor | None = None) -> dict[str, Any]:
        """Queue a failed, dead or quota_exceeded reply again (the outbox's order and quota apply).

        ``by`` (audited) defaults to an admin named ``actor``; an agent may retry only in
        conversations that are theirs or nobody's."""
        by = as_actor(by, actor)
        if isinstance(message_id, bool) or not isinstance(message_id, int) or not 0 < message_id < 2**62:
            raise Invalid(N_("message_id must be a positive integer"))
        outbox = self._require_outbox()
        async with self.sessionmaker() as s:
            row = (await s.execute(select(Message).where(Message.id == message_id))).scalars().first()
        if row is None:
            raise NotFound(N_("no message %(id)s"), id=message_id)
        if row.direction != "out":
            raise Invalid(N_("message %(id)s is from the customer, not a reply"), id=message_id)
        async with self.sessionmaker() as s:
            conv = await self._conversation(s, row.app, row.openid, viewer=by)
        if row.status not in UNDELIVERED:
            raise Conflict(N_("reply %(id)s is %(status)s; only %(retryable)s replies can be retried"),
                           id=message_id, status=row.status, retryable=", ".join(map(str, UNDELIVERED)))
        if not await outbox.retry(message_id, actor=by.name):
            raise Conflict(N_("reply %(id)s changed meanwhile; reload and try again"), id=message_id)
        async with self.sessionmaker() as s, s.begin():
            await record(s, "retry", by, conversation_id=conv.id, app=row.app, openid=row.openid,
                         detail=detail("retried", id=message_id, status=row.status))
        async with self.sessionmaker() as s:
            row = (await s.execute(select(Message).where(Message.id == message_id))).scalars().one()
            return message_item(row)

    async def set_status(self, app: str, openid: str, status: str, *, agent: str | None = None,
                         actor: str | None = None, by: Actor | None = None) -> dict[str, Any]:
        """takeover (``human``, with the agent), handback (``bot``) or close (``closed``).

        ``by`` (who acts, audited) defaults to an admin named ``agent``; an agent account always
        takes over for itself."""
        if status not in STATUSES:
            raise Invalid(N_("status must be one of %(choices)s"), choices=", ".join(STATUSES))
        if agent is not None:
            agent = check_name(agent)
        by = as_actor(by, actor or agent)
        if not by.is_admin:
            agent = by.name
        now = time.time()
        async with self.sessionmaker() as s, s.begin():
            conv = await self._conversation(s, app, openid, lock=True, viewer=by)
            changed = await conversations.change(s, conv, status, agent=agent or actor, actor=by.name, now=now)
            if changed:
                await record(s, conversations.EVENT_FOR_STATUS[status], by, conversation_id=conv.id, app=app,
                             openid=openid, detail=detail("assigned", agent=agent) if status == ConversationStatus.HUMAN
                             and agent and agent != by.name else None, at=now)
        if changed:
            self._status_changed(app, openid)
        return await self.conversation(app, openid)

    async def assign(self, app: str, openid: str, agent: str | None, *, by: Actor | None = None,
                     known_agents: list[str] | None = None) -> dict[str, Any]:
        """Give the conversation to ``agent`` (None: to nobody) without changing its status; a
        ``human`` conversation can only be given to somebody (hand it back to free it)."""
        by = as_actor(by)
        if agent is not None:
            agent = check_name(agent)
            if known_agents is not None and agent not in known_agents:
                raise Invalid(N_("no enabled agent named %(name)r"), name=agent)
        if not by.is_admin and agent not in (None, by.name):
            raise NotYours(N_("only an admin assigns a conversation to somebody else"))
        async with self.sessionmaker() as s, s.begin():
            conv = await self._conversation(s, app, openid, lock=True, viewer=by)
            if agent is None and conv.status == ConversationStatus.HUMAN:
                raise Invalid(N_("a conversation with an agent needs one: hand it back to the bot to unassign it"))
            if conv.assigned_agent != agent:
                await s.execute(update(Conversation).where(Conversation.id == conv.id)
                                .values(assigned_agent=agent))
                await record(s, "assign", by, conversation_id=conv.id, app=app, openid=openid,
                             detail=detail("assign_to", agent=agent) if agent else detail("unassign"))
        return await self.conversation(app, openid)

    async def reply(self, app: str, openid: str, text: str, *, agent: str, by: Actor | None = None,
                    key: str | None = None) -> int:
        """An agent's text reply, queued in the outbox; the conversation is taken over by ``agent``.

        ``key`` (the console's per-form key, the API's ``Idempotency-Key``) makes it idempotent: the
        same key again (a double click, a client retrying after a timeout) queues nothing more and
        returns the first reply's id. The key covers the text too: another text is another reply."""
        text = check_text(text)
        if key is not None:
            if not isinstance(key, str) or not 0 < len(key) <= 200:
                raise Invalid(N_("an idempotency key is 1 to 200 characters"))
            key = f"{key}:{hashlib.sha256(text.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"
        return await self.reply_with(app, openid, Text(text), agent=agent, by=by, action="reply", key=key)

    async def reply_with(self, app: str, openid: str, message: Reply, *, agent: str, by: Actor | None = None,
                         action: str = "reply", key: str | None = None) -> int:
        """An agent's reply of any kind (text, image), audited as ``action``; takes the conversation over.

        One transaction: the takeover, the queued reply, the agent-reply time and the audit entry
        commit together (or none of them does).
        """
        by = as_actor(by, agent)
        agent = check_name(by.name if not by.is_admin else agent)
        if app not in self.settings.apps:
            raise NotFound(N_("unknown app %(app)r"), app=app)
        outbox = self._require_outbox()
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 240):
            raise ValueError("reply_with's key is 1 to 240 characters")
        outbound = outbound_message(app, openid, message, author=f"agent:{agent}",
                                    key=f"reply:{agent}:{key}" if key else None)
        now = time.time()
        async with self.sessionmaker() as s, s.begin():
            conv = await self._conversation(s, app, openid, lock=True, viewer=by)
            if key:  # the same reply sent again: the row (locked above) says it is queued already
                first = (await s.execute(select(Message.id).where(
                    Message.app == app, Message.dedup_key == outbound.key))).scalar()
                if first is not None:
                    return int(first)
            taken_over = False
            if conv.status != ConversationStatus.HUMAN:
                if await conversations.change(s, conv, ConversationStatus.HUMAN, agent=agent, actor=agent, now=now):
                    taken_over = True
                    await record(s, "takeover", by, conversation_id=conv.id, app=app, openid=openid, at=now,
                                 detail=detail("by_replying"))
            (message_id,) = await queue_messages(await s.connection(), [outbound], now=now)
            await conversations.record_agent_reply(s, conv, now)
            await record(s, action, by, conversation_id=conv.id, app=app, openid=openid,
                         detail=detail("message", id=message_id))
        outbox.wake()
        if taken_over:
            self._status_changed(app, openid)
        return message_id  # type: ignore[return-value]  # a new key is never a duplicate

    def _require_outbox(self) -> Any:
        if self._outbox is None:
            raise RuntimeError("this Review has no outbox")
        return self._outbox

    async def send(self, app: str, touser: str, message: dict[str, Any], *, author: str = "operator",
                   by: Actor | None = None) -> int:
        """Any customer-service message (text, image, link, miniprogrampage) to a user, via the outbox."""
        if app not in self.settings.apps:
            raise NotFound(N_("unknown app %(app)r"), app=app)
        if not isinstance(touser, str) or not 0 < len(touser) <= 128:
            raise Invalid(N_("touser must be an openid"))
        reply = build_reply(message)
        outbox = self._require_outbox()
        by = as_actor(by, author)
        async with self.sessionmaker() as s:
            conv = (await s.execute(select(Conversation).where(
                Conversation.app == app, Conversation.openid == touser))).scalars().first()
            if conv is not None:
                check_access(conv, by)
        outbound = outbound_message(app, touser, reply, author=author if by.is_admin else f"agent:{by.name}")
        async with self.sessionmaker() as s, s.begin():  # the message and its audit entry together
            (message_id,) = await queue_messages(await s.connection(), [outbound])
            await record(s, "send", by, conversation_id=conv.id if conv else None, app=app, openid=touser,
                         detail=detail("message_of_type", id=message_id, type=reply.msgtype))
        outbox.wake()
        return message_id  # type: ignore[return-value]

    async def set_tags(self, app: str, openid: str, *, tags: list[str] | None = None,
                       add: list[str] | None = None, remove: list[str] | None = None,
                       actor: str | None = None, by: Actor | None = None) -> list[str]:
        for value in (tags, add, remove):
            if value is not None and (not isinstance(value, list) or
                                      not all(isinstance(t, str) for t in value)):
                raise Invalid(N_("tags, add and remove must be lists of strings"))
        by = as_actor(by, actor)
        async with self.sessionmaker() as s, s.begin():
            conv = await self._conversation(s, app, openid, lock=True, viewer=by)
            before = tags_of(conv)
            current = list(before) if tags is None else []
            for t in (tags or []) + (add or []):
                t = t.strip()
                if not t or len(t) > MAX_TAG_LENGTH or any(ord(c) < 32 for c in t):
                    raise Invalid(N_("a tag must be 1 to %(n)s printable characters"), n=MAX_TAG_LENGTH)
                if t not in current:
                    current.append(t)
            drop = {t.strip() for t in (remove or [])}
            current = [t for t in current if t not in drop]
            if len(current) > MAX_TAGS:
                raise Invalid(N_("at most %(n)s tags"), n=MAX_TAGS)
            await s.execute(update(Conversation).where(Conversation.id == conv.id)
                            .values(tags=json.dumps(current, ensure_ascii=False)))
            added = [t for t in current if t not in before]
            removed = [t for t in before if t not in current]
            if added or removed:
                await record(s, "tag", by, conversation_id=conv.id, app=app, openid=openid,
                             detail=" ".join([*(f"+{t}" for t in added), *(f"-{t}" for t in removed)]))
        return current

    async def add_note(self, app: str, openid: str, text: str, *, author: str,
                       by: Actor | None = None) -> dict[str, Any]:
        text = check_text(text)
        by = as_actor(by, author)
        author = check_name(author if by.is_admin else by.name, "author")
        async with self.sessionmaker() as s, s.begin():
            conv = await self._conversation(s, app, openid, viewer=by)
            note = Note(conversation_id=conv.id, author=author, text=text, created_at=time.time())
            s.add(note)
            await s.flush()
            item = note_item(note)
            await record(s, "note", by, conversation_id=conv.id, app=app, openid=openid, detail=detail("note", id=note.id))
        return item

    async def return_idle_to_bot(self, timeout: float, *, now: float | None = None) -> list[tuple[str, str]]:
        """``human`` conversations with no agent reply for ``timeout`` seconds go back to the bot."""
        now = time.time() if now is None else now
        async with self.sessionmaker() as s, s.begin():
            returned = await conversations.return_idle_to_bot(s, timeout, now)
        for app, openid in returned:
            self._status_changed(app, openid)
        return returned


def build_reply(message: dict[str, Any]) -> Reply:
    """A message object from an openapi send body's ``msgtype`` and typed part."""
    try:
        return reply_from_send_body(message)
    except ValueError as exc:
        raise Invalid(N_("not a message WeChat accepts: %(reason)s"), reason=str(exc)) from None


EXPORT_FIELDS = ["id", "app", "openid", "direction", "type", "event", "text", "status", "handler", "author",
                 "error", "errcode", "errmsg", "created_at", "received_at", "sent_at", "in_reply_to",
                 "transferred"]


def export_row(m: Message) -> dict[str, Any]:
    return {
        "id": m.id, "app": m.app, "openid": m.openid, "direction": m.direction, "type": m.msg_type,
        "event": m.event, "text": m.text, "status": m.status, "handler": m.handler, "author": m.author,
        "error": m.error, "errcode": m.errcode, "errmsg": m.errmsg, "created_at": iso(m.created_at),
        "received_at": iso(m.received_at), "sent_at": iso(m.sent_at), "in_reply_to": m.in_reply_to,
        "transferred": bool(m.passive_reply and "transfer_customer_service" in m.passive_reply),
    }


def iso(ts: float | None) -> str | None:
    """The one time format of the API, the CLI's --json and exports: ISO 8601 in UTC with its
    offset (``2026-11-20T04:28:05.123+00:00``). Browsers show it in their own zone."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="milliseconds")


def timestamp(value: str | float | None) -> float | None:
    """Unix seconds of an :func:`iso` string (or of a number, unchanged)."""
    if value is None or isinstance(value, (int, float)):
        return value
    return datetime.fromisoformat(value).timestamp()


def undelivered_keys() -> Any:
    """SELECT (app, openid) of conversations with a reply that never arrived and no later one that did."""
    later = aliased(Message)
    return (select(Message.app, Message.openid).where(
        Message.direction == "out", Message.status.in_(UNDELIVERED),
        ~exists().where(later.app == Message.app, later.openid == Message.openid, later.direction == "out",
                        later.status == "sent", later.id > Message.id))
        .group_by(Message.app, Message.openid))


def ago(ts: float | str | None, *, now: float | None = None) -> str:
    """``3 min ago``-style text for lists."""
    ts = timestamp(ts)
    if ts is None:
        return ""
    delta = max(0.0, (time.time() if now is None else now) - ts)
    if delta < 60:
        return "just now"
    if delta < 3600:
        return f"{int(delta // 60)} min ago"
    if delta < 86400:
        return f"{int(delta // 3600)} h ago"
    if delta < 7 * 86400:
        return f"{int(delta // 86400)} d ago"
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d")


__all__ = ["Review", "ReviewError", "NotFound", "NotYours", "Invalid", "Conflict", "Page", "parse_time", "STATUSES",
           "UNDELIVERED", "timestamp", "undelivered_keys",
           "message_item", "conversation_item", "export_row", "EXPORT_FIELDS", "iso", "ago"]
