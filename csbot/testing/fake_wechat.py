"""FakeWeChat: an in-process stand-in for WeChat's server API (api.weixin.qq.com).

Why it exists: csbot's openapi client must be tested over real HTTP against the
behaviours that hurt in production (token rotation, the 48 h reply window, lost
answers, slow answers), without touching WeChat. Point the client at
``fake.base_url`` (env ``CSBOT_WECHAT_API_BASE``) and drive the scenario from
the test with the helper methods (``user_message``, ``advance``, ``inject`` ...).

The protocol facts come from the project spec (wechat-protocol.md, sections 6
and 7). Where WeChat's behaviour is unconfirmed the fake picks one plausible
answer and says so in the docstring.

Operators can run it standalone::

    python -m csbot.testing.fake_wechat --port 9000 --app wxid:secret

and drive it over HTTP with the ``/_fake/...`` control endpoints (see
``FakeWeChat._control``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import mimetypes
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

__all__ = ["Call", "Fault", "FakeWeChat", "ERRMSG", "main"]

JSON = dict[str, Any]

#: errmsg texts WeChat uses for the codes the fake can return (rid is appended).
ERRMSG: dict[int, str] = {
    -1: "system error",
    40001: "invalid credential, access_token is invalid or not latest",
    40002: "invalid grant_type",
    40003: "invalid openid",
    40004: "invalid media type",
    40006: "invalid meida size",
    40007: "invalid media_id",
    40008: "invalid message type",
    40013: "invalid appid",
    40014: "invalid access_token",
    40029: "invalid code",
    40037: "invalid template_id",
    40097: "invalid args",
    40101: "missing parameter",
    40125: "invalid appsecret",
    41001: "access_token missing",
    41005: "media data missing",
    41028: "invalid form id",
    41029: "form id used count reach limit",
    41030: "invalid page",
    42001: "access_token expired",
    43001: "require GET method",
    43002: "require POST method",
    43101: "user refuse to accept the msg",
    44002: "empty post data",
    44004: "empty content",
    45009: "reach max api daily quota limit",
    45011: "api minute-quota reach limit",
    45015: "response out of time limit or subscription is canceled",
    45047: "out of response count limit",
    45072: "command field invalid",
    45080: "has not sent message to user in the last 30 seconds",
    45081: "already typing",
    45109: "This API has been unsupported",
    47001: "data format error",
    47003: "argument invalid!",
    48001: "api unauthorized",
}

MEDIA_TTL = 3 * 86400  # temp media lives 3 days (spec 6.4)
STABLE_HANDOVER = 300  # stable token rotates 5 min before expiry; old+new overlap (spec 6.1)
TYPING_SECONDS = 15  # a Typing indicator lasts 15 s (spec 6.3)
TYPING_INTERACTION = 30  # typing needs a user action within the last 30 s (spec 6.3)
MSGTYPES = ("text", "image", "link", "miniprogrampage")


class _WxError(Exception):
    """Raised inside a handler to answer HTTP 200 {"errcode": N, "errmsg": ...}."""

    def __init__(self, errcode: int, detail: str | None = None) -> None:
        super().__init__(errcode, detail)
        self.errcode = errcode
        self.detail = detail


class _Drop(Exception):
    """Raised to close the connection without an answer."""


@dataclass
class Call:
    """One HTTP request the fake received, as a test would want to assert on it."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    raw: bytes
    appid: str | None
    time: float
    status: int | None = None  # None: the connection was dropped
    response: JSON | None = None  # parsed JSON answer (None for bytes / plain-text / drop)
    fault: Fault | None = None

    @property
    def errcode(self) -> int | None:
        """errcode of the JSON answer (0 for success bodies without one)."""
        if self.response is None:
            return None
        return int(self.response.get("errcode", 0))


@dataclass
class Fault:
    """A queued misbehaviour for the next ``times`` calls to ``path`` ("*" = any)."""

    path: str
    errcode: int | None = None
    status: int | None = None
    delay: float = 0.0
    drop: bool = False
    times: int = 1
    after_processing: bool = False

    def matches(self, path: str) -> bool:
        return self.path == "*" or self.path == path


@dataclass
class _Token:
    value: str
    appid: str
    kind: str  # "plain" | "stable"
    issued_at: float
    expires_at: float
    revoked_at: float | None = None  # invalid from this instant on (40001)


@dataclass
class _Window:
    """Reply allowance opened by the last user action (spec 6.2)."""

    expires_at: float
    remaining: int
    action: str
    at: float


@dataclass
class _Media:
    data: bytes
    content_type: str
    created_at: float
    appid: str | None


@dataclass
class _Template:
    template_id: str
    id: str
    keyword_id_list: list[int]


@dataclass
class _FormId:
    appid: str
    openid: str | None
    expires_at: float
    uses_left: int


Handler = Callable[["_Ctx"], Awaitable[JSON | web.StreamResponse]]


@dataclass
class _Ctx:
    request: web.Request
    call: Call
    body: Any = None
    appid: str | None = None


class FakeWeChat:
    """A fake api.weixin.qq.com with a controllable clock, user actions and faults.

    All state is in memory; time-dependent behaviour reads ``self.now()``, which is
    ``self.clock()`` plus whatever ``advance()`` added.
    """

    def __init__(
        self,
        apps: Mapping[str, str] | None = None,
        *,
        token_ttl: int = 7200,
        enforce_reply_window: bool = True,
        assume_reply_window: bool = False,
        replies_per_message: int = 5,
        reply_window: float = 172800,
        replies_on_enter: int = 2,
        enter_window: float = 60,
        strict_users: bool = False,
        plain_token_overlap: float = 0.0,
        login_code_ttl: float = 300,
        cloud_id_ttl: float = 300,
    ) -> None:
        self.apps: dict[str, str] = dict(apps if apps is not None else {"wxtestappid0001": "testsecret"})
        self.token_ttl = token_ttl
        self.enforce_reply_window = enforce_reply_window
        #: a user the fake has heard nothing about is taken to have just written (a standalone
        #: fake cannot see the pushes csbot receives); windows it was told about are enforced
        self.assume_reply_window = assume_reply_window
        self.replies_per_message = replies_per_message
        self.reply_window = reply_window
        self.replies_on_enter = replies_on_enter
        self.enter_window = enter_window
        self.strict_users = strict_users
        #: The official doc promises ~5 min of old+new overlap for cgi-bin/token;
        #: field reports (and csbot's design) assume immediate invalidation. Default 0.
        self.plain_token_overlap = plain_token_overlap
        self.login_code_ttl = login_code_ttl
        self.cloud_id_ttl = cloud_id_ttl

        self.clock: Callable[[], float] = time.time
        self._offset = 0.0
        self.latency = 0.0
        #: Content-Type of JSON answers; set to "text/plain" to check client tolerance.
        self.json_content_type = "application/json"
        #: When not None, subscribe/send only accepts these template ids (else 40037).
        self.templates: set[str] | None = None
        #: When not None, subscribe/send and template/send only accept these pages (41030).
        self.pages: set[str] | None = None

        self.calls: list[Call] = []
        self.sent: list[JSON] = []
        self.faults: list[Fault] = []

        self._tokens: dict[str, _Token] = {}
        self._plain_current: dict[str, str] = {}
        self._stable_current: dict[str, str] = {}
        self._token_fetches: list[tuple[str, str]] = []  # (appid, kind) per issuance
        self._users: dict[str, set[str]] = {}
        self._windows: dict[tuple[str, str], _Window] = {}
        self._typing_until: dict[tuple[str, str], float] = {}
        self._media: dict[str, _Media] = {}
        self._consents: dict[tuple[str, str, str], int] = {}
        self._login_codes: dict[tuple[str, str], tuple[JSON, float]] = {}
        self._session_keys: dict[tuple[str, str], str] = {}
        self._cloud_ids: dict[tuple[str, str], tuple[JSON, float]] = {}
        self._legacy_templates: dict[str, dict[str, _Template]] = {}
        self._form_ids: dict[str, _FormId] = {}

        self._app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._base_url: str | None = None

    # ------------------------------------------------------------------ clock
    def now(self) -> float:
        """Fake time: the clock plus everything ``advance`` added."""
        return self.clock() + self._offset

    def advance(self, seconds: float) -> None:
        """Move fake time forward (token expiry, reply windows, media age)."""
        if seconds < 0:
            raise ValueError("time only moves forward")
        self._offset += seconds

    # ------------------------------------------------------------ lifecycle
    @property
    def app(self) -> web.Application:
        """The aiohttp application (built once), e.g. for aiohttp_server fixtures."""
        if self._app is None:
            self._app = self._build_app()
        return self._app

    @property
    def base_url(self) -> str:
        """"http://127.0.0.1:PORT" once started."""
        if self._base_url is None:
            raise RuntimeError("FakeWeChat is not started; await fake.start() first")
        return self._base_url

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on host:port (0 = any free port) and return the base URL."""
        if self._runner is not None:
            return self.base_url
        # A short shutdown_timeout: close() must not wait out an injected delay.
        runner = web.AppRunner(self.app, access_log=None, handle_signals=False, shutdown_timeout=0.2)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runner = runner
        bound_host, bound_port = runner.addresses[0][:2]
        shown = host if host not in ("0.0.0.0", "::", "") else bound_host
        if ":" in shown:
            shown = f"[{shown}]"
        self._base_url = f"http://{shown}:{bound_port}"
        return self._base_url

    async def close(self) -> None:
        """Stop serving; state (calls, sent ...) stays readable."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        self._base_url = None

    async def __aenter__(self) -> FakeWeChat:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ------------------------------------------------------- scenario helpers
    def add_user(self, appid: str, openid: str) -> None:
        """Make ``openid`` known to ``appid`` (matters only with strict_users)."""
        self._users.setdefault(appid, set()).add(openid)

    def user_message(self, appid: str, openid: str) -> None:
        """The user sent a message: reset the allowance to 5 replies / 48 h."""
        self._open_window(appid, openid, "message", self.reply_window, self.replies_per_message)

    def user_entered(self, appid: str, openid: str) -> None:
        """The user entered the chat: reset the allowance to 2 replies / 1 min.

        The allowance does not accumulate: as the spec says, every triggering
        action resets it, so entering after a message *shortens* the window.
        """
        self._open_window(appid, openid, "enter", self.enter_window, self.replies_on_enter)

    def _open_window(self, appid: str, openid: str, action: str, seconds: float, count: int) -> None:
        self.add_user(appid, openid)
        now = self.now()
        self._windows[(appid, openid)] = _Window(now + seconds, count, action, now)

    def reply_allowance(self, appid: str, openid: str) -> tuple[int, float]:
        """(replies left, seconds left) for a user; (0, 0) when no window is open."""
        w = self._windows.get((appid, openid))
        now = self.now()
        if w is None or now >= w.expires_at:
            return 0, 0.0
        return w.remaining, w.expires_at - now

    def add_media(self, data: bytes, content_type: str = "image/jpeg", *, appid: str | None = None) -> str:
        """Seed a temp media (e.g. an image the user sent); returns its media_id.

        ``appid=None`` makes it readable by every app.
        """
        media_id = _new_media_id()
        self._media[media_id] = _Media(bytes(data), content_type, self.now(), appid)
        return media_id

    def media(self, media_id: str) -> bytes | None:
        """The bytes of a stored media (whatever its age), for assertions."""
        m = self._media.get(media_id)
        return m.data if m else None

    def grant_subscription(self, appid: str, openid: str, template_id: str, count: int = 1) -> None:
        """The user accepted ``count`` one-time subscribe messages for a template."""
        self.add_user(appid, openid)
        key = (appid, openid, template_id)
        self._consents[key] = self._consents.get(key, 0) + count

    def subscriptions_left(self, appid: str, openid: str, template_id: str) -> int:
        return self._consents.get((appid, openid, template_id), 0)

    def register_login_code(
        self,
        appid: str,
        code: str,
        openid: str,
        session_key: str | None = None,
        unionid: str | None = None,
    ) -> None:
        """A wx.login code: single use, valid ``login_code_ttl`` (5 min, community-reported)."""
        self.add_user(appid, openid)
        session_key = session_key or _new_session_key()
        self._session_keys[(appid, openid)] = session_key
        answer: JSON = {"openid": openid, "session_key": session_key}
        if unionid is not None:
            answer["unionid"] = unionid
        self._login_codes[(appid, code)] = (answer, self.now() + self.login_code_ttl)

    def issue_login_code(self, appid: str, openid: str, unionid: str | None = None,
                         rotate_session_key: bool = True) -> str:
        """What ``wx.login`` gives the mini program of ``openid``: a new code (single use, 5 min).

        Like WeChat, a login may rotate the user's ``session_key`` (default: it does);
        ``session_key_of`` tells the current one.
        """
        key = self._session_keys.get((appid, openid))
        if rotate_session_key or key is None:
            key = _new_session_key()
        code = secrets.token_hex(16)  # WeChat's codes are 32 characters
        self.register_login_code(appid, code, openid, session_key=key, unionid=unionid)
        return code

    def session_key_of(self, appid: str, openid: str) -> str | None:
        """The user's current session_key (the one of their latest issued login code)."""
        return self._session_keys.get((appid, openid))

    def encrypt_open_data(self, appid: str, openid: str, data: Mapping[str, Any]) -> JSON:
        """Open data as ``wx.getUserProfile``/``getWeRunData`` hand it to the mini program:
        ``{"encryptedData", "iv"}`` under the user's current session_key (AES-128-CBC, PKCS#7),
        with a ``watermark`` {appid, timestamp} added unless ``data`` has one."""
        import base64

        from cryptography.hazmat.primitives import padding
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        session_key = self._session_keys.get((appid, openid))
        if session_key is None:
            raise KeyError(f"{openid} has no session_key: issue a login code first")
        payload = dict(data)
        payload.setdefault("watermark", {"appid": appid, "timestamp": int(self.now())})
        plain = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        padder = padding.PKCS7(128).padder()
        padded = padder.update(plain) + padder.finalize()
        iv = secrets.token_bytes(16)
        enc = Cipher(algorithms.AES(base64.b64decode(session_key)), modes.CBC(iv)).encryptor()
        cipher = enc.update(padded) + enc.finalize()
        return {"encryptedData": base64.b64encode(cipher).decode(), "iv": base64.b64encode(iv).decode()}

    def register_cloud_id(self, appid: str, cloud_id: str, data: Mapping[str, Any]) -> None:
        """Open data behind a CloudID, valid ``cloud_id_ttl`` (5 min per CloudBase docs).

        getopendata answers ``json`` as the string of ``{"cloudID", "data"}`` where a
        ``watermark`` {appid, timestamp} is added to ``data`` unless already present.
        """
        self._cloud_ids[(appid, cloud_id)] = (dict(data), self.now() + self.cloud_id_ttl)

    def add_form_id(self, appid: str, openid: str | None = None, form_id: str | None = None, uses: int = 1) -> str:
        """A legacy template-message form_id (7 days; 1 use, 3 for a prepay_id)."""
        form_id = form_id or secrets.token_hex(16)
        self._form_ids[form_id] = _FormId(appid, openid, self.now() + 7 * 86400, uses)
        return form_id

    def expire_tokens(self, appid: str | None = None) -> None:
        """Make every live token (plain and stable) of ``appid`` (None = all) expire now."""
        now = self.now()
        for tok in self._tokens.values():
            if (appid is None or tok.appid == appid) and tok.expires_at > now:
                tok.expires_at = now

    def revoke_tokens(self, appid: str | None = None) -> None:
        """Invalidate every token of ``appid`` (None = all): they answer 40001 from now on."""
        now = self.now()
        for tok in self._tokens.values():
            if (appid is None or tok.appid == appid) and tok.revoked_at is None:
                tok.revoked_at = now

    def token_fetches(self, appid: str | None = None, kind: str | None = None) -> int:
        """How many tokens were *issued* (a stable_token call returning the cached one is not counted)."""
        return sum(1 for a, k in self._token_fetches if (appid is None or a == appid) and (kind is None or k == kind))

    def current_token(self, appid: str, kind: str = "stable") -> str | None:
        """The newest token of a kind, for tests that want to call the fake directly."""
        cur = self._stable_current if kind == "stable" else self._plain_current
        return cur.get(appid)

    def inject(
        self,
        path: str,
        *,
        errcode: int | None = None,
        status: int | None = None,
        delay: float = 0.0,
        drop: bool = False,
        times: int = 1,
        after_processing: bool = False,
    ) -> Fault:
        """Queue a fault for the next ``times`` calls to ``path`` ("*" = any path).

        errcode -> HTTP 200 WeChat error body; status -> that HTTP status, short text
        body; drop -> the connection is closed without an answer; delay -> sleep
        before answering. With ``after_processing`` the call is processed first
        (a send IS recorded) and only the answer is replaced: "WeChat got it but the
        answer was lost". Faults are consumed in the order they were queued.
        """
        if times < 1:
            raise ValueError("times must be >= 1")
        fault = Fault(path, errcode, status, delay, drop, times, after_processing)
        self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        self.faults.clear()

    # -------------------------------------------------------- call records
    def calls_to(self, path: str) -> list[Call]:
        return [c for c in self.calls if c.path == path]

    def sent_to(self, openid: str) -> list[JSON]:
        return [m for m in self.sent if m["touser"] == openid]

    def reset_calls(self) -> None:
        """Forget recorded calls, sends and token-issuance counts (not the state)."""
        self.calls.clear()
        self.sent.clear()
        self._token_fetches.clear()

    # ================================================================ server
    def _build_app(self) -> web.Application:
        app = web.Application(client_max_size=20 * 1024 * 1024)
        routes: list[tuple[str, str, Handler, bool]] = [
            # (method, path, handler, needs access_token)
            ("GET", "/cgi-bin/token", self._h_token, False),
            ("POST", "/cgi-bin/stable_token", self._h_stable_token, False),
            ("POST", "/cgi-bin/message/custom/send", self._h_custom_send, True),
            ("POST", "/cgi-bin/message/custom/business/send", self._h_business_send, True),
            ("POST", "/cgi-bin/message/custom/typing", self._h_typing, True),
            ("POST", "/cgi-bin/media/upload", self._h_media_upload, True),
            ("GET", "/cgi-bin/media/get", self._h_media_get, True),
            ("POST", "/cgi-bin/message/subscribe/send", self._h_subscribe_send, True),
            ("POST", "/cgi-bin/wxopen/template/add", self._h_tmpl_add, True),
            ("POST", "/cgi-bin/wxopen/template/del", self._h_tmpl_del, True),
            ("POST", "/cgi-bin/wxopen/template/list", self._h_tmpl_list, True),
            ("POST", "/cgi-bin/message/wxopen/template/send", self._h_tmpl_send, True),
            ("GET", "/sns/jscode2session", self._h_code2session, False),
            ("POST", "/wxa/getopendata", self._h_getopendata, True),
        ]
        for method, path, handler, needs_token in routes:
            app.router.add_route("*", path, self._wrap(method, handler, needs_token))
        app.router.add_route("*", "/_fake/{action}", self._control)
        app.router.add_route("*", "/{tail:.*}", self._wrap(None, self._h_unknown, False))
        return app

    def _wrap(self, method: str | None, handler: Handler, needs_token: bool) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def endpoint(request: web.Request) -> web.StreamResponse:
            return await self._serve(request, method, handler, needs_token)

        return endpoint

    async def _serve(self, request: web.Request, method: str | None, handler: Handler, needs_token: bool) -> web.StreamResponse:
        """Record, apply faults, check method/token, run the handler, render the answer."""
        # Multipart uploads are left unread here so the handler can stream them.
        raw = b"" if request.content_type.startswith("multipart/") else await request.read()
        call = Call(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            json=_try_json(raw),
            raw=raw,
            appid=None,
            time=self.now(),
        )
        self.calls.append(call)
        ctx = _Ctx(request, call)
        fault = self._take_fault(request.path)
        call.fault = fault
        try:
            if self.latency:
                await asyncio.sleep(self.latency)
            if fault is not None and not fault.after_processing:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.drop or fault.errcode is not None or fault.status is not None:
                    return self._fault_response(request, call, fault)
            try:
                if method is not None and request.method != method:
                    raise _WxError(43001 if method == "GET" else 43002)
                if needs_token:
                    ctx.appid = call.appid = self._check_token(request.query.get("access_token"))
                result = await handler(ctx)
            except _WxError as err:
                result = self._error_body(err.errcode, err.detail)
            if fault is not None and fault.after_processing:
                if fault.delay:
                    await asyncio.sleep(fault.delay)
                if fault.drop or fault.errcode is not None or fault.status is not None:
                    return self._fault_response(request, call, fault)
            if isinstance(result, web.StreamResponse):
                call.status = result.status
                return result
            call.status = 200
            call.response = result
            return self._json(result)
        except _Drop:
            transport = request.transport
            if transport is not None:
                transport.close()
            raise asyncio.CancelledError() from None

    def _take_fault(self, path: str) -> Fault | None:
        for fault in self.faults:
            if fault.matches(path):
                fault.times -= 1
                if fault.times <= 0:
                    self.faults.remove(fault)
                return fault
        return None

    def _fault_response(self, request: web.Request, call: Call, fault: Fault) -> web.StreamResponse:
        if fault.drop:
            raise _Drop()
        if fault.status is not None:
            call.status = fault.status
            reason = _reason(fault.status)
            return web.Response(status=fault.status, text=f"<html><body><h1>{fault.status} {reason}</h1></body></html>", content_type="text/html")
        assert fault.errcode is not None
        body = self._error_body(fault.errcode)
        call.status, call.response = 200, body
        return self._json(body)

    def _json(self, body: JSON) -> web.Response:
        return web.Response(
            body=json.dumps(body, ensure_ascii=False).encode("utf-8"),
            content_type=self.json_content_type,
            charset="utf-8",
        )

    @staticmethod
    def _error_body(errcode: int, detail: str | None = None) -> JSON:
        rid = secrets.token_hex(4) + "-" + secrets.token_hex(4) + "-" + secrets.token_hex(4)
        msg = ERRMSG.get(errcode, "unknown error")
        if detail:
            msg = f"{msg} {detail}"
        return {"errcode": errcode, "errmsg": f"{msg} rid: {rid}", "rid": rid}

    # ---------------------------------------------------------------- tokens
    def _issue(self, appid: str, kind: str) -> _Token:
        now = self.now()
        value = f"{len(self._tokens) + 1}_{secrets.token_urlsafe(120)}"  # ~170 chars, like WeChat's long tokens
        tok = _Token(value, appid, kind, now, now + self.token_ttl)
        self._tokens[value] = tok
        self._token_fetches.append((appid, kind))
        return tok

    def _check_credentials(self, appid: Any, secret: Any, grant_type: Any) -> str:
        if grant_type != "client_credential":
            raise _WxError(40002)
        if not isinstance(appid, str) or appid not in self.apps:
            raise _WxError(40013)
        if secret != self.apps[appid]:
            raise _WxError(40125)
        return appid

    def _check_token(self, value: str | None) -> str:
        """Resolve an access_token to its appid or raise 41001/40001/42001."""
        if not value:
            raise _WxError(41001)
        tok = self._tokens.get(value)
        now = self.now()
        if tok is None or (tok.revoked_at is not None and now >= tok.revoked_at):
            raise _WxError(40001)
        if now >= tok.expires_at:
            raise _WxError(42001)
        return tok.appid

    async def _h_token(self, ctx: _Ctx) -> JSON:
        """cgi-bin/token: every fetch issues a new token and invalidates the previous one."""
        q = ctx.request.query
        appid = self._check_credentials(q.get("appid"), q.get("secret"), q.get("grant_type"))
        ctx.call.appid = appid
        previous = self._plain_current.get(appid)
        tok = self._issue(appid, "plain")
        if previous is not None:
            old = self._tokens[previous]
            old.revoked_at = tok.issued_at + self.plain_token_overlap
        self._plain_current[appid] = tok.value
        return {"access_token": tok.value, "expires_in": self.token_ttl}

    async def _h_stable_token(self, ctx: _Ctx) -> JSON:
        """cgi-bin/stable_token: same token while valid; rotated with 5 min overlap.

        Normal mode mints a new token only when the current one has < 5 min left
        (the old one keeps working until its own expiry: the handover) or has
        expired. force_refresh mints a new one and invalidates the previous one
        immediately (spec 6.1). expires_in is the token's remaining lifetime.
        """
        body = _json_object(ctx)
        ctx.call.appid = body.get("appid") if isinstance(body.get("appid"), str) else None
        appid = self._check_credentials(body.get("appid"), body.get("secret"), body.get("grant_type"))
        force = body.get("force_refresh") in (True, "true", 1)
        now = self.now()
        cur_value = self._stable_current.get(appid)
        cur = self._tokens.get(cur_value) if cur_value else None
        usable = cur is not None and cur.revoked_at is None and cur.expires_at - now > STABLE_HANDOVER
        if force or not usable:
            tok = self._issue(appid, "stable")
            if cur is not None and force and cur.revoked_at is None:
                cur.revoked_at = now
            self._stable_current[appid] = tok.value
            cur = tok
        assert cur is not None
        return {"access_token": cur.value, "expires_in": round(cur.expires_at - now)}

    # ------------------------------------------------------ customer service
    def _check_user(self, appid: str, openid: Any) -> str:
        if not isinstance(openid, str) or not openid:
            raise _WxError(40003)
        if self.strict_users and openid not in self._users.get(appid, set()):
            raise _WxError(40003)
        return openid

    def _media_ok(self, appid: str, media_id: Any) -> bool:
        m = self._media.get(media_id) if isinstance(media_id, str) else None
        return m is not None and (m.appid is None or m.appid == appid) and self.now() - m.created_at < MEDIA_TTL

    def _check_message(self, appid: str, body: JSON) -> str:
        """Validate a custom/send body the way WeChat answers malformed ones."""
        msgtype = body.get("msgtype")
        if msgtype not in MSGTYPES:
            raise _WxError(40008)
        part = body.get(msgtype)
        if not isinstance(part, dict):
            raise _WxError(47001)
        if msgtype == "text":
            content = part.get("content")
            if not isinstance(content, str):
                raise _WxError(47001)
            if not content:
                raise _WxError(44004)
        elif msgtype == "image":
            if not self._media_ok(appid, part.get("media_id")):
                raise _WxError(40007)
        elif msgtype == "link":
            for key in ("title", "description", "url", "thumb_url"):
                if not isinstance(part.get(key), str):
                    raise _WxError(47001, f"(link.{key})")
        else:  # miniprogrampage
            for key in ("title", "pagepath", "thumb_media_id"):
                if not isinstance(part.get(key), str):
                    raise _WxError(47001, f"(miniprogrampage.{key})")
            if not self._media_ok(appid, part["thumb_media_id"]):
                raise _WxError(40007)
        return msgtype

    async def _h_custom_send(self, ctx: _Ctx) -> JSON:
        """custom/send: validates, enforces the reply window/quota, records the send."""
        assert ctx.appid is not None
        body = _json_object(ctx)
        openid = self._check_user(ctx.appid, body.get("touser"))
        msgtype = self._check_message(ctx.appid, body)
        key = (ctx.appid, openid)
        if self.enforce_reply_window:
            if self.assume_reply_window and key not in self._windows:
                self.user_message(ctx.appid, openid)  # standalone: it cannot see the pushes
            w = self._windows.get(key)
            if w is None or self.now() >= w.expires_at:
                raise _WxError(45015)
            if w.remaining <= 0:
                raise _WxError(45047)
            w.remaining -= 1
        self._typing_until.pop(key, None)  # sending a message cancels typing
        self.sent.append({"appid": ctx.appid, "touser": openid, "msgtype": msgtype, "body": body, "time": self.now(), "kind": "custom"})
        return {"errcode": 0, "errmsg": "ok"}

    async def _h_business_send(self, ctx: _Ctx) -> JSON:
        """The path in one newer doc page; developers report 40101 from it (spec 6.2)."""
        raise _WxError(40101)

    async def _h_typing(self, ctx: _Ctx) -> JSON:
        """custom/typing: 45072 bad command; with the reply window enforced also
        45015 (no window), 45080 (no user action in 30 s), 45081 (already typing)."""
        assert ctx.appid is not None
        body = _json_object(ctx)
        openid = self._check_user(ctx.appid, body.get("touser"))
        command = body.get("command")
        if command not in ("Typing", "CancelTyping"):
            raise _WxError(45072)
        key = (ctx.appid, openid)
        now = self.now()
        if command == "CancelTyping":
            self._typing_until.pop(key, None)
            return {"errcode": 0, "errmsg": "ok"}
        if self.enforce_reply_window:
            w = self._windows.get(key)
            if w is None or now >= w.expires_at:
                raise _WxError(45015)
            if now - w.at > TYPING_INTERACTION:
                raise _WxError(45080)
            if self._typing_until.get(key, 0) > now:
                raise _WxError(45081)
        self._typing_until[key] = now + TYPING_SECONDS
        return {"errcode": 0, "errmsg": "ok"}

    def is_typing(self, appid: str, openid: str) -> bool:
        return self._typing_until.get((appid, openid), 0) > self.now()

    # ------------------------------------------------------------------ media
    async def _h_media_upload(self, ctx: _Ctx) -> JSON:
        """media/upload?type=image, multipart field "media" (Mini Programs: images only)."""
        if ctx.request.query.get("type") != "image":
            raise _WxError(40004)
        if not ctx.request.content_type.startswith("multipart/"):
            raise _WxError(41005)
        data: bytes | None = None
        content_type = "image/jpeg"
        form = await ctx.request.post()
        field_ = form.get("media")
        if isinstance(field_, web.FileField):
            data = field_.file.read()
            ctx.call.raw = data
            ctype = field_.content_type or ""
            if ctype.startswith("image/"):
                content_type = ctype
            else:
                guessed = mimetypes.guess_type(field_.filename or "")[0]
                if guessed and guessed.startswith("image/"):
                    content_type = guessed
        elif isinstance(field_, (str, bytes)):
            data = field_.encode() if isinstance(field_, str) else field_
        if data is None:
            raise _WxError(41005)
        if not data:
            raise _WxError(40006)
        assert ctx.appid is not None
        media_id = self.add_media(data, content_type, appid=ctx.appid)
        return {"errcode": 0, "errmsg": "ok", "type": "image", "media_id": media_id, "created_at": int(self._media[media_id].created_at)}

    async def _h_media_get(self, ctx: _Ctx) -> JSON | web.StreamResponse:
        """media/get: the bytes with an image Content-Type, or JSON 40007."""
        assert ctx.appid is not None
        media_id = ctx.request.query.get("media_id")
        if not self._media_ok(ctx.appid, media_id):
            raise _WxError(40007)
        assert media_id is not None
        m = self._media[media_id]
        ext = mimetypes.guess_extension(m.content_type) or ".jpg"
        return web.Response(
            body=m.data,
            content_type=m.content_type,
            headers={"Content-disposition": f'attachment; filename="{media_id}{ext}"'},
        )

    # -------------------------------------------------------------- subscribe
    @staticmethod
    def _check_template_data(data: Any) -> None:
        if not isinstance(data, dict) or not data:
            raise _WxError(47003, "data is empty")
        for key, item in data.items():
            if not isinstance(item, dict) or "value" not in item:
                raise _WxError(47003, f"data.{key}.value is empty")
            if not isinstance(item["value"], (str, int, float)) or isinstance(item["value"], bool):
                raise _WxError(47003, f"data.{key}.value invalid")

    async def _h_subscribe_send(self, ctx: _Ctx) -> JSON:
        """subscribe/send: consumes one consent per send (43101 without one)."""
        assert ctx.appid is not None
        body = _json_object(ctx)
        openid = self._check_user(ctx.appid, body.get("touser"))
        template_id = body.get("template_id")
        if not isinstance(template_id, str) or not template_id or (self.templates is not None and template_id not in self.templates):
            raise _WxError(40037)
        page = body.get("page")
        if page is not None and self.pages is not None and str(page).split("?")[0] not in self.pages:
            raise _WxError(41030)
        if body.get("miniprogram_state", "formal") not in ("developer", "trial", "formal"):
            raise _WxError(47003, "miniprogram_state invalid")
        if body.get("lang", "zh_CN") not in ("zh_CN", "en_US", "zh_HK", "zh_TW"):
            raise _WxError(47003, "lang invalid")
        self._check_template_data(body.get("data"))
        key = (ctx.appid, openid, template_id)
        if self._consents.get(key, 0) <= 0:
            raise _WxError(43101)
        self._consents[key] -= 1
        self.sent.append({"appid": ctx.appid, "touser": openid, "msgtype": "subscribe", "body": body, "time": self.now(), "kind": "subscribe"})
        return {"errcode": 0, "errmsg": "ok", "msgid": secrets.randbelow(2**62)}

    # ------------------------------------------------------- legacy template
    async def _h_tmpl_add(self, ctx: _Ctx) -> JSON:
        assert ctx.appid is not None
        body = _json_object(ctx)
        lib_id, kw = body.get("id"), body.get("keyword_id_list")
        if not isinstance(lib_id, str) or not lib_id or not isinstance(kw, list) or not kw or len(kw) > 10:
            raise _WxError(47001)
        template_id = secrets.token_urlsafe(32)
        self._legacy_templates.setdefault(ctx.appid, {})[template_id] = _Template(template_id, lib_id, list(kw))
        return {"errcode": 0, "errmsg": "ok", "template_id": template_id}

    async def _h_tmpl_del(self, ctx: _Ctx) -> JSON:
        assert ctx.appid is not None
        body = _json_object(ctx)
        if self._legacy_templates.get(ctx.appid, {}).pop(body.get("template_id"), None) is None:  # type: ignore[arg-type]
            raise _WxError(40037)
        return {"errcode": 0, "errmsg": "ok"}

    async def _h_tmpl_list(self, ctx: _Ctx) -> JSON:
        assert ctx.appid is not None
        body = _json_object(ctx)
        offset, count = body.get("offset", 0), body.get("count", 20)
        if not isinstance(offset, int) or not isinstance(count, int) or offset < 0 or not 1 <= count <= 20:
            raise _WxError(47001)
        items = list(self._legacy_templates.get(ctx.appid, {}).values())[offset : offset + count]
        return {
            "errcode": 0,
            "errmsg": "ok",
            "list": [
                {
                    "template_id": t.template_id,
                    "title": f"template {t.id}",
                    "content": "".join(f"keyword{i + 1}: {{{{keyword{i + 1}.DATA}}}}\n" for i in range(len(t.keyword_id_list))),
                    "example": "",
                }
                for t in items
            ],
        }

    async def _h_tmpl_send(self, ctx: _Ctx) -> JSON:
        """wxopen/template/send: form_id single use (41029 reused, 41028 unknown)."""
        assert ctx.appid is not None
        body = _json_object(ctx)
        openid = self._check_user(ctx.appid, body.get("touser"))
        if body.get("template_id") not in self._legacy_templates.get(ctx.appid, {}):
            raise _WxError(40037)
        form_id = body.get("form_id")
        form = self._form_ids.get(form_id) if isinstance(form_id, str) else None
        if form is None or form.appid != ctx.appid or (form.openid is not None and form.openid != openid) or self.now() >= form.expires_at:
            raise _WxError(41028)
        if form.uses_left <= 0:
            raise _WxError(41029)
        page = body.get("page")
        if page is not None and self.pages is not None and str(page).split("?")[0] not in self.pages:
            raise _WxError(41030)
        data = body.get("data")
        if data is not None:
            self._check_template_data(data)
        form.uses_left -= 1
        self.sent.append({"appid": ctx.appid, "touser": openid, "msgtype": "template", "body": body, "time": self.now(), "kind": "template"})
        return {"errcode": 0, "errmsg": "ok"}

    # --------------------------------------------------------- login / open data
    async def _h_code2session(self, ctx: _Ctx) -> JSON:
        """jscode2session: single-use codes from register_login_code, else 40029."""
        q = ctx.request.query
        if q.get("grant_type") != "authorization_code":
            raise _WxError(40002)
        appid = q.get("appid")
        if appid not in self.apps:
            raise _WxError(40013)
        ctx.call.appid = appid
        if q.get("secret") != self.apps[appid]:
            raise _WxError(40125)
        entry = self._login_codes.pop((appid, q.get("js_code") or ""), None)
        if entry is None or self.now() >= entry[1]:
            raise _WxError(40029)
        return dict(entry[0])

    async def _h_getopendata(self, ctx: _Ctx) -> JSON:
        """wxa/getopendata: ``json`` is a JSON *string*; unknown/expired CloudID -> 40097 (fake's choice)."""
        assert ctx.appid is not None
        body = _json_object(ctx)
        ids = body.get("cloudid_list")
        if not isinstance(ids, list) or not ids or not all(isinstance(i, str) for i in ids):
            raise _WxError(47001)
        out = []
        for cloud_id in ids:
            entry = self._cloud_ids.get((ctx.appid, cloud_id))
            if entry is None or self.now() >= entry[1]:
                raise _WxError(40097, f"(cloud_id {cloud_id})")
            data = dict(entry[0])
            data.setdefault("watermark", {"appid": ctx.appid, "timestamp": int(entry[1] - self.cloud_id_ttl)})
            out.append({"cloud_id": cloud_id, "json": json.dumps({"cloudID": cloud_id, "data": data}, ensure_ascii=False)})
        return {"errcode": 0, "errmsg": "ok", "data_list": out}

    async def _h_unknown(self, ctx: _Ctx) -> web.StreamResponse:
        """Unknown paths: 404, but recorded, so a wrong URL shows up in fake.calls."""
        return web.Response(status=404, text="404 Not Found")

    # --------------------------------------------------------------- control
    async def _control(self, request: web.Request) -> web.StreamResponse:
        """Drive a standalone fake over HTTP: POST /_fake/<helper> with JSON kwargs.

        Helpers: user_message, user_entered, add_user, grant_subscription,
        register_login_code, issue_login_code ({"appid", "openid"} → the code a wx.login
        would give that user), encrypt_open_data, register_cloud_id, add_form_id, advance, expire_tokens,
        revoke_tokens, inject, clear_faults, reset_calls, add_media (JSON
        {"data_b64", "content_type"}). GET /_fake/sent and /_fake/calls read records.
        Not recorded in ``calls``.
        """
        action = request.match_info["action"]
        if request.method == "GET" and action == "sent":
            return web.json_response(self.sent, dumps=_dumps)
        if request.method == "GET" and action == "calls":
            rows = [
                {"method": c.method, "path": c.path, "query": c.query, "json": c.json, "appid": c.appid, "status": c.status, "response": c.response, "time": c.time}
                for c in self.calls
            ]
            return web.json_response(rows, dumps=_dumps)
        allowed = {
            "user_message", "user_entered", "add_user", "grant_subscription", "register_login_code",
            "issue_login_code", "encrypt_open_data", "register_cloud_id", "add_form_id", "advance", "expire_tokens", "revoke_tokens",
            "inject", "clear_faults", "reset_calls", "add_media",
        }  # fmt: skip
        if request.method != "POST" or action not in allowed:
            return web.json_response({"error": f"unknown control {request.method} {action}"}, status=404)
        try:
            kwargs = await request.json() if await request.read() else {}
            if action == "add_media":
                import base64

                result: Any = self.add_media(base64.b64decode(kwargs["data_b64"]), kwargs.get("content_type", "image/jpeg"), appid=kwargs.get("appid"))
            else:
                result = getattr(self, action)(**kwargs)
        except (TypeError, ValueError, KeyError) as err:
            return web.json_response({"error": str(err)}, status=400)
        if isinstance(result, Fault):
            result = {"path": result.path, "times": result.times}
        return web.json_response({"ok": True, "result": result}, dumps=_dumps)


# ------------------------------------------------------------------ helpers
def _dumps(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False, default=str)


def _try_json(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


def _json_object(ctx: _Ctx) -> JSON:
    """The request body as a JSON object: 44002 when empty, 47001 when not a JSON object."""
    raw = ctx.call.raw
    if not raw.strip():
        raise _WxError(44002)
    body = ctx.call.json
    if not isinstance(body, dict):
        raise _WxError(47001)
    return body


def _new_session_key() -> str:
    """A session_key as WeChat gives it: 16 random bytes, base64 (24 characters)."""
    import base64

    return base64.b64encode(secrets.token_bytes(16)).decode()


def _new_media_id() -> str:
    return secrets.token_urlsafe(48)


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def main(argv: list[str] | None = None) -> None:
    """Run a FakeWeChat until interrupted: ``python -m csbot.testing.fake_wechat``."""
    parser = argparse.ArgumentParser(prog="python -m csbot.testing.fake_wechat", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--app", action="append", default=[], metavar="APPID:SECRET", help="repeatable; default wxtestappid0001:testsecret")
    parser.add_argument("--token-ttl", type=int, default=7200)
    parser.add_argument("--reply-window", choices=("assume", "strict", "off"), default="assume",
                        help="assume (default): a user the fake was told nothing about has just written, so "
                             "csbot's replies are accepted (the quota of 5 still counts); strict: only after "
                             "POST /_fake/user_message or /_fake/user_entered (csbot simulate sends these); "
                             "off: never refuse")
    parser.add_argument("--no-reply-window", action="store_true", help="same as --reply-window off")
    parser.add_argument("--strict-users", action="store_true", help="40003 for openids the fake has not seen")
    args = parser.parse_args(argv)
    apps: dict[str, str] = {}
    for item in args.app:
        appid, sep, secret = item.partition(":")
        if not sep or not appid or not secret:
            parser.error(f"--app wants APPID:SECRET, got {item!r}")
        apps[appid] = secret

    async def serve() -> None:
        window = "off" if args.no_reply_window else args.reply_window
        fake = FakeWeChat(apps or None, token_ttl=args.token_ttl, enforce_reply_window=window != "off",
                          assume_reply_window=window == "assume", strict_users=args.strict_users)
        url = await fake.start(args.host, args.port)
        print(url, flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):  # docker stop / Ctrl-C: close cleanly
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):  # e.g. Windows
                pass
        try:
            await stop.wait()
        finally:
            await fake.close()

    try:
        asyncio.run(serve())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
