"""Conversation state: the one place that changes a conversation's status.

    bot ──takeover──▶ human ──handback──▶ bot
     │                  │  └─(no agent reply for CSBOT_HUMAN_TIMEOUT s: timeout)─▶ bot
     └──────close───────┴──────close──────▶ closed ──(the customer writes again)──▶ bot

The inbox records activity (a handled push, a transfer to WeChat's customer-service tool, the
reopening of a closed conversation) and asks whether the bot may answer; the review surfaces
take over, hand back and close. Both call the functions here, inside their own transaction, so
a status change and what depends on it commit together. Every change made by a person or a
timeout is recorded as a ``conversation_events`` row and shows on the thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from sqlalchemy import and_, bindparam, case, func, insert, or_, select, update

from csbot.review.models import ConversationEvent
from csbot.statuses import ConversationStatus
from csbot.store.models import Conversation
from csbot.store.statements import cached

BOT, HUMAN, CLOSED = ConversationStatus.BOT, ConversationStatus.HUMAN, ConversationStatus.CLOSED
EVENT_FOR_STATUS = {HUMAN: "takeover", BOT: "handback", CLOSED: "close"}
_CONV = Conversation.__table__


def bot_may_answer(status: str | None, *, while_human: bool = False) -> bool:
    """Whether a handler's reply may be sent now: not while a person has the conversation."""
    return status != HUMAN or while_human


@dataclass
class Activity:
    """What one handled push changes on its conversation."""

    app: str
    openid: str
    #: a customer's message (not an event): reopens a closed conversation
    user_message: bool = False
    #: the push was handed to WeChat's customer-service tool
    transferred: bool = False


def _values(activity: Activity, now: float) -> dict[str, Any]:
    return {"c_app": activity.app, "c_openid": activity.openid, "lma": now, "reopen": activity.user_message,
            "transferred_at": now if activity.transferred else None}


def _touched() -> dict[str, Any]:
    """What a push's activity sets on its conversation: last activity, a transfer, reopening."""
    return dict(last_message_at=bindparam("lma"),
                transferred_at=func.coalesce(bindparam("transferred_at"), _CONV.c.transferred_at),
                status=case((and_(_CONV.c.status == CLOSED, bindparam("reopen") == True), BOT),  # noqa: E712
                            else_=_CONV.c.status))


def _touch(dialect: str) -> Any:
    """One conversation's activity, by key (executemany over many conversations)."""
    return cached(dialect, "touch_conversation", lambda _: update(_CONV).where(
        _CONV.c.app == bindparam("c_app"), _CONV.c.openid == bindparam("c_openid")).values(_touched()))


async def ensure(conn: Any, keys: Sequence[tuple[str, str]], now: float) -> None:
    """Create the conversations of ``keys`` that do not exist yet (as ``bot``)."""
    if not keys:
        return
    stmt = cached(conn.dialect.name, "conv_upsert", lambda ins: ins(_CONV).on_conflict_do_nothing(
        index_elements=["app", "openid"]))
    await conn.execute(stmt, [dict(app=app, openid=openid, status=BOT, created_at=now, last_message_at=now,
                                   tags="[]") for app, openid in sorted(set(keys))])  # key order: no lock cycles


async def record_activity(conn: Any, activities: Sequence[Activity], now: float) -> None:
    """Activity of many pushes in one statement: last activity, reopening, transfers."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for a in activities:
        values = latest.setdefault((a.app, a.openid), _values(a, now))
        values["reopen"] = values["reopen"] or a.user_message
        if a.transferred:
            values["transferred_at"] = now
    if latest:
        # rows in key order: two processes' batches never lock conversations in opposite orders
        await conn.execute(_touch(conn.dialect.name), [latest[k] for k in sorted(latest)])


async def record_activity_and_statuses(conn: Any, activities: Sequence[Activity], now: float
                                       ) -> dict[tuple[str, str], str]:
    """Record many pushes' activity; each conversation's status as of this transaction, by key.

    As :func:`record_activity_and_status`, set-wise: one statement per kind of activity.
    """
    from sqlalchemy import tuple_

    groups: dict[tuple[bool, bool], set[tuple[str, str]]] = {}
    for a in activities:
        groups.setdefault((a.user_message, a.transferred), set()).add((a.app, a.openid))
    dialect = conn.dialect.name

    def build(_: Any) -> Any:
        return (update(_CONV).where(tuple_(_CONV.c.app, _CONV.c.openid).in_(bindparam("keys", expanding=True)))
                .values(_touched()).returning(_CONV.c.app, _CONV.c.openid, _CONV.c.status))
    stmt = cached(dialect, "touch_conversations_returning", build)
    out: dict[tuple[str, str], str] = {}
    for (reopen, transferred), keys in sorted(groups.items()):
        rows = (await conn.execute(stmt, {"keys": sorted(keys), "lma": now, "reopen": reopen,
                                          "transferred_at": now if transferred else None})).all()
        out.update({(r.app, r.openid): r.status for r in rows})
    return out


async def record_activity_and_status(conn: Any, activity: Activity, now: float) -> str | None:
    """Record one push's activity and return the conversation's status as of this transaction.

    The UPDATE holds the row until commit, so a takeover cannot slip in between this read and
    the replies queued with it (it waits, and the replies were handled before it).
    """
    return (await record_activity_and_statuses(conn, [activity], now)).get((activity.app, activity.openid))


async def change(s: Any, conv: Conversation, status: str, *, agent: str | None, actor: str | None,
                 now: float, detail: str | None = None) -> bool:
    """takeover (``human``, with ``agent``), handback (``bot``) or close (``closed``) of ``conv``.

    ``conv`` was read (locked) in ``s``'s transaction. Returns False when nothing changed.
    """
    if status == HUMAN:
        agent = agent or conv.assigned_agent or "agent"
        if conv.status == HUMAN and conv.assigned_agent == agent:
            return False
        values: dict[str, Any] = dict(status=HUMAN, assigned_agent=agent, human_since=now, closed_at=None)
    elif status == BOT:
        if conv.status == BOT:
            return False
        values = dict(status=BOT, assigned_agent=None, human_since=None)
    elif status == CLOSED:
        if conv.status == CLOSED:
            return False
        values = dict(status=CLOSED, assigned_agent=None, human_since=None, closed_at=now)
    else:
        raise ValueError(f"not a conversation status: {status!r}")
    await s.execute(update(Conversation).where(Conversation.id == conv.id).values(**values))
    await s.execute(insert(ConversationEvent).values(
        conversation_id=conv.id, at=now, kind=EVENT_FOR_STATUS[ConversationStatus(status)], actor=actor,
        detail=detail or (f"assigned to {agent}" if status == HUMAN and agent != actor else None)))
    conv.status = status
    return True


async def record_agent_reply(s: Any, conv: Conversation, now: float) -> None:
    """An agent's message went out on ``conv``: it counts against the human timeout."""
    await s.execute(update(Conversation).where(Conversation.id == conv.id)
                    .values(last_agent_reply_at=now, last_message_at=now))


async def return_idle_to_bot(s: Any, timeout: float, now: float) -> list[tuple[str, str]]:
    """``human`` conversations with no agent reply for ``timeout`` seconds go back to the bot."""
    cutoff = now - timeout
    idle = and_(Conversation.status == HUMAN, func.coalesce(Conversation.human_since, 0) < cutoff,
                or_(Conversation.last_agent_reply_at.is_(None), Conversation.last_agent_reply_at < cutoff))
    # rows locked in id order first, as the batch writer locks them: no lock cycle with a running lane
    locked = select(Conversation.id).where(idle).order_by(Conversation.id).with_for_update()
    rows = (await s.execute(
        update(Conversation)
        .where(Conversation.id.in_(locked), idle)
        .values(status=BOT, assigned_agent=None, human_since=None)
        .returning(Conversation.id, Conversation.app, Conversation.openid))).all()
    if rows:
        await s.execute(insert(ConversationEvent), [
            dict(conversation_id=r.id, at=now, kind="timeout", actor=None,
                 detail=f"no agent reply for {int(timeout)} s: back to the bot") for r in rows])
    return [(r.app, r.openid) for r in rows]


__all__ = ["Activity", "bot_may_answer", "ensure", "record_activity", "record_activity_and_status", "change",
           "record_agent_reply", "return_idle_to_bot", "EVENT_FOR_STATUS"]
