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


