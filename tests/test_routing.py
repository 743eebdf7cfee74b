"""Routing: declarations, priorities, passing on, fallbacks, discovery."""

import re
import textwrap

import pytest

from csbot.routing import NEXT, HandlerLoadError, Route, Router, route


async def _noop(event, context):
    return None


def text(content):
    return {"MsgType": "text", "Content": content, "FromUserName": "o1"}


def test_route_matches_type_event_keyword_regex_and_predicate():
    assert Route("a", _noop, msg_types=frozenset({"image"})).matches({"MsgType": "image"})
    assert not Route("a", _noop, msg_types=frozenset({"image"})).matches(text("x"))
    ev = Route("e", _noop, events=frozenset({"scan"}))
    assert ev.matches({"MsgType": "event", "Event": "SCAN"})  # OA events are upper-case
    assert not ev.matches({"MsgType": "event", "Event": "subscribe"})
    kw = Route("k", _noop, keywords=frozenset({"hello"}))
    assert kw.matches(text("  Hello ")) and not kw.matches(text("hello there"))
    rx = Route("r", _noop, regex=re.compile(r"order \d+"))
    assert rx.matches(text("my order 123 is late")) and not rx.matches({"MsgType": "image"})
    pred = Route("p", _noop, predicate=lambda e: e.get("FromUserName") == "o1")
    assert pred.matches(text("x")) and not pred.matches({"MsgType": "text", "FromUserName": "o2"})


def test_decorator_declares_and_keyword_implies_text():
    @route(keyword=["hi", "Hello"], priority=5)
    async def h(event, context):
        return "hey"

    spec = h.__csbot_route__
    assert spec["keywords"] == frozenset({"hi", "hello"}) and spec["msg_types"] == frozenset({"text"})
    assert spec["priority"] == 5


def test_decorator_refuses_sync_functions_and_budgets_past_the_deadline():
    with pytest.raises(TypeError):
        route()(lambda e, c: None)
    with pytest.raises(ValueError):
        route(inline=True, budget=5)


def test_candidates_are_ordered_by_priority_then_name_with_fallbacks_last():
    r = Router([Route("z", _noop, priority=1), Route("fb", _noop, fallback=True),
                Route("a", _noop, priority=1), Route("top", _noop, priority=9)])
    assert [x.name for x in r.candidates(text("x"))] == ["top", "a", "z", "fb"]


def test_human_conversations_only_reach_handlers_that_ask_for_them():
    r = Router([Route("bot", _noop), Route("greeter", _noop, while_human=True)])
    assert [x.name for x in r.candidates(text("x"), human=True)] == ["greeter"]


def test_inline_routes_are_listed_for_the_webhook():
    r = Router([Route("inl", _noop, inline=True), Route("normal", _noop)])
    assert [x.name for x in r.inline_routes(text("x"))] == ["inl"]
    assert r.has_inline()


def test_discovery_loads_modules_with_declarations_and_bare_main(tmp_path):
    (tmp_path / "greet.py").write_text(textwrap.dedent('''
        from csbot import route
        @route(event="user_enter_tempsession")
        async def main(event, context):
            return "hi"
        @route(keyword="ping", priority=3)
        async def pong(event, context):
            return "pong"
    '''))
    (tmp_path / "catchall.py").write_text("async def main(event, context):\n    return 'fallback'\n")
    (tmp_path / "_private.py").write_text("raise RuntimeError('never imported')\n")
    router = Router.load(tmp_path, {"greet": {"text": "x"}}, use_entry_points=False)
    names = {r.name: r for r in router.routes}
    assert set(names) == {"greet", "greet.pong", "catchall"}
    assert names["catchall"].fallback and names["greet"].options == {"text": "x"}
    assert router.routes[-1].name == "catchall"


def test_a_broken_handler_file_is_reported_by_name(tmp_path):
    (tmp_path / "bad.py").write_text("import does_not_exist\n")
    with pytest.raises(HandlerLoadError, match="bad.py"):
        Router.load(tmp_path, use_entry_points=False)
    (tmp_path / "bad.py").write_text("def main(event, context):\n    pass\n")
    with pytest.raises(HandlerLoadError, match="async def main"):
        Router.load(tmp_path, use_entry_points=False)


def test_entry_point_handlers_are_loaded(monkeypatch):
    import types

    from csbot import routing

    mod = types.ModuleType("pkg_handlers")

    @route(keyword="pkg")
    async def main(event, context):
        return "from a package"

    main.__module__ = "pkg_handlers"
    mod.main = main

    class EP:
        name = "pkg"

        def load(self):
            return mod

    monkeypatch.setattr(routing, "entry_points", lambda group: [EP()] if group == "csbot.handlers" else [])
    router = Router.load(None)
    assert [r.name for r in router.routes] == ["pkg"]


def test_next_is_a_recognisable_sentinel():
    assert repr(NEXT) == "csbot.NEXT"
