from csbot import function
from csbot.cloud.opendata import OpenDataError


@function("opened")
async def main(event, context):
    return {"event": event, "OPEN_DATA_INFO": context.OPEN_DATA_INFO}


@function("decrypt")
async def decrypt(event, context):
    try:
        return {"data": await context.decrypt(event["encryptedData"], event["iv"])}
    except OpenDataError as exc:
        return {"error": str(exc), "code": exc.code}


@function("signature")
async def signature(event, context):
    return await context.check_raw_data(event["rawData"], event["signature"])
