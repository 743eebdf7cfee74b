"""The function of the function-call benchmark: returns its input."""

from csbot import function


@function("echo")
async def main(event, context):
    return event
