"""``csbot dev``: chat with your handlers in the terminal, as a customer, against a FakeWeChat.

A line is a text message from the current customer; a line starting with ``/`` is a command
(``/help`` lists them; ``//text`` sends ``/text`` as a message). After each push the session
shows the passive reply, the replies that reached "WeChat", failed deliveries, and says so when
no handler answered.
"""

from __future__ import annotations

import asyncio
import mimetypes
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import Any, Callable

from csbot.testing.harness import Harness

COMMANDS = (
    ("/help", "this list"),
    ("/enter", "the customer opens the chat (user_enter_tempsession)"),
    ("/image FILE", "the customer sends an image file"),
    ("/event NAME [KEY=VALUE …]", "any event push, e.g. /event user_enter_tempsession SessionFrom=ad"),
    ("/user OPENID", "switch to another customer"),
    ("/history", "the current customer's whole thread, with delivery states"),
    ("/quit", "leave (Ctrl-C and Ctrl-D too)"),
)
UNDELIVERED = ("failed", "dead", "quota_exceeded")


def help_text() -> list[str]:
    width = max(len(c) for c, _ in COMMANDS)
    return ["commands:"] + [f"  {c:<{width}}  {what}" for c, what in COMMANDS] + [
        "  anything else is a text message from the customer; //text sends /text"]


class DevSession:
    """One terminal session: turns typed lines into pushes and shows what the bot did."""

    def __init__(self, bot: Harness, openid: str, *, timeout: float = 10.0,
                 out: Callable[[str], None] = print) -> None:
        self.bot = bot
        self.openid = openid
        self.timeout = timeout
        self.out = out
        self._seen_sent = 0
        self._reported: set[int] = set()

    @property
    def prompt(self) -> str:
        return f"{self.openid}> "

    async def handle(self, line: str) -> bool:
        """Act on one typed line; False when the session should end."""
        line = line.strip()
        if not line:
            return True
        if line.startswith("//"):
            await self._push(self.bot.builder.text(self.openid, line[1:]))
            return True
        if not line.startswith("/"):
            await self._push(self.bot.builder.text(self.openid, line))
            return True
        try:
            name, *args = shlex.split(line)
        except ValueError as exc:
            self.out(f"  ! {exc}")
            return True
        if name in ("/quit", "/exit"):
            return False
        if name == "/help":
            for text in help_text():
                self.out(text)
        elif name == "/enter":
            await self._push(self.bot.builder.enter_session(self.openid))
        elif name == "/image" and len(args) == 1:
            await self._image(Path(args[0]).expanduser())
        elif name == "/event" and args:
            fields = dict(a.partition("=")[::2] for a in args[1:])
            if args[0] == "user_enter_tempsession":
                await self._push(self.bot.builder.enter_session(self.openid, session_from=fields.pop("SessionFrom", "")))
            else:
                await self._push(self.bot.builder.event(self.openid, args[0], **fields))
        elif name == "/user" and len(args) == 1:
            self.openid = args[0]
            self._seen_sent = len(self.bot.replies_to(self.openid))
            self.out(f"  now chatting as {self.openid}")
        elif name == "/history":
            await self._history()
        else:
            self.out(f"  ! unknown command {line!r}; /help lists the commands (//text sends /text)")
        return True

    async def _image(self, path: Path) -> None:
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError as exc:
            self.out(f"  ! cannot read {path}: {exc.strerror or exc}")
            return
        ctype = mimetypes.guess_type(path.name)[0] or "image/jpeg"
        media_id = self.bot.fake.add_media(data, ctype, appid=self.bot.settings.apps["default"].appid)
        await self._push(self.bot.builder.image(self.openid, media_id))

    async def _push(self, fields: dict[str, Any]) -> None:
        status, body = await self.bot.send(fields)
        if status != 200:
            self.out(f"  ! webhook answered {status}: {body.decode('utf-8', 'replace')}")
            return
        if body not in (b"success", b""):
            reply = self.bot.builder.decrypt_reply(body).decode("utf-8", "replace")
            if "transfer_customer_service" in reply:
                self.out("bot> [handed over to WeChat's customer-service tool]")
            else:
                self.out(f"bot> [passive reply] {reply}")
        try:
            await self.bot.wait_idle(timeout=self.timeout)
        except TimeoutError as exc:
            self.out(f"  ! {exc}")
        replies = self.bot.replies_to(self.openid)
        for text in replies[self._seen_sent:]:
            self.out(f"bot> {text}")
        self._seen_sent = len(replies)
        await self._report(fields, body)

    async def _report(self, fields: dict[str, Any], body: bytes) -> None:
        """Say what happened to the push: no handler, a handler that raised, undelivered replies."""
        rows = await self.bot.messages(openid=self.openid)
        push = next((r for r in reversed(rows) if r.direction == "in"), None)
        if push is not None and push.id not in self._reported:
            self._reported.add(push.id)
            answered = body not in (b"success", b"") or any(r.in_reply_to == push.id for r in rows)
            if push.status == "failed":
                self.out(f"  ! handler {push.handler or '?'} failed: {push.error}")
            elif push.handler is None and not answered:
                what = fields.get("Event") if fields.get("MsgType") == "event" else fields.get("MsgType")
                self.out(f"  (no handler answered this {what}: nothing matched it, and there is no fallback)")
            elif not answered:
                self.out(f"  (handler {push.handler} answered nothing)")
        for row in rows:
            if row.direction == "out" and row.status in UNDELIVERED and row.id not in self._reported:
                self._reported.add(row.id)
                self.out(f"  ! reply {row.id} {row.status}: {row.error or row.errmsg}")

    async def _history(self) -> None:
        from csbot.review.cli import describe_item
        from csbot.review.service import NotFound, Review

        review = Review(self.bot.settings, self.bot.services.sessionmaker)
        try:
            thread = await review.thread("default", self.openid)
        except NotFound:
            self.out(f"  no messages with {self.openid} yet")
            return
        for item in thread["items"]:
            self.out("  " + describe_item(item))


def _start_reader(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[str | None],
                  prompt: Callable[[], str]) -> None:
    """Read lines in a daemon thread: Ctrl-C never waits for the pending ``input()``."""
    def read() -> None:
        while True:
            try:
                line = input(prompt())
            except (EOFError, KeyboardInterrupt, OSError):
                loop.call_soon_threadsafe(queue.put_nowait, None)
                return
            loop.call_soon_threadsafe(queue.put_nowait, line)
            # wait for the line to be handled before showing the next prompt
            done = threading.Event()
            loop.call_soon_threadsafe(lambda: _after_idle(queue, done))
            done.wait()

    threading.Thread(target=read, name="csbot-dev-input", daemon=True).start()


def _after_idle(queue: asyncio.Queue[str | None], done: threading.Event) -> None:
    async def wait() -> None:
        await queue.join()
        done.set()
    asyncio.ensure_future(wait())


async def run_dev(bot: Harness, openid: str, *, timeout: float) -> None:
    """The interactive loop; returns on /quit, end of input, Ctrl-C or SIGTERM."""
    session = DevSession(bot, openid, timeout=timeout)
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
        except (NotImplementedError, RuntimeError):
            pass
    _start_reader(loop, queue, lambda: session.prompt)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        while True:
            getting = asyncio.ensure_future(queue.get())
            await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done():
                getting.cancel()
                sys.stdout.write("\n")
                return
            line = getting.result()
            try:
                if line is None or not await session.handle(line):
                    return
            finally:
                queue.task_done()
    finally:
        stopping.cancel()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass
