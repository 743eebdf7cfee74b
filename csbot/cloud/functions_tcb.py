"""``POST /tcb/invokecloudfunction?env=ENV&name=NAME``: WeChat's HTTP trigger of a cloud function.

The POST body is the event; the answer is ``{"errcode": 0, "errmsg": "ok", "resp_data": "<the
function's result as a JSON string>"}``. As in WeChat, an HTTP-triggered call carries no user:
``OPENID`` is empty and ``SOURCE`` is ``wx_http``. Server-only functions (``client=False``) may
be called: the caller holds the server key.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from csbot.cloud.apidoc import TCB_PATHS, tcb_operation
from csbot.cloud.functions import SOURCE_HTTP, FunctionCallError
from csbot.cloud.http import TcbError, read_json, tcb_endpoint
from csbot.services import services_of

#: WeChat's code for a failed function call
ERR_FUNCTION = -1


@tcb_endpoint(env_from="query", body="raw")
async def invokecloudfunction(request: web.Request, app: str, _: Any) -> dict[str, Any]:
    name = request.query.get("name", "")
    if not name:
        raise TcbError(40097, "invalid args: name (the function) is required in the query string")
    functions = services_of(request).functions
    if functions is None:
        raise TcbError(-1, "system error: functions are not running", 503)
    if request.content_length == 0:
        event: Any = {}
    else:
        try:
            event = await read_json(request)
        except TcbError as exc:
            if exc.errcode != 44002:
                raise
            event = {}
    if not isinstance(event, dict):
        raise TcbError(47001, "data format error: the event (the body) must be a JSON object")
    try:
        invocation = await functions.invoke(name, event, app=app, openid=None, source=SOURCE_HTTP)
    except FunctionCallError as exc:
        errcode = 40097 if exc.status in (400, 404) else ERR_FUNCTION
        raise TcbError(errcode, exc.err_msg + (f" (requestID {exc.request_id})" if exc.request_id else ""),
                       exc.status) from None
    answer = invocation.answer()
    return {"resp_data": json.dumps(answer["result"], ensure_ascii=False)}


def functions_tcb_routes() -> list[web.RouteDef]:
    return [web.post("/tcb/invokecloudfunction", invokecloudfunction)]


TCB_PATHS["/invokecloudfunction"] = tcb_operation(
    "invokeCloudFunction", "run a callable function with the body as its event (SOURCE wx_http, no OPENID)",
    {"type": "object", "description": "the event", "additionalProperties": True},
    {"required": ["resp_data"], "properties": {"resp_data": {"type": "string", "description": "the result as JSON"}}},
    parameters=[{"name": "env", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}},
                {"name": "name", "in": "query", "required": True, "schema": {"type": "string", "minLength": 1}}])
