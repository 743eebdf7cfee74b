"""Storage over HTTP: signed file URLs, the mini program's storage calls, WeChat's ``/tcb`` storage API.

- ``GET /cloud/files/<app>/<cloudPath>?expires=&sign=``: a temporary URL (no session: the
  signature is the capability), served with its Content-Type, a Content-Disposition,
  ``nosniff`` and a sandboxing CSP, so an uploaded page can never run as csbot's origin.
- ``POST /cloud/storage/upload`` (multipart ``cloudPath``, ``file``; what ``wx.uploadFile``
  sends), ``/cloud/storage/temp-urls``, ``/cloud/storage/delete``: a mini-program user with a
  session token; storage rules apply.
- ``POST /tcb/uploadfile``, ``/tcb/batchdownloadfile``, ``/tcb/batchdeletefile``: WeChat's
  server HTTP API shapes, with the server key; rules do not apply. ``uploadfile`` answers, like
  WeChat's, a URL and signed form fields to POST the file to (``/cloud/storage/cos/<app>``).
"""

from __future__ import annotations

import logging
import time
from typing import Any, AsyncIterator

from aiohttp import BodyPartReader, web

from csbot.cloud.apidoc import TCB_PATHS, tcb_operation
from csbot.cloud.http import TcbError, base_url, cloud_error, read_json, tcb_endpoint
from csbot.cloud.storage import (
    CHUNK,
    Storage,
    StorageError,
    WrittenBlob,
    content_disposition,
    make_file_id,
    validate_cloud_path,
)
from csbot.config import Settings
from csbot.services import services_of

log = logging.getLogger("csbot.cloud.storage")

#: how long the form fields of ``/tcb/uploadfile`` stay valid
UPLOAD_TICKET_SECONDS = 900
#: a text field of a multipart upload (cloudPath, the signed fields) is at most this long
MAX_FIELD_BYTES = 4096
#: multipart framing allowed on top of the file itself
MULTIPART_OVERHEAD = 64 * 1024


def storage_of(request: web.Request) -> Storage:
    storage = services_of(request).storage
    if storage is None:
        raise web.HTTPServiceUnavailable(reason="starting")
    return storage


def settings_of(request: web.Request) -> Settings:
    return services_of(request).settings


# ---------------------------------------------------------------- multipart


async def part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK):
        yield chunk


async def read_field(part: BodyPartReader, name: str) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(1024):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise StorageError(f"the form field {name} is longer than {MAX_FIELD_BYTES} bytes")
    try:
        return data.decode(part.get_charset("utf-8"))
    except (LookupError, UnicodeDecodeError):
        raise StorageError(f"the form field {name} is not valid text") from None


class MultipartUpload:
    """Reads a multipart upload in one pass: text fields, then (or before) one file part.

    The file is streamed into a blob as it arrives, never held in memory; what the fields say
    (``cloudPath``, signatures) is checked before the file when they come first, and again
    when the upload is committed.
    """

    def __init__(self, storage: Storage, file_field: str = "file") -> None:
        self.storage = storage
        self.file_field = file_field
        self.fields: dict[str, str] = {}
        self.blob: WrittenBlob | None = None
        self.file_type: str | None = None

    async def read(self, request: web.Request, before_file: Any = None) -> None:
        limit = self.storage.max_file_size
        if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD:
            raise _TooLarge(limit)
        try:
            reader = await request.multipart()
        except (AssertionError, ValueError, KeyError):
            raise StorageError("the body must be multipart/form-data with the fields cloudPath and file") from None
        try:
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    raise StorageError("nested multipart bodies are not accepted")
                if part.name == self.file_field:
                    if self.blob is not None:
                        raise StorageError(f"send one {self.file_field} per upload")
                    if before_file is not None:
                        before_file(self.fields)
                    self.file_type = part.headers.get("Content-Type")
                    self.blob = await self.storage.write_blob(part_chunks(part))
                else:
                    self.fields[part.name or ""] = await read_field(part, part.name or "(unnamed)")
        except StorageError:
            await self.discard()
            raise
        except (AssertionError, ValueError, RuntimeError, KeyError) as exc:
            await self.discard()
            log.info("malformed multipart upload: %s", exc)
            raise StorageError("the multipart body is malformed") from None
        except BaseException:
            await self.discard()
            raise
        if self.blob is None:
            raise StorageError(f"the upload has no {self.file_field} part")

    async def discard(self) -> None:
        if self.blob is not None:
            await self.storage.discard_blob(self.blob)
            self.blob = None


class _TooLarge(StorageError):
    code = "STORAGE_EXCEED_MAX_SIZE"
    status = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"the file is larger than the limit of {limit} bytes")


# ---------------------------------------------------------------- routes


def storage_routes() -> list[web.RouteDef]:
    """``/cloud/files/...``, ``/cloud/storage/...`` and the signed upload target."""

    async def serve_file(request: web.Request) -> web.StreamResponse:
        storage = storage_of(request)
        app, cloud_path = request.match_info["app"], request.match_info["path"]
        try:
            validate_cloud_path(cloud_path)
        except StorageError:
            return cloud_error(404, "no such file")
        refused = storage.verify(app, cloud_path, request.query.get("expires"), request.query.get("sign"))
        if refused:
            return cloud_error(403, refused)
        stored = await storage.stat(app, cloud_path)
        if stored is None:
            return cloud_error(404, f"no file {make_file_id(app, cloud_path)}")
        remaining = max(0, int(request.query["expires"]) - int(time.time()))
        headers = {
            "Content-Type": stored.content_type,
            "Content-Disposition": content_disposition(cloud_path, stored.content_type),
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "default-src 'none'; sandbox",
            "Cache-Control": f"private, max-age={remaining}",
        }
        local_path = getattr(storage.backend, "local_path", None)
        if local_path is not None:
            return web.FileResponse(local_path(stored.blob_key), headers=headers)
        try:
            stored, stream = await storage.open(app, cloud_path)
        except StorageError as exc:
            return cloud_error(exc.status, exc.reason)
        response = web.StreamResponse(headers=headers)
        response.content_length = stored.size
        await response.prepare(request)
        if request.method != "HEAD":
            async for chunk in stream:
                await response.write(chunk)
        await response.write_eof()
        return response

    async def session_of(request: web.Request) -> Any:
        from csbot.cloud.sessions import require_session

        return await require_session(request)

    async def upload(request: web.Request) -> web.StreamResponse:
        session = await session_of(request)
        storage = storage_of(request)
        form = MultipartUpload(storage)

        def check_first(fields: dict[str, str]) -> None:
            if "cloudPath" in fields:  # refuse a bad name or a denied write before the bytes come
                validate_cloud_path(fields["cloudPath"])

        try:
            await form.read(request, before_file=check_first)
            if "cloudPath" not in form.fields:
                await form.discard()
                raise StorageError("the upload has no cloudPath field")
            assert form.blob is not None
            blob, form.blob = form.blob, None
            stored = await storage.commit(session.app, form.fields["cloudPath"], blob, openid=session.openid,
                                          content_type=form.file_type)
        except StorageError as exc:
            log.info("upload by %s refused: %s", session.openid, exc.reason)
            return cloud_error(exc.status, exc.reason)
        return web.json_response({"fileID": stored.file_id})

    async def file_list(request: web.Request) -> list[Any]:
        try:
            body = await read_json(request)
        except TcbError as exc:
            raise StorageError(exc.errmsg) from None
        if not isinstance(body, dict) or not isinstance(body.get("fileList"), list):
            raise StorageError('the body must be {"fileList": [...]}')
        return body["fileList"]

    async def temp_urls(request: web.Request) -> web.StreamResponse:
        session = await session_of(request)
        storage = storage_of(request)
        try:
            entries = await file_list(request)
            results = await storage.temp_urls(entries, app=session.app, openid=session.openid,
                                              base_url=base_url(request, settings_of(request)))
        except StorageError as exc:
            return cloud_error(exc.status, exc.reason)
        return web.json_response({"fileList": results})

    async def delete(request: web.Request) -> web.StreamResponse:
        session = await session_of(request)
        storage = storage_of(request)
        try:
            entries = await file_list(request)
            results = await storage.delete_many(entries, app=session.app, openid=session.openid)
        except StorageError as exc:
            return cloud_error(exc.status, exc.reason)
        return web.json_response({"fileList": results})

    async def signed_upload(request: web.Request) -> web.StreamResponse:
        """The target of ``/tcb/uploadfile``'s form, like COS's POST Object (answers 204)."""
        storage = storage_of(request)
        app = request.match_info["app"]
        form = MultipartUpload(storage)

        def check_ticket(fields: dict[str, str]) -> None:
            refused = storage.verify(app, fields.get("key", ""), fields.get("x-cos-security-token"),
                                     fields.get("Signature"), purpose="upload")
            if refused:
                raise _Forbidden(refused.replace("URL", "upload form"))

        try:
            await form.read(request, before_file=check_ticket)
            try:
                check_ticket(form.fields)  # fields sent after the file must not change what was signed
            except StorageError:
                await form.discard()
                raise
            assert form.blob is not None
            blob, form.blob = form.blob, None
            await storage.commit(app, form.fields["key"], blob, content_type=form.file_type)
        except StorageError as exc:
            return cloud_error(exc.status, exc.reason)
        return web.Response(status=204)

    return [
        web.get("/cloud/files/{app}/{path:.+}", serve_file),
        web.post("/cloud/storage/upload", upload),
        web.post("/cloud/storage/temp-urls", temp_urls),
        web.post("/cloud/storage/delete", delete),
        web.post("/cloud/storage/cos/{app}", signed_upload),
    ]


class _Forbidden(StorageError):
    status = 403
    code = "STORAGE_EXCEED_AUTHORITY"


def storage_tcb_routes() -> list[web.RouteDef]:
    """WeChat's storage HTTP API: ``/tcb/uploadfile``, ``/tcb/batchdownloadfile``, ``/tcb/batchdeletefile``."""

    def storage_call(error: StorageError) -> TcbError:
        return TcbError(40097, f"invalid args: {error.reason}", 400)

    @tcb_endpoint()
    async def uploadfile(request: web.Request, app: str, body: dict[str, Any]) -> dict[str, Any]:
        storage = storage_of(request)
        try:
            path = validate_cloud_path(body.get("path"))
        except StorageError as exc:
            raise storage_call(exc) from None
        expires = int(time.time()) + UPLOAD_TICKET_SECONDS
        file_id = make_file_id(app, path)
        return {
            "url": f"{base_url(request, settings_of(request))}/cloud/storage/cos/{app}",
            "token": str(expires),
            "authorization": storage.sign(app, path, expires, purpose="upload"),
            "file_id": file_id,
            "cos_file_id": storage.sign(app, path, 0, purpose="cos-id")[:32],
        }

    @tcb_endpoint()
    async def batchdownloadfile(request: web.Request, app: str, body: dict[str, Any]) -> dict[str, Any]:
        storage = storage_of(request)
        items = body.get("file_list")
        if not isinstance(items, list):
            raise TcbError(40097, 'invalid args: file_list must be a list of {"fileid", "max_age"}')
        entries: list[Any] = []
        for item in items:
            if isinstance(item, dict):
                entry = {"fileID": item.get("fileid")}
                if "max_age" in item:
                    entry["maxAge"] = item["max_age"]
                entries.append(entry)
            else:
                entries.append({"fileID": item})
        try:
            results = await storage.temp_urls(entries, app=app, base_url=base_url(request, settings_of(request)))
        except StorageError as exc:
            raise storage_call(exc) from None
        return {"file_list": [{"fileid": r["fileID"], "download_url": r["tempFileURL"], "status": r["status"],
                               "errmsg": r["errMsg"]} for r in results]}

    @tcb_endpoint()
    async def batchdeletefile(request: web.Request, app: str, body: dict[str, Any]) -> dict[str, Any]:
        storage = storage_of(request)
        ids = body.get("fileid_list")
        if not isinstance(ids, list):
            raise TcbError(40097, "invalid args: fileid_list must be a list of fileIDs")
        try:
            results = await storage.delete_many(ids, app=app)
        except StorageError as exc:
            raise storage_call(exc) from None
        return {"delete_list": [{"fileid": r["fileID"], "status": r["status"], "errmsg": r["errMsg"]}
                                for r in results]}

    return [
        web.post("/tcb/uploadfile", uploadfile),
        web.post("/tcb/batchdownloadfile", batchdownloadfile),
        web.post("/tcb/batchdeletefile", batchdeletefile),
    ]


_ENV = {"type": "string", "minLength": 1, "description": "the csbot app (default: the CSBOT_* app)"}
_FILE_ID = {"type": "string", "description": "cloud://<app>/<cloudPath>"}
TCB_PATHS["/uploadfile"] = tcb_operation(
    "uploadFile", "a signed form to upload one file to `path` (then POST it to `url`)",
    {"type": "object", "required": ["env", "path"],
     "properties": {"env": _ENV, "path": {"type": "string", "description": "the cloudPath"}}},
    {"required": ["url", "token", "authorization", "file_id", "cos_file_id"],
     "properties": {"url": {"type": "string"}, "token": {"type": "string"}, "authorization": {"type": "string"},
                    "file_id": _FILE_ID, "cos_file_id": {"type": "string"}}},
    description="POST the file to `url` as multipart/form-data with `key` (the path), `Signature` "
                "(authorization), `x-cos-security-token` (token), `x-cos-meta-fileid` (cos_file_id) "
                "and `file` last; it answers 204. The form is valid 15 minutes.")
TCB_PATHS["/batchdownloadfile"] = tcb_operation(
    "batchDownloadFile", "temporary download URLs (at most 50 files)",
    {"type": "object", "required": ["env", "file_list"],
     "properties": {"env": _ENV, "file_list": {"type": "array", "maxItems": 50, "items": {
         "type": "object", "required": ["fileid"],
         "properties": {"fileid": _FILE_ID, "max_age": {"type": "number", "description": "seconds, ≤ 86400; "
                                                                                           "default 3600"}}}}}},
    {"required": ["file_list"], "properties": {"file_list": {"type": "array", "items": {
        "type": "object", "required": ["fileid", "download_url", "status", "errmsg"],
        "properties": {"fileid": {"type": "string"}, "download_url": {"type": "string"},
                       "status": {"type": "integer"}, "errmsg": {"type": "string"}}}}}})
TCB_PATHS["/batchdeletefile"] = tcb_operation(
    "batchDeleteFile", "delete files (at most 50)",
    {"type": "object", "required": ["env", "fileid_list"],
     "properties": {"env": _ENV, "fileid_list": {"type": "array", "maxItems": 50, "items": _FILE_ID}}},
    {"required": ["delete_list"], "properties": {"delete_list": {"type": "array", "items": {
        "type": "object", "required": ["fileid", "status", "errmsg"],
        "properties": {"fileid": {"type": "string"}, "status": {"type": "integer"},
                       "errmsg": {"type": "string"}}}}}})
