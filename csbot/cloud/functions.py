"""Callable functions: written like cloud functions, called by the mini program, the server API
or another handler.

    from csbot import function

    @function("add")                       # client=True: logged-in mini-program users may call it
    async def main(event, context):
        return {"sum": event["a"] + event["b"], "openid": context.OPENID}

They live in the handlers directory with the push handlers (a module whose ``main`` is a
callable function is not a push handler). ``POST /cloud/functions/{name}`` runs one for the
caller's session; ``context.call_function(name, data)`` runs one from server code. Every call gets
a ``requestID``, runs within its time limit, and is counted in ``csbot_function_seconds`` by
function and outcome; failures are logged with their requestID (tracebacks only in the log).

``context.reply(...)`` in a function sends to the caller (``OPENID``) through the outbox, at once,
like a push handler's; so does ``context.openapi.customer_service_message.send(touser=…)``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import re
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Iterator, Mapping, MutableMapping

from aiolimiter import AsyncLimiter

from csbot.context import Context, HandlerOpenAPI, Send
from csbot.cloud.errors import (ERR_BAD_REQUEST, ERR_BAD_RESULT, ERR_FUNCTION_FAILED, ERR_NOT_FOUND,
                                ERR_TIMEOUT, CloudError)

__all__ = ["function", "FunctionSpec", "FunctionRegistry", "Functions", "FunctionCallError", "FunctionReplyError",
           "Invocation", "DEFAULT_TIMEOUT", "MAX_CALL_DEPTH", "SOURCE_CLIENT", "SOURCE_HTTP", "SOURCE_CSBOT"]

log = logging.getLogger("csbot.cloud.functions")

FunctionFunc = Callable[[dict[str, Any], Any], Awaitable[Any]]

#: seconds a function may run unless it says otherwise (``@function(..., timeout=…)``)
DEFAULT_TIMEOUT = 20.0
#: functions calling functions: deeper than this is a loop, refused
MAX_CALL_DEPTH = 8
#: cloud function names: letters, digits, '-' and '_' (WeChat allows the same)
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

SOURCE_CLIENT, SOURCE_HTTP, SOURCE_CSBOT = "wx_client", "wx_http", "csbot"
#: limiters kept for this many recent callers (least recently used go first)
RATE_ENTRIES = 100_000


def function(name: str, *, client: bool = True, timeout: float = DEFAULT_TIMEOUT) -> Callable[[FunctionFunc], FunctionFunc]:
    """Make ``async def f(event, context)`` a callable function named ``name``.

    ``client=False`` makes it server-only: callable from handlers (``context.call_function``) and
    the server API, refused (403) to a mini program. ``timeout`` is its time limit in seconds.
    """
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"function name {name!r} must be 1-64 letters, digits, '-' or '_'")
    if not timeout > 0:
        raise ValueError("a function's timeout must be positive")

    def decorate(func: FunctionFunc) -> FunctionFunc:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"function {name!r} ({func.__qualname__}) must be an async function")
        func.__csbot_function__ = {"name": name, "client": bool(client), "timeout": float(timeout)}  # type: ignore[attr-defined]
        return func

    return decorate


@dataclass(frozen=True)
class FunctionSpec:
    name: str
    func: FunctionFunc
    client: bool = True
    timeout: float = DEFAULT_TIMEOUT
    #: the handler module it lives in; its ``[handlers.MODULE]`` table is ``context.options``
    module: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)


class FunctionRegistry:
    """The callable functions of a deployment, by name."""

    def __init__(self, specs: Iterable[FunctionSpec] = ()) -> None:
        self._specs: dict[str, FunctionSpec] = {}
        for spec in specs:
            if spec.name in self._specs:
                from csbot.routing import HandlerLoadError

                raise HandlerLoadError(f"function {spec.name!r} is defined twice "
                                       f"({self._specs[spec.name].module} and {spec.module})")
            self._specs[spec.name] = spec

    @classmethod
    def from_modules(cls, modules: Iterable[tuple[str, Any, Mapping[str, Any]]]) -> "FunctionRegistry":
        specs = []
        for module_name, module, options in modules:
            for obj in vars(module).values():
                meta = getattr(obj, "__csbot_function__", None)
                if meta is None or getattr(obj, "__module__", None) != module.__name__:
                    continue
                specs.append(FunctionSpec(func=obj, module=module_name, options=options, **meta))
        return cls(specs)

    @classmethod
    def from_router(cls, router: Any) -> "FunctionRegistry":
        """The functions in the router's handler modules (the handlers directory, entry points)."""
        return cls.from_modules(getattr(router, "modules", ()))

    def get(self, name: str) -> FunctionSpec | None:
        return self._specs.get(name)

    def __iter__(self) -> Iterator[FunctionSpec]:
        return iter(sorted(self._specs.values(), key=lambda s: s.name))

    def __len__(self) -> int:
        return len(self._specs)


class FunctionCallError(Exception):
    """A call did not produce a result: ``status`` and ``err_code`` say why, as HTTP would."""

    def __init__(self, status: int, err_code: int, err_msg: str, *, request_id: str | None = None,
                 outcome: str = "error") -> None:
        self.status = status
        self.err_code = err_code
        self.err_msg = err_msg
        self.request_id = request_id
        self.outcome = outcome
        super().__init__(f"{err_msg} (errCode {err_code}" + (f", requestID {request_id})" if request_id else ")"))

    def cloud_error(self) -> CloudError:
        extra = {"requestID": self.request_id} if self.request_id else {}
        return CloudError(self.status, self.err_code, self.err_msg, **extra)


class FunctionReplyError(RuntimeError):
    """``context.reply`` in a function that has nobody to reply to (a server-API call, ``SOURCE``
    "wx_http", has no ``OPENID``) or no outbox to send through."""


class _FunctionReplies:
    """``context.reply`` of one function call: each reply committed to the outbox at once.

    Keys: ``fn:<requestID>:<n>`` (every call's replies are new), or, for a reply given a ``key``,
    ``fn:<function>:<user>:<key>`` (queued once per function, user and key across calls).
    """

    def __init__(self, outbox: Any, app: str, openid: str, function: str, request_id: str, source: str) -> None:
        self.outbox = outbox
        self.app = app
        self.openid = openid
        self.function = function
        self.request_id = request_id
        self.source = source
        self._next = 0

    async def send(self, reply: Any, touser: str | None = None, key: str | None = None) -> bool:
        to = touser or self.openid
        if not to:
            raise FunctionReplyError(
                f"context.reply in function {self.function!r}: this call (SOURCE {self.source}) has no caller "
                "to reply to; send to a user with context.openapi.customer_service_message.send(touser=…)")
        if self.outbox is None:
            raise FunctionReplyError("context.reply in a function needs the outbox (a running csbot serve)")
        if key is None:
            key = f"fn:{self.request_id}:{self._next}"
            self._next += 1
        else:
            key = f"fn:{self.function}:{to[:128]}:{key}"
        message_id = await self.outbox.enqueue(self.app, to, reply, author=f"function:{self.function}", key=key)
        return message_id is not None


@dataclass(frozen=True)
class Invocation:
    request_id: str
    #: ``{"result": …, "requestID": …}`` as JSON (UTF-8): what the HTTP caller gets
    body: bytes

    def answer(self) -> dict[str, Any]:
        """``{"result", "requestID"}`` as Python values (a copy: the callee keeps nothing shared)."""
        return json.loads(self.body)


class _CallLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """``context.logger`` of a call: every line starts with the function and its requestID."""

    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs.setdefault("extra", {}).update(self.extra or {})
        return f"[{self.extra['function']} {self.extra['requestID']}] {msg}", kwargs  # type: ignore[index]


class Functions:
    """Runs callable functions (``services.functions``): identity, limits, metrics, errors."""

    def __init__(self, registry: FunctionRegistry, services: Any, *, rate_per_second: float = 20.0,
                 burst: int = 40, clock: Callable[[], float] = time.perf_counter) -> None:
        self.registry = registry
        self.services = services
        self.rate_per_second = rate_per_second
        self.burst = max(1, int(burst))
        self.clock = clock
        self._limiters: OrderedDict[tuple[str, str], AsyncLimiter] = OrderedDict()

    async def allow(self, app: str, openid: str) -> bool:
        """Take one call from the user's allowance (``rate_per_second``, burst ``burst``)."""
        if self.rate_per_second <= 0:
            return True
        key = (app, openid)
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = AsyncLimiter(self.burst, self.burst / self.rate_per_second)
            if len(self._limiters) > RATE_ENTRIES:
                self._limiters.popitem(last=False)
        else:
            self._limiters.move_to_end(key)
        if not limiter.has_capacity():
            return False
        await limiter.acquire()  # there is capacity: this does not wait
        return True

    def observe(self, name: str, outcome: str, seconds: float) -> None:
        metrics = getattr(self.services, "metrics", None)
        if metrics is not None:
            metrics.function_seconds.labels(name, outcome).observe(seconds)

    async def invoke(
        self,
        name: str,
        data: dict[str, Any],
        *,
        app: str,
        openid: str | None,
        unionid: str | None = None,
        source: str,
        client_ip: str | None = None,
        open_data_info: Iterable[str] = (),
        depth: int = 0,
        send: Send | None = None,
    ) -> Invocation:
        """Run function ``name`` with ``data`` as its event; raises ``FunctionCallError``.

        The identity (app, openid, unionid) is the caller's, established by the caller of this
        method (a session, or the handler's own context) and never taken from ``data``.
        ``send``: the calling handler's (or function's) ``context.reply``, when called from one,
        so the function's replies are that caller's; otherwise they go to the outbox as this call's.
        """
        spec = self.registry.get(name)
        if spec is None:
            raise FunctionCallError(404, ERR_NOT_FOUND, f"function {name!r} not found", outcome="not_found")
        if depth > MAX_CALL_DEPTH:
            raise FunctionCallError(500, ERR_FUNCTION_FAILED,
                                    f"functions called each other more than {MAX_CALL_DEPTH} deep")
        if not isinstance(data, dict):
            raise FunctionCallError(400, ERR_BAD_REQUEST, "data must be a JSON object", outcome="bad_request")
        request_id = uuid.uuid4().hex
        settings = self.services.settings
        appid = settings.apps[app].appid if app in settings.apps else ""
        openapi = self.services.openapi.get(app) if self.services.openapi is not None and appid else None
        logger = _CallLogger(logging.getLogger("csbot.function"),
                             {"function": name, "requestID": request_id, "app": app})
        if send is None:
            send = _FunctionReplies(getattr(self.services, "outbox", None), app, openid or "", name, request_id,
                                    source).send
        context = Context(OPENID=openid or "", APPID=appid, app=app, logger=logger,
                          openapi=HandlerOpenAPI(openapi, send) if openapi is not None else None,
                          options=spec.options, UNIONID=unionid, SOURCE=source, CLIENTIP=client_ip,
                          OPEN_DATA_INFO=list(open_data_info), requestID=request_id, services=self.services,
                          call_depth=depth, send=send)
        started = self.clock()
        outcome = "ok"
        try:
            deadline = asyncio.timeout(spec.timeout)
            try:
                async with deadline:
                    result = await spec.func(data, context)
            except asyncio.CancelledError:
                outcome = "cancelled"
                raise
            except Exception as exc:
                if isinstance(exc, TimeoutError) and deadline.expired():
                    outcome = "timeout"
                    log.warning("function %s timed out after %.1fs (requestID %s, openid %s)",
                                name, spec.timeout, request_id, openid)
                    raise FunctionCallError(504, ERR_TIMEOUT, f"function {name!r} timed out after {spec.timeout:g}s",
                                            request_id=request_id, outcome=outcome) from None
                # anything else it raised, its own TimeoutError and a failed nested call included
                outcome = "error"
                log.error("function %s failed (requestID %s, openid %s, source %s)", name, request_id, openid,
                          source, exc_info=exc)
                raise FunctionCallError(500, ERR_FUNCTION_FAILED, "function failed", request_id=request_id,
                                        outcome=outcome) from None
            try:
                body = json.dumps({"result": result, "requestID": request_id}, ensure_ascii=False,
                                  allow_nan=False).encode("utf-8")
            except (TypeError, ValueError, RecursionError, UnicodeEncodeError) as exc:
                outcome = "bad_result"
                log.error("function %s returned a value that is not JSON-serialisable (requestID %s): %s",
                          name, request_id, exc)
                raise FunctionCallError(500, ERR_BAD_RESULT,
                                        f"function {name!r} returned a value that is not JSON-serialisable",
                                        request_id=request_id, outcome=outcome) from None
            return Invocation(request_id, body)
        finally:
            self.observe(name, outcome, self.clock() - started)
