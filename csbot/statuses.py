"""The statuses of stored rows, shared by every module, the CLI, the templates and the console's JS.

They are ``str`` enums: a member *is* its value (``InboundStatus.PENDING == "pending"``), so it
goes into SQL, JSON and f-strings unchanged and rows written before the enums compare equal.
Groups that several surfaces ask about ("still moving", "did not reach the customer") are
defined once here, next to the statuses, instead of as string tuples in each surface.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any


class InboundStatus(StrEnum):
    """A push (``messages.direction == "in"``): pending → done | failed; ``inline`` meanwhile."""

    #: committed, waiting for (or in) its user's lane
    PENDING = "pending"
    #: an inline route runs before the webhook answers; no lane takes it meanwhile
    INLINE = "inline"
    #: handled (its replies, if any, are queued in the outbox)
    DONE = "done"
    #: a handler raised, its reply could not be built, or it failed too many attempts
    FAILED = "failed"


class OutboundStatus(StrEnum):
    """A reply (``messages.direction == "out"``), see :mod:`csbot.outbox`."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    #: WeChat refused it for good (errcode kept on the row)
    FAILED = "failed"
    #: transient failures until ``max_send_attempts``
    DEAD = "dead"
    #: WeChat's reply window or quota would refuse it; not sent
    QUOTA_EXCEEDED = "quota_exceeded"
    #: the process stopped during the send: WeChat may or may not have it
    IN_DOUBT = "in_doubt"


class ConversationStatus(StrEnum):
    """One per app and openid, see :mod:`csbot.review.service`."""

    BOT = "bot"
    HUMAN = "human"
    CLOSED = "closed"


#: inbound rows still on their way to a handler outcome
INBOUND_UNSETTLED: tuple[InboundStatus, ...] = (InboundStatus.PENDING, InboundStatus.INLINE)
#: outbound rows the sender will still act on
OUTBOUND_DUE: tuple[OutboundStatus, ...] = (OutboundStatus.QUEUED, OutboundStatus.IN_DOUBT)
#: outbound rows not yet settled (due or being sent)
OUTBOUND_UNSETTLED: tuple[OutboundStatus, ...] = (OutboundStatus.QUEUED, OutboundStatus.SENDING,
                                                  OutboundStatus.IN_DOUBT)
#: outbound rows that did not reach the customer and never will by themselves
OUTBOUND_UNDELIVERED: tuple[OutboundStatus, ...] = (OutboundStatus.FAILED, OutboundStatus.DEAD,
                                                    OutboundStatus.QUOTA_EXCEEDED)
#: any row (either direction) whose status may still change without a person acting
UNSETTLED: tuple[str, ...] = (*INBOUND_UNSETTLED, *OUTBOUND_UNSETTLED)


def as_json() -> dict[str, Any]:
    """Every status and group as plain JSON, for the console's JavaScript and templates."""
    return {
        "inbound": {m.name: m.value for m in InboundStatus},
        "outbound": {m.name: m.value for m in OutboundStatus},
        "conversation": {m.name: m.value for m in ConversationStatus},
        "groups": {
            "inbound_unsettled": [s.value for s in INBOUND_UNSETTLED],
            "outbound_due": [s.value for s in OUTBOUND_DUE],
            "outbound_unsettled": [s.value for s in OUTBOUND_UNSETTLED],
            "outbound_undelivered": [s.value for s in OUTBOUND_UNDELIVERED],
            "unsettled": list(UNSETTLED),
        },
    }


__all__ = ["InboundStatus", "OutboundStatus", "ConversationStatus", "INBOUND_UNSETTLED", "OUTBOUND_DUE",
           "OUTBOUND_UNSETTLED", "OUTBOUND_UNDELIVERED", "UNSETTLED", "as_json"]
