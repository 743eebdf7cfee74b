"""The console's live updates: one server-sent event stream per open page.

Every half second the stream looks for new messages, delivery changes of the open thread's
unsettled replies, and conversations touched by a status change or an audited action (another
agent, the CLI, the API, the human timeout). It sends, already rendered in the page's language:

- ``message`` / ``update``: a thread item of the open conversation (``id``, ``html``);
- ``conversation``: a touched conversation: its list row (``row``; null when the agent may no
  longer see it), whether it matches the list's filters, its details pane when it is the open
  one, and ``notify`` (``new``: a customer waits in an unassigned conversation; ``mine``: a
  customer wrote in the agent's conversation) for browser notifications;
- ``summary``: waiting conversations (the tab title) and the agent's unread messages;
- ``signed_out``: the session ended (disabled, password reset, signed out elsewhere).
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Awaitable, Callable

from aiohttp import web

from csbot.review import i18n
from csbot.review.i18n import N_
from csbot.review.agents import ConsoleSession
from csbot.review.live import LiveState
from csbot.review.service import ASSIGNED_FILTERS, STATUSES, message_item
from csbot.services import Services
from csbot.statuses import UNSETTLED

POLL_SECONDS = 0.5
SESSION_RECHECK = 3.0
SUMMARY_EVERY = 10.0
PING_EVERY = 15.0


def status_label(status: str) -> str:
    _ = i18n.gettext
    return {"bot": _("bot"), "human": _("agent"), "closed": _("closed")}.get(status, status)


def _int(value: str | None) -> int:
    try:
        return max(0, int(value or 0))
    except ValueError:
        raise web.HTTPBadRequest(reason=N_("after, after_event and after_audit must be integers")) from None


async def stream_events(request: web.Request, services: Services, session: ConsoleSession, renderer: Any,
                        recheck: Callable[[], Awaitable[ConsoleSession | None]], live: LiveState) -> web.StreamResponse:
    q = request.query
    review: Any = services.review
    actor = session.actor
    app, openid = q.get("app") or None, q.get("openid") or None
    open_key = (app, openid) if app and openid else None
    after, after_event, after_audit = _int(q.get("after")), _int(q.get("after_event")), _int(q.get("after_audit"))
    want_status = q.get("status") if q.get("status") in STATUSES else None
    want_assigned = q.get("assigned") if q.get("assigned") in ASSIGNED_FILTERS else None
    want_app = q.get("list_app") or None
    list_qs = q.get("list_qs") or ""
    if not list_qs.startswith("?"):
        list_qs = ""
    unsettled: dict[int, str] = {}
    for part in (q.get("watch") or "").split(",")[:200]:
        if part.strip().isdigit():
            unsettled[int(part)] = "?"  # shown unsettled on the page: send its state once
    ctx = {"csrf": session.csrf, "apps": list(services.settings.apps)}

    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                       "X-Accel-Buffering": "no"})
    await resp.prepare(request)

    async def send(event: str, data: dict[str, Any]) -> None:
        await resp.write(f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode())

    def visible(conv: dict[str, Any]) -> bool:
        return actor.is_admin or conv["assigned_agent"] in (None, actor.name)

    def matches(conv: dict[str, Any]) -> bool:
        if want_status and conv["status"] != want_status:
            return False
        if want_app and conv["app"] != want_app:
            return False
        if want_assigned == "mine":
            return conv["assigned_agent"] == actor.name
        if want_assigned == "unassigned":
            return conv["assigned_agent"] is None
        return True

    def item_html(item: dict[str, Any], conv: dict[str, Any] | None) -> str:
        return renderer.macro("_items.html", "item", item, conv, **ctx)

    open_conv: dict[str, Any] | None = None
    if open_key:
        try:
            open_conv = await review.conversation(*open_key, viewer=actor)
        except Exception:
            open_conv = None
    notified: set[tuple[str, str]] = set()
    summary: tuple[int, int] | None = None
    last_check = last_ping = time.monotonic()
    last_summary = 0.0
    try:
        await resp.write(b"retry: 2000\n\n")
        while not services.closing.is_set():
            transport = request.transport
            if transport is None or transport.is_closing():
                break
            now = time.monotonic()
            if now - last_check > SESSION_RECHECK:
                last_check = now
                if await recheck() is None:
                    await send("signed_out", {})
                    break
            touched: set[tuple[str, str]] = set()
            wrote: set[tuple[str, str]] = set()
            for m in await review.new_messages(after):
                after = max(after, m.id)
                key = (m.app, m.openid)
                touched.add(key)
                if m.direction == "in" and m.msg_type != "event":
                    wrote.add(key)
                if key == open_key and open_conv is not None:
                    await send("message", {"id": m.id, "html": item_html(message_item(m), open_conv),
                                           "inbound": m.direction == "in"})
                    if m.status in UNSETTLED:
                        unsettled[m.id] = m.status
            if open_key and unsettled:
                for m in await review.messages_by_id(list(unsettled)):
                    if m.status != unsettled[m.id]:
                        await send("update", {"id": m.id, "html": item_html(message_item(m), open_conv)})
                    if m.status in UNSETTLED:
                        unsettled[m.id] = m.status
                    else:
                        unsettled.pop(m.id, None)
            changed, after_event, after_audit = await live.changed(after_event, after_audit)
            touched |= changed
            if touched:
                convs = await review.conversations_for(list(touched))
                unread = await live.unread(actor.agent_id, [(c["app"], c["openid"]) for c in convs])
                for conv in convs:
                    key = (conv["app"], conv["openid"])
                    is_open = key == open_key
                    data: dict[str, Any] = {
                        "key": f"{conv['app']}/{conv['openid']}", "status": conv["status"],
                        "status_label": status_label(conv["status"]), "assigned_agent": conv["assigned_agent"],
                        "unanswered": conv["unanswered"], "matches": matches(conv), "open": is_open,
                        "openid": conv["openid"], "notify": None, "row": None}
                    if visible(conv):
                        data["row"] = renderer.macro("_row.html", "row", conv, unread.get(key, 0), is_open,
                                                     list_qs, **ctx)
                        if key in wrote and conv["assigned_agent"] == actor.name:
                            data["notify"] = "mine"
                        elif key in wrote and conv["assigned_agent"] is None and conv["unanswered"] \
                                and key not in notified:
                            data["notify"] = "new"
                        if conv["unanswered"]:
                            notified.add(key)
                        else:
                            notified.discard(key)
                    if is_open:
                        open_conv = conv
                        names = await services.agents.names() if actor.is_admin else []
                        data["details"] = renderer.macro("_details.html", "details", conv, actor.name, actor.role,
                                                         names, session.csrf)
                    await send("conversation", data)
            if touched or time.monotonic() - last_summary > SUMMARY_EVERY:
                last_summary = time.monotonic()
                current = (await live.waiting(actor), await live.my_unread(actor))
                if current != summary:
                    summary = current
                    await send("summary", {"waiting": current[0], "my_unread": current[1]})
            if time.monotonic() - last_ping > PING_EVERY:
                await resp.write(b": ping\n\n")
                last_ping = time.monotonic()
            try:
                await asyncio.wait_for(services.closing.wait(), POLL_SECONDS)
            except asyncio.TimeoutError:
                pass
    except (ConnectionResetError, ConnectionError):
        pass
    return resp


__all__ = ["stream_events"]
