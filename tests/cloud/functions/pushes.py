"""A push handler next to the functions: the fallback for pushes, never a function."""


async def main(event, context):
    if context.OPENID and event.get("Content") == "call echo":
        answer = await context.call_function("server_only", {"from": "push"})
        return f"{answer['result']['secret']} via {answer['result']['source']}"
    if context.OPENID and event.get("Content") == "call notify":
        await context.call_function("notify", {"texts": ["通知 from a function"]})
        if context.message.attempts == 1:
            import asyncio

            raise asyncio.CancelledError()  # the first attempt dies after the function replied
        return "done"
    return None
