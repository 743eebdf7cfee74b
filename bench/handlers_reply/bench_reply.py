"""Benchmark handler: answers "ok" to every text push.

The reply goes through the outbox (committed with the handler's outcome) and is sent to the
FakeWeChat process, which counts it: the figure that matters for a bot is pushes acknowledged
*and answered* per second.
"""

from csbot import route


@route(msg_type="text")
async def main(event, context):
    return "ok"
