"""Helpers of the review tests: a running csbot with the review API and console enabled."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from csbot.services import services_of
from csbot.routing import Route, Router
from csbot.testing.harness import Harness

ADMIN_TOKEN = "test-admin-token-3f9c"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HANDLERS = Path(__file__).parents[2] / "handlers"


async def fragile(event: dict, context: Any) -> Any:
    """Raises on "boom", like a handler with a bug; says nothing otherwise."""
    if event.get("Content") == "boom":
        raise ValueError("order number not understood")
    return None


def review_router() -> Router:
    """The shipped handlers, plus one that fails on "boom"."""
    shipped = Router.load(HANDLERS, use_entry_points=False)
    return Router([*shipped.routes, Route("fragile", fragile, msg_types=frozenset({"text"}), keywords=frozenset({"boom"}), priority=50)])


def start(**overrides: Any) -> Any:
    """A running csbot with the admin token set, the shipped handlers and ``fragile``."""
    overrides.setdefault("admin_token", ADMIN_TOKEN)
    return Harness.start(router=review_router(), **overrides)


def review_of(bot: Harness) -> Any:
    return services_of(bot.app).review


async def api(bot: Harness, method: str, path: str, *, headers: dict | None = None, **kw: Any) -> tuple[int, Any]:
    """Call the review API; returns (status, parsed JSON or text)."""
    async with bot.session.request(method, bot.url + path, headers=AUTH if headers is None else headers,
                                   **kw) as resp:
        if resp.content_type == "application/json":
            return resp.status, await resp.json()
        return resp.status, await resp.text()




PASSWORD = "correct horse battery"


def agents_of(bot: Harness) -> Any:
    return services_of(bot.app).agents


async def add_agent(bot: Harness, name: str, *, role: str = "agent", password: str = PASSWORD) -> None:
    await agents_of(bot).add(name, password, role=role)


async def login_csrf(bot: Harness, session: Any) -> str:
    import re

    async with session.get(bot.url + "/admin/login") as resp:
        html = await resp.text()
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


async def console_sign_in(bot: Harness, session: Any, name: str, password: str = PASSWORD, **extra: str) -> Any:
    """Post the sign-in form (with its CSRF cookie); returns the response (not followed)."""
    csrf = await login_csrf(bot, session)
    return await session.post(bot.url + "/admin/login", data={"name": name, "password": password,
                                                               "csrf": csrf, **extra}, allow_redirects=False)
