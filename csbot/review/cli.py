"""``csbot conversations list|show|export``, ``csbot reply``, ``csbot takeover|handback|close``,
``csbot agents ...`` and ``csbot audit``.

They work on the store directly (``CSBOT_DATABASE_URL``), so they need no running service; a
reply is queued in the store's outbox and the running service's sender delivers it (its outbox
looks for due rows every second).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import getpass
import io
import sys
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, AsyncIterator, TextIO

from csbot.config import Settings, load_settings
from csbot.escaping import csv_cell, json_text, terminal_safe
from csbot.review.audit import ACTIONS, Actor
from csbot.review.i18n import N_
from csbot.review.service import EXPORT_FIELDS, STATUSES, Review, ReviewError, ago, iso, parse_time, timestamp
from csbot.statuses import INBOUND_UNSETTLED, ConversationStatus, InboundStatus, OutboundStatus


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the review subcommands to ``csbot``'s subparsers."""
    conv = sub.add_parser("conversations", parents=[common], help="list, show and export conversations")
    csub = conv.add_subparsers(dest="conversations_command", required=True)

    p = csub.add_parser("list", parents=[common], help="conversations, newest activity first")
    p.add_argument("--app")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--since", help="activity since: 2h, 3d, 2026-11-20, 2026-11-20T10:00")
    p.add_argument("--search", metavar="TEXT", help="only conversations with a message containing TEXT")
    p.add_argument("--undelivered", action="store_true",
                   help="only conversations with a reply that never arrived (failed, dead, quota_exceeded)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_run(cmd_list))

    p = csub.add_parser("show", parents=[common], help="the whole thread of one customer, in order")
    p.add_argument("openid")
    p.add_argument("--app", help="needed only when the openid has conversations in several apps")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_run(cmd_show))

    p = csub.add_parser("export", parents=[common], help="export messages as JSON lines or CSV")
    p.add_argument("--since", help="2h, 3d, 2026-11-20, 2026-11-20T10:00")
    p.add_argument("--until", help="same forms as --since")
    p.add_argument("--app")
    p.add_argument("--format", choices=("jsonl", "csv"), default="jsonl")
    p.add_argument("--output", "-o", metavar="FILE", help="write here instead of standard output")
    p.set_defaults(func=_run(cmd_export))

    p = sub.add_parser("reply", parents=[common],
                       help="an agent's reply to a customer, through the outbox (takes the conversation over)")
    p.add_argument("openid")
    p.add_argument("text")
    p.add_argument("--app")
    p.add_argument("--agent", help="your name as the customer's agent (default: your login name)")
    p.set_defaults(func=_run(cmd_reply))

    p = sub.add_parser("retry", parents=[common],
                       help="queue a failed, dead or quota_exceeded reply again (the running csbot sends it)")
    p.add_argument("message_id", type=int, metavar="MESSAGE_ID", help="the reply's id (conversations show)")
    p.add_argument("--agent", help="your name (default: your login name)")
    p.set_defaults(func=_run(cmd_retry))

    for name, status, what in (
            ("takeover", ConversationStatus.HUMAN, "a person takes the conversation over from the bot"),
            ("handback", ConversationStatus.BOT, "hand the conversation back to the bot"),
            ("close", ConversationStatus.CLOSED, "close the conversation")):
        p = sub.add_parser(name, parents=[common], help=what)
        p.add_argument("openid")
        p.add_argument("--app")
        p.add_argument("--agent", help="your name (default: your login name)")
        p.set_defaults(func=_run(cmd_status), status=status)

    agents = sub.add_parser("agents", parents=[common], help="console agent accounts and their API tokens")
    asub = agents.add_subparsers(dest="agents_command", required=True)
    p = asub.add_parser("add", parents=[common], help="a new agent (asks for the password)")
    p.add_argument("name")
    p.add_argument("--role", choices=("admin", "agent"), default="agent",
                   help="agent: answers and takes over; admin: also sees every conversation and manages "
                        "agents and saved replies (default: agent)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.set_defaults(func=_run(cmd_agents_add))
    p = asub.add_parser("list", parents=[common], help="every agent, with role and state")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_run(cmd_agents_list))
    for name, what in (("disable", "sign the agent out everywhere, revoke their API tokens, refuse sign-in"),
                       ("enable", "allow a disabled agent to sign in again")):
        p = asub.add_parser(name, parents=[common], help=what)
        p.add_argument("name")
        p.set_defaults(func=_run(cmd_agents_disable), disable=name == "disable")
    p = asub.add_parser("reset-password", parents=[common], help="a new password (signs the agent out everywhere)")
    p.add_argument("name")
    p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    p.set_defaults(func=_run(cmd_agents_password))
    p = asub.add_parser("token", parents=[common],
                        help="print a new API token acting as this agent (Authorization: Bearer on /api/)")
    p.add_argument("name")
    p.set_defaults(func=_run(cmd_agents_token))

    p = sub.add_parser("audit", parents=[common], help="who did what, when, from where",
                       description="Actions: " + "; ".join(f"{k}: {v}" for k, v in ACTIONS.items()))
    p.add_argument("--since", default="1d", help="2h, 1d, 2026-11-20, 2026-11-20T10:00 (default: 1d)")
    p.add_argument("--until", help="same forms as --since")
    p.add_argument("--action", choices=sorted(ACTIONS))
    p.add_argument("--agent")
    p.add_argument("--app")
    p.add_argument("--openid")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=_run(cmd_audit))


def _run(coro_func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        settings = load_settings(config_file=getattr(args, "config", None))
        try:
            return asyncio.run(coro_func(args, settings))
        except ReviewError as exc:
            print(f"csbot: {exc}", file=sys.stderr)
            return 1
    return run


@asynccontextmanager
async def open_review(settings: Settings, *, with_outbox: bool = False) -> AsyncIterator[Review]:
    from csbot.outbox import Outbox
    from csbot.store import make_engine, make_sessionmaker
    from csbot.store.migrate import ensure_schema

    engine = make_engine(settings.database_url)
    try:
        await ensure_schema(engine, settings.database_url, auto_upgrade=settings.is_sqlite)
        sm = make_sessionmaker(engine)
        outbox = None
        if with_outbox:  # only to queue and retry: the running service's sender delivers (it polls)
            outbox = Outbox(settings, sm, None, lambda _app: None)  # type: ignore[arg-type]
        yield Review(settings, sm, outbox)
    finally:
        await engine.dispose()


def default_agent() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return "operator"


async def _pick_app(review: Review, openid: str, app: str | None) -> str:
    if app:
        return app
    apps = await review.find_apps(openid)
    if not apps:
        raise ReviewError(N_("no conversation with %(openid)s"), openid=openid)
    if len(apps) > 1:
        raise ReviewError(N_("%(openid)s has conversations in several apps (%(apps)s): give --app"),
                          openid=openid, apps=", ".join(apps))
    return apps[0]


def _line(obj: dict[str, Any], out: TextIO | None = None) -> None:
    """One JSON line, inert on a terminal (csbot.escaping.json_text)."""
    (out or sys.stdout).write(json_text(obj) + "\n")


def _when(at: str | float | None) -> str:
    """A time of the review service, in this terminal's local zone."""
    ts = timestamp(at)
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _short(text: str | None, width: int) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- list


async def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    async with open_review(settings) as review:
        page = await review.list_conversations(app=args.app, status=args.status, since=parse_time(args.since),
                                               search=args.search, limit=args.limit, undelivered=args.undelivered)
    if args.json:
        for c in page.conversations:
            _line(c)
        return 0
    if not page.conversations:
        print("no conversations")
        return 0
    print(f"{'STATUS':<7} {'APP':<10} {'OPENID':<30} {'AGENT':<12} {'ACTIVITY':<12} LAST MESSAGE")
    for c in page.conversations:
        last = c["last_message"] or {}
        badge = "✗" if c["undelivered"] else ("!" if c["unanswered"] else " ")
        arrow = "<" if last.get("direction") == "in" else ">"
        print_safe(f"{c['status']:<7} {_short(c['app'], 10):<10} {_short(c['openid'], 30):<30} "
              f"{_short(c['assigned_agent'] or '-', 12):<12} {ago(c['last_message_at']):<12} "
              f"{badge}{arrow} {_short(last.get('summary'), 60)}")
    if page.next_cursor:
        print(f"(more: raise --limit above {args.limit})")
    return 0


# --------------------------------------------------------------------------- show


def print_safe(line: str) -> None:
    """Print a line built from stored text: its control characters are shown, never obeyed."""
    print(terminal_safe(line))


def describe_item(item: dict[str, Any]) -> str:
    """One thread item as text for a terminal: one line, and indented lines for what followed.

    Every line is escaped (``csbot.escaping``): a customer's newline cannot forge a line.
    """
    return "\n".join(terminal_safe(line) for line in _item_lines(item))


def _item_lines(item: dict[str, Any]) -> list[str]:
    when = _when(item["at"])
    if item["kind"] == "note":
        return [f"{when}  # note by {item['author']}: {item['text']}"]
    if item["kind"] == "event":
        who = f" by {item['actor']}" if item.get("actor") else ""
        detail = f" ({item['detail']})" if item.get("detail") else ""
        return [f"{when}  * {item['event']}{who}{detail}"]
    if item["kind"] == "audit":
        detail = f" ({item['detail']})" if item.get("detail") else ""
        return [f"{when}  * {item['action']} by {item.get('agent') or '?'}{detail}"]
    if item["direction"] == "in":
        kind = item["type"] if item["type"] != "event" else f"event {item.get('event') or ''}".strip()
        lines = [f"{when}  < customer [{kind}] {describe_inbound(item)}".rstrip()]
        if item.get("transferred"):
            lines.append(" " * 21 + "~ transferred to WeChat's customer-service tool")
        elif item.get("passive_reply"):
            p = item["passive_reply"]
            lines.append(" " * 21 + f"> passive reply [{p.get('MsgType')}] {_short(str(p.get('Content', '')), 200)}")
        if item.get("status") == InboundStatus.FAILED and item.get("error"):
            lines.append(" " * 21 + f"! handler {item.get('handler') or '?'} failed: {item['error']}")
        elif item.get("status") in INBOUND_UNSETTLED:
            lines[0] += f"   ({item['status']})"
        return lines
    who = item.get("author") or "bot"
    who = who if who.startswith("agent:") else f"bot:{who}"
    lines = [f"{when}  > {who} [{item['type']}] {_short(item.get('text'), 200)}   [{delivery(item)}]"]
    if item.get("retryable"):
        lines.append(f"{' ' * 21}! not delivered: `csbot retry {item['id']}` sends it again")
    return lines


def describe_inbound(item: dict[str, Any]) -> str:
    c = item.get("content") or {}
    t = item["type"]
    if t == "text":
        return str(c.get("Content", item.get("text") or ""))
    if t == "image":
        stored = (f"kept as {item['file_id']}" if item.get("file_id")
                  else "kept in the media store" if item.get("media_stored") else "not stored")
        return f"image MediaId={c.get('MediaId', '?')} ({stored})"
    if t == "event":  # the [kind] says which event already: what else it carried (SessionFrom, EventKey)
        text, said = str(item.get("text") or ""), f"[event] {item.get('event') or ''}"
        return text[len(said):].strip() if text.startswith(said) else text
    if t == "miniprogrampage":
        return f"mini program card {c.get('Title', '')!r} → {c.get('PagePath', '')} (appid {c.get('AppId', '')})"
    return item.get("text") or f"[{t}]"


def delivery(item: dict[str, Any]) -> str:
    status = item.get("status") or "?"
    if status in (OutboundStatus.FAILED, OutboundStatus.DEAD):
        code = f" errcode {item['errcode']}" if item.get("errcode") not in (None, 0) else ""
        msg = f": {item['errmsg']}" if item.get("errmsg") else ""
        extra = f" ({item['error']})" if item.get("error") else ""
        return f"{status}{code}{msg}{extra}"
    if status in (OutboundStatus.QUOTA_EXCEEDED, OutboundStatus.IN_DOUBT, OutboundStatus.SENT) \
            and item.get("error"):
        # a sent reply with a note was resent after a crash (it may have arrived twice)
        return f"{status}: {item['error']}"
    if status == OutboundStatus.QUEUED and item.get("attempts"):
        return f"queued, retrying (attempt {item['attempts']}, last errcode {item.get('errcode')})"
    return status


async def cmd_show(args: argparse.Namespace, settings: Settings) -> int:
    async with open_review(settings) as review:
        app = await _pick_app(review, args.openid, args.app)
        thread = await review.thread(app, args.openid)
    conv = thread["conversation"]
    if args.json:
        _line(conv)
        for item in thread["items"]:
            _line(item)
        return 0
    agent = f", agent {conv['assigned_agent']}" if conv["assigned_agent"] else ""
    tags = f", tags: {', '.join(conv['tags'])}" if conv["tags"] else ""
    print_safe(f"{conv['openid']} in app {conv['app']}: {conv['status']}{agent}{tags}")
    if conv["transferred_at"]:
        print(f"last handed to WeChat's customer-service tool at {_when(conv['transferred_at'])}")
    for item in thread["items"]:
        print(describe_item(item))
    return 0


# --------------------------------------------------------------------------- export


class Progress:
    """A progress bar on standard error, drawn only when it is a terminal."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream
        self.enabled = stream.isatty()

    def advance(self, n: int) -> None:
        self.done += n
        if self.enabled:
            width = 30
            filled = int(width * min(self.done, self.total) / self.total)
            self.stream.write(f"\rexporting [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total}")
            self.stream.flush()

    def finish(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


#: a CSV export starts with a UTF-8 byte-order mark: without it Excel and WPS take the file for
#: the local code page and show Chinese as mojibake
CSV_BOM = "\ufeff"


def format_batch(rows: list[dict[str, Any]], fmt: str, *, header: bool) -> str:
    if fmt == "jsonl":
        return "".join(json_text(r) + "\n" for r in rows)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EXPORT_FIELDS, extrasaction="ignore")
    if header:
        writer.writeheader()
    # no cell a spreadsheet would run as a formula (OWASP CSV injection)
    writer.writerows({k: csv_cell(v) for k, v in row.items()} for row in rows)
    return buf.getvalue()


async def cmd_export(args: argparse.Namespace, settings: Settings) -> int:
    since, until = parse_time(args.since), parse_time(args.until)
    async with open_review(settings) as review:
        total = await review.count(since=since, until=until, app=args.app)
        progress = Progress(total)
        out: TextIO = (await asyncio.to_thread(open, args.output, "w", encoding="utf-8", newline="")
                       if args.output else sys.stdout)
        try:
            if args.format == "csv":
                await asyncio.to_thread(out.write, CSV_BOM)  # Excel and WPS then read the Chinese right
            if args.format == "csv" and total == 0:
                await asyncio.to_thread(out.write, format_batch([], "csv", header=True))
            first = True
            async for rows in review.export(since=since, until=until, app=args.app):
                await asyncio.to_thread(out.write, format_batch(rows, args.format, header=first))
                first = False
                progress.advance(len(rows))
        finally:
            if args.output:
                await asyncio.to_thread(out.close)
            else:
                out.flush()
        progress.finish()
    if args.output:
        print(f"exported {progress.done} message(s) to {args.output}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------- acting


def cli_actor(agent: str) -> Actor:
    """The command line acts with an admin's rights (it has the database); audited as ``cli``."""
    return Actor(name=agent, role="admin", address="cli")


async def cmd_reply(args: argparse.Namespace, settings: Settings) -> int:
    agent = args.agent or default_agent()
    async with open_review(settings, with_outbox=True) as review:
        app = await _pick_app(review, args.openid, args.app)
        message_id = await review.reply(app, args.openid, args.text, agent=agent, by=cli_actor(agent))
    print(f"reply {message_id} queued for {args.openid} (agent {agent}); the running csbot sends it "
          f"and the conversation is now yours (`csbot handback {args.openid}` to return it to the bot)")
    return 0


async def cmd_retry(args: argparse.Namespace, settings: Settings) -> int:
    agent = args.agent or default_agent()
    async with open_review(settings, with_outbox=True) as review:
        item = await review.retry(args.message_id, by=cli_actor(agent))
    print(f"reply {item['id']} to {item['openid']} queued again; the running csbot sends it "
          f"(in order, within WeChat's reply quota)")
    return 0


async def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    agent = args.agent or default_agent()
    async with open_review(settings) as review:
        app = await _pick_app(review, args.openid, args.app)
        conv = await review.set_status(app, args.openid, args.status, agent=agent, by=cli_actor(agent))
    who = f" (agent {conv['assigned_agent']})" if conv["assigned_agent"] else ""
    print(f"{args.openid} in app {app}: {conv['status']}{who}")
    return 0


# --------------------------------------------------------------------------- agents and audit


def read_password(args: argparse.Namespace, name: str) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    if not sys.stdin.isatty():  # getpass would fall back to echoing, or meet the end of the input
        raise ReviewError(N_("no terminal to ask for the password: pipe it in with --password-stdin"))
    try:
        first = getpass.getpass(f"password for {name}: ")
        again = getpass.getpass("again: ")
    except EOFError:
        raise ReviewError(N_("no password given")) from None
    if again != first:
        raise ReviewError(N_("the two passwords differ"))
    return first


async def cmd_agents_add(args: argparse.Namespace, settings: Settings) -> int:
    from csbot.review.agents import Agents

    password = read_password(args, args.name)
    async with open_review(settings) as review:
        agent = await Agents(review.sessionmaker).add(args.name, password, role=args.role,
                                                      by=cli_actor(default_agent()))
    print(f"agent {agent['name']} added ({agent['role']}); they sign in at /admin")
    return 0


async def cmd_agents_list(args: argparse.Namespace, settings: Settings) -> int:
    from csbot.review.agents import Agents

    async with open_review(settings) as review:
        agents = await Agents(review.sessionmaker).list()
    if args.json:
        for a in agents:
            _line({**a, "created_at": iso(a["created_at"]), "password_changed_at": iso(a["password_changed_at"])})
        return 0
    if not agents:
        print("no agents (the first admin: `csbot agents add NAME --role admin`)")
        return 0
    print(f"{'NAME':<24} {'ROLE':<6} {'STATE':<9} CREATED")
    for a in agents:
        print(f"{_short(a['name'], 24):<24} {a['role']:<6} {'disabled' if a['disabled'] else 'enabled':<9} "
              f"{_when(a['created_at'])}")
    return 0


async def cmd_agents_disable(args: argparse.Namespace, settings: Settings) -> int:
    from csbot.review.agents import Agents

    async with open_review(settings) as review:
        await Agents(review.sessionmaker).set_disabled(args.name, args.disable, by=cli_actor(default_agent()))
    print(f"{args.name} disabled: signed out everywhere, API tokens revoked" if args.disable
          else f"{args.name} enabled")
    return 0


async def cmd_agents_password(args: argparse.Namespace, settings: Settings) -> int:
    from csbot.review.agents import Agents

    password = read_password(args, args.name)
    async with open_review(settings) as review:
        await Agents(review.sessionmaker).reset_password(args.name, password, by=cli_actor(default_agent()))
    print(f"new password for {args.name}; they are signed out everywhere")
    return 0


async def cmd_agents_token(args: argparse.Namespace, settings: Settings) -> int:
    from csbot.review.agents import Agents

    async with open_review(settings) as review:
        token = await Agents(review.sessionmaker).issue_token(args.name, by=cli_actor(default_agent()))
    print(token)
    print(f"(an API token acting as {args.name}: Authorization: Bearer <token> on /api/; shown only now; "
          f"`csbot agents disable {args.name}` revokes it)", file=sys.stderr)
    return 0


async def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from csbot.review.audit import AuditLog

    async with open_review(settings) as review:
        entries = await AuditLog(review.sessionmaker).entries(
            since=parse_time(args.since), until=parse_time(args.until), action=args.action, agent=args.agent,
            app=args.app, openid=args.openid)
    if args.json:
        for e in entries:
            e.pop("kind")
            e.pop("ts")
            _line(e)
        return 0
    if not entries:
        print("no audit entries in that range")
        return 0
    for e in entries:
        where = f" {e['app']}/{e['openid']}" if e["openid"] else ""
        detail = f" ({e['detail']})" if e["detail"] else ""
        print_safe(f"{_when(e['ts'])}  {_short(e['agent'] or '-', 20):<20} {e['action']:<15}{where}{detail}"
              f"  [{e['address'] or '-'}]")
    return 0


__all__ = ["add_commands", "describe_item", "Progress", "open_review"]
