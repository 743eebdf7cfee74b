"""Cloud storage: files by ``cloudPath``, like ``wx.cloud.uploadFile`` on the operator's own server.

A file is named by its fileID ``cloud://<app>/<cloudPath>``; uploading to the same path
overwrites. The bytes live in a :class:`StorageBackend` (the local filesystem under
``CSBOT_DATA_DIR/storage`` by default); the metadata (owner openid, size, content type,
SHA-256) is a row of ``storage_files`` in the SQL store.

Why the blobs are not named after their cloudPath: any cloudPath WeChat accepts must be
storable (``a`` and ``a/b`` both, names longer than a file name may be, characters a filesystem
refuses), and an overwrite must never expose half a file. Each upload streams into a fresh,
uniquely named blob (temp file, fsync, rename); the row is switched to it in one transaction;
only then is the previous blob removed. A crash at any point leaves the old or the new version
whole, at worst an unreferenced blob or a temp file, which :meth:`Storage.sweep` removes once
older than a grace period (at start, hourly, and ``csbot storage sweep``).

Temporary URLs are HMAC-SHA256 signatures over (app, cloudPath, expiry) served at
``/cloud/files/<app>/<cloudPath>?expires=…&sign=…``: the URL is the capability, as in WeChat.
Storage rules (``read``, ``write``) apply to mini-program callers at the API, not to the URL.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import math
import mimetypes
import os
import re
import secrets
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterable, AsyncIterator, Iterable, Mapping, Protocol, Sequence
from urllib.parse import quote

from sqlalchemy import delete, select, update

from csbot.store.engine import dialect_insert
from csbot.store.models import StorageFile

log = logging.getLogger("csbot.cloud.storage")

FILE_ID_SCHEME = "cloud://"
#: WeChat's naming rule: at most 850 bytes (UTF-8)
MAX_CLOUD_PATH_BYTES = 850
#: getTempFileURL / deleteFile accept at most 50 files per call
MAX_BATCH = 50
DEFAULT_MAX_AGE = 3600
MAX_MAX_AGE = 86400
DEFAULT_MAX_FILE_SIZE = 20 * 1024 * 1024
CHUNK = 64 * 1024
#: an unreferenced blob or temp file younger than this is left alone (an upload may be between
#: its write and its commit in another process); the sweep runs at start and at this interval
ORPHAN_GRACE_SECONDS = 3600.0
SWEEP_INTERVAL_SECONDS = 3600.0
_APP = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MIME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}$")
#: types a browser may show inline from csbot's origin; anything else is served as an attachment
INLINE_TYPES = frozenset({
    "image/png", "image/jpeg", "image/gif", "image/webp", "image/bmp", "image/avif",
    "audio/mpeg", "audio/mp4", "audio/aac", "audio/ogg", "audio/wav", "audio/amr",
    "video/mp4", "video/webm", "video/ogg", "video/quicktime",
    "application/pdf", "text/plain",
})


# ---------------------------------------------------------------- errors


class StorageError(Exception):
    """A storage call failed for a reason the caller should see.

    ``code`` is CloudBase's error name (``errMsg`` of WeChat's per-file results), ``status`` the
    HTTP status of a whole-request failure.
    """

    code = "INVALID_PARAM"
    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    @property
    def errmsg(self) -> str:
        return f"{self.code}: {self.reason}"


class InvalidCloudPath(StorageError):
    code = "INVALID_PARAM"


class FileTooLarge(StorageError):
    code = "STORAGE_EXCEED_MAX_SIZE"
    status = 413


class FileNotFound(StorageError):
    code = "STORAGE_FILE_NONEXIST"
    status = 404


class AccessDenied(StorageError):
    code = "STORAGE_EXCEED_AUTHORITY"
    status = 403


class TooManyFiles(StorageError):
    code = "INVALID_PARAM"


class StorageUnavailable(StorageError):
    """The backend failed (disk full, permissions, I/O error): the operator's problem, logged."""

    code = "STORAGE_UNAVAILABLE"
    status = 503


# ---------------------------------------------------------------- names


def validate_cloud_path(cloud_path: Any) -> str:
    """WeChat's cloudPath rules: non-empty, no leading ``/``, no ``//``, no ``..``, ≤ 850 bytes."""
    if not isinstance(cloud_path, str):
        raise InvalidCloudPath("cloudPath must be a string")
    if not cloud_path:
        raise InvalidCloudPath("cloudPath must not be empty")
    if cloud_path.startswith("/"):
        raise InvalidCloudPath("cloudPath must not start with '/'")
    if "//" in cloud_path:
        raise InvalidCloudPath("cloudPath must not contain '//'")
    if ".." in cloud_path.split("/") or ".." in cloud_path:
        raise InvalidCloudPath("cloudPath must not contain '..'")
    if cloud_path.endswith("/"):
        raise InvalidCloudPath("cloudPath must name a file, not end with '/'")
    if _CONTROL.search(cloud_path):
        raise InvalidCloudPath("cloudPath must not contain control characters")
    try:
        size = len(cloud_path.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidCloudPath("cloudPath must be valid Unicode text") from None
    if size > MAX_CLOUD_PATH_BYTES:
        raise InvalidCloudPath(f"cloudPath is {size} bytes; at most {MAX_CLOUD_PATH_BYTES} are allowed")
    return cloud_path


def make_file_id(app: str, cloud_path: str) -> str:
    return f"{FILE_ID_SCHEME}{app}/{cloud_path}"


def parse_file_id(file_id: Any) -> tuple[str, str]:
    """``cloud://<app>/<cloudPath>`` → (app, cloudPath), or :class:`InvalidCloudPath`."""
    if not isinstance(file_id, str) or not file_id:
        raise InvalidCloudPath("fileID must be a non-empty string")
    if not file_id.startswith(FILE_ID_SCHEME):
        raise InvalidCloudPath("fileID must start with cloud://")
    app, sep, path = file_id[len(FILE_ID_SCHEME):].partition("/")
    if not sep or not _APP.match(app):
        raise InvalidCloudPath("fileID must be cloud://<app>/<cloudPath> with the name of a csbot app")
    return app, validate_cloud_path(path)


def content_type_for(cloud_path: str, declared: str | None = None) -> str:
    """By the name's extension; else a well-formed declared type; else octet-stream."""
    guessed = mimetypes.guess_type(cloud_path, strict=False)[0]
    if guessed:
        return guessed
    if declared:
        base = declared.split(";", 1)[0].strip().lower()
        if _MIME.match(base):
            return base
    return "application/octet-stream"


def content_disposition(cloud_path: str, content_type: str) -> str:
    """``inline`` for types safe to show from csbot's origin, ``attachment`` otherwise; UTF-8 name."""
    name = cloud_path.rsplit("/", 1)[-1]
    ascii_name = re.sub(r'[^A-Za-z0-9._ -]', "_", name) or "file"
    kind = "inline" if content_type in INLINE_TYPES else "attachment"
    return f"{kind}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(name, safe='')}"


@dataclass(frozen=True)
class StoredFile:
    """The metadata of one stored file."""

    app: str
    cloud_path: str
    size: int
    content_type: str
    sha256: str
    owner_openid: str | None
    created_at: float
    updated_at: float
    blob_key: str

    @property
    def file_id(self) -> str:
        return make_file_id(self.app, self.cloud_path)

    @classmethod
    def of(cls, row: Any) -> "StoredFile":
        return cls(app=row.app, cloud_path=row.cloud_path, size=int(row.size), content_type=row.content_type,
                   sha256=row.sha256, owner_openid=row.owner_openid, created_at=row.created_at,
                   updated_at=row.updated_at, blob_key=row.blob_key)


# ---------------------------------------------------------------- backends


@dataclass(frozen=True)
class WrittenBlob:
    key: str
    size: int
    sha256: str


class StorageBackend(Protocol):
    """Where the bytes live. Keys are opaque, generated by :class:`Storage`."""

    async def write(self, key: str, chunks: AsyncIterable[bytes], limit: int) -> WrittenBlob:
        """Store ``chunks`` under ``key`` atomically: the key holds all of them or nothing.

        Raises :class:`FileTooLarge` (storing nothing) once more than ``limit`` bytes arrive.
        """

    def read(self, key: str) -> AsyncIterator[bytes]:
        """The blob's bytes in chunks; :class:`FileNotFound` when it is gone."""

    async def delete(self, key: str) -> None:
        """Remove the blob; a missing one is not an error."""

    async def list_blobs(self, older_than: float) -> list[str]:
        """Keys of the blobs last written more than ``older_than`` seconds ago (the orphan
        sweep's candidates; unfinished writes are not blobs)."""

    async def sweep_partials(self, older_than: float, keep: frozenset[str] = frozenset()) -> int:
        """Remove what writes killed halfway left behind, older than ``older_than`` seconds,
        except the unfinished writes of the keys in ``keep``."""


class LocalBackend:
    """Blobs as files under ``root`` (``CSBOT_DATA_DIR/storage``). File I/O runs in threads."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path_of(self, key: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_-]+(/[A-Za-z0-9_.-]+)*", key) or ".." in key:
            raise ValueError(f"not a blob key: {key!r}")
        return self.root / key

    def local_path(self, key: str) -> Path:
        """The file of a blob, for serving it with sendfile."""
        return self.path_of(key)

    async def write(self, key: str, chunks: AsyncIterable[bytes], limit: int) -> WrittenBlob:
        path = self.path_of(key)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.part")
        handle = await asyncio.to_thread(_open_exclusive, tmp)
        digest = hashlib.sha256()
        size = 0
        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if size > limit:
                    raise FileTooLarge(f"the file is larger than the limit of {limit} bytes")
                digest.update(chunk)
                await asyncio.to_thread(handle.write, chunk)
            await asyncio.to_thread(_commit_file, handle, tmp, path)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(_discard_file, handle, tmp))
            raise
        return WrittenBlob(key=key, size=size, sha256=digest.hexdigest())

    async def read(self, key: str) -> AsyncIterator[bytes]:  # type: ignore[override]
        path = self.path_of(key)
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError:
            raise FileNotFound("the file's contents are missing from the storage backend") from None
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                yield chunk
        finally:
            await asyncio.shield(asyncio.to_thread(handle.close))

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(_unlink_quietly, self.path_of(key))

    async def sweep_partials(self, older_than: float = 3600.0, keep: frozenset[str] = frozenset()) -> int:
        """Remove temp files an upload killed halfway left behind (in a thread); not those of
        the blob keys in ``keep`` (uploads in progress)."""
        names = frozenset(k.rsplit("/", 1)[-1] for k in keep)
        return await asyncio.to_thread(_sweep_partials, self.root, older_than, names)

    async def list_blobs(self, older_than: float) -> list[str]:
        return await asyncio.to_thread(_list_blobs, self.root, older_than)


def _open_exclusive(path: Path) -> Any:
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "xb")


def _commit_file(handle: Any, tmp: Path, path: Path) -> None:
    handle.flush()
    os.fsync(handle.fileno())
    handle.close()
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _discard_file(handle: Any, tmp: Path) -> None:
    try:
        handle.close()
    finally:
        _unlink_quietly(tmp)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sweep_partials(root: Path, older_than: float, keep_names: frozenset[str] = frozenset()) -> int:
    removed = 0
    cutoff = time.time() - older_than
    if not root.exists():
        return 0
    for path in root.rglob(".*.part"):
        if path.name.split(".")[1] in keep_names:
            continue  # ".<name>.<uuid>.part" of an upload still writing
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except OSError:
            continue
    return removed


def _list_blobs(root: Path, older_than: float) -> list[str]:
    keys = []
    cutoff = time.time() - older_than
    objects = root / "objects"
    if not objects.is_dir():
        return keys
    for shard in os.scandir(objects):
        if not shard.is_dir(follow_symlinks=False):
            continue
        for entry in os.scandir(shard.path):
            if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                continue  # ".<name>.<uuid>.part": an upload still writing (or killed: sweep_partials)
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    keys.append(f"objects/{shard.name}/{entry.name}")
            except FileNotFoundError:
                continue
    return keys


# ---------------------------------------------------------------- sources


async def chunks_of(source: Any) -> AsyncIterator[bytes]:
    """Bytes, a :class:`os.PathLike` file, or an async iterable of bytes, as chunks."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        view = memoryview(source).cast("B")
        for start in range(0, len(view), CHUNK):
            yield bytes(view[start:start + CHUNK])
    elif isinstance(source, os.PathLike):
        handle = await asyncio.to_thread(open, os.fspath(source), "rb")
        try:
            while chunk := await asyncio.to_thread(handle.read, CHUNK):
                yield chunk
        finally:
            await asyncio.shield(asyncio.to_thread(handle.close))
    elif hasattr(source, "__aiter__"):
        async for chunk in source:
            yield bytes(chunk)
    elif isinstance(source, str):
        raise TypeError("upload() takes bytes or a pathlib.Path; for text, pass text.encode()")
    else:
        raise TypeError(f"upload() takes bytes, a pathlib.Path or an async iterable of bytes, not {type(source).__name__}")


class _SourceFailed(Exception):
    """Reading the upload's source failed (as opposed to the backend writing it)."""


async def _source_chunks(source: Any) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks_of(source):
            yield chunk
    except OSError as exc:
        raise _SourceFailed() from exc


# ---------------------------------------------------------------- rules


class StorageRule:
    """One storage rule: ``true``/``false`` or an expression over ``auth`` and ``resource``.

    The language is the database rules' (:mod:`csbot.cloud.database.rules`: ``== != < <= > >=
    in && || !``, ``.`` and ``[]``, literals), over WeChat's storage variables ``auth``
    (``openid``; null for nobody) and ``resource`` (``openid`` of the file's owner, ``path``).
    Parsed once, at start (a bad rule stops the start with a message), and interpreted —
    never evaluated as code.
    """

    def __init__(self, source: bool | str) -> None:
        from csbot.cloud.database.rules import RuleError, parse_rule

        self.source = source
        try:
            self.rule = parse_rule(source, where="storage rule", variables=("auth", "resource"))
        except RuleError as exc:
            raise ValueError(str(exc)) from None

    def allows(self, auth_openid: str | None, resource: Mapping[str, Any]) -> bool:
        from csbot.cloud.database.rules import holds

        auth = None if auth_openid is None else {"openid": auth_openid}
        return holds(self.rule, {"auth": auth, "resource": {"openid": resource.get("openid"),
                                                            "path": resource.get("path")}})

    def __repr__(self) -> str:
        return f"StorageRule({self.source!r})"


@dataclass(frozen=True)
class StorageRules:
    """WeChat's default: everyone reads, only the uploader writes (overwrites, deletes)."""

    read: StorageRule = StorageRule(True)
    write: StorageRule = StorageRule("resource.openid == auth.openid")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> "StorageRules":
        data = dict(data or {})
        unknown = set(data) - {"read", "write"}
        if unknown:
            raise ValueError(f"[storage.rules]: unknown key(s) {', '.join(sorted(unknown))}; use read and write")
        return cls(read=StorageRule(data.get("read", True)),
                   write=StorageRule(data.get("write", "resource.openid == auth.openid")))

    def check(self, op: str, auth_openid: str, file: StoredFile | None, cloud_path: str) -> None:
        """Raise :class:`AccessDenied` naming the rule unless ``op`` (read/write) is allowed.

        ``resource`` is the stored file; for a new file it is the file as the caller would
        create it (owned by the caller).
        """
        rule = self.read if op == "read" else self.write
        owner = file.owner_openid if file is not None else auth_openid
        if not rule.allows(auth_openid, {"openid": owner, "path": cloud_path}):
            whose = "" if file is None else (" (a file of the server side)" if owner is None else " (another user's file)")
            raise AccessDenied(f"the storage {op} rule {rule.source!r} refuses this caller{whose}")


# ---------------------------------------------------------------- the service


@dataclass
class SweepReport:
    """What :meth:`Storage.sweep` found: orphaned blob keys, unfinished uploads removed."""

    partials_removed: int = 0
    blobs_checked: int = 0
    orphans: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"partials_removed": self.partials_removed, "blobs_checked": self.blobs_checked,
                "orphans": len(self.orphans), "orphan_keys": self.orphans}


@dataclass(frozen=True)
class TempURL:
    file_id: str
    url: str
    expires: int


class Storage:
    """Files by cloudPath for every app: metadata in SQL, bytes in the backend.

    Server-side calls (handlers, cloud functions, ``/tcb``) pass no ``openid`` and bypass the
    rules, as in WeChat; mini-program calls pass the caller's openid and meet the rules.
    """

    def __init__(self, sessionmaker: Any, backend: StorageBackend, *, signing_key: bytes,
                 max_file_size: int = DEFAULT_MAX_FILE_SIZE, rules: StorageRules | None = None,
                 public_url: str = "", apps: Iterable[str] | None = None) -> None:
        self.sessionmaker = sessionmaker
        self.backend = backend
        self.signing_key = signing_key
        self.max_file_size = max_file_size
        self.rules = rules or StorageRules()
        self.public_url = public_url.rstrip("/")
        self.apps = frozenset(apps) if apps is not None else None
        self._background: set[asyncio.Task[Any]] = set()
        #: blobs written (or being written) by this process that no row references yet: an upload
        #: between its blob and its commit. The orphan sweep never touches them, whatever their age.
        self._pending: set[str] = set()

    def for_app(self, app: str) -> "AppStorage":
        return AppStorage(self, app)

    def run_in_background(self, job: Any, what: str) -> None:
        """Maintenance nothing waits for; its failure is logged; :meth:`close` cancels it."""

        async def run() -> None:
            try:
                done = await job
                if done:
                    log.info("storage: %s: %s done", what, done)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("storage: %s failed", what)

        task = asyncio.get_running_loop().create_task(run(), name=f"csbot-storage: {what}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)

    # ---- names

    def resolve(self, file_id: Any) -> tuple[str, str]:
        app, path = parse_file_id(file_id)
        if self.apps is not None and app not in self.apps:
            raise FileNotFound(f"fileID names app {app!r}, which this csbot does not serve")
        return app, path

    # ---- reading metadata

    async def stat(self, app: str, cloud_path: str) -> StoredFile | None:
        async with self.sessionmaker() as s:
            row = (await s.execute(select(StorageFile).where(
                StorageFile.app == app, StorageFile.cloud_path == cloud_path))).scalars().first()
        return StoredFile.of(row) if row is not None else None

    async def stat_many(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], StoredFile]:
        found: dict[tuple[str, str], StoredFile] = {}
        by_app: dict[str, set[str]] = {}
        for app, path in pairs:
            by_app.setdefault(app, set()).add(path)
        async with self.sessionmaker() as s:
            for app, paths in by_app.items():
                rows = (await s.execute(select(StorageFile).where(
                    StorageFile.app == app, StorageFile.cloud_path.in_(sorted(paths))))).scalars().all()
                for row in rows:
                    found[(row.app, row.cloud_path)] = StoredFile.of(row)
        return found

    # ---- writing

    async def upload(self, app: str, cloud_path: str, source: Any, *, openid: str | None = None,
                     owner_openid: str | None = None, content_type: str | None = None) -> StoredFile:
        """Store ``source`` at ``cloud_path`` (overwriting), streamed, within the size limit.

        ``openid``: a mini-program caller (the write rule applies; the file becomes theirs).
        ``owner_openid``: for server-side uploads made on a user's behalf.
        """
        cloud_path = validate_cloud_path(cloud_path)
        if openid is not None:
            # refuse before reading a byte when the rule already says no; checked again at commit
            self.rules.check("write", openid, await self.stat(app, cloud_path), cloud_path)
        blob = await self.write_blob(source)
        return await self.commit(app, cloud_path, blob, openid=openid, owner_openid=owner_openid,
                                 content_type=content_type)

    async def write_blob(self, source: Any) -> WrittenBlob:
        """Stream ``source`` into a new blob (not yet any file's contents; see :meth:`commit`)."""
        key = f"objects/{secrets.token_hex(1)}/{uuid.uuid4().hex}"
        self._pending.add(key)  # until commit() or discard_blob()
        written = False
        try:
            blob = await self.backend.write(key, _source_chunks(source), self.max_file_size)
            written = True
            return blob
        except _SourceFailed as failed:
            cause = failed.__cause__
            if isinstance(source, os.PathLike) and isinstance(cause, OSError):
                raise StorageError(f"cannot read {os.fspath(source)}: {cause.strerror}") from None
            raise cause from None  # the caller's stream broke (a client went away): theirs to see
        except OSError as exc:
            log.error("storage backend could not write a file: %s", exc)
            raise StorageUnavailable("the storage backend could not write the file; try again later") from None
        finally:
            if not written:
                self._pending.discard(key)  # the backend removed its partial write

    async def commit(self, app: str, cloud_path: str, blob: WrittenBlob, *, openid: str | None = None,
                     owner_openid: str | None = None, content_type: str | None = None) -> StoredFile:
        """Make ``blob`` the contents of ``cloud_path``; the blob is removed if that fails."""
        try:
            cloud_path = validate_cloud_path(cloud_path)
            ctype = content_type_for(cloud_path, content_type)
            owner = openid if openid is not None else owner_openid
            stored, replaced = await self._switch_to(app, cloud_path, blob, ctype, owner, openid)
        except BaseException:
            await asyncio.shield(self.backend.delete(blob.key))
            raise
        finally:
            self._pending.discard(blob.key)  # referenced by its row now, or removed
        if replaced is not None:
            await self._drop_blob(replaced)
        log.info("stored %s (%d bytes)", stored.file_id, stored.size)
        return stored

    async def discard_blob(self, blob: WrittenBlob) -> None:
        try:
            await self._drop_blob(blob.key)
        finally:
            self._pending.discard(blob.key)

    # ---- garbage: what crashes leave behind

    async def sweep(self, grace: float = ORPHAN_GRACE_SECONDS, *, dry_run: bool = False) -> "SweepReport":
        """Remove unfinished uploads' temp files and blobs no row references, both older than
        ``grace`` seconds: what a crash leaves between a blob's rename into place and its
        row's commit, or between a delete's (or an overwrite's) commit and the old blob's unlink.

        Never removed: a blob of an upload in progress in this process (whatever its age), a
        blob younger than ``grace`` (an upload in another process between its write and its
        commit: ``grace`` must exceed that, one hour by default), a blob any row references.
        The candidates are listed before the rows are read, so a blob committed meanwhile is
        seen as referenced.
        """
        candidates = [k for k in await self.backend.list_blobs(grace) if k not in self._pending]
        partials = 0 if dry_run else await self.backend.sweep_partials(grace, frozenset(self._pending))
        report = SweepReport(partials_removed=partials, blobs_checked=len(candidates))
        if not candidates:
            return report
        referenced: set[str] = set()
        async with self.sessionmaker() as s:
            for start in range(0, len(candidates), 500):
                batch = candidates[start:start + 500]
                rows = await s.execute(select(StorageFile.blob_key).where(StorageFile.blob_key.in_(batch)))
                referenced.update(r[0] for r in rows)
        for key in candidates:
            if key in referenced or key in self._pending:
                continue
            report.orphans.append(key)
            if not dry_run:
                await self.backend.delete(key)
        if report.orphans or partials:
            log.warning("storage sweep: %s %d blob(s) no file references and %d unfinished upload(s)",
                        "found" if dry_run else "removed", len(report.orphans), partials)
        return report

    async def maintain(self, interval: float = SWEEP_INTERVAL_SECONDS, grace: float = ORPHAN_GRACE_SECONDS) -> None:
        """Sweep now and every ``interval`` seconds until cancelled (``csbot serve``)."""
        while True:
            try:
                await self.sweep(grace)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("storage sweep failed (retried in %d s)", interval)
            await asyncio.sleep(interval)

    async def _switch_to(self, app: str, cloud_path: str, blob: WrittenBlob, ctype: str,
                         owner_openid: str | None, caller: str | None) -> tuple[StoredFile, str | None]:
        """Point the row at the new blob in one transaction; the blob it replaced, if any."""
        now = time.time()
        values = dict(app=app, cloud_path=cloud_path, blob_key=blob.key, size=blob.size, content_type=ctype,
                      sha256=blob.sha256, owner_openid=owner_openid, updated_at=now)
        async with self.sessionmaker() as s, s.begin():
            dialect = s.bind.dialect.name
            insert = dialect_insert(dialect)(StorageFile).values(created_at=now, **values)
            # the insert takes the write lock first (SQLite) or waits for a concurrent insert (PG)
            inserted = (await s.execute(insert.on_conflict_do_nothing(
                index_elements=["app", "cloud_path"]).returning(StorageFile.id))).first()
            if inserted is not None:
                if caller is not None:
                    self.rules.check("write", caller, None, cloud_path)
                return StoredFile(created_at=now, **values), None  # type: ignore[arg-type]
            row = (await s.execute(select(StorageFile).where(
                StorageFile.app == app, StorageFile.cloud_path == cloud_path).with_for_update())).scalars().one()
            current = StoredFile.of(row)
            if caller is not None:
                self.rules.check("write", caller, current, cloud_path)
            await s.execute(update(StorageFile).where(StorageFile.id == row.id).values(**values))
            return StoredFile(created_at=current.created_at, **values), current.blob_key  # type: ignore[arg-type]

    async def _drop_blob(self, key: str) -> None:
        try:
            await self.backend.delete(key)
        except Exception as exc:  # an unreferenced blob is garbage, not an error for the caller
            log.warning("could not remove a replaced blob: %s", exc)

    async def delete(self, app: str, cloud_path: str, *, openid: str | None = None) -> StoredFile:
        """Remove one file (the write rule applies to a mini-program caller)."""
        async with self.sessionmaker() as s, s.begin():
            row = (await s.execute(select(StorageFile).where(
                StorageFile.app == app, StorageFile.cloud_path == cloud_path).with_for_update())).scalars().first()
            if row is None:
                raise FileNotFound(f"no file {make_file_id(app, cloud_path)}")
            current = StoredFile.of(row)
            if openid is not None:
                self.rules.check("write", openid, current, cloud_path)
            await s.execute(delete(StorageFile).where(StorageFile.id == row.id))
        await self._drop_blob(current.blob_key)
        log.info("deleted %s", current.file_id)
        return current

    async def delete_many(self, file_ids: Sequence[Any], *, app: str | None = None,
                          openid: str | None = None) -> list[dict[str, Any]]:
        """WeChat's ``deleteFile``: one ``{fileID, status, errMsg}`` per file, in order."""
        check_batch(file_ids, "fileList")
        results = []
        for file_id in file_ids:
            try:
                file_app, path = self.resolve(file_id)
                if app is not None and file_app != app:
                    raise AccessDenied(f"the file belongs to app {file_app!r}, not {app!r}")
                await self.delete(file_app, path, openid=openid)
                results.append({"fileID": file_id, "status": 0, "errMsg": "ok"})
            except StorageError as exc:
                results.append({"fileID": file_id if isinstance(file_id, str) else "", "status": 1,
                                "errMsg": exc.errmsg})
        return results

    # ---- reading

    async def open(self, app: str, cloud_path: str) -> tuple[StoredFile, AsyncIterator[bytes]]:
        """The file's metadata and a stream of its bytes (a concurrent overwrite is retried once)."""
        for attempt in range(2):
            stored = await self.stat(app, cloud_path)
            if stored is None:
                raise FileNotFound(f"no file {make_file_id(app, cloud_path)}")
            stream = self.backend.read(stored.blob_key)
            try:
                first = await stream.__anext__()
            except StopAsyncIteration:
                first = b""
            except FileNotFound:
                if attempt == 0:
                    continue  # replaced between the lookup and the open
                raise
            except OSError as exc:
                log.error("storage backend could not read %s: %s", stored.file_id, exc)
                raise StorageUnavailable("the storage backend could not read the file; try again later") from None
            return stored, _prepend(first, stream)
        raise FileNotFound(f"no file {make_file_id(app, cloud_path)}")  # pragma: no cover

    async def download(self, app: str, cloud_path: str, *, openid: str | None = None) -> bytes:
        stored, stream = await self.open(app, cloud_path)
        if openid is not None:
            self.rules.check("read", openid, stored, cloud_path)
        return b"".join([chunk async for chunk in stream])

    # ---- temporary URLs

    def sign(self, app: str, cloud_path: str, expires: int, purpose: str = "read") -> str:
        """HMAC-SHA256 of what a URL grants: reading (temp URLs) or writing (``/tcb/uploadfile``)."""
        message = f"{purpose}\n{app}\n{cloud_path}\n{expires}".encode("utf-8")
        return hmac.new(self.signing_key, message, hashlib.sha256).hexdigest()

    def verify(self, app: str, cloud_path: str, expires: Any, signature: Any, now: float | None = None,
               purpose: str = "read") -> str | None:
        """``None`` when the signature is good and current, else why not."""
        try:
            expires_at = int(str(expires))
        except ValueError:
            return "the URL has no valid expiry"
        expected = self.sign(app, cloud_path, expires_at, purpose)
        if not isinstance(signature, str) or not hmac.compare_digest(signature.encode(), expected.encode()):
            return "the URL's signature is not valid"
        if (time.time() if now is None else now) > expires_at:
            return "the URL has expired"
        return None

    def temp_url(self, app: str, cloud_path: str, max_age: float = DEFAULT_MAX_AGE, *,
                 base_url: str | None = None, now: float | None = None) -> TempURL:
        expires = math.ceil((time.time() if now is None else now) + max_age)
        base = (base_url if base_url is not None else self.public_url).rstrip("/")
        url = (f"{base}/cloud/files/{app}/{quote(cloud_path, safe='/')}"
               f"?expires={expires}&sign={self.sign(app, cloud_path, expires)}")
        return TempURL(make_file_id(app, cloud_path), url, expires)

    async def temp_urls(self, entries: Sequence[Any], *, app: str | None = None, openid: str | None = None,
                        base_url: str | None = None) -> list[dict[str, Any]]:
        """WeChat's ``getTempFileURL``: entries are fileIDs or ``{fileID, maxAge}``; per-file results."""
        check_batch(entries, "fileList")
        parsed: list[tuple[Any, tuple[str, str] | None, float | None, StorageError | None]] = []
        for entry in entries:
            file_id, max_age = entry, DEFAULT_MAX_AGE
            try:
                if isinstance(entry, Mapping):
                    file_id = entry.get("fileID")
                    max_age = parse_max_age(entry.get("maxAge", DEFAULT_MAX_AGE))
                where = self.resolve(file_id)
                if app is not None and where[0] != app:
                    raise AccessDenied(f"the file belongs to app {where[0]!r}, not {app!r}")
                parsed.append((file_id, where, max_age, None))
            except StorageError as exc:
                parsed.append((file_id, None, None, exc))
        found = await self.stat_many([where for _, where, _, _ in parsed if where is not None])
        results = []
        for file_id, where, max_age, error in parsed:
            if error is None and where is not None:
                stored = found.get(where)
                try:
                    if stored is None:
                        raise FileNotFound(f"no file {make_file_id(*where)}")
                    if openid is not None:
                        self.rules.check("read", openid, stored, where[1])
                    signed = self.temp_url(where[0], where[1], max_age or DEFAULT_MAX_AGE, base_url=base_url)
                    results.append({"fileID": file_id, "tempFileURL": signed.url, "status": 0, "errMsg": "ok"})
                    continue
                except StorageError as exc:
                    error = exc
            assert error is not None
            results.append({"fileID": file_id if isinstance(file_id, str) else "", "tempFileURL": "",
                            "status": 1, "errMsg": error.errmsg})
        return results


def parse_max_age(value: Any) -> float:
    """``maxAge``: seconds, any positive number up to one day, honoured exactly."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise StorageError("maxAge must be a number of seconds")
    if value <= 0 or value > MAX_MAX_AGE:
        raise StorageError(f"maxAge must be more than 0 and at most {MAX_MAX_AGE} seconds (one day)")
    return int(value) if float(value).is_integer() else float(value)


def check_batch(entries: Any, name: str) -> None:
    if not isinstance(entries, (list, tuple)):
        raise StorageError(f"{name} must be a list")
    if not entries:
        raise StorageError(f"{name} must not be empty")
    if len(entries) > MAX_BATCH:
        raise TooManyFiles(f"{name} has {len(entries)} files; at most {MAX_BATCH} per call")


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    if first:
        yield first
    async for chunk in rest:
        yield chunk


class AppStorage:
    """``context.storage``: one app's files, server side (no rules), WeChat's method names."""

    def __init__(self, storage: Storage, app: str) -> None:
        self._storage = storage
        self.app = app

    async def upload(self, cloud_path: str, data: Any = None, *, path: str | os.PathLike[str] | None = None,
                     content_type: str | None = None, owner_openid: str | None = None) -> str:
        """Store bytes (or the file at ``path``) at ``cloud_path``; returns the fileID."""
        if (data is None) == (path is None):
            raise TypeError("upload() takes either data or path=")
        source = Path(path) if path is not None else data
        stored = await self._storage.upload(self.app, cloud_path, source, content_type=content_type,
                                            owner_openid=owner_openid)
        return stored.file_id

    async def download(self, file_id: str) -> bytes:
        app, path = self._storage.resolve(file_id)
        return await self._storage.download(app, path)

    async def delete(self, file_ids: Sequence[str]) -> list[dict[str, Any]]:
        return await self._storage.delete_many(list(file_ids))

    async def temp_urls(self, entries: Sequence[Any]) -> list[dict[str, Any]]:
        return await self._storage.temp_urls(list(entries))

    async def stat(self, file_id: str) -> StoredFile | None:
        app, path = self._storage.resolve(file_id)
        return await self._storage.stat(app, path)


# ---------------------------------------------------------------- the signing key


def load_signing_key(configured: str, data_dir: Path) -> bytes:
    """``CSBOT_STORAGE_SIGNING_KEY``, else a random key kept in ``DATA_DIR/storage/signing.key``.

    The file is created once (published with a hard link, so concurrent starts agree on one
    key). Blocking: call it in a thread.
    """
    if configured:
        return configured.encode("utf-8")
    path = Path(data_dir) / "storage" / "signing.key"
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".signing.key.{uuid.uuid4().hex}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, secrets.token_hex(32).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    return bytes.fromhex(path.read_text().strip())


async def start_storage(settings: Any, sessionmaker: Any, *, adopt_media: bool = True) -> Storage:
    """Cloud storage as ``csbot serve`` runs it: the local backend under ``data_dir/storage``.

    In the background: leftovers of killed uploads and blobs no file references are swept (at
    start and hourly, :meth:`Storage.sweep`), and images kept before storage existed
    (``data_dir/media``) are moved into it.
    """
    from csbot.media import adopt_legacy_media

    backend = LocalBackend(settings.data_dir / "storage")
    key = await asyncio.to_thread(load_signing_key, settings.storage_signing_key, settings.data_dir)
    storage = Storage(sessionmaker, backend, signing_key=key, max_file_size=settings.storage_max_file_size,
                      rules=StorageRules.from_mapping(settings.storage_rules), public_url=settings.public_url,
                      apps=settings.apps)
    storage.run_in_background(storage.maintain(), "sweeping unfinished uploads and orphaned blobs")
    if adopt_media and (settings.data_dir / "media").is_dir():
        storage.run_in_background(adopt_legacy_media(storage, sessionmaker, settings.data_dir / "media"),
                                  "moving media kept before storage into it")
    return storage
