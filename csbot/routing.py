"""Handler discovery and routing rules.

A handler is ``async def main(event, context)`` in a module of the handlers directory, like a
cloud function's ``exports.main``. A module declares what it handles with ``@route(...)``;
a ``main`` without a declaration handles whatever nothing more specific handled. Installed
packages add handlers through the entry-point group ``csbot.handlers``.

Routes are tried by priority (highest first), then name; catch-alls come last. The first
route that matches handles the push unless it returns ``NEXT``.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import re
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, Awaitable, Callable, Iterable, Mapping

log = logging.getLogger("csbot.routing")

HandlerFunc = Callable[[dict[str, Any], Any], Awaitable[Any]]
Predicate = Callable[[Mapping[str, Any]], bool]


class _Next:
    def __repr__(self) -> str:
        return "csbot.NEXT"


#: return this from a handler to pass the push on to the next matching route
NEXT: Any = _Next()

DEFAULT_INLINE_BUDGET = 3.0


def _as_set(value: str | Iterable[str] | None, *, fold: bool = False) -> frozenset[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    return frozenset(i.strip().casefold() if fold else i for i in items)


@dataclass(frozen=True)
class Route:
    """What a handler handles, and how."""

    name: str
    func: HandlerFunc
    msg_types: frozenset[str] | None = None
    events: frozenset[str] | None = None
    keywords: frozenset[str] | None = None
    regex: re.Pattern[str] | None = None
    predicate: Predicate | None = None
    priority: int = 0
    #: run before the webhook answers, so it may give a passive reply
    inline: bool = False
    budget: float = DEFAULT_INLINE_BUDGET
    #: catches what nothing more specific handled
    fallback: bool = False
    #: still runs while a person has taken the conversation over
    while_human: bool = False
    module: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)

    def matches(self, event: Mapping[str, Any]) -> bool:
        msg_type = str(event.get("MsgType", ""))
        if self.msg_types is not None and msg_type not in self.msg_types:
            return False
        if self.events is not None:
            # OA events are upper-case (SCAN, CLICK), MP ones lower-case: match case-insensitively
            if msg_type != "event" or str(event.get("Event", "")).casefold() not in self.events:
                return False
        text = event.get("Content") if msg_type == "text" else None
        if self.keywords is not None:
            if not isinstance(text, str) or text.strip().casefold() not in self.keywords:
                return False
        if self.regex is not None:
            if not isinstance(text, str) or not self.regex.search(text):
                return False
        if self.predicate is not None:
            try:
                return bool(self.predicate(event))
            except Exception as exc:  # a predicate's mistake is "not for me", never a wedged user
                _predicate_failed(self.name, exc)
                return False
        return True

    def match(self, event: Mapping[str, Any]) -> re.Match[str] | None:
        """The ``re.Match`` of this route's regex on the push's text (``context.match``); None
        for a route without a regex."""
        text = event.get("Content") if event.get("MsgType") == "text" else None
        if self.regex is None or not isinstance(text, str):
            return None
        return self.regex.search(text)


#: (route, exception type) of predicate failures already logged: each is logged once per process
_logged_failures: set[tuple[str, str]] = set()


def _predicate_failed(route_name: str, exc: Exception) -> None:
    key = (route_name, type(exc).__name__)
    if key in _logged_failures:
        log.debug("predicate of route %s raised %r again; no match", route_name, exc)
        return
    if len(_logged_failures) < 10_000:
        _logged_failures.add(key)
    log.warning("predicate of route %s raised %r: counted as no match (logged once per error type)",
                route_name, exc, exc_info=exc)


def route(
    *,
    msg_type: str | Iterable[str] | None = None,
    event: str | Iterable[str] | None = None,
    keyword: str | Iterable[str] | None = None,
    regex: str | re.Pattern[str] | None = None,
    predicate: Predicate | None = None,
    priority: int = 0,
    inline: bool = False,
    budget: float = DEFAULT_INLINE_BUDGET,
    fallback: bool = False,
    while_human: bool = False,
) -> Callable[[HandlerFunc], HandlerFunc]:
    """Declare what the decorated ``async def f(event, context)`` handles.

    ``keyword`` matches the whole text (trimmed, case-insensitive); ``regex`` searches it;
    ``event`` matches ``Event`` case-insensitively; ``predicate`` gets the event mapping.
    ``inline=True`` runs the handler before the webhook answers (within ``budget`` seconds,
    under WeChat's 5 s deadline) so it can return a passive reply.
    """
    if budget <= 0 or budget >= 5:
        raise ValueError("an inline budget must be between 0 and WeChat's 5-second deadline")
    spec = dict(
        msg_types=_as_set(msg_type),
        events=_as_set(event, fold=True),
        keywords=_as_set(keyword, fold=True),
        regex=re.compile(regex) if isinstance(regex, str) else regex,
        predicate=predicate,
        priority=priority,
        inline=inline,
        budget=budget,
        fallback=fallback,
        while_human=while_human,
    )
    if spec["keywords"] is not None or spec["regex"] is not None:
        spec["msg_types"] = spec["msg_types"] or frozenset({"text"})

    def decorate(func: HandlerFunc) -> HandlerFunc:
        if not inspect.iscoroutinefunction(func):
            raise TypeError(f"handler {func.__qualname__} must be an async function")
        func.__csbot_route__ = spec  # type: ignore[attr-defined]
        return func

    return decorate


class HandlerLoadError(RuntimeError):
    pass


def _routes_of_module(module: ModuleType, prefix: str, options: Mapping[str, Any]) -> list[Route]:
    """The routes a handler module declares; its ``setup(options)``, if any, runs first.

    ``setup`` lets a module shape its routes from configuration (e.g. the phrases that make the
    shipped ``human`` handler match), so a push that is not for it is never offered to it.
    """
    setup = getattr(module, "setup", None)
    if callable(setup):
        setup(dict(options))
    routes: list[Route] = []
    for attr, obj in sorted(vars(module).items()):
        spec = getattr(obj, "__csbot_route__", None)
        if spec is None or getattr(obj, "__module__", None) != module.__name__:
            continue
        name = prefix if attr == "main" else f"{prefix}.{attr}"
        routes.append(Route(name=name, func=obj, module=prefix, options=options, **spec))
    main = getattr(module, "main", None)
    # a module whose main is a callable function (csbot.cloud) is not a push handler
    if main is not None and not hasattr(main, "__csbot_route__") and not hasattr(main, "__csbot_function__"):
        if not inspect.iscoroutinefunction(main):
            raise HandlerLoadError(f"{prefix}: main must be `async def main(event, context)`")
        routes.append(Route(name=prefix, func=main, fallback=True, module=prefix, options=options))
    return routes


def _import_file(path: Path) -> ModuleType:
    mod_name = f"csbot_handlers.{path.stem}"
    spec = importlib.util.spec_from_file_location(mod_name, path)
    if spec is None or spec.loader is None:
        raise HandlerLoadError(f"cannot import handler file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        sys.modules.pop(mod_name, None)
        raise HandlerLoadError(f"handler {path} failed to import: {exc!r}") from exc
    return module


class Router:
    """The ordered routes of a deployment."""

    def __init__(self, routes: Iterable[Route], modules: Iterable[tuple[str, ModuleType, Mapping[str, Any]]] = ()) -> None:
        self.routes: list[Route] = sorted(routes, key=lambda r: (r.fallback, -r.priority, r.name))
        #: the handler modules loaded, as (name, module, options): callable functions live there too
        self.modules: list[tuple[str, ModuleType, Mapping[str, Any]]] = list(modules)

    @classmethod
    def load(
        cls,
        handlers_dir: Path | None,
        options: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        use_entry_points: bool = True,
    ) -> "Router":
        """Discover handlers in ``handlers_dir`` (``*.py`` not starting with ``_``) and entry points."""
        options = options or {}
        routes: list[Route] = []
        modules: list[tuple[str, ModuleType, Mapping[str, Any]]] = []
        if handlers_dir is not None and handlers_dir.is_dir():
            for path in sorted(handlers_dir.glob("*.py")):
                if path.name.startswith("_"):
                    continue
                module = _import_file(path)
                modules.append((path.stem, module, options.get(path.stem, {})))
                routes.extend(_routes_of_module(module, path.stem, options.get(path.stem, {})))
        elif handlers_dir is not None:
            log.warning("handlers directory %s does not exist; no file handlers loaded", handlers_dir)
        if use_entry_points:
            for ep in entry_points(group="csbot.handlers"):
                obj = ep.load()
                opts = options.get(ep.name, {})
                if isinstance(obj, ModuleType):
                    modules.append((ep.name, obj, opts))
                    routes.extend(_routes_of_module(obj, ep.name, opts))
                elif hasattr(obj, "__csbot_function__") and not hasattr(obj, "__csbot_route__"):
                    # a callable function (csbot.cloud) is found in its module, never a push fallback
                    modules.append((ep.name, sys.modules[obj.__module__], opts))
                elif hasattr(obj, "__csbot_route__"):
                    routes.append(Route(name=ep.name, func=obj, module=ep.name, options=opts,
                                        **obj.__csbot_route__))
                elif inspect.iscoroutinefunction(obj):
                    routes.append(Route(name=ep.name, func=obj, fallback=True, module=ep.name, options=opts))
                else:
                    raise HandlerLoadError(f"entry point {ep.name} is not a handler module or function")
        names = [r.name for r in routes]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise HandlerLoadError(f"handler name(s) defined twice: {', '.join(sorted(dupes))}")
        return cls(routes, modules)

    def candidates(self, event: Mapping[str, Any], *, human: bool = False) -> list[Route]:
        """Routes matching ``event`` in the order they are tried."""
        return [r for r in self.routes if (r.while_human or not human) and r.matches(event)]

    def inline_routes(self, event: Mapping[str, Any]) -> list[Route]:
        """Inline routes matching ``event``: the webhook runs these before it answers."""
        return [r for r in self.routes if r.inline and r.matches(event)]

    def has_inline(self) -> bool:
        return any(r.inline for r in self.routes)
