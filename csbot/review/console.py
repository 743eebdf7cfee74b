"""The web console at ``/admin``: agents sign in, read conversations, step in, hand back.

Server-rendered with Jinja2 (autoescaped) and a little plain JavaScript (``static/console.js``,
no build step). Security:

- sign-in with an agent's name and password (:mod:`csbot.review.agents`: argon2id, rate-limited
  per name and per address); while no agent exists, the sign-in page creates the first admin
  from ``CSBOT_ADMIN_TOKEN`` (compared in constant time) and a name and password;
- a server-side session (random cookie, ``HttpOnly``, ``SameSite=Strict``, ``Secure`` over
  HTTPS; the store keeps its hash): disabling an agent or resetting their password ends it;
- a CSRF token (random, kept with the session) on every form and POST; the sign-in form itself
  uses a double-submit cookie;
- customer text is only ever rendered as text: Jinja2 autoescape on the server, ``textContent``
  in the live updates, and a Content-Security-Policy without inline scripts.

New messages reach open pages as server-sent events: each connected page polls the store for
messages newer than the last one it has, every half second.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import mimetypes
import secrets
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Awaitable, Callable
from urllib.parse import quote, urlencode

import jinja2
from aiohttp import web
from markupsafe import Markup

from csbot.review.agents import ConsoleSession, RateLimited, SESSION_TTL
from csbot.review.service import STATUSES, ReviewError, ago, iso, message_item, timestamp
from csbot.services import Services
from csbot.statuses import UNSETTLED, as_json as statuses_json

log = logging.getLogger("csbot.review.console")

HERE = Path(__file__).parent
SESSION_COOKIE = "csbot_session"
LOGIN_COOKIE = "csbot_login"
#: a live-update stream re-checks its session this often (a signed-out agent stops receiving)
SESSION_RECHECK = 3.0
POLL_SECONDS = 0.5
THREAD_LIMIT = 300
CSP = ("default-src 'self'; img-src 'self' data:; script-src 'self'; style-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")

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
    text = ago(ts) if mode == "ago" else utc.strftime("%Y-%m-%d %H:%M UTC")
    return Markup('<time datetime="{}" data-local="{}" title="{}">{}</time>').format(
        iso(ts), mode, utc.strftime("%Y-%m-%d %H:%M:%S UTC"), text)


def make_env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("csbot.review", "templates"),
                             autoescape=True, trim_blocks=True, lstrip_blocks=True, auto_reload=False)
    env.filters["when"] = time_tag
    env.filters["ago"] = lambda at: time_tag(at, mode="ago")
    env.filters["q"] = lambda s: quote(str(s), safe="")
    for name in env.list_templates():  # loaded once, at start-up: no file reads while serving
        env.get_template(name)
    return env


def is_http_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("https://", "http://"))


def build_console(services: Services) -> web.Application:
    """The ``/admin`` sub-application."""
    settings = services.settings
    env = make_env()
    env.globals["is_http_url"] = is_http_url
    env.globals["statuses"] = statuses_json()

    def render(template: str, http_status: int = 200, **ctx: Any) -> web.Response:
        return web.Response(text=env.get_template(template).render(**ctx), status=http_status,
                            content_type="text/html", charset="utf-8")

    def error_page(status: int, message: str) -> web.Response:
        return render("error.html", http_status=status, status_code=status, message=message)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                resp = exc  # redirects
            else:
                resp = error_page(exc.status, exc.reason)
        except ReviewError as exc:
            resp = error_page(exc.status, str(exc))
            if isinstance(exc, RateLimited):
                resp.headers["Retry-After"] = str(exc.retry_after)
        except (asyncio.CancelledError, ConnectionResetError):
            raise
        except Exception:
            log.exception("console: unexpected error on %s %s", request.method, request.path)
            resp = error_page(500, "internal error")
        if not resp.prepared:
            resp.headers.setdefault("Content-Security-Policy", CSP)
            resp.headers.setdefault("X-Content-Type-Options", "nosniff")
            resp.headers.setdefault("Referrer-Policy", "same-origin")
            resp.headers.setdefault("X-Frame-Options", "DENY")
            if not request.path.startswith("/admin/static/"):
                resp.headers.setdefault("Cache-Control", "no-store")
        if isinstance(resp, web.HTTPException):
            raise resp
        return resp

    console = web.Application(middlewares=[middleware])

    async def session_of(request: web.Request) -> ConsoleSession | None:
        return await services.agents.session(request.cookies.get(SESSION_COOKIE), address=request.remote)

    async def require(request: web.Request, *, page: bool = False) -> ConsoleSession:
        session = await session_of(request)
        if session is None:
            if page:
                raise web.HTTPSeeOther("/admin/login?" + urlencode({"next": request.path_qs}))
            raise web.HTTPUnauthorized(reason="sign in first")
        return session

    async def require_post(request: web.Request) -> tuple[ConsoleSession, Any]:
        session = await require(request)
        form = await request.post()
        given = str(form.get("csrf") or request.headers.get("X-CSRF-Token") or "")
        if not given or not hmac.compare_digest(given.encode(), session.csrf.encode()):
            log.warning("console: refused %s %s: missing or wrong CSRF token", request.method, request.path)
            raise web.HTTPForbidden(reason="missing or wrong CSRF token; reload the page and try again")
        return session, form

    def secure(request: web.Request) -> bool:
        return request.secure or request.headers.get("X-Forwarded-Proto", "") == "https"

    def base_ctx(session: ConsoleSession) -> dict[str, Any]:
        return {"agent": session.actor.name, "role": session.actor.role, "csrf": session.csrf,
                "apps": list(settings.apps), "statuses": STATUSES}

    # ---- sign in / out

    async def login_form(request: web.Request, *, status: int = 200, message: str = "",
                         name: str = "") -> web.Response:
        nonce = secrets.token_urlsafe(24)
        nxt = request.query.get("next", "/admin/")
        resp = render("login.html", http_status=status, csrf=nonce, message=message, name=name,
                      bootstrap=await services.agents.count() == 0,
                      next=nxt if nxt.startswith("/admin/") else "/admin/")
        resp.set_cookie(LOGIN_COOKIE, nonce, httponly=True, samesite="Strict", path="/admin",
                        secure=secure(request), max_age=3600)
        return resp

    async def login_page(request: web.Request) -> web.Response:
        if await session_of(request) is not None:
            raise web.HTTPSeeOther("/admin/")
        return await login_form(request)

    async def login(request: web.Request) -> web.Response:
        form = await request.post()
        given_csrf = str(form.get("csrf") or "")
        cookie_csrf = request.cookies.get(LOGIN_COOKIE, "")
        if not given_csrf or not cookie_csrf or not hmac.compare_digest(given_csrf.encode(), cookie_csrf.encode()):
            log.warning("console: refused sign-in from %s: missing or wrong CSRF token", request.remote)
            raise web.HTTPForbidden(reason="missing or wrong CSRF token; reload the page and try again")
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
            return await login_form(request, status=exc.status, message=str(exc), name=name)
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
        if not hmac.compare_digest(token.encode("utf-8"), settings.admin_token.encode("utf-8")):
            async with services.sessionmaker() as s, s.begin():
                from csbot.review.audit import record

                await record(s, "failed_sign_in", None, agent=name, address=request.remote,
                             detail="first admin: wrong admin token")
            await asyncio.sleep(0.5)  # slows guessing
            raise SignInRefused("That is not the admin token.")
        return await services.agents.bootstrap(name, password, address=request.remote)

    async def logout(request: web.Request) -> web.Response:
        session, _form = await require_post(request)
        await services.agents.sign_out(session)
        resp = web.HTTPSeeOther("/admin/login")
        resp.del_cookie(SESSION_COOKIE, path="/admin")
        raise resp

    # ---- pages

    async def list_page(request: web.Request) -> web.Response:
        session = await require(request, page=True)
        q = request.query
        status = q.get("status") if q.get("status") in STATUSES else None
        search = (q.get("q") or "").strip()[:200]
        app = q.get("app") if q.get("app") in settings.apps else None
        page = await services.review.list_conversations(app=app, status=status, search=search or None, limit=50,
                                                   cursor=q.get("cursor") or None, viewer=session.actor)
        after = await services.review.max_message_id()
        return render("list.html", **base_ctx(session), conversations=page.conversations,
                      next_cursor=page.next_cursor, status=status, search=search, app=app, after=after,
                      filtered=bool(search or app or q.get("cursor")), now=time.time())

    async def thread_page(request: web.Request) -> web.Response:
        session = await require(request, page=True)
        app, openid = request.match_info["app"], request.match_info["openid"]
        thread = await services.review.thread(app, openid, limit=THREAD_LIMIT, viewer=session.actor)
        last_id = max((i["id"] for i in thread["items"] if i["kind"] == "message"), default=0)
        return render("thread.html", **base_ctx(session), c=thread["conversation"], items=thread["items"],
                      truncated=thread["truncated"], after=last_id, now=time.time())

    def back_to_thread(app: str, openid: str) -> web.HTTPSeeOther:
        return web.HTTPSeeOther(f"/admin/c/{quote(app, safe='')}/{quote(openid, safe='')}")

    async def reply(request: web.Request) -> web.Response:
        session, form = await require_post(request)
        app, openid = request.match_info["app"], request.match_info["openid"]
        await services.review.reply(app, openid, str(form.get("text") or ""), agent=session.actor.name,
                               by=session.actor)
        raise back_to_thread(app, openid)

    async def set_status(request: web.Request) -> web.Response:
        session, form = await require_post(request)
        app, openid = request.match_info["app"], request.match_info["openid"]
        await services.review.set_status(app, openid, str(form.get("status") or ""), agent=session.actor.name,
                                    by=session.actor)
        raise back_to_thread(app, openid)

    async def tags(request: web.Request) -> web.Response:
        session, form = await require_post(request)
        app, openid = request.match_info["app"], request.match_info["openid"]
        add = [t for t in str(form.get("add") or "").split(",") if t.strip()]
        remove = [str(form["remove"])] if form.get("remove") else []
        await services.review.set_tags(app, openid, add=add, remove=remove, by=session.actor)
        raise back_to_thread(app, openid)

    async def notes(request: web.Request) -> web.Response:
        session, form = await require_post(request)
        app, openid = request.match_info["app"], request.match_info["openid"]
        await services.review.add_note(app, openid, str(form.get("text") or ""), author=session.actor.name,
                                  by=session.actor)
        raise back_to_thread(app, openid)

    async def retry(request: web.Request) -> web.Response:
        session, _form = await require_post(request)
        try:
            message_id = int(request.match_info["id"])
        except ValueError:
            raise web.HTTPNotFound() from None
        item = await services.review.retry(message_id, by=session.actor)
        raise back_to_thread(item["app"], item["openid"])

    async def media(request: web.Request) -> web.Response:
        await require(request)
        try:
            message_id = int(request.match_info["id"])
        except ValueError:
            raise web.HTTPNotFound() from None
        row = await services.review.media(message_id)
        if row is None or row.direction != "in" or not (row.file_id or row.media_path):
            raise web.HTTPNotFound(reason="no stored media for this message")
        if row.file_id:  # kept in cloud storage
            from csbot.cloud.storage import StorageError

            storage = services.storage
            try:
                stored, stream = await storage.open(*storage.resolve(row.file_id))
            except StorageError:
                raise web.HTTPNotFound(reason="the stored media file is missing") from None
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
            raise web.HTTPNotFound(reason="the stored media file is missing") from None
        ctype = mimetypes.guess_type(row.media_path)[0] or "application/octet-stream"
        if not ctype.startswith("image/"):
            ctype = "application/octet-stream"
        return web.Response(body=data, content_type=ctype,
                            headers={"Cache-Control": "private, max-age=3600"})

    # ---- live updates

    async def events(request: web.Request) -> web.StreamResponse:
        session = await require(request)
        app = request.query.get("app") or None
        openid = request.query.get("openid") or None
        try:
            after = int(request.query.get("after") or 0)
        except ValueError:
            raise web.HTTPBadRequest(reason="after must be an integer") from None
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "X-Accel-Buffering": "no"})
        await resp.prepare(request)

        async def send(event: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode())

        unsettled: dict[int, str] = {}
        for part in (request.query.get("watch") or "").split(",")[:200]:
            if part.strip().isdigit():
                unsettled[int(part)] = "?"  # shown unsettled on the page: send its state once
        waiting: set[tuple[str, str]] = set()
        conv_state: tuple[Any, ...] | None = None
        last_ping = last_check = time.monotonic()
        try:
            await resp.write(b"retry: 2000\n\n")
            while not services.closing.is_set():
                transport = request.transport
                if transport is None or transport.is_closing():
                    break
                if time.monotonic() - last_check > SESSION_RECHECK:
                    last_check = time.monotonic()
                    if await services.agents.session(request.cookies.get(SESSION_COOKIE), address=request.remote) is None:
                        await send("signed_out", {})
                        break
                if openid and app:
                    new = await services.review.new_messages(after, app=app, openid=openid)
                    for m in new:
                        after = max(after, m.id)
                        await send("message", message_item(m))
                        if m.status in UNSETTLED:
                            unsettled[m.id] = m.status
                    for m in await services.review.messages_by_id(list(unsettled)):
                        if m.status != unsettled[m.id] or m.media_path or m.file_id:
                            await send("update", message_item(m))
                        if m.status in UNSETTLED:
                            unsettled[m.id] = m.status
                        else:
                            unsettled.pop(m.id, None)
                    try:
                        conv = await services.review.conversation(app, openid)
                    except ReviewError:
                        conv = None
                    if conv is not None:
                        state = (conv["status"], conv["assigned_agent"], tuple(conv["tags"]))
                        if conv_state is not None and state != conv_state:
                            await send("conversation", conv)
                        conv_state = state
                else:
                    new = await services.review.new_messages(after)
                    for m in new:
                        after = max(after, m.id)
                        waiting.add((m.app, m.openid))
                    if waiting:
                        for conv in await services.review.conversations_for(list(waiting)):
                            waiting.discard((conv["app"], conv["openid"]))
                            if session.actor.is_admin or conv["assigned_agent"] in (None, session.actor.name):
                                await send("conversation", conv)
                if time.monotonic() - last_ping > 15:
                    await resp.write(b": ping\n\n")
                    last_ping = time.monotonic()
                try:
                    await asyncio.wait_for(services.closing.wait(), POLL_SECONDS)
                except asyncio.TimeoutError:
                    pass
        except (ConnectionResetError, ConnectionError):
            pass
        return resp

    async def to_list(request: web.Request) -> web.Response:
        raise web.HTTPSeeOther("/admin/")

    console.router.add_get("", to_list)
    console.router.add_get("/", list_page)
    console.router.add_get("/login", login_page)
    console.router.add_post("/login", login)
    console.router.add_post("/logout", logout)
    console.router.add_get("/c/{app}/{openid}", thread_page)
    from csbot.cloud.database.console import add_database_pages  # csbot.cloud.database: /admin/db
    add_database_pages(console, services, require, render, base_ctx)
    console.router.add_post("/c/{app}/{openid}/reply", reply)
    console.router.add_post("/c/{app}/{openid}/status", set_status)
    console.router.add_post("/c/{app}/{openid}/tags", tags)
    console.router.add_post("/c/{app}/{openid}/notes", notes)
    console.router.add_post("/messages/{id}/retry", retry)
    console.router.add_get("/media/{id}", media)
    console.router.add_get("/events", events)
    console.router.add_static("/static", HERE / "static", append_version=True)
    return console


__all__ = ["build_console", "Sessions"]
