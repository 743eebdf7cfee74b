"""Greets a customer who opens the chat (event ``user_enter_tempsession``).

The text comes from configuration: ``[handlers.welcome] text = "..."`` in the TOML file or
``CSBOT_WELCOME_TEXT``. WeChat allows 2 replies within a minute of entering the chat.
"""

from csbot import route

DEFAULT_TEXT = "您好，欢迎咨询！请直接输入您的问题，回复“人工”可转人工客服。"


@route(event="user_enter_tempsession", while_human=True)
async def main(event, context):
    text = context.options.get("text", DEFAULT_TEXT)
    if event.get("SessionFrom"):
        context.logger.info("customer entered from %s", event["SessionFrom"])
    return text or None
