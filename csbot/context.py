"""What a handler sees: the cloud function's ``getWXContext()`` plus the means to act."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Mapping

from csbot.cloud.opendata import ILLEGAL_AES_KEY, OpenDataError, decrypt_open_data, raw_data_signature_ok
from csbot.messages import Reply, as_reply, reply_from_send_body
from csbot.statuses import ConversationStatus


class PushLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A handler's logger: every line starts with ``[push ID app/openid]`` so it can be found."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = self.extra or {}
        kwargs.setdefault("extra", {}).update(extra)
        return f"[push {extra.get('push_id')} {extra.get('app')}/{extra.get('openid')}] {msg}", kwargs


@dataclass
class MessageInfo:
    """The stored inbound message, as a handler may want it (ids, not a live ORM row)."""

    id: int
    app: str
    openid: str
    msg_type: str
    event: str | None
    text: str | None
    dedup_key: str | None
    status: str
    attempts: int = 0
    #: fileID (``cloud://…``) of the image the customer sent, kept in storage
    file_id: str | None = None
    #: messages stored before cloud storage: key of the image under ``CSBOT_DATA_DIR/media``
    media_path: str | None = None


@dataclass
class ConversationInfo:
    id: int | None
    status: str = ConversationStatus.BOT


#: queues one reply now: ``await send(reply, touser=None, key=None)``; True when it was queued
Send = Callable[..., Awaitable[bool]]
#: a reply's own key (``context.reply(..., key=…)``) is at most this long
MAX_REPLY_KEY = 200


@dataclass
class Context:
    """Passed as the second argument of ``main(event, context)``.

    ``OPENID``, ``APPID`` and ``UNIONID`` mirror ``cloud.getWXContext()`` (``UNIONID`` when a push
    carried it or the user logged in through ``wx.login`` with a bound account).
    """

    OPENID: str
    APPID: str
    app: str
    #: the push being handled (None in a callable function)
    message: MessageInfo | None = None
    conversation: ConversationInfo | None = None
    logger: logging.LoggerAdapter[logging.Logger] = field(
        default_factory=lambda: logging.LoggerAdapter(logging.getLogger("csbot.handler"), {}))
    openapi: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    UNIONID: str | None = None
    #: "push" for the normal path, "inline" when running before the webhook's answer; for
    #: callable functions "wx_client" (mini program), "wx_http" (server API), "csbot" (a handler)
    SOURCE: str = "push"
    #: the ``re.Match`` of the route's ``regex`` on the text (``context.match.group(1)``); None for
    #: routes without a regex
    match: re.Match[str] | None = None
    #: what ``reply`` gave, when this context has no outbox behind it (unit tests of a handler)
    replies: list[Reply] = field(default_factory=list)
    send: Send | None = field(default=None, repr=False)
    #: csbot.cloud: the caller's IP (mini-program calls), the keys of the event that hold open
    #: data resolved from CloudIDs by csbot (never a client's look-alike), the call's id
    CLIENTIP: str | None = None
    OPEN_DATA_INFO: list[str] = field(default_factory=list)
    requestID: str | None = None  # noqa: N815 - the cloud SDK's name
    #: the running service (csbot.services.Services), for call_function and open data
    services: Any = field(default=None, repr=False)
    call_depth: int = 0

    async def reply(self, message: str | Reply, *, key: str | None = None) -> None:
        """Send ``message`` (text, or a csbot message object) to this user now.

        The reply is committed to the outbox before this returns and the sender is woken, so a
        "please wait" leaves while the handler goes on working. A push handler's replies are keyed
        by the push and their place among its replies: if the handler runs again after a crash, a
        reply it had already given is not queued twice. While a person has the conversation,
        replies of routes not declared ``while_human`` are not sent. A reply that cannot be sent
        raises :class:`csbot.outbox.ReplyNotSendable`.

        In a callable function the reply goes to the caller (``OPENID``) the same way; a call
        with no caller (``SOURCE`` "wx_http") raises :class:`csbot.cloud.functions.FunctionReplyError`.
        Each call's replies are new unless given a ``key``: a reply with the same ``key`` (up to
        200 characters) from the same function to the same user is queued once, however often
        the mini program retries the call. A function called from a push handler replies as
        that handler does (keyed by the push).
        """
        if key is not None and not (isinstance(key, str) and 0 < len(key) <= MAX_REPLY_KEY):
            raise ValueError(f"a reply's key must be a non-empty str of at most {MAX_REPLY_KEY} characters")
        reply = as_reply(message)
        if reply is None:
            return
        if self.send is None:
            self.replies.append(reply)
            return
        await self.send(reply, key=key)

    async def typing(self, on: bool = True) -> None:
        """Show (or stop) "typing…" to the user. Failures are ignored: it is only a courtesy.

        Sending a message cancels typing by itself.
        """
        if self.openapi is None:
            return
        try:
            await self.openapi.customer_service_message.set_typing(
                touser=self.OPENID, command="Typing" if on else "CancelTyping")
        except Exception as exc:
            self.logger.debug("set_typing ignored: %s", exc)

    @property
    def db(self) -> Any:
        """This app's cloud database, server side (``csbot.cloud.database.Database``): what
        ``cloud.database()`` is in a cloud function. No security rules apply here."""
        store = getattr(self.services, "database", None)
        if store is None:
            raise RuntimeError("the cloud database is not available in this context")
        from csbot.cloud.database.api import Database

        return Database(store, self.app)

    def getWXContext(self) -> dict[str, Any]:  # noqa: N802 - the cloud SDK's name
        return {"OPENID": self.OPENID, "APPID": self.APPID, "UNIONID": self.UNIONID,
                "SOURCE": self.SOURCE, "ENV": self.app, "CLIENTIP": self.CLIENTIP,
                "OPEN_DATA_INFO": list(self.OPEN_DATA_INFO)}

    # ---- csbot.cloud

    @property
    def storage(self) -> Any:
        """This app's cloud storage (:class:`csbot.cloud.storage.AppStorage`), server side:
        ``upload``, ``download``, ``delete``, ``temp_urls``."""
        storage = getattr(self.services, "storage", None)
        if storage is None:
            raise RuntimeError("cloud storage is not running (context.storage needs a started csbot)")
        return storage.for_app(self.app)

    # ---- csbot.cloud: callable functions and open data

    async def call_function(self, name: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Run callable function ``name`` as this user (``SOURCE`` "csbot"), like the cloud SDK's
        ``cloud.callFunction``: returns ``{"result", "requestID"}``; raises
        ``csbot.cloud.functions.FunctionCallError`` (``status``, ``err_code``) when it fails.

        Server-only functions (``client=False``) may be called. ``data`` is copied as JSON.
        """
        functions = getattr(self.services, "functions", None)
        if functions is None:
            raise RuntimeError("callable functions are not available in this context")
        event = json.loads(json.dumps(dict(data or {}), ensure_ascii=False, allow_nan=False))
        # the callee's replies are this caller's: keyed by this push handler's run (or this call)
        invocation = await functions.invoke(name, event, app=self.app, openid=self.OPENID or None,
                                            unionid=self.UNIONID, source="csbot", depth=self.call_depth + 1,
                                            send=self.send)
        return invocation.answer()

    async def _session_key(self) -> str:
        sessions = getattr(self.services, "sessions", None)
        key = await sessions.session_key(self.app, self.OPENID) if sessions is not None and self.OPENID else None
        if not key:
            raise OpenDataError(ILLEGAL_AES_KEY, "no session_key for this user: they have not logged in "
                                                 "(POST /cloud/login)")
        return key

    async def decrypt(self, encrypted_data: str, iv: str) -> dict[str, Any]:
        """Decrypt open data (``encryptedData`` + ``iv`` of userInfo, WeRun, share info…) with the
        user's current ``session_key``; raises ``csbot.cloud.opendata.OpenDataError``."""
        return decrypt_open_data(encrypted_data, iv, await self._session_key(), self.APPID)

    async def check_raw_data(self, raw_data: str, signature: str) -> bool:
        """Is ``signature`` sha1(rawData + session_key) for this user? (constant-time compare)"""
        try:
            key = await self._session_key()
        except OpenDataError:
            return False
        return raw_data_signature_ok(raw_data, signature, key)



class HandlerOpenAPI:
    """``context.openapi``: the app's WeChat API client, with customer-service sends queued.

    A handler's ``customer_service_message.send(...)`` goes through the outbox like
    ``context.reply`` (retries, the user's order, the quota count, the review thread) and
    answers ``{"errcode": 0, "errmsg": "ok", "queued": true}`` once committed, not WeChat's answer.
    Everything else is the plain client.
    """

    def __init__(self, api: Any, send: Send) -> None:
        self._api = api
        self.customer_service_message = _QueuedCustomerService(api.customer_service_message, send)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def __repr__(self) -> str:
        return f"<HandlerOpenAPI {self._api!r}>"


class _QueuedCustomerService:
    def __init__(self, real: Any, send: Send) -> None:
        self._real = real
        self._send = send

    async def send(self, *, touser: str, msgtype: str, **parts: Any) -> dict[str, Any]:
        reply = reply_from_send_body({"msgtype": msgtype, **parts})
        queued = await self._send(reply, touser)
        return {"errcode": 0, "errmsg": "ok", "queued": queued}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)
