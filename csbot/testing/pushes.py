"""Build WeChat pushes the way WeChat sends them: signed, and encrypted in safe/compatible mode.

Used by ``csbot simulate``, the pytest plugin and the benchmark. A built push can be sent any
number of times, which is how WeChat's retries look to the webhook.
"""

from __future__ import annotations

import itertools
import random
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import urlencode

from csbot.wire import MessageCrypto, compute_signature, render_fields

MODES = ("plaintext", "compatible", "safe")
FORMATS = ("xml", "json")

_msg_ids = itertools.count(random.randrange(2**60, 2**62))


@dataclass(frozen=True)
class SignedPush:
    """One push on the wire: its query string and body."""

    query: dict[str, str]
    body: bytes
    fmt: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def content_type(self) -> str:
        return "application/json" if self.fmt == "json" else "text/xml"

    def url(self, base_url: str, path: str = "/wechat") -> str:
        return f"{base_url.rstrip('/')}{path}?{urlencode(self.query)}"

    async def post(self, session: Any, base_url: str, path: str = "/wechat") -> tuple[int, bytes]:
        """POST this push with an aiohttp ClientSession; returns (status, body)."""
        async with session.post(self.url(base_url, path), data=self.body,
                                headers={"Content-Type": self.content_type}) as resp:
            return resp.status, await resp.read()


class PushBuilder:
    """Makes pushes for one app in one mode and format."""

    def __init__(
        self,
        *,
        token: str,
        appid: str,
        encoding_aes_key: str | None = None,
        mode: str | None = None,
        fmt: str = "xml",
        to_user: str = "gh_0123456789ab",
        clock: Callable[[], float] = time.time,
    ) -> None:
        mode = mode or ("safe" if encoding_aes_key else "plaintext")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}")
        if fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}")
        if mode != "plaintext" and not encoding_aes_key:
            raise ValueError(f"{mode} mode needs an EncodingAESKey")
        self.token = token
        self.appid = appid
        self.mode = mode
        self.fmt = fmt
        self.to_user = to_user
        self.clock = clock
        self._crypto = MessageCrypto(encoding_aes_key, appid) if encoding_aes_key else None

    @classmethod
    def for_app(cls, app: Any, *, mode: str | None = None, fmt: str = "xml", **kw: Any) -> "PushBuilder":
        """A builder for a configured ``csbot.config.AppConfig``."""
        return cls(token=app.token, appid=app.appid, encoding_aes_key=app.encoding_aes_key, mode=mode,
                   fmt=fmt, **kw)

    # ---- event dicts, with WeChat's field names

    def _base(self, openid: str, msg_type: str, create_time: int | None) -> dict[str, Any]:
        return {"ToUserName": self.to_user, "FromUserName": openid,
                "CreateTime": int(create_time if create_time is not None else self.clock()),
                "MsgType": msg_type}

    def text(self, openid: str, content: str, *, msg_id: int | None = None,
             create_time: int | None = None) -> dict[str, Any]:
        return {**self._base(openid, "text", create_time), "Content": content,
                "MsgId": msg_id if msg_id is not None else next(_msg_ids)}

    def image(self, openid: str, media_id: str, *, pic_url: str = "",
              msg_id: int | None = None, create_time: int | None = None) -> dict[str, Any]:
        return {**self._base(openid, "image", create_time), "PicUrl": pic_url, "MediaId": media_id,
                "MsgId": msg_id if msg_id is not None else next(_msg_ids)}

    def miniprogrampage(self, openid: str, *, title: str = "Card", appid: str | None = None,
                        pagepath: str = "pages/index/index", thumb_media_id: str = "",
                        msg_id: int | None = None, create_time: int | None = None) -> dict[str, Any]:
        return {**self._base(openid, "miniprogrampage", create_time),
                "MsgId": msg_id if msg_id is not None else next(_msg_ids), "Title": title,
                "AppId": appid or self.appid, "PagePath": pagepath, "ThumbUrl": "",
                "ThumbMediaId": thumb_media_id}

    def enter_session(self, openid: str, *, session_from: str = "",
                      create_time: int | None = None) -> dict[str, Any]:
        return {**self._base(openid, "event", create_time), "Event": "user_enter_tempsession",
                "SessionFrom": session_from}

    def event(self, openid: str, event: str, *, create_time: int | None = None,
              **fields: Any) -> dict[str, Any]:
        return {**self._base(openid, "event", create_time), "Event": event, **fields}

    # ---- the wire

    def build(self, fields: Mapping[str, Any], *, timestamp: int | None = None,
              nonce: str | None = None) -> SignedPush:
        """Sign (and encrypt) ``fields`` as WeChat would push them."""
        ts = str(int(timestamp if timestamp is not None else self.clock()))
        nonce = nonce or str(secrets.randbelow(10**10))
        query = {"signature": compute_signature(self.token, ts, nonce), "timestamp": ts, "nonce": nonce}
        plain = render_fields(fields, self.fmt)
        if self.mode == "plaintext":
            return SignedPush(query, plain, self.fmt, dict(fields))
        assert self._crypto is not None
        encrypt = self._crypto.encrypt(plain)
        query.update(openid=str(fields.get("FromUserName", "")), encrypt_type="aes",
                     msg_signature=compute_signature(self.token, ts, nonce, encrypt))
        outer: dict[str, Any] = {"ToUserName": fields.get("ToUserName", self.to_user)}
        if self.mode == "compatible":
            outer = {**fields}
        outer["Encrypt"] = encrypt
        return SignedPush(query, render_fields(outer, self.fmt), self.fmt, dict(fields))

    def handshake_query(self, echostr: str, *, timestamp: int | None = None,
                        nonce: str | None = None) -> dict[str, str]:
        ts = str(int(timestamp if timestamp is not None else self.clock()))
        nonce = nonce or str(secrets.randbelow(10**10))
        return {"signature": compute_signature(self.token, ts, nonce), "timestamp": ts, "nonce": nonce,
                "echostr": echostr}

    def decrypt_reply(self, body: bytes) -> bytes:
        """Open an encrypted passive reply (checks its MsgSignature), as WeChat would."""
        from csbot.wire import parse_fields, sniff_format

        if self._crypto is None:
            return body
        fmt = sniff_format(body)
        fields = parse_fields(body, fmt)
        if "Encrypt" not in fields:
            return body
        expected = compute_signature(self.token, str(fields["TimeStamp"]), str(fields["Nonce"]),
                                     fields["Encrypt"])
        if expected != fields.get("MsgSignature"):
            raise ValueError("passive reply has a wrong MsgSignature")
        return self._crypto.decrypt_for_app(fields["Encrypt"])
