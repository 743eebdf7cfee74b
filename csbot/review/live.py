"""What the console's live view asks the store: unread counts, waiting conversations, what changed.

- **Unread**: per agent and conversation, the customer's messages (not events) after the agent's
  read mark (``conversation_reads``), which the console moves when the agent sees the bottom of
  the thread. An agent's own total counts the conversations assigned to them.
- **Waiting**: open conversations the viewer may see, active in the last week, whose customer's
  last message has no reply after it (the tab title shows their number).
- **Changes**: conversations touched by a status change or an audited action (another agent, the
  CLI, the API, the human timeout) since the stream last looked, so open pages update without
  a new message.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.exc import IntegrityError

from csbot.review.audit import Actor
from csbot.review.models import AuditEntry, ConversationEvent, ConversationRead
from csbot.review.service import Review
from csbot.statuses import ConversationStatus
from csbot.store import Conversation, Message

WAITING_WINDOW = 7 * 86400
WAITING_LIMIT = 500


def _customer_messages() -> Any:
    return and_(Message.direction == "in", Message.msg_type != "event")


class LiveState:
    """Queries behind the console's unread badges, tab title and live refresh."""

    def __init__(self, review: Review) -> None:
        self.review = review
        self.sessionmaker = review.sessionmaker

    async def unread(self, agent_id: int | None, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Unread customer messages per (app, openid), for this agent."""
        if agent_id is None or not keys:
            return {}
        async with self.sessionmaker() as s:
            rows = (await s.execute(
                select(Message.app, Message.openid, func.count())
                .join(Conversation, and_(Conversation.app == Message.app, Conversation.openid == Message.openid))
                .outerjoin(ConversationRead, and_(ConversationRead.conversation_id == Conversation.id,
                                                  ConversationRead.agent_id == agent_id))
                .where(Conversation.app.in_({k[0] for k in keys}), Conversation.openid.in_({k[1] for k in keys}),
                       _customer_messages(), Message.id > func.coalesce(ConversationRead.last_read_id, 0))
                .group_by(Message.app, Message.openid))).all()
        wanted = set(keys)
        return {(r[0], r[1]): int(r[2]) for r in rows if (r[0], r[1]) in wanted}

    async def my_unread(self, actor: Actor) -> int:
        """Unread customer messages in the conversations assigned to this agent."""
        if actor.agent_id is None:
            return 0
        async with self.sessionmaker() as s:
            return int((await s.execute(
                select(func.count()).select_from(Message)
                .join(Conversation, and_(Conversation.app == Message.app, Conversation.openid == Message.openid))
                .outerjoin(ConversationRead, and_(ConversationRead.conversation_id == Conversation.id,
                                                  ConversationRead.agent_id == actor.agent_id))
                .where(Conversation.assigned_agent == actor.name, _customer_messages(),
                       Message.id > func.coalesce(ConversationRead.last_read_id, 0)))).scalar_one())

    async def mark_read(self, actor: Actor, app: str, openid: str, last_id: int) -> None:
        """Move the agent's read mark forward (never back) to ``last_id``."""
        if actor.agent_id is None:
            return
        async with self.sessionmaker() as s, s.begin():
            conv = await self.review._conversation(s, app, openid, viewer=actor)
            last_id = min(int(last_id), int((await s.execute(select(func.max(Message.id)))).scalar() or 0))
            done = await s.execute(update(ConversationRead).where(
                ConversationRead.agent_id == actor.agent_id, ConversationRead.conversation_id == conv.id)
                .values(last_read_id=func.max(ConversationRead.last_read_id, last_id)
                        if s.bind.dialect.name == "sqlite"
                        else func.greatest(ConversationRead.last_read_id, last_id)))
            if done.rowcount == 0:
                try:
                    async with s.begin_nested():
                        s.add(ConversationRead(agent_id=actor.agent_id, conversation_id=conv.id,
                                               last_read_id=last_id))
                except IntegrityError:
                    pass  # another tab of the same agent did it first

    async def waiting(self, viewer: Actor) -> int:
        """Open conversations (visible to the viewer, active this week) whose customer waits for a reply."""
        async with self.sessionmaker() as s:
            q = select(Conversation).where(Conversation.status != ConversationStatus.CLOSED,
                                           Conversation.last_message_at >= time.time() - WAITING_WINDOW)
            if not viewer.is_admin:
                q = q.where(or_(Conversation.assigned_agent.is_(None), Conversation.assigned_agent == viewer.name))
            convs = list((await s.execute(q.order_by(Conversation.last_message_at.desc())
                                          .limit(WAITING_LIMIT))).scalars())
            stats = await self.review._stats(s, convs)
        return sum(1 for v in stats.values() if v["unanswered"])

    async def marks(self) -> tuple[int, int, int]:
        """The newest message, conversation event and audit entry ids (where a stream starts)."""
        async with self.sessionmaker() as s:
            m = (await s.execute(select(func.max(Message.id)))).scalar() or 0
            e = (await s.execute(select(func.max(ConversationEvent.id)))).scalar() or 0
            a = (await s.execute(select(func.max(AuditEntry.id)))).scalar() or 0
        return int(m), int(e), int(a)

    async def changed(self, after_event: int, after_audit: int) -> tuple[set[tuple[str, str]], int, int]:
        """Conversations with a status change or an audited action since these ids."""
        async with self.sessionmaker() as s:
            events = (await s.execute(
                select(ConversationEvent.id, Conversation.app, Conversation.openid)
                .join(Conversation, Conversation.id == ConversationEvent.conversation_id)
                .where(ConversationEvent.id > after_event).order_by(ConversationEvent.id).limit(500))).all()
            audits = (await s.execute(
                select(AuditEntry.id, AuditEntry.app, AuditEntry.openid)
                .where(AuditEntry.id > after_audit).order_by(AuditEntry.id).limit(500))).all()
        keys = {(r.app, r.openid) for r in events} | {(r.app, r.openid) for r in audits if r.openid}
        return (keys, max([after_event, *(r.id for r in events)]), max([after_audit, *(r.id for r in audits)]))


__all__ = ["LiveState"]
