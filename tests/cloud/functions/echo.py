"""Callable functions the cloud tests call (this directory is the service's handlers directory)."""

import asyncio

from csbot import function


@function("echo")
async def main(event, context):
    """Answers its event: the benchmark's function, and the shape tests' one."""
    return event


@function("whoami")
async def whoami(event, context):
    info = context.getWXContext()
    return {**info, "requestID": context.requestID, "event": event, "options": dict(context.options),
            "isPush": context.message is not None}


@function("slow", timeout=0.3)
async def slow(event, context):
    await asyncio.sleep(event.get("seconds", 5))
    return "done"


@function("boom")
async def boom(event, context):
    raise RuntimeError("secret detail the caller must not see")


@function("own_timeout")
async def own_timeout(event, context):
    raise TimeoutError("my own upstream timed out")


@function("not_json")
async def not_json(event, context):
    return {"when": object()}


@function("nan")
async def nan(event, context):
    return float("nan")


@function("server_only", client=False)
async def server_only(event, context):
    return {"secret": 42, "source": context.SOURCE}


@function("caller")
async def caller(event, context):
    answer = await context.call_function(event["name"], event.get("data", {}))
    return {"inner": answer, "source": context.SOURCE}


@function("loop")
async def loop(event, context):
    return await context.call_function("loop", {})
