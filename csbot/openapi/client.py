"""``OpenAPI``: WeChat's server API for one app; ``OpenAPIRegistry``: one per configured app.

The token dance lives here, once, for every endpoint: get the shared token, call, and on
40001/40014/42001 expire that token (compare-and-set), fetch, and retry exactly once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import secrets
import socket
import time
from typing import Any, Callable, Literal

from aiolimiter import AsyncLimiter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from csbot.config import AppConfig, Settings
from csbot.openapi.errors import TOKEN_ERRCODES, APITransportError, WeChatAPIError
from csbot.openapi.services import Auth, CustomerServiceMessage, OpenData, SubscribeMessage, TemplateMessage
from csbot.openapi.tokens import TokenManager
from csbot.openapi.transport import Transport
from csbot.openapi.util import token_fingerprint

__all__ = ["OpenAPI", "OpenAPIRegistry", "default_instance_id", "IDEMPOTENT_RETRIES"]

log = logging.getLogger("csbot.openapi")

#: extra attempts for idempotent calls after a transient failure
IDEMPOTENT_RETRIES = 2
#: first back-off (s) between those attempts; doubles, with jitter
RETRY_BASE_DELAY = 0.2


def default_instance_id() -> str:
    """host:pid:random, the owner name this process writes into shared lease columns."""
    return f"{socket.gethostname()[:32]}:{os.getpid()}:{secrets.token_hex(4)}"[:64]


class OpenAPI:
    """WeChat's server API for one app, shaped like the cloud SDK's ``cloud.openapi``.

    ``clock`` is the time source for token and media expiry (tests pass the fake's clock).
    """

    def __init__(
        self,
        app: AppConfig,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        instance_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app = app
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.instance_id = (instance_id or default_instance_id())[:64]
        self.clock = clock
        self.base_url = settings.wechat_api_base.rstrip("/")
        self.transport = Transport(timeout=settings.api_timeout, rate_per_second=settings.api_rate_per_second)
        self.tokens = TokenManager(app, settings, sessionmaker, self.transport,
                                   instance_id=self.instance_id, clock=clock)
        self.customer_service_message = CustomerServiceMessage(self)
        self.subscribe_message = SubscribeMessage(self)
        self.template_message = TemplateMessage(self)
        self.auth = Auth(self)
        self.open_data = OpenData(self)
        #: per-image locks of upload_image_cached (one upload per image at a time)
        self.media_locks: dict[str, asyncio.Lock] = {}

    @property
    def limiter(self) -> AsyncLimiter | None:
        """The app's aiolimiter (``settings.api_rate_per_second``); None when unlimited."""
        return self.transport.limiter

    async def close(self) -> None:
        await self.transport.close()

    async def __aenter__(self) -> OpenAPI:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"OpenAPI(app={self.app.name!r}, appid={self.app.appid!r})"

    async def call(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json: Any = None,
        data: Any = None,
        with_token: bool = True,
        idempotent: bool = False,
    ) -> Any:
        """Any endpoint not wrapped, with the same token handling; returns the decoded JSON.

        ``data`` may be bytes, a dict (form fields) or a zero-argument factory of an
        ``aiohttp.FormData`` (a FormData can be sent only once, and a call retried with a
        fresh token needs a fresh body). ``idempotent=True`` allows two retries on
        transient failures; leave it False for anything that sends or consumes something.
        """
        return await self._invoke(method.upper(), path, params=params, json_body=json, data=data,
                                  with_token=with_token, idempotent=idempotent)

    async def _invoke(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        json_body: Any = None,
        data: Any = None,
        expect: Literal["json", "bytes"] = "json",
        with_token: bool = True,
        idempotent: bool = False,
    ) -> Any:
        path = path.lstrip("/")
        attempts = 1 + (IDEMPOTENT_RETRIES if idempotent else 0)
        for attempt in range(attempts):
            try:
                return await self._invoke_once(method, path, params=params, json_body=json_body, data=data,
                                               expect=expect, with_token=with_token)
            except (WeChatAPIError, APITransportError) as exc:
                if not (exc.transient and attempt < attempts - 1):
                    raise
                delay = RETRY_BASE_DELAY * (2**attempt) * (0.5 + random.random())
                log.info("app %s: %s failed transiently (%s); retry %d in %.2fs",
                         self.app.name, path, exc, attempt + 1, delay)
                await asyncio.sleep(delay)
        raise AssertionError("unreachable")

    async def _invoke_once(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None,
        json_body: Any,
        data: Any,
        expect: Literal["json", "bytes"],
        with_token: bool,
    ) -> Any:
        url = f"{self.base_url}/{path}"
        query = dict(params or {})
        if not with_token:
            return await self.transport.request(method, url, path=path, params=query, json_body=json_body,
                                                data=data, expect=expect)
        token = await self.tokens.get()
        try:
            return await self.transport.request(method, url, path=path, params={**query, "access_token": token},
                                                json_body=json_body, data=data, expect=expect)
        except WeChatAPIError as exc:
            if exc.errcode not in TOKEN_ERRCODES:
                raise
            await self.tokens.invalidate(token)
            fresh = await self.tokens.get()
            if fresh == token:
                # The token source handed back the very token WeChat refused: retrying
                # would fail the same way. Surface it (an operator has to look).
                log.error("app %s: %s refused token %s (errcode %s) and no other token is available",
                          self.app.name, path, token_fingerprint(token), exc.errcode)
                raise
            log.info("app %s: %s refused token %s (errcode %s); retrying once with %s",
                     self.app.name, path, token_fingerprint(token), exc.errcode, token_fingerprint(fresh))
        # Exactly one retry; a second token error is raised to the caller, never looped on.
        return await self.transport.request(method, url, path=path, params={**query, "access_token": fresh},
                                            json_body=json_body, data=data, expect=expect)


class OpenAPIRegistry:
    """One ``OpenAPI`` per configured app, created on first use and closed together."""

    def __init__(
        self,
        settings: Settings,
        sessionmaker: async_sessionmaker[AsyncSession],
        *,
        instance_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.sessionmaker = sessionmaker
        self.instance_id = (instance_id or default_instance_id())[:64]
        self.clock = clock
        self._clients: dict[str, OpenAPI] = {}

    def get(self, app_name: str) -> OpenAPI:
        client = self._clients.get(app_name)
        if client is None:
            try:
                app = self.settings.apps[app_name]
            except KeyError:
                known = ", ".join(sorted(self.settings.apps)) or "none"
                raise KeyError(f"no app named {app_name!r} is configured (known: {known})") from None
            client = OpenAPI(app, self.settings, self.sessionmaker, instance_id=self.instance_id, clock=self.clock)
            self._clients[app_name] = client
        return client

    __call__ = get  # usable directly as the ``openapi_for`` callback of inbox/outbox

    async def close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
