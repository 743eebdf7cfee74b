"""A push handler next to the functions: the fallback for pushes, never a function."""


async def main(event, context):
    if context.OPENID and event.get("Content") == "call echo":
        answer = await context.call_function("server_only", {"from": "push"})
        return f"{answer['result']['secret']} via {answer['result']['source']}"
    return None
