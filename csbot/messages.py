"""Reply message objects a handler may return or pass to ``context.reply``.

Each one knows its customer-service send body (``msgtype`` and the typed part), using
WeChat's field names, so the outbox can store it as JSON and send it later.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


@dataclass(frozen=True)
class SubscribeFallback:
    """A subscribe message to send instead when WeChat's reply quota refuses the reply.

    Takes ``subscribe_message.send`` fields: it needs the user's consent
    (``wx.requestSubscribeMessage``), and WeChat answers 43101 without it.
    """

    template_id: str
    data: dict[str, Any]
    page: str | None = None
    miniprogram_state: str | None = None
    lang: str | None = None

    def body(self) -> dict[str, Any]:
        return {k: v for k, v in {"template_id": self.template_id, "data": self.data, "page": self.page,
                                  "miniprogram_state": self.miniprogram_state, "lang": self.lang}.items()
                if v is not None}


class Reply:
    """Base class: a message csbot can send to a user through the customer-service API.

    Every reply may carry ``subscribe_fallback`` (a :class:`SubscribeFallback`), used when the
    reply window is closed or its quota used up.
    """

    msgtype: ClassVar[str] = ""
    subscribe_fallback: SubscribeFallback | None

    def body(self) -> dict[str, Any]:
        """The typed part of the send body, e.g. ``{"content": "hi"}`` for text."""
        raise NotImplementedError

    def describe(self) -> str:
        return f"[{self.msgtype}]"


@dataclass(frozen=True)
class Text(Reply):
    content: str
    subscribe_fallback: SubscribeFallback | None = None
    msgtype: ClassVar[str] = "text"

    def body(self) -> dict[str, Any]:
        return {"content": self.content}

    def describe(self) -> str:
        return self.content


@dataclass(frozen=True)
class Image(Reply):
    """An image by ``media_id``, or by bytes/path that the outbox uploads first."""

    media_id: str | None = None
    data: bytes | None = None
    path: str | Path | None = None
    subscribe_fallback: SubscribeFallback | None = None
    msgtype: ClassVar[str] = "image"

    def __post_init__(self) -> None:
        if sum(x is not None for x in (self.media_id, self.data, self.path)) != 1:
            raise ValueError("Image needs exactly one of media_id, data or path")

    def body(self) -> dict[str, Any]:
        if self.media_id is not None:
            return {"media_id": self.media_id}
        # resolved to a media_id by the outbox before sending
        return {"path": str(self.path)} if self.path is not None else {"data_hex": self.data.hex()}  # type: ignore[union-attr]


@dataclass(frozen=True)
class Link(Reply):
    title: str
    description: str
    url: str
    thumb_url: str
    subscribe_fallback: SubscribeFallback | None = None
    msgtype: ClassVar[str] = "link"

    def body(self) -> dict[str, Any]:
        return {"title": self.title, "description": self.description, "url": self.url,
                "thumb_url": self.thumb_url}

    def describe(self) -> str:
        return f"[link] {self.title} {self.url}"


@dataclass(frozen=True)
class MiniProgramPage(Reply):
    title: str
    pagepath: str
    thumb_media_id: str
    appid: str | None = None
    subscribe_fallback: SubscribeFallback | None = None
    msgtype: ClassVar[str] = "miniprogrampage"

    def body(self) -> dict[str, Any]:
        body = {"title": self.title, "pagepath": self.pagepath, "thumb_media_id": self.thumb_media_id}
        if self.appid:
            body["appid"] = self.appid
        return body

    def describe(self) -> str:
        return f"[mini program card] {self.title} {self.pagepath}"


@dataclass(frozen=True)
class SubscribeMessage(Reply):
    """A subscribe message (``subscribeMessage.send``), sent by the outbox like any reply.

    It needs one consent of the user per send (``wx.requestSubscribeMessage``), not the reply
    window: the customer-service quota does not apply and it does not use up the quota.
    """

    template_id: str
    data: dict[str, Any]
    page: str | None = None
    miniprogram_state: str | None = None
    lang: str | None = None
    subscribe_fallback: SubscribeFallback | None = None
    msgtype: ClassVar[str] = "subscribe"

    def body(self) -> dict[str, Any]:
        return SubscribeFallback(self.template_id, self.data, self.page, self.miniprogram_state, self.lang).body()

    def describe(self) -> str:
        values = "; ".join(f"{k}: {v.get('value') if isinstance(v, dict) else v}" for k, v in self.data.items())
        return f"[subscribe message {self.template_id}] {values}"


@dataclass(frozen=True)
class TemplateMessage(Reply):
    """A legacy template message (``templateMessage.send``, retired by WeChat in 2020), by form_id."""

    template_id: str
    form_id: str
    data: dict[str, Any] | None = None
    page: str | None = None
    emphasis_keyword: str | None = None
    subscribe_fallback: SubscribeFallback | None = None
    msgtype: ClassVar[str] = "template"

    def body(self) -> dict[str, Any]:
        return {k: v for k, v in {"template_id": self.template_id, "form_id": self.form_id, "data": self.data,
                                  "page": self.page, "emphasis_keyword": self.emphasis_keyword}.items()
                if v is not None}

    def describe(self) -> str:
        return f"[template message {self.template_id}]"


#: outbound kinds that are not customer-service messages: no reply window, no reply quota
NOTICE_TYPES = frozenset({SubscribeMessage.msgtype, TemplateMessage.msgtype})


@dataclass(frozen=True)
class Voice(Reply):
    """A voice message by ``media_id`` (Official Accounts: passive reply or customer-service send)."""

    media_id: str
    subscribe_fallback: SubscribeFallback | None = None
    msgtype: ClassVar[str] = "voice"

    def body(self) -> dict[str, Any]:
        return {"media_id": self.media_id}


@dataclass(frozen=True)
class Video(Reply):
    """A video by ``media_id`` (Official Accounts)."""

    media_id: str
    title: str = ""
    description: str = ""
    thumb_media_id: str | None = None
    subscribe_fallback: SubscribeFallback | None = None
    msgtype: ClassVar[str] = "video"

    def body(self) -> dict[str, Any]:
        body = {"media_id": self.media_id, "title": self.title, "description": self.description}
        if self.thumb_media_id:
            body["thumb_media_id"] = self.thumb_media_id
        return body

    def describe(self) -> str:
        return f"[video] {self.title}".rstrip()


@dataclass(frozen=True)
class Music(Reply):
    """A music card (Official Accounts)."""

    title: str
    description: str
    music_url: str
    hq_music_url: str
    thumb_media_id: str
    subscribe_fallback: SubscribeFallback | None = None
    msgtype: ClassVar[str] = "music"

    def body(self) -> dict[str, Any]:
        return {"title": self.title, "description": self.description, "musicurl": self.music_url,
                "hqmusicurl": self.hq_music_url, "thumb_media_id": self.thumb_media_id}

    def describe(self) -> str:
        return f"[music] {self.title}"


@dataclass(frozen=True)
class Article:
    title: str
    description: str
    url: str
    pic_url: str = ""


@dataclass(frozen=True)
class News(Reply):
    """News articles (Official Accounts): 1 to 8; as the answer to a user's message WeChat shows
    only one, so give one there."""

    articles: tuple[Article, ...]
    subscribe_fallback: SubscribeFallback | None = None
    msgtype: ClassVar[str] = "news"

    def __post_init__(self) -> None:
        object.__setattr__(self, "articles", tuple(self.articles))
        if not 1 <= len(self.articles) <= 8 or not all(isinstance(a, Article) for a in self.articles):
            raise ValueError("News needs 1 to 8 Article objects")

    def body(self) -> dict[str, Any]:
        return {"articles": [{"title": a.title, "description": a.description, "url": a.url, "picurl": a.pic_url}
                             for a in self.articles]}

    def describe(self) -> str:
        return "[news] " + " / ".join(a.title for a in self.articles)


#: what an Official Account may answer in the webhook's response (a passive reply)
PASSIVE_TYPES = (Text, Image, Voice, Video, Music, News)
#: message types only Official Accounts have (a Mini Program's send API refuses them)
OFFICIAL_ACCOUNT_ONLY = (Voice, Video, Music, News)


@dataclass(frozen=True)
class PassiveReply:
    """An Official Account's passive reply: ``reply`` rendered as the webhook's answer.

    Field names are those of WeChat's passive reply XML (``Image/MediaId``, ``Articles/item``…);
    a JSON push gets the same structure as JSON.
    """

    reply: Reply

    def __post_init__(self) -> None:
        if not isinstance(self.reply, PASSIVE_TYPES):
            raise TypeError(f"{type(self.reply).__name__} cannot be a passive reply")
        if isinstance(self.reply, Image) and self.reply.media_id is None:
            raise ValueError("a passive image reply needs a media_id (upload the image first)")

    def fields(self, event: dict[str, Any], now: int) -> dict[str, Any]:
        r = self.reply
        out: dict[str, Any] = {"ToUserName": event.get("FromUserName", ""), "FromUserName": event.get("ToUserName", ""),
                               "CreateTime": now, "MsgType": r.msgtype}
        if isinstance(r, Text):
            out["Content"] = r.content
        elif isinstance(r, Image):
            out["Image"] = {"MediaId": r.media_id}
        elif isinstance(r, Voice):
            out["Voice"] = {"MediaId": r.media_id}
        elif isinstance(r, Video):
            out["Video"] = {"MediaId": r.media_id, "Title": r.title, "Description": r.description}
        elif isinstance(r, Music):
            out["Music"] = {"Title": r.title, "Description": r.description, "MusicUrl": r.music_url,
                            "HQMusicUrl": r.hq_music_url, "ThumbMediaId": r.thumb_media_id}
        elif isinstance(r, News):
            out["ArticleCount"] = len(r.articles)
            out["Articles"] = {"item": [{"Title": a.title, "Description": a.description, "PicUrl": a.pic_url,
                                         "Url": a.url} for a in r.articles]}
        return out


@dataclass(frozen=True)
class TransferCustomerService:
    """Passive reply: hand this user message to WeChat's customer-service tool.

    Only valid as the return value of an inline handler (it is the webhook's answer, not a
    send); ``kf_account`` targets one agent (Official Accounts).
    """

    kf_account: str | None = None

    def fields(self, event: dict[str, Any], now: int) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ToUserName": event.get("FromUserName", ""),
            "FromUserName": event.get("ToUserName", ""),
            "CreateTime": now,
            "MsgType": "transfer_customer_service",
        }
        if self.kf_account:
            out["TransInfo"] = {"KfAccount": self.kf_account}
        return out


def as_reply(value: Any) -> Reply | None:
    """Interpret a handler's return value: ``str`` → Text, Reply → itself, None → nothing."""
    if value is None:
        return None
    if isinstance(value, Reply):
        return value
    if isinstance(value, str):
        return Text(value) if value else None
    raise TypeError(f"a handler may return str, a csbot message object or None, not {type(value).__name__}")


def reply_from_send_body(message: Any) -> Reply:
    """A message object from a ``custom/send`` body's ``msgtype`` and typed part.

    Raises ``ValueError`` saying what is wrong (safe to show to the caller).
    """
    if not isinstance(message, dict):
        raise ValueError("the message must be a JSON object")
    msgtype = message.get("msgtype")
    part = message.get(msgtype) if isinstance(msgtype, str) else None
    if msgtype not in ("text", "image", "link", "miniprogrampage"):
        raise ValueError("msgtype must be one of text, image, link, miniprogrampage")
    if not isinstance(part, dict):
        raise ValueError(f"a {msgtype} message needs a {msgtype!r} object")

    def field(name: str, *, optional: bool = False, limit: int = 2048) -> Any:
        value = part.get(name)
        if value is None and optional:
            return None
        if not isinstance(value, str) or (not value and not optional) or len(value) > limit:
            raise ValueError(f"{msgtype}.{name} must be a non-empty string of at most {limit} characters")
        return value

    if msgtype == "text":
        return Text(field("content", limit=MAX_TEXT))
    if msgtype == "image":
        return Image(media_id=field("media_id"))
    if msgtype == "link":
        return Link(title=field("title"), description=field("description"), url=field("url"),
                    thumb_url=field("thumb_url"))
    return MiniProgramPage(title=field("title"), pagepath=field("pagepath"),
                           thumb_media_id=field("thumb_media_id"), appid=field("appid", optional=True))


#: the longest text csbot sends in one message (WeChat's limit is in bytes and larger)
MAX_TEXT = 4000


def send_body(reply: Reply, touser: str) -> dict[str, Any]:
    """The full JSON body of ``cgi-bin/message/custom/send``."""
    body = {"touser": touser, "msgtype": reply.msgtype, reply.msgtype: reply.body()}
    if reply.subscribe_fallback is not None:
        # kept with the stored reply; the outbox takes it off before sending
        body[FALLBACK_KEY] = reply.subscribe_fallback.body()
    return body


#: key of the subscribe fallback inside a stored send body (never sent to custom/send)
FALLBACK_KEY = "_subscribe_fallback"
