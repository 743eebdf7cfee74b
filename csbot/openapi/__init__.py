"""WeChat's server API ("openapi"), async on aiohttp, named like the cloud SDK's ``cloud.openapi``.

    api = OpenAPIRegistry(settings, sessionmaker).get("default")
    await api.customer_service_message.send(touser=openid, msgtype="text", text={"content": "hi"})

Methods take WeChat's JSON field names as keyword arguments and return the decoded answer.
A non-zero errcode raises ``WeChatAPIError``; no usable answer raises ``APITransportError``.
Access tokens are shared by every process through the SQL store (``TokenManager``).
"""

from csbot.openapi.client import OpenAPI, OpenAPIRegistry
from csbot.openapi.errors import (
    PERMANENT_ERRCODES,
    TOKEN_ERRCODES,
    TRANSIENT_ERRCODES,
    AnswerLost,
    APITransportError,
    RequestNotSent,
    WeChatAPIError,
    is_transient,
)
from csbot.openapi.media import upload_image_cached
from csbot.openapi.tokens import TokenManager
from csbot.openapi.util import redact_url

__all__ = [
    "OpenAPI",
    "OpenAPIRegistry",
    "TokenManager",
    "WeChatAPIError",
    "APITransportError",
    "AnswerLost",
    "RequestNotSent",
    "is_transient",
    "PERMANENT_ERRCODES",
    "TOKEN_ERRCODES",
    "TRANSIENT_ERRCODES",
    "redact_url",
    "upload_image_cached",
]
