"""The wrapped endpoints, grouped and named like the cloud SDK's ``cloud.openapi``.

Keyword arguments are WeChat's own JSON field names; arguments left at None are not sent.
Each method returns WeChat's decoded JSON answer (``get_temp_media``: the bytes).
Which calls are retried on transient failures is decided here, per endpoint: only the
idempotent ones, because a retried send can deliver a message twice.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from csbot.openapi.util import drop_none

if TYPE_CHECKING:
    from csbot.openapi.client import OpenAPI

__all__ = ["CustomerServiceMessage", "SubscribeMessage", "TemplateMessage", "Auth", "OpenData"]

JSON = dict[str, Any]


class _Group:
    def __init__(self, api: OpenAPI) -> None:
        self._api = api


class CustomerServiceMessage(_Group):
    """``customerServiceMessage``: replies inside the user's reply window (spec 6.2-6.5)."""

    async def send(
        self,
        *,
        touser: str,
        msgtype: str,
        text: JSON | None = None,
        image: JSON | None = None,
        link: JSON | None = None,
        miniprogrampage: JSON | None = None,
        **extra: Any,
    ) -> JSON:
        """POST cgi-bin/message/custom/send. Not retried here: the outbox owns retries.

        ``extra`` passes further WeChat fields through unchanged (e.g. Official-Account
        ``customservice``), None values dropped like the named ones.
        """
        body = drop_none({"touser": touser, "msgtype": msgtype, "text": text, "image": image,
                          "link": link, "miniprogrampage": miniprogrampage, **extra})
        return await self._api._invoke("POST", "cgi-bin/message/custom/send", json_body=body)

    async def set_typing(self, *, touser: str, command: str = "Typing") -> JSON:
        """POST cgi-bin/message/custom/typing (``Typing`` | ``CancelTyping``). Best effort."""
        return await self._api._invoke(
            "POST", "cgi-bin/message/custom/typing", json_body={"touser": touser, "command": command},
            idempotent=True,
        )

    async def upload_temp_media(
        self,
        *,
        type: str = "image",
        media: bytes | bytearray | memoryview | str | os.PathLike[str],
        filename: str | None = None,
        content_type: str | None = None,
    ) -> JSON:
        """POST cgi-bin/media/upload?type=…, file in multipart field ``media``; media_id lives 3 days.

        ``media`` is the bytes or a file path (read in a thread, off the event loop).
        Not retried: a lost answer would leave an orphan upload, harmless but not ours to hide.
        """
        if isinstance(media, (bytes, bytearray, memoryview)):
            payload = bytes(media)
            name = filename
        else:
            path = Path(media)
            payload = await asyncio.to_thread(path.read_bytes)
            name = filename or path.name
        ctype = content_type or sniff_image_type(payload)
        name = name or "media" + _EXTENSIONS.get(ctype, ".bin")

        def form() -> aiohttp.FormData:
            data = aiohttp.FormData()
            data.add_field("media", payload, filename=name, content_type=ctype)
            return data

        return await self._api._invoke("POST", "cgi-bin/media/upload", params={"type": type}, data=form)

    async def get_temp_media(self, *, media_id: str) -> bytes:
        """GET cgi-bin/media/get → the file's bytes (a JSON answer is an error)."""
        result = await self._api._invoke(
            "GET", "cgi-bin/media/get", params={"media_id": media_id}, expect="bytes", idempotent=True
        )
        if isinstance(result, dict):  # JSON without an errcode: not what we asked for
            return json.dumps(result, ensure_ascii=False).encode("utf-8")
        return bytes(result)


class SubscribeMessage(_Group):
    """``subscribeMessage``: one message per user consent (spec 6.6)."""

    async def send(
        self,
        *,
        touser: str,
        template_id: str,
        data: JSON,
        page: str | None = None,
        miniprogram_state: str | None = None,
        lang: str | None = None,
        **extra: Any,
    ) -> JSON:
        """POST cgi-bin/message/subscribe/send. Not retried (each send consumes a consent)."""
        body = drop_none({"touser": touser, "template_id": template_id, "page": page, "data": data,
                          "miniprogram_state": miniprogram_state, "lang": lang, **extra})
        return await self._api._invoke("POST", "cgi-bin/message/subscribe/send", json_body=body)


class TemplateMessage(_Group):
    """``templateMessage``: legacy; WeChat retired Mini Program template messages on 2020-01-10.

    Kept for parity with the cloud SDK; expect errors such as 45109 from WeChat today.
    Use ``subscribe_message`` instead.
    """

    async def add_template(self, *, id: str, keyword_id_list: list[int]) -> JSON:
        """POST cgi-bin/wxopen/template/add → ``template_id``."""
        return await self._api._invoke(
            "POST", "cgi-bin/wxopen/template/add", json_body={"id": id, "keyword_id_list": keyword_id_list}
        )

    async def send(
        self,
        *,
        touser: str,
        template_id: str,
        form_id: str,
        page: str | None = None,
        data: JSON | None = None,
        emphasis_keyword: str | None = None,
        **extra: Any,
    ) -> JSON:
        """POST cgi-bin/message/wxopen/template/send. Not retried (form_id is single use)."""
        body = drop_none({"touser": touser, "template_id": template_id, "form_id": form_id, "page": page,
                          "data": data, "emphasis_keyword": emphasis_keyword, **extra})
        return await self._api._invoke("POST", "cgi-bin/message/wxopen/template/send", json_body=body)

    async def delete_template(self, *, template_id: str) -> JSON:
        """POST cgi-bin/wxopen/template/del."""
        return await self._api._invoke("POST", "cgi-bin/wxopen/template/del", json_body={"template_id": template_id})

    async def get_template_list(self, *, offset: int = 0, count: int = 20) -> JSON:
        """POST cgi-bin/wxopen/template/list (count ≤ 20) → ``list``."""
        return await self._api._invoke(
            "POST", "cgi-bin/wxopen/template/list", json_body={"offset": offset, "count": count}, idempotent=True
        )


class Auth(_Group):
    """``auth``: login (spec 6.9)."""

    async def code2session(self, *, js_code: str, grant_type: str = "authorization_code") -> JSON:
        """GET sns/jscode2session with appid/secret (no access token) → openid, session_key.

        Not retried: a js_code is single use, a retry after a lost answer fails with 40029.
        Never send ``session_key`` to the client.
        """
        app = self._api.app
        params = {"appid": app.appid, "secret": app.secret, "js_code": js_code, "grant_type": grant_type}
        return await self._api._invoke("GET", "sns/jscode2session", params=params, with_token=False)


class OpenData(_Group):
    """``cloudbase.getOpenData`` for servers: resolve CloudIDs (spec 6.8)."""

    async def get(self, *, cloudid_list: list[str], openid: str | None = None) -> JSON:
        """POST wxa/getopendata; each ``data_list[i]["json"]`` is decoded when it is a string."""
        result = await self._api._invoke(
            "POST", "wxa/getopendata", params=drop_none({"openid": openid}),
            json_body={"cloudid_list": list(cloudid_list)}, idempotent=True,
        )
        for item in result.get("data_list") or []:
            if isinstance(item, dict) and isinstance(item.get("json"), str):
                try:
                    item["json"] = json.loads(item["json"])
                except ValueError:
                    pass  # leave it as WeChat sent it
        return result


_EXTENSIONS = {"image/jpeg": ".jpg", "image/png": ".png", "image/gif": ".gif", "image/webp": ".webp",
               "image/bmp": ".bmp"}


def sniff_image_type(data: bytes) -> str:
    """The image Content-Type from magic bytes (WeChat wants a filename and type on uploads)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    if data.startswith(b"BM"):
        return "image/bmp"
    return "application/octet-stream"
