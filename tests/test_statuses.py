"""Statuses are enums shared by every surface; their values are the strings stored in rows."""

import json

from csbot.statuses import (INBOUND_UNSETTLED, OUTBOUND_DUE, OUTBOUND_UNDELIVERED, ConversationStatus,
                            InboundStatus, OutboundStatus, as_json)
from csbot.testing.harness import Harness
from csbot.routing import Route, Router


def test_a_status_is_its_stored_string():
    assert InboundStatus.PENDING == "pending" and f"{InboundStatus.PENDING}" == "pending"
    assert {OutboundStatus.QUOTA_EXCEEDED: 1}["quota_exceeded"] == 1
    assert json.dumps([ConversationStatus.HUMAN]) == '["human"]'
    assert [s.value for s in ConversationStatus] == ["bot", "human", "closed"]


def test_groups_and_the_json_given_to_the_console_agree():
    data = as_json()
    assert data["groups"]["inbound_unsettled"] == ["pending", "inline"]
    assert data["groups"]["outbound_due"] == [s.value for s in OUTBOUND_DUE] == ["queued", "in_doubt"]
    assert set(data["groups"]["outbound_undelivered"]) == {"failed", "dead", "quota_exceeded"}
    assert data["outbound"]["IN_DOUBT"] == "in_doubt"
    assert "handling" not in json.dumps(data)  # never set by anything: not a status
    assert set(INBOUND_UNSETTLED) | set(OUTBOUND_UNDELIVERED) <= {*InboundStatus, *OutboundStatus}


async def test_rows_read_back_compare_equal_to_the_enums():
    async def echo(event, context):
        return "ok"

    async with Harness.start(router=Router([Route("echo", echo, fallback=True)])) as bot:
        await bot.send_text("oU", "hi")
        await bot.wait_idle()
        (inbound,) = await bot.messages(direction="in")
        (outbound,) = await bot.messages(direction="out")
        assert inbound.status == InboundStatus.DONE and outbound.status == OutboundStatus.SENT
