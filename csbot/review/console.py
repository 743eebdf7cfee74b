"""The web console at ``/admin``: agents sign in, read conversations, step in, hand back.

Three panes on a desktop (conversation list | thread | customer and conversation details), each
scrolling on its own with the composer always in view; one pane at a time on a phone. Rendered
on the server with Jinja2 (autoescaped, every string from the gettext catalogs of
:mod:`csbot.review.i18n`) and kept live by ``static/console.js`` over server-sent events
(:mod:`csbot.review.stream`), which carry server-rendered HTML, so the browser never builds
markup or sentences from data. Security:

- sign-in with an agent's name and password (:mod:`csbot.review.agents`: argon2id, rate-limited
  per name and per address); while no agent exists, the sign-in page creates the first admin
  from ``CSBOT_ADMIN_TOKEN`` (compared in constant time) and a name and password, or, with no
  token set, answers 403 saying to run ``csbot agents add NAME --role admin``;
- a server-side session (random cookie, ``HttpOnly``, ``SameSite=Strict``, ``Secure`` over
  HTTPS; the store keeps its hash): disabling an agent or resetting their password ends it;
- a CSRF token (random, kept with the session) on every form and POST; the sign-in form itself
  uses a double-submit cookie;
- customer text is only ever rendered as text: Jinja2 autoescape (links made clickable only for
  ``http``/``https``, ``rel="noopener noreferrer"``), and a Content-Security-Policy without
  inline scripts.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import mimetypes
import re
import secrets
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import quote, urlencode, urlsplit

import jinja2
from aiohttp import web
from markupsafe import Markup, escape

from csbot.review import i18n
from csbot.review.i18n import N_
from csbot.review.agents import SESSION_TTL, ConsoleSession, Forbidden, RateLimited
from csbot.review.live import LiveState
from csbot.review.saved_replies import SavedReplies
from csbot.review.service import (ASSIGNED_FILTERS, STATUSES, Invalid, ReviewError, iso, localized_detail,
                                  timestamp)
from csbot.services import Services
from csbot.statuses import as_json as statuses_json

log = logging.getLogger("csbot.review.console")

HERE = Path(__file__).parent
SESSION_COOKIE = "csbot_session"
LOGIN_COOKIE = "csbot_login"
THREAD_LIMIT = 300
#: images an agent sends: WeChat takes JPEG, PNG and GIF up to 10 MB as a temporary image
MAX_IMAGE = 10 * 1024 * 1024
IMAGE_TYPES = {b"\x89PNG\r\n\x1a\n": ".png", b"\xff\xd8\xff": ".jpg", b"GIF87a": ".gif", b"GIF89a": ".gif"}
CSP = ("default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
#: http(s) URLs in text; what ends a URL in running Chinese or English text is left out
URL = re.compile(r"""https?://[^\s<>"'`，。！？；：、（）【】《》“”‘’]+""", re.IGNORECASE)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def time_tag(at: str | float | None, *, mode: str = "datetime") -> Markup:
    """A ``<time>`` the browser shows in its own zone (``console.js``), with the offset on hover.

    The text inside is the UTC fallback for a browser without JavaScript; ``mode`` ``ago``
    shows "3 min ago" instead of the date.
    """
    ts = timestamp(at)
    if ts is None:
        return Markup("")
    utc = datetime.fromtimestamp(ts, timezone.utc)
    text = ago_text(ts) if mode == "ago" else utc.strftime("%Y-%m-%d %H:%M UTC")
    return Markup('<time datetime="{}" data-local="{}" title="{}">{}</time>').format(
        iso(ts), mode, utc.strftime("%Y-%m-%d %H:%M:%S UTC"), text)


def ago_text(ts: float | None) -> str:
    """``3 min ago``, in the request's language (the same catalog strings as console.js)."""
    if ts is None:
        return ""
    _ = i18n.gettext
    delta = max(0.0, time.time() - ts)
    if delta < 60:
        return _("just now")
    if delta < 3600:
        return _("%(n)s min ago") % {"n": int(delta // 60)}
    if delta < 86400:
        return _("%(n)s h ago") % {"n": int(delta // 3600)}
    if delta < 7 * 86400:
        return _("%(n)s d ago") % {"n": int(delta // 86400)}
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d")


def linkify(text: Any) -> Markup:
    """Text with its http/https URLs as links (new tab, no opener, no referrer); the rest escaped."""
    text = "" if text is None else str(text)
    out: list[Any] = []
    pos = 0
    for m in URL.finditer(text):
        url = m.group(0).rstrip(".,;:!?)]}")
        out.append(escape(text[pos:m.start()]))
        out.append(Markup('<a href="{0}" target="_blank" rel="noopener noreferrer">{0}</a>').format(url))
        pos = m.start() + len(url)
    out.append(escape(text[pos:]))
    return Markup("").join(out)


def bdi(value: Any) -> Markup:
    """A name or text typed by somebody, isolated from the sentence around it: a right-to-left
    override (U+202E) in an agent's name or a tag cannot reorder the rest of the line."""
    return Markup("<bdi>{}</bdi>").format("" if value is None else value)


def is_http_url(value: Any) -> bool:
    return isinstance(value, str) and value.lower().startswith(("https://", "http://"))


def make_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("csbot.review", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True, auto_reload=False,
                             extensions=["jinja2.ext.i18n"])
    i18n.install(env)
    env.filters["when"] = time_tag
    env.filters["ago"] = lambda at: time_tag(at, mode="ago")
    env.filters["q"] = lambda s: quote(str(s), safe="")
    env.filters["linkify"] = linkify
    env.filters["bdi"] = bdi
    env.filters["detail"] = localized_detail
    env.globals["is_http_url"] = is_http_url
    env.globals["statuses"] = statuses_json()
    env.globals["languages"] = i18n.LANGUAGES
    for name in env.list_templates():  # loaded once, at start-up: no file reads while serving
        env.get_template(name)
    return env


def js_strings() -> dict[str, str]:
    """What console.js says, through the catalog (placeholders filled in by the script)."""
    _ = i18n.gettext
    return {
        "title_waiting": _("(%(n)s) waiting · csbot"),
        "title_idle": _("csbot console"),
        "notify_new": _("New conversation: %(openid)s"),
        "notify_mine": _("%(openid)s wrote in your conversation"),
        "notify_on": _("Notifications on"),
        "notify_off": _("Notifications"),
        "notify_denied": _("Notifications blocked by the browser"),
        "no_saved": _("No saved replies match"),
        "image_failed": _("The image could not be loaded"),
        "just_now": _("just now"),
        "min_ago": _("%(n)s min ago"),
        "h_ago": _("%(n)s h ago"),
        "d_ago": _("%(n)s d ago"),
    }


class Renderer:
    """Pages and fragments (the stream sends fragments), all in the request's language."""

    def __init__(self, env: jinja2.Environment) -> None:
        self.env = env

    def page(self, template: str, http_status: int = 200, **ctx: Any) -> web.Response:
        return web.Response(text=self.env.get_template(template).render(**ctx), status=http_status,
                            content_type="text/html", charset="utf-8")

    def macro(self, template: str, name: str, *args: Any, **ctx: Any) -> str:
        module = self.env.get_template(template).make_module(ctx)
        return str(getattr(module, name)(*args))


def build_console(services: Services) -> web.Application:
    """The ``/admin`` sub-application."""
    from csbot.review.stream import stream_events

    settings = services.settings
    renderer = Renderer(make_env())
    render = renderer.page

    def error_page(status: int, message: str) -> web.Response:
        return render("error.html", http_status=status, status_code=status, message=message,
                      **lang_ctx_of_current())

    def lang_ctx_of_current() -> dict[str, Any]:
        return {"lang": i18n.current(), "here": "/admin/"}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        i18n.activate(i18n.pick(request.cookies.get(i18n.LANG_COOKIE), request.headers.get("Accept-Language")))
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                resp = exc  # redirects
            else:  # our reasons are catalog ids (N_), and aiohttp's are in the catalogs too
                resp = error_page(exc.status, i18n.gettext(exc.reason))
        except ReviewError as exc:
            resp = error_page(exc.status, exc.localized())
            if isinstance(exc, RateLimited):
                resp.headers["Retry-After"] = str(exc.retry_after)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("console: unexpected error on %s %s", request.method, request.path)
            resp = error_page(500, i18n.gettext(N_("internal error")))
        if not resp.prepared:
            resp.headers.setdefault("Content-Security-Policy", CSP)
            resp.headers.setdefault("X-Content-Type-Options", "nosniff")
            resp.headers.setdefault("Referrer-Policy", "same-origin")
            resp.headers.setdefault("X-Frame-Options", "DENY")
            if not request.path.startswith("/admin/static/"):
                resp.headers.setdefault("Cache-Control", "no-store")
                resp.headers.setdefault("Vary", "Cookie, Accept-Language")
        if isinstance(resp, web.HTTPException):
            raise resp
        return resp

    console = web.Application(middlewares=[middleware], client_max_size=MAX_IMAGE + 64 * 1024)
    saved_replies = SavedReplies(services.sessionmaker) if services.sessionmaker else None

    def saved() -> SavedReplies:
        nonlocal saved_replies
        if saved_replies is None:
            saved_replies = SavedReplies(services.sessionmaker)  # type: ignore[arg-type]
        return saved_replies

    def live() -> LiveState:
        return LiveState(services.review)  # type: ignore[arg-type]

    async def session_of(request: web.Request) -> ConsoleSession | None:
        return await services.agents.session(request.cookies.get(SESSION_COOKIE), address=request.remote)

    async def require(request: web.Request, *, page: bool = False) -> ConsoleSession:
        session = await session_of(request)
        if session is None:
            if page:
                raise web.HTTPSeeOther("/admin/login?" + urlencode({"next": request.path_qs}))
            if request.method == "POST" and "X-CSRF-Token" not in request.headers:
                # a form sent after the session ended (expired, signed out elsewhere, password reset):
                # sign in and come back to the page it came from, where console.js kept the draft
                raise web.HTTPSeeOther("/admin/login?" + urlencode({"next": came_from(request), "ended": "1"}))
            raise web.HTTPUnauthorized(reason=N_("sign in first"))
        return session

    def came_from(request: web.Request) -> str:
        """The console page a form was sent from (its same-origin Referer), else the list."""
        ref = urlsplit(request.headers.get("Referer", ""))
        path = ref.path + (f"?{ref.query}" if ref.query else "")
        if ref.netloc == request.host and path.startswith("/admin/") and not path.startswith("/admin//"):
            return path
        return "/admin/"

    async def require_post(request: web.Request) -> tuple[ConsoleSession, Any]:
        session = await require(request)
        form = await request.post()
        given = str(form.get("csrf") or request.headers.get("X-CSRF-Token") or "")
        if not given or not hmac.compare_digest(given.encode(), session.csrf.encode()):
            log.warning("console: refused %s %s: missing or wrong CSRF token", request.method, request.path)
            raise web.HTTPForbidden(reason=N_("missing or wrong CSRF token; reload the page and try again"))
        return session, form

    def secure(request: web.Request) -> bool:
        return request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"

    def lang_ctx(request: web.Request) -> dict[str, Any]:
        return {"lang": i18n.current(), "here": request.path_qs}

    async def base_ctx(request: web.Request, session: ConsoleSession) -> dict[str, Any]:
        return {"agent": session.actor.name, "role": session.actor.role, "csrf": session.csrf,
                "apps": list(settings.apps), "conv_statuses": STATUSES,
                "my_unread": await live().my_unread(session.actor), **lang_ctx(request)}

    def page_ctx(session: ConsoleSession) -> dict[str, Any]:
        """What base.html needs, for pages other modules add (the database view)."""
        return {"agent": session.actor.name, "role": session.actor.role, "csrf": session.csrf,
                "apps": list(settings.apps), "lang": i18n.current(), "here": "/admin/"}

    async def language(request: web.Request) -> web.Response:
        lang = request.match_info["lang"]
        if lang not in i18n.LANGUAGES:
            raise web.HTTPNotFound(reason=N_("no such language"))
        nxt = request.query.get("next", "/admin/")
        resp = web.HTTPSeeOther(nxt if nxt.startswith("/admin/") and not nxt.startswith("/admin//") else "/admin/")
        resp.set_cookie(i18n.LANG_COOKIE, lang, httponly=True, samesite="Lax", path="/admin",
                        secure=secure(request), max_age=365 * 86400)
        raise resp

    # ---- sign in / out

    async def login_form(request: web.Request, *, status: int = 200, message: str = "",
                         name: str = "") -> web.Response:
        nonce = secrets.token_urlsafe(24)
        nxt = request.query.get("next", "/admin/")
        no_account = await services.agents.count() == 0
        if no_account and not settings.admin_token:  # nobody can sign in: say how to make the first admin
            status = 403
        resp = render("login.html", http_status=status, csrf=nonce, message=message, name=name, **lang_ctx(request),
                      bootstrap=no_account and bool(settings.admin_token),
                      no_account=no_account and not settings.admin_token,
                      next=nxt if nxt.startswith("/admin/") else "/admin/")
        resp.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", path="/admin",
                        secure=secure(request), max_age=3600)
        return resp

    async def login_page(request: web.Request) -> web.Response:
        if await session_of(request) is not None:
            raise web.HTTPSeeOther("/admin/")
        ended = N_("Your session has ended. Sign in again: what you were typing is kept.")
        return await login_form(request, message=i18n.gettext(ended) if request.query.get("ended") else "")

    async def login(request: web.Request) -> web.Response:
        form = await request.post()
        given_csrf = str(form.get("csrf") or "")
        cookie_csrf = request.cookies.get(LOGIN_COOKIE, "")
        if not given_csrf or not cookie_csrf or not hmac.compare_digest(given_csrf.encode(), cookie_csrf.encode()):
            log.warning("console: refused sign-in from %s: missing or wrong CSRF token", request.remote)
            raise web.HTTPForbidden(reason=N_("missing or wrong CSRF token; reload the page and try again"))
        name = str(form.get("name") or "")[:64]
        password = str(form.get("password") or "")
        try:
            if await services.agents.count() == 0:
                session = await bootstrap(request, form, name, password)
            else:
                session = await services.agents.sign_in(name, password, address=request.remote)
        except RateLimited:
            raise
        except ReviewError as exc:
            log.warning("console: failed sign-in as %r from %s: %s", name, request.remote, exc)
            return await login_form(request, status=exc.status, message=exc.localized(), name=name)
        nxt = str(form.get("next") or "/admin/")
        resp = web.HTTPSeeOther(nxt if nxt.startswith("/admin/") else "/admin/")
        resp.set_cookie(SESSION_COOKIE, session.cookie or "", httponly=True, samesite="Strict", path="/admin",
                        secure=secure(request), max_age=SESSION_TTL)
        resp.del_cookie(LOGIN_COOKIE, path="/admin")
        log.info("console: %s signed in from %s", session.actor.name, request.remote)
        raise resp

    async def bootstrap(request: web.Request, form: Any, name: str, password: str) -> ConsoleSession:
        """No agent yet: the admin token makes the first admin (and nothing else)."""
        from csbot.review.agents import SignInRefused

        token = str(form.get("token") or "")
        if not settings.admin_token:  # no token, no bootstrap from the browser (and never an empty match)
            raise Forbidden(N_("No agent account exists yet. Create the first admin on the server with "
                               "csbot agents add NAME --role admin, then sign in here."))
        if not hmac.compare_digest(token.encode("utf-8"), settings.admin_token.encode("utf-8")):
            async with services.sessionmaker() as s, s.begin():
                from csbot.review.audit import record

                await record(s, "failed_sign_in", None, agent=name, address=request.remote,
                             detail="first admin: wrong admin token")
            await asyncio.sleep(0.5)  # slows guessing
            raise SignInRefused(N_("That is not the admin token."))
        return await services.agents.bootstrap(name, password, address=request.remote)

    async def logout(request: web.Request) -> web.Response:
        session, _form = await require_post(request)
        await services.agents.sign_out(session)
        resp = web.HTTPSeeOther("/admin/login")
        resp.del_cookie(SESSION_COOKIE, path="/admin")
        raise resp

    # ---- pages

    def list_filters(request: web.Request) -> dict[str, Any]:
        q = request.query
        return {"status": q.get("status") if q.get("status") in STATUSES else None,
                "search": (q.get("q") or "").strip()[:200],
                "app": q.get("app") if q.get("app") in settings.apps else None,
                "assigned": q.get("assigned") if q.get("assigned") in ASSIGNED_FILTERS else None,
                "cursor": q.get("cursor") or None}

    def make_list_qs(filters: dict[str, Any]) -> Callable[..., str]:
        def list_qs(**changes: Any) -> str:
            merged = {**{k: filters[k] for k in ("status", "assigned", "app")}, "q": filters["search"], **changes}
            if "cursor" not in changes:
                merged.pop("cursor", None)
            query = urlencode({k: v for k, v in merged.items() if v})
            return "?" + query if query else ""
        return list_qs

    async def console_page(request: web.Request, session: ConsoleSession,
                           thread: dict[str, Any] | None = None) -> web.Response:
        f = list_filters(request)
        page = await services.review.list_conversations(
            app=f["app"], status=f["status"], search=f["search"] or None, limit=50, cursor=f["cursor"],
            assigned=f["assigned"], viewer=session.actor)
        keys = [(c["app"], c["openid"]) for c in page.conversations]
        c = thread["conversation"] if thread else None
        if c is not None and (c["app"], c["openid"]) not in keys:
            keys.append((c["app"], c["openid"]))
        unread = await live().unread(session.actor.agent_id, keys)
        list_qs = make_list_qs(f)
        marks = await live().marks()
        items = thread["items"] if thread else []
        watch = [i["id"] for i in items if i["kind"] == "message" and i["status"] in statuses_json()["groups"]["unsettled"]]
        page_data = {
            "after": marks[0], "after_event": marks[1], "after_audit": marks[2],
            "app": c["app"] if c else None, "openid": c["openid"] if c else None,
            "watch": watch[-200:], "csrf": session.csrf, "me": session.actor.name,
            "filters": {k: f[k] for k in ("status", "assigned", "app", "search")},
            "list_qs": list_qs(), "strings": js_strings(),
            "saved": [{"shortcut": r["shortcut"], "text": r["text"]} for r in await saved().list()] if c else [],
        }
        agent_names = await services.agents.names() if session.actor.is_admin and c else []
        return render("console.html", **(await base_ctx(request, session)), conversations=page.conversations,
                      next_cursor=page.next_cursor, status=f["status"], search=f["search"], assigned=f["assigned"],
                      unread=unread, list_qs=list_qs, thread_qs=list_qs(), c=c, items=items,
                      truncated=thread["truncated"] if thread else False, agent_names=agent_names,
                      send_key=secrets.token_urlsafe(18),
                      page_data=page_data)

    async def list_page(request: web.Request) -> web.Response:
        session = await require(request, page=True)
        return await console_page(request, session)

    async def thread_page(request: web.Request) -> web.Response:
        session = await require(request, page=True)
        app, openid = request.match_info["app"], request.match_info["openid"]
        thread = await services.review.thread(app, openid, limit=THREAD_LIMIT, viewer=session.actor)
        return await console_page(request, session, thread)

    def back_to_thread(request: web.Request, app: str, openid: str, *, sent: bool = False) -> web.HTTPSeeOther:
        """Back to the thread, keeping the list's filters (they ride along in the query string);
        ``sent``: the reply went into the outbox, so console.js drops its kept draft (``#sent``)."""
        qs = request.query_string
        return web.HTTPSeeOther(f"/admin/c/{quote(app, safe='')}/{quote(openid, safe='')}" + (f"?{qs}" if qs else "")
                                + ("#sent" if sent else ""))

    def key_of(request: web.Request) -> tuple[str, str]:
        return request.match_info["app"], request.match_info["openid"]

    async def reply(request: web.Request) -> web.Response:
        session, form = await require_post(request)
        app, openid = key_of(request)
        await services.review.reply(app, openid, str(form.get("text") or ""), agent=session.actor.name,
                                    by=session.actor, key=str(form.get("send_key") or "")[:200] or None)
        raise back_to_thread(request, app, openid, sent=True)

    async def send_image(request: web.Request) -> web.Response:
        """An image from the agent's computer: kept in the media store, sent through the outbox."""
        from csbot.messages import Image

        session, form = await require_post(request)
        app, openid = key_of(request)
        field = form.get("image")
        data = field.file.read(MAX_IMAGE + 1) if isinstance(field, web.FileField) else b""
        if not data:
            raise Invalid(N_("choose an image to send"))
        if len(data) > MAX_IMAGE:
            raise Invalid(N_("the image is larger than %(mb)s MB"), mb=MAX_IMAGE // (1024 * 1024))
        ext = next((e for magic, e in IMAGE_TYPES.items() if data.startswith(magic)), None)
        if ext is None:
            raise Invalid(N_("send a JPEG, PNG or GIF image"))
        await services.review.conversation(app, openid, viewer=session.actor)  # exists, and theirs to answer
        key = await services.media.put(f"outgoing/{uuid.uuid4().hex}{ext}", data)  # type: ignore[union-attr]
        await services.review.reply_with(app, openid, Image(path=str(services.media.path_of(key))),  # type: ignore[union-attr]
                                         agent=session.actor.name, by=session.actor, action="image")
        raise back_to_thread(request, app, openid)

    async def set_status(request: web.Request) -> web.Response:
        session, form = await require_post(request)
        app, openid = key_of(request)
        await services.review.set_status(app, openid, str(form.get("status") or ""), agent=session.actor.name,
                                         by=session.actor)
        raise back_to_thread(request, app, openid)

    async def assign(request: web.Request) -> web.Response:
        session, form = await require_post(request)
        app, openid = key_of(request)
        await services.review.assign(app, openid, str(form.get("agent") or "") or None, by=session.actor,
                                     known_agents=await services.agents.names())
        raise back_to_thread(request, app, openid)

    async def retry(request: web.Request) -> web.Response:
        """A failed, dead or quota_exceeded reply queued again (ops' Review.retry: order and quota kept)."""
        session, _form = await require_post(request)
        try:
            message_id = int(request.match_info["id"])
        except ValueError:
            raise web.HTTPNotFound() from None
        item = await services.review.retry(message_id, by=session.actor)  # type: ignore[union-attr]
        raise back_to_thread(request, item["app"], item["openid"])

    async def tags(request: web.Request) -> web.Response:
        session, form = await require_post(request)
        app, openid = key_of(request)
        add = [t for t in str(form.get("add") or "").split(",") if t.strip()]
        remove = [str(form["remove"])] if form.get("remove") else []
        await services.review.set_tags(app, openid, add=add, remove=remove, by=session.actor)
        raise back_to_thread(request, app, openid)

    async def notes(request: web.Request) -> web.Response:
        session, form = await require_post(request)
        app, openid = key_of(request)
        await services.review.add_note(app, openid, str(form.get("text") or ""), author=session.actor.name,
                                       by=session.actor)
        raise back_to_thread(request, app, openid)

    async def mark_read(request: web.Request) -> web.Response:
        session, form = await require_post(request)
        app, openid = key_of(request)
        try:
            last_id = int(str(form.get("last_id") or "0"))
        except ValueError:
            raise Invalid(N_("last_id must be an integer")) from None
        await live().mark_read(session.actor, app, openid, last_id)
        return web.json_response({"ok": True, "my_unread": await live().my_unread(session.actor)})

    async def details_fragment(request: web.Request) -> web.Response:
        session = await require(request)
        app, openid = key_of(request)
        c = await services.review.conversation(app, openid, viewer=session.actor)
        names = await services.agents.names() if session.actor.is_admin else []
        html = renderer.macro("_details.html", "details", c, session.actor.name, session.actor.role, names,
                              session.csrf)
        return web.Response(text=html, content_type="text/html", charset="utf-8")

    # ---- agents (admins manage them here or with `csbot agents`)

    async def require_admin(request: web.Request, *, post: bool = False) -> tuple[ConsoleSession, Any]:
        session, form = (await require_post(request)) if post else (await require(request, page=True), None)
        if not session.actor.is_admin:
            raise web.HTTPForbidden(reason=N_("only an admin may do this"))
        return session, form

    async def agents_page(request: web.Request) -> web.Response:
        session, _form = await require_admin(request)
        return render("agents.html", **(await base_ctx(request, session)), agents=await services.agents.list())

    async def agent_add(request: web.Request) -> web.Response:
        session, form = await require_admin(request, post=True)
        await services.agents.add(str(form.get("name") or ""), str(form.get("password") or ""),
                                  role=str(form.get("role") or "agent"), by=session.actor)
        raise web.HTTPSeeOther("/admin/agents")

    async def agent_change(request: web.Request) -> web.Response:
        session, form = await require_admin(request, post=True)
        name, what = request.match_info["name"], request.match_info["what"]
        if what in ("disable", "enable"):
            await services.agents.set_disabled(name, what == "disable", by=session.actor)
        elif what == "password":
            await services.agents.reset_password(name, str(form.get("password") or ""), by=session.actor)
        else:
            raise web.HTTPNotFound()
        raise web.HTTPSeeOther("/admin/agents")

    # ---- saved replies (admins manage them; everyone uses them)

    async def saved_page(request: web.Request) -> web.Response:
        session = await require(request, page=True)
        if not session.actor.is_admin:
            raise web.HTTPForbidden(reason=N_("only an admin manages saved replies"))
        return render("saved_replies.html", **(await base_ctx(request, session)), saved=await saved().list())

    async def saved_put(request: web.Request) -> web.Response:
        session, form = await require_post(request)
        await saved().put(str(form.get("shortcut") or ""), str(form.get("text") or ""), by=session.actor)
        raise web.HTTPSeeOther("/admin/saved-replies")

    async def saved_delete(request: web.Request) -> web.Response:
        session, _form = await require_post(request)
        try:
            reply_id = int(request.match_info["id"])
        except ValueError:
            raise web.HTTPNotFound() from None
        await saved().delete(reply_id, by=session.actor)
        raise web.HTTPSeeOther("/admin/saved-replies")

    async def sent_image(row: Any) -> web.Response:
        """An image an agent sent from the console (kept under the media store's ``outgoing/``)."""
        import json

        try:
            path = json.loads(row.raw).get("image", {}).get("path")
        except (ValueError, AttributeError):
            path = None
        root = services.media.path_of("outgoing")  # type: ignore[union-attr]
        if not path or not Path(path).resolve().is_relative_to(root):
            raise web.HTTPNotFound(reason=N_("no stored media for this message"))
        try:
            data = await asyncio.to_thread(Path(path).read_bytes)
        except OSError:
            raise web.HTTPNotFound(reason=N_("the stored media file is missing")) from None
        ctype = mimetypes.guess_type(path)[0] or "application/octet-stream"
        return web.Response(body=data, content_type=ctype if ctype.startswith("image/") else "application/octet-stream",
                            headers={"Cache-Control": "private, max-age=3600"})

    async def media(request: web.Request) -> web.Response:
        session = await require(request)
        try:
            message_id = int(request.match_info["id"])
        except ValueError:
            raise web.HTTPNotFound() from None
        row = await services.review.media(message_id)
        if row is not None:  # an agent sees the media of the conversations they may see
            await services.review.conversation(row.app, row.openid, viewer=session.actor)
        if row is not None and row.direction == "out":
            return await sent_image(row)
        if row is None or row.direction != "in" or not (row.file_id or row.media_path):
            raise web.HTTPNotFound(reason=N_("no stored media for this message"))
        if row.file_id:  # kept in cloud storage
            from csbot.cloud.storage import StorageError

            storage = services.storage
            try:
                stored, stream = await storage.open(*storage.resolve(row.file_id))
            except StorageError:
                raise web.HTTPNotFound(reason=N_("the stored media file is missing")) from None
            ctype = stored.content_type if stored.content_type.startswith("image/") else "application/octet-stream"
            response = web.StreamResponse(headers={"Content-Type": ctype, "X-Content-Type-Options": "nosniff",
                                                   "Cache-Control": "private, max-age=3600"})
            response.content_length = stored.size
            await response.prepare(request)
            async for chunk in stream:
                await response.write(chunk)
            await response.write_eof()
            return response
        try:
            data = await services.media.get(row.media_path)
        except (OSError, ValueError):
            raise web.HTTPNotFound(reason=N_("the stored media file is missing")) from None
        ctype = mimetypes.guess_type(row.media_path)[0] or "application/octet-stream"
        if not ctype.startswith("image/"):
            ctype = "application/octet-stream"
        return web.Response(body=data, content_type=ctype,
                            headers={"Cache-Control": "private, max-age=3600"})


    # ---- live updates

    async def events(request: web.Request) -> web.StreamResponse:
        session = await require(request)
        return await stream_events(request, services, session, renderer,
                                   lambda: session_of(request), live())

    async def to_list(request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/admin/")

    r = console.router
    r.add_get("", to_list)
    r.add_get("/", list_page)
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/lang/{lang}", language)
    r.add_get("/c/{app}/{openid}", thread_page)
    from csbot.cloud.database.console import add_database_pages  # csbot.cloud.database: /admin/db
    async def require_admin_page(request: web.Request, page: bool = True) -> ConsoleSession:
        # every app's documents, whoever owns them: admins only, as the agents pages
        return (await require_admin(request))[0]

    add_database_pages(console, services, require_admin_page, render, page_ctx)
    r.add_get("/c/{app}/{openid}/details", details_fragment)
    r.add_post("/c/{app}/{openid}/reply", reply)
    r.add_post("/c/{app}/{openid}/image", send_image)
    r.add_post("/c/{app}/{openid}/status", set_status)
    r.add_post("/c/{app}/{openid}/assign", assign)
    r.add_post("/messages/{id}/retry", retry)
    r.add_post("/c/{app}/{openid}/tags", tags)
    r.add_post("/c/{app}/{openid}/notes", notes)
    r.add_post("/c/{app}/{openid}/read", mark_read)
    r.add_get("/agents", agents_page)
    r.add_post("/agents", agent_add)
    r.add_post("/agents/{name}/{what}", agent_change)
    r.add_get("/saved-replies", saved_page)
    r.add_post("/saved-replies", saved_put)
    r.add_post("/saved-replies/{id}/delete", saved_delete)
    r.add_get("/media/{id}", media)
    r.add_get("/events", events)
    r.add_static("/static", HERE / "static", append_version=True)
    return console


__all__ = ["build_console", "linkify"]
