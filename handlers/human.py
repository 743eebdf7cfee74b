"""Hands the customer to WeChat's customer-service tool when they ask for a person.

Runs inline: the webhook answers the push itself with ``transfer_customer_service``, which is
the only passive reply a Mini Program accepts. The route matches only texts asking for a
person, so other pushes never wait for it:

- a Latin phrase ("human", "agent", "real person") as a whole word, never inside another
  ("the reagent arrived" and "human-readable" are not requests for a person);
- a Chinese phrase (人工, 转人工, …) as the whole, short message, optionally with 我要 / 请 / 找
  before it and 吧 / 啊 / 呀 after it ("真人秀" and "人工智能" are not requests for a person).

The phrases can be changed with ``[handlers.human] phrases = [...]``.
"""

import re

from csbot import TransferCustomerService, route

DEFAULT_PHRASES = ["人工", "转人工", "人工客服", "真人", "human", "agent", "real person", "talk to a person"]
#: what may surround a Chinese phrase in a whole-message request ("我要人工", "转人工吧")
_CJK_BEFORE = ["我要", "我想要", "我想找", "请", "找", "要"]
_CJK_AFTER = ["吧", "啊", "呀", "呢"]


def _alternatives(items):
    return "|".join(re.escape(i) for i in sorted(items, key=len, reverse=True))


def pattern(phrases):
    """One regex: Latin phrases as whole words anywhere, other phrases as the whole message."""
    latin = [p for p in phrases if re.search(r"[A-Za-z]", p)]
    other = [p for p in phrases if p not in latin]
    parts = []
    if latin:
        # not inside a word, nor joined by a hyphen or apostrophe ("human-readable", "agent's")
        parts.append(rf"(?<![\w'-])(?:{_alternatives(latin)})(?![\w'-])")
    if other:
        parts.append(rf"\A[\s\W]*(?:{_alternatives(_CJK_BEFORE)})?(?:{_alternatives(other)})"
                     rf"(?:{_alternatives(_CJK_AFTER)})?[\s\W]*\Z")
    return re.compile("|".join(parts) or r"(?!)", re.IGNORECASE)


@route(regex=pattern(DEFAULT_PHRASES), inline=True, priority=100, budget=2.0)
async def main(event, context):
    context.logger.info("customer asked for a person; transferring to the customer-service tool")
    return TransferCustomerService()


def setup(options):
    """Called with ``[handlers.human]`` when the handlers are loaded."""
    if options.get("phrases"):
        main.__csbot_route__["regex"] = pattern(options["phrases"])
