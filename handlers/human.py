"""Hands the customer to WeChat's customer-service tool when they ask for a person.

Runs inline: the webhook answers the push itself with ``transfer_customer_service``, which is
the only passive reply a Mini Program accepts. The phrases can be changed with
``[handlers.human] phrases = [...]``.
"""

import re

from csbot import NEXT, TransferCustomerService, route

DEFAULT_PHRASES = ["人工", "转人工", "人工客服", "真人", "human", "agent", "real person", "talk to a person"]


def _pattern(phrases):
    alternatives = sorted((re.escape(p) for p in phrases), key=len, reverse=True)
    return re.compile("|".join(alternatives), re.IGNORECASE)


_DEFAULT = _pattern(DEFAULT_PHRASES)


@route(msg_type="text", inline=True, priority=100, budget=2.0)
async def main(event, context):
    phrases = context.options.get("phrases")
    pattern = _pattern(phrases) if phrases else _DEFAULT
    if not pattern.search(event.get("Content", "")):
        return NEXT
    context.logger.info("customer asked for a person; transferring to the customer-service tool")
    return TransferCustomerService()
