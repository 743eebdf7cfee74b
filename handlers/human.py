"""Hands the customer to WeChat's customer-service tool when they ask for a person.

Runs inline: the webhook answers the push itself with ``transfer_customer_service``, which is
the only passive reply a Mini Program accepts. The route matches only texts asking for a
person, so other pushes never wait for it. The phrases can be changed with
``[handlers.human] phrases = [...]``.
"""

import re

from csbot import TransferCustomerService, route

DEFAULT_PHRASES = ["人工", "转人工", "人工客服", "真人", "human", "agent", "real person", "talk to a person"]


def pattern(phrases):
    alternatives = sorted((re.escape(p) for p in phrases), key=len, reverse=True)
    return re.compile("|".join(alternatives), re.IGNORECASE)


@route(regex=pattern(DEFAULT_PHRASES), inline=True, priority=100, budget=2.0)
async def main(event, context):
    context.logger.info("customer asked for a person; transferring to the customer-service tool")
    return TransferCustomerService()


def setup(options):
    """Called with ``[handlers.human]`` when the handlers are loaded."""
    if options.get("phrases"):
        main.__csbot_route__["regex"] = pattern(options["phrases"])
