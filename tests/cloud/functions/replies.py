"""Functions that reply to their caller with ``context.reply`` (through the outbox)."""

from csbot import function
from csbot.cloud.functions import FunctionReplyError


@function("notify")
async def notify(event, context):
    """Replies each of ``texts`` (with ``keys[i]`` as its key, when given); fails after them if asked."""
    keys = event.get("keys") or []
    for i, text in enumerate(event.get("texts", [])):
        await context.reply(text, key=keys[i] if i < len(keys) else None)
    if event.get("then_fail"):
        raise RuntimeError("failed after replying")
    return {"replied": len(event.get("texts", []))}


@function("server_reply", client=False)
async def server_reply(event, context):
    """Called by the server API (no caller): reply is refused; a send to a named user goes out."""
    try:
        await context.reply("to nobody")
        refused = None
    except FunctionReplyError as exc:
        refused = str(exc)
    answer = await context.openapi.customer_service_message.send(
        touser=event["to"], msgtype="text", text={"content": "to a named user"})
    return {"refused": refused, "answer": answer}
