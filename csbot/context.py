"""What a handler sees: the cloud function's ``getWXContext()`` plus the means to act."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from csbot.messages import Reply, as_reply
from csbot.statuses import ConversationStatus


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


@dataclass
class Context:
    """Passed as the second argument of ``main(event, context)``.

    ``OPENID``, ``APPID`` and ``UNIONID`` mirror ``cloud.getWXContext()``. Replies given with
    ``await context.reply(...)`` or returned are written to the outbox together with the
    handler's outcome, so a re-run after a crash never sends them twice.
    """

    OPENID: str
    APPID: str
    app: str
    message: MessageInfo
    conversation: ConversationInfo
    logger: logging.LoggerAdapter[logging.Logger]
    openapi: Any = None
    options: Mapping[str, Any] = field(default_factory=dict)
    UNIONID: str | None = None
    #: "push" for the normal path, "inline" when running before the webhook's answer
    SOURCE: str = "push"
    #: this app's cloud storage (csbot.cloud.storage.AppStorage): upload, download, delete, temp_urls
    storage: Any = None
    replies: list[Reply] = field(default_factory=list)
    #: the app's cloud database collections, server side (csbot.cloud.database.Database)
    db: Any = None

    async def reply(self, message: str | Reply) -> None:
        """Queue a reply to this user (text, or a csbot message object)."""
        reply = as_reply(message)
        if reply is not None:
            self.replies.append(reply)

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

    def getWXContext(self) -> dict[str, Any]:  # noqa: N802 - the cloud SDK's name
        return {"OPENID": self.OPENID, "APPID": self.APPID, "UNIONID": self.UNIONID,
                "SOURCE": self.SOURCE, "ENV": self.app}
