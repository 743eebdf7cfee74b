"""The console's read-only view of the cloud database: ``/admin/db`` (collections) and
``/admin/db/{app}/{collection}?where=JSON`` (documents, 50 a page, a JSON filter in WeChat's
wire format). The console owns sign-in and layout; this module only adds the two pages."""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

from aiohttp import web

from csbot.cloud.database.api import Database
from csbot.cloud.database.errors import DatabaseError

PAGE = 50


def add_database_pages(console: web.Application, services: Any, require: Callable[..., Awaitable[Any]],
                       render: Callable[..., web.Response], base_ctx: Callable[[Any], dict[str, Any]]) -> None:
    settings = services.settings

    async def collections_page(request: web.Request) -> web.Response:
        session = await require(request, page=True)
        rows = []
        for app in settings.apps:
            if services.database is not None:
                for name, count in await services.database.collections(app):
                    rows.append({"app": app, "name": name, "count": count})
        return render("db.html", **base_ctx(session), collections=rows, collection=None)

    async def documents_page(request: web.Request) -> web.Response:
        session = await require(request, page=True)
        app, name = request.match_info["app"], request.match_info["collection"]
        if app not in settings.apps or services.database is None:
            raise web.HTTPNotFound(reason=f"no app {app!r}")
        where_text = (request.query.get("where") or "").strip()[:4000]
        try:
            skip = max(int(request.query.get("skip") or 0), 0)
        except ValueError:
            skip = 0
        error = ""
        docs: list[str] = []
        total = 0
        try:
            where = json.loads(where_text) if where_text else {}
            query = Database(services.database, app).collection(name).where(where)
            total = (await query.count())["total"]
            found = (await query.skip(skip).limit(PAGE).get())["data"]
            docs = [json.dumps(d, ensure_ascii=False, indent=2) for d in found]
        except ValueError as exc:
            error = f"the filter is not JSON: {exc}"
        except DatabaseError as exc:
            error = exc.message
        return render("db.html", **base_ctx(session), collections=None, collection=name, app=app,
                      where=where_text, docs=docs, total=total, skip=skip, page=PAGE, error=error)

    console.router.add_get("/db", collections_page)
    console.router.add_get("/db/{app}/{collection}", documents_page)
