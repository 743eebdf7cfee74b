"""The ``csbot`` command line: serve, migrate, check, simulate, decrypt."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import parse_qsl, urlsplit

from csbot.escaping import json_text, terminal_safe
from csbot.config import ConfigError, Settings, load_settings, with_overrides


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(config_file=getattr(args, "config", None))


def _setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


# --------------------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace) -> int:
    from csbot.app import create_app
    from csbot.server import PortInUse, serve_until_signal
    from csbot.store.engine import StoreInUse
    from csbot.store.migrate import SchemaNotCurrent

    settings = _settings(args)
    changes: dict[str, Any] = {}
    if args.host:
        changes["host"] = args.host
    if args.port:
        changes["port"] = args.port
    settings = with_overrides(settings, **changes)
    _setup_logging(args.log_level)
    try:
        app = create_app(settings)
        asyncio.run(serve_until_signal(app, settings.host, settings.port, shutdown_timeout=settings.drain_seconds,
                                       announce=lambda line: print(line, flush=True)))
    except (SchemaNotCurrent, StoreInUse) as exc:
        print(f"csbot: {exc}", file=sys.stderr)
        return 2
    except PortInUse as exc:
        print(f"csbot: {exc}", file=sys.stderr)
        return 1
    return 0


# --------------------------------------------------------------------------- migrate


def cmd_migrate(args: argparse.Namespace) -> int:
    from csbot.store.migrate import head_revision, upgrade

    settings = _settings(args)
    _setup_logging("WARNING")
    upgrade(settings.database_url)
    print(f"database is at revision {head_revision(settings.database_url)} (head)")
    return 0


# --------------------------------------------------------------------------- check


async def _check_database(settings: Settings) -> tuple[bool, str]:
    from sqlalchemy import text

    from csbot.store import make_engine
    from csbot.store.migrate import current_revision, head_revision

    engine = make_engine(settings.database_url)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        current = await current_revision(engine)
        head = head_revision(settings.database_url)
    except Exception as exc:
        return False, f"cannot connect: {exc.__class__.__name__}: {exc}"
    finally:
        await engine.dispose()
    if current == head:
        return True, f"connected; schema at {head} (current)"
    hint = ("`csbot serve` will migrate it" if settings.is_sqlite else "run `csbot migrate`")
    return True, f"connected; schema at {current or 'nothing'}, code needs {head}: {hint}"


def cmd_check(args: argparse.Namespace) -> int:
    from csbot.routing import Router

    settings = _settings(args)
    print("effective settings (secrets masked):")
    print(json_text(settings.masked(), indent=2))
    ok, msg = asyncio.run(_check_database(settings))
    print(f"database: {msg}")
    try:
        router = Router.load(settings.handlers_dir, settings.handler_options)
        print(f"handlers: {len(router.routes)} route(s)")
        for r in router.routes:
            kind = "fallback" if r.fallback else f"priority {r.priority}"
            print(f"  - {r.name} ({kind}{', inline' if r.inline else ''})")
        _print_functions(router)
    except Exception as exc:
        print(f"handlers: FAILED to load: {exc}")
        router, ok = None, False
    warnings = useless_setup_warnings(settings, router)
    for warning in warnings:
        print(f"WARNING: {warning}")
    ok = ok and not warnings
    print("configuration OK" if ok else "configuration has problems")
    return 0 if ok else 1


def useless_setup_warnings(settings: Settings, router: Any) -> list[str]:
    """What makes the bot useless although every setting is valid: nobody can be answered."""
    out = []
    for app in settings.apps.values():
        if not app.secret:
            var = "CSBOT_APP_SECRET" if app.name == "default" else f"apps.{app.name}.secret"
            out.append(f"app {app.name} has no AppSecret ({var}): csbot cannot get an access token, "
                       "so no reply can ever be sent")
    if router is not None and not router.routes:
        out.append(f"no handler: {settings.handlers_dir} has no handler and no csbot.handlers entry point, "
                   "so every push is stored and nobody answers (set CSBOT_HANDLERS)")
    return out


def _print_functions(router: Any) -> None:
    """``csbot check``: the callable functions (csbot.cloud) and who may call them."""
    from csbot.cloud.functions import FunctionRegistry

    functions = list(FunctionRegistry.from_router(router))
    print(f"callable functions: {len(functions)} (POST /cloud/functions/NAME)")
    for spec in functions:
        who = "mini program and server" if spec.client else "server only"
        print(f"  - {spec.name} ({who}, timeout {spec.timeout:g}s, in {spec.module})")


# --------------------------------------------------------------------------- cloud


def cmd_cloud_client(args: argparse.Namespace) -> int:
    """Print the mini program's client: ``csbot cloud client > miniprogram/utils/csbot-cloud.js``."""
    from importlib import resources

    sys.stdout.write(resources.files("csbot.cloud").joinpath("client/csbot-cloud.js").read_text(encoding="utf-8"))
    return 0


def cmd_cloud_logout(args: argparse.Namespace) -> int:
    """``csbot cloud logout OPENID``: the user's tokens stop working (other running processes
    stop accepting them within ``CSBOT_CLOUD_SESSION_CACHE`` seconds)."""
    from csbot.cloud.sessions import SessionStore
    from csbot.store import make_engine, make_sessionmaker

    settings = _settings(args)
    if args.app not in settings.apps:
        print(f"csbot: no app named {args.app!r}", file=sys.stderr)
        return 2

    async def run() -> int:
        engine = make_engine(settings.database_url)
        try:
            return await SessionStore(settings, make_sessionmaker(engine)).revoke_user(args.app, args.openid)
        finally:
            await engine.dispose()

    ended = asyncio.run(run())
    print(f"ended {ended} session(s) of {args.openid} in app {args.app}")
    return 0


# --------------------------------------------------------------------------- simulate


async def _simulate(args: argparse.Namespace, settings: Settings) -> int:
    import aiohttp

    from csbot.testing.pushes import PushBuilder

    if args.app not in settings.apps:
        print(f"csbot: unknown app {args.app!r}; configured: {', '.join(settings.apps)}", file=sys.stderr)
        return 2
    app = settings.apps[args.app]
    builder = PushBuilder.for_app(app, mode=args.mode, fmt=args.format)
    if args.text is not None:
        fields = builder.text(args.openid, args.text)
    elif args.image is not None:
        fields = builder.image(args.openid, args.image)
    elif args.event is not None:
        fields = builder.enter_session(args.openid) if args.event == "user_enter_tempsession" \
            else builder.event(args.openid, args.event)
    else:
        print("csbot: give --text, --image or --event", file=sys.stderr)
        return 2
    push = builder.build(fields)
    base = args.url or f"http://127.0.0.1:{settings.port}"
    path = "/wechat" if args.app == "default" else f"/wechat/{args.app}"
    if args.print:
        # the exact request, for `csbot decrypt` and bug reports; nothing is sent
        print(f"POST {push.url(base, path)}")
        print(f"Content-Type: {push.content_type}")
        print()
        print(push.body.decode("utf-8"))
        print(f"(check it with: csbot decrypt --url '{push.url(base, path)}' --body FILE-WITH-THE-BODY)",
              file=sys.stderr)
        return 0
    async with aiohttp.ClientSession() as session:
        await _tell_fake_wechat(session, settings, app.appid, fields)
        for i in range(args.repeat):
            try:
                status, body = await _post_when_up(push, session, base, path, wait=args.wait)
            except aiohttp.ClientError as exc:
                print(f"csbot: cannot reach {base}: {exc}", file=sys.stderr)
                return 1
            shown = body
            if status == 200 and body not in (b"success", b""):
                try:
                    shown = builder.decrypt_reply(body)
                except Exception:
                    pass
            print(f"{status} {shown.decode('utf-8', 'replace')}")
    return 0 if status == 200 else 1


async def _post_when_up(push: Any, session: Any, base: str, path: str, *, wait: float) -> tuple[int, bytes]:
    """Post the push, waiting up to ``wait`` seconds for a csbot that is still starting.

    Only a refused connection is waited out (nothing was sent then), so ``csbot serve &`` followed
    at once by ``csbot simulate`` works as the README types it; any other error is final.
    """
    import aiohttp

    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    said = False
    while True:
        try:
            return await push.post(session, base, path)  # type: ignore[no-any-return]
        except aiohttp.ClientConnectorError:
            if loop.time() >= deadline:
                raise
            if not said:
                print(f"csbot: waiting for csbot at {base} to start…", file=sys.stderr)
                said = True
            await asyncio.sleep(0.2)


async def _tell_fake_wechat(session: Any, settings: Settings, appid: str, fields: dict[str, Any]) -> None:
    """When csbot talks to a FakeWeChat on this machine, tell it the customer acted.

    Real WeChat opens its reply window when a customer writes; a standalone fake cannot see the
    push, so without this it would refuse the replies (45015). Nothing happens for real WeChat.
    """
    import aiohttp

    host = urlsplit(settings.wechat_api_base).hostname or ""
    if host not in ("127.0.0.1", "localhost", "::1"):
        return
    if fields.get("MsgType") == "event":
        if str(fields.get("Event", "")).lower() != "user_enter_tempsession":
            return
        action = "user_entered"
    else:
        action = "user_message"
    try:
        async with session.post(f"{settings.wechat_api_base}/_fake/{action}",
                                json={"appid": appid, "openid": fields["FromUserName"]},
                                timeout=aiohttp.ClientTimeout(total=2)):
            pass
    except (aiohttp.ClientError, asyncio.TimeoutError):
        pass  # not a fake, or not running: csbot will meet WeChat's own answer


def cmd_simulate(args: argparse.Namespace) -> int:
    return asyncio.run(_simulate(args, _settings(args)))


# --------------------------------------------------------------------------- decrypt


def _read_capture(args: argparse.Namespace) -> tuple[dict[str, str], bytes]:
    query: dict[str, str] = {}
    if args.url:
        query.update(dict(parse_qsl(urlsplit(args.url).query, keep_blank_values=True)))
    if args.query:
        query.update(dict(parse_qsl(args.query.lstrip("?"), keep_blank_values=True)))
    if args.body == "-":
        body = sys.stdin.buffer.read()
    elif args.body:
        body = Path(args.body).read_bytes()
    else:
        body = b""
    return query, body


def diagnose(app: Any, query: dict[str, str], body: bytes) -> tuple[bool, list[str]]:
    """Walk a captured push step by step; say exactly which step fails and why."""
    from csbot.wire import (CryptoError, MessageCrypto, WireError, check_msg_signature, check_signature,
                            parse_fields, sniff_format)

    lines: list[str] = []
    ts, nonce = query.get("timestamp", ""), query.get("nonce", "")
    if "signature" in query:
        if check_signature(app.token, ts, nonce, query["signature"]):
            lines.append("signature: OK (Token matches)")
        else:
            lines.append("signature: WRONG - the Token differs from WeChat's, or timestamp/nonce were altered")
            return False, lines
    else:
        lines.append("signature: absent from the query (give --url or --query with the push's query string)")
    if not body.strip():
        lines.append("body: empty")
        return False, lines
    try:
        fmt = sniff_format(body)
        fields = parse_fields(body, fmt)
    except WireError as exc:
        lines.append(f"body: {exc.reason}")
        return False, lines
    lines.append(f"body: {fmt.upper()}")
    if "Encrypt" not in fields:
        lines.append("mode: plaintext (no Encrypt field)")
        lines.append("push: " + json_text(fields))
        return True, lines
    encrypt = str(fields["Encrypt"])
    if "msg_signature" in query:
        if check_msg_signature(app.token, ts, nonce, encrypt, query["msg_signature"]):
            lines.append("msg_signature: OK (body untouched, Token matches)")
        else:
            lines.append("msg_signature: WRONG - the Token differs, or the Encrypt value was altered in transit")
            return False, lines
    else:
        lines.append("msg_signature: absent from the query")
    if not app.aes_keys:
        lines.append("key: no EncodingAESKey configured for this app; cannot decrypt")
        return False, lines
    for label, key in zip(("current", "previous"), app.aes_keys):
        try:
            crypto = MessageCrypto(key, app.appid)
            plain, receive_id = crypto.decrypt(encrypt)
        except CryptoError as exc:
            lines.append(f"decrypt with {label} EncodingAESKey: FAILED ({exc.code}) {exc.reason}")
            continue
        lines.append(f"decrypt with {label} EncodingAESKey: OK (padding and length valid)")
        if receive_id != app.appid:
            lines.append(f"appid: WRONG - the push is for {receive_id}, this app is configured as {app.appid}")
            return False, lines
        lines.append(f"appid: OK ({receive_id})")
        lines.append("push: " + plain.decode("utf-8", "replace"))
        return True, lines
    lines.append("key: no configured EncodingAESKey decrypts this push - the key differs from WeChat's "
                 "(a wrong key usually shows up as invalid padding)")
    return False, lines


async def _with_store(settings: Settings, work: Any) -> Any:
    """Run ``await work(sessionmaker)`` on the configured store (schema checked, migrated on SQLite)."""
    from csbot.store import make_engine, make_sessionmaker
    from csbot.store.migrate import ensure_schema

    engine = make_engine(settings.database_url)
    try:
        await ensure_schema(engine, settings.database_url, auto_upgrade=settings.is_sqlite)
        return await work(make_sessionmaker(engine))
    finally:
        await engine.dispose()


def cmd_refused(args: argparse.Namespace) -> int:
    from datetime import datetime

    from csbot.refused import list_refused, refused_item

    settings = _settings(args)
    rows = asyncio.run(_with_store(settings, lambda sm: list_refused(sm, args.limit)))
    if not settings.keep_refused:
        print("(CSBOT_KEEP_REFUSED is 0: refused pushes are not being kept)", file=sys.stderr)
    def line(r: dict[str, Any]) -> str:
        when = datetime.fromisoformat(r["at"]).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        return (f"{r['id']:>6}  {when}  {r['app']:<10} {r['status']}  {r['reason']}  "
                f"(from {r['remote'] or '?'}, {r['body_size']} bytes)")

    _print_rows([refused_item(r) for r in rows], args.json, line, "no refused pushes kept")
    return 0


def _print_rows(rows: list[dict[str, Any]], as_json: bool, line: Any, empty: str) -> None:
    """A listing: one JSON object a line with --json, else one text line each."""
    for row in rows:
        print(json_text(row) if as_json else terminal_safe(line(row)))
    if not rows and not as_json:
        print(empty)


def cmd_webhooks(args: argparse.Namespace) -> int:
    from csbot.review.service import ReviewError
    from csbot.outbound_webhooks import list_deliveries, redeliver

    settings = _settings(args)
    if args.webhooks_command == "redeliver":
        if not args.ids and not args.failed:
            print("csbot: give delivery ids, or --failed for every failed delivery", file=sys.stderr)
            return 2
        n = asyncio.run(_with_store(settings, lambda sm: redeliver(sm, args.ids, all_failed=args.failed)))
        print(f"{n} delivery(ies) queued again; the running csbot sends them")
        return 0 if n or args.failed else 1
    try:
        rows = asyncio.run(_with_store(settings, lambda sm: list_deliveries(
            sm, status=args.status, webhook=args.webhook, limit=args.limit)))
    except ReviewError as exc:
        print(f"csbot: {exc}", file=sys.stderr)
        return 2
    def line(d: dict[str, Any]) -> str:
        error = f"  {d['last_error']}" if d["last_error"] else ""
        return (f"{d['id']:>6}  {d['created_at'][:19]}  {d['webhook']:<12} {d['event']:<28} {d['status']:<9} "
                f"{d['attempts']} attempt(s){error}")

    _print_rows(rows, args.json, line, "no deliveries")
    return 0


def cmd_decrypt(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.refused is not None:
        from csbot.refused import get_refused

        row = asyncio.run(_with_store(settings, lambda sm: get_refused(sm, args.refused)))
        if row is None:
            print(f"csbot: no refused push {args.refused} (`csbot refused` lists the kept ones)", file=sys.stderr)
            return 2
        args.app = row.app
        query, body = dict(parse_qsl(row.query, keep_blank_values=True)), row.body or b""
        print(f"refused push {row.id} for app {row.app}: {row.status} {row.reason}")
    else:
        query, body = _read_capture(args)
    if args.app not in settings.apps:
        print(f"csbot: unknown app {args.app!r}", file=sys.stderr)
        return 2
    ok, lines = diagnose(settings.apps[args.app], query, body)
    for line in lines:
        print(terminal_safe(line, keep_lines=True))  # a decrypted push is a customer's text
    return 0 if ok else 1


# --------------------------------------------------------------------------- dev


async def _dev(args: argparse.Namespace) -> int:
    """Chat with your handlers as a customer, against a FakeWeChat on loopback."""
    import tempfile
    from dataclasses import replace

    from csbot.dev import run_dev
    from csbot.testing.fake_wechat import FakeWeChat
    from csbot.testing.harness import Harness, test_app, test_settings

    try:
        settings = _settings(args)
        app = settings.apps.get(args.app) or next(iter(settings.apps.values()))
    except ConfigError:
        settings, app = None, test_app()  # no app configured: a throw-away one will do
    dev_app = replace(app, name="default", secret=app.secret or "dev-secret")
    # --handlers wins over the configuration, which wins over ./handlers
    handlers_dir = (Path(args.handlers) if args.handlers else
                    settings.handlers_dir if settings is not None else Path("handlers"))
    if not handlers_dir.is_dir():
        print(f"csbot: handlers directory {handlers_dir} does not exist", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="csbot-dev-") as tmp:
        async with FakeWeChat(apps={dev_app.appid: dev_app.secret}) as fake:
            base = test_settings(Path(tmp) / "dev.db", fake.base_url, handlers_dir=handlers_dir)
            if settings is not None:
                base = replace(settings, wechat_api_base=fake.base_url, database_url=base.database_url,
                               data_dir=base.data_dir, host="127.0.0.1", handlers_dir=handlers_dir)
            base = replace(base, apps={"default": dev_app})
            async with Harness.start(settings=base, fake=fake, fmt=args.format) as bot:
                print(f"csbot dev: handlers from {handlers_dir}, WeChat faked at {fake.base_url}")
                print("type a message as the customer; /enter opens the chat, /help lists the commands, "
                      "/quit leaves\n")
                await run_dev(bot, args.openid, timeout=args.timeout)
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    _setup_logging(args.log_level)
    return asyncio.run(_dev(args))


# --------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="csbot", description="WeChat customer-service bot service")
    parser.add_argument("--config", help="TOML config file (default: $CSBOT_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=argparse.SUPPRESS, help="TOML config file")

    p = sub.add_parser("serve", parents=[common], help="run the webhook, workers and review surfaces")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--log-level", default="INFO")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("migrate", parents=[common], help="upgrade the database schema to this version")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("check", parents=[common], help="validate the configuration and test the database")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("simulate", parents=[common], help="send a signed (and encrypted) push to a running csbot")
    p.add_argument("--url", help="base URL of the running csbot (default http://127.0.0.1:$CSBOT_PORT)")
    p.add_argument("--app", default="default")
    p.add_argument("--openid", default="oSimulatedUser0001")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--text")
    g.add_argument("--image", metavar="MEDIA_ID")
    g.add_argument("--event", help="e.g. user_enter_tempsession")
    p.add_argument("--mode", choices=("plaintext", "compatible", "safe"),
                   help="default: safe when an EncodingAESKey is configured, else plaintext")
    p.add_argument("--format", choices=("xml", "json"), default="xml")
    p.add_argument("--repeat", type=int, default=1, help="send the same push N times (WeChat's retries)")
    p.add_argument("--wait", type=float, default=10.0, metavar="SECONDS",
                   help="wait this long for a csbot that is still starting (default 10; 0: fail at once)")
    p.add_argument("--print", action="store_true",
                   help="print the exact request (URL, headers, body) instead of sending it")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("decrypt", parents=[common], help="decrypt a captured push and say what is wrong with it")
    p.add_argument("--app", default="default")
    p.add_argument("--url", help="the push's full URL (its query string is used)")
    p.add_argument("--query", help="the push's query string")
    p.add_argument("--body", help="file with the push's body, or - for stdin")
    p.add_argument("--refused", type=int, metavar="ID",
                   help="a refused push kept by CSBOT_KEEP_REFUSED (see `csbot refused`) instead of --url/--body")
    p.set_defaults(func=cmd_decrypt)

    p = sub.add_parser("webhooks", parents=[common], help="outbound webhook deliveries: list, redeliver")
    wsub = p.add_subparsers(dest="webhooks_command", required=True)
    w = wsub.add_parser("list", parents=[common], help="the latest deliveries, newest first")
    w.add_argument("--status", choices=("pending", "delivered", "failed"))
    w.add_argument("--webhook", help="only this webhook's deliveries")
    w.add_argument("--limit", type=int, default=50)
    w.add_argument("--json", action="store_true", help="one JSON object per line")
    w.set_defaults(func=cmd_webhooks)
    w = wsub.add_parser("redeliver", parents=[common], help="queue failed deliveries again")
    w.add_argument("ids", nargs="*", type=int, metavar="ID")
    w.add_argument("--failed", action="store_true", help="every failed delivery")
    w.set_defaults(func=cmd_webhooks)

    p = sub.add_parser("refused", parents=[common],
                       help="the latest refused pushes, kept when CSBOT_KEEP_REFUSED=N is set")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.set_defaults(func=cmd_refused)
    p = sub.add_parser("dev", parents=[common],
                       help="chat with your handlers in the terminal, against a fake WeChat")
    p.add_argument("--app", default="default")
    p.add_argument("--openid", default="oDevCustomer")
    p.add_argument("--handlers", help="handlers directory (default: $CSBOT_HANDLERS or ./handlers)")
    p.add_argument("--format", choices=("xml", "json"), default="xml")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the bot's replies")
    p.add_argument("--log-level", default="WARNING")
    p.set_defaults(func=cmd_dev)

    p = sub.add_parser("cloud", help="the mini program's side of csbot's cloud functions")
    cloud_sub = p.add_subparsers(dest="cloud_command", required=True)
    c = cloud_sub.add_parser("client", help="print csbot-cloud.js, the wx.cloud-shaped client for the mini program")
    c.set_defaults(func=cmd_cloud_client)
    c = cloud_sub.add_parser("logout", parents=[common],
                             help="end every login session of a mini-program user (and forget their session_key)")
    c.add_argument("openid")
    c.add_argument("--app", default="default")
    c.set_defaults(func=cmd_cloud_logout)

    from csbot.review.cli import add_commands  # csbot.review: conversations, reply, takeover, handback, close
    add_commands(sub, common)
    from csbot.cloud.database.cli import add_commands as add_db_commands  # csbot db ...
    add_db_commands(sub, common)
    from csbot.cloud.storage_cli import add_commands as add_storage_commands  # csbot storage sweep
    add_storage_commands(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"csbot: configuration error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
