"""Benchmark handler: takes every text push and answers nothing.

Every push is handled by a worker (status ``done``), but no reply is queued, so the outbox
and FakeWeChat stay idle and the worker cost measured is the inbox's own (lease, read,
outcome write) and not the openapi client's.
"""

from csbot import route


@route(msg_type="text")
async def main(event, context):
    return None
