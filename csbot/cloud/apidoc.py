"""The OpenAPI 3 document of the server HTTP API (``/tcb/*``), served at ``/tcb/openapi.json``.

Each cloud service adds its operations to :data:`TCB_PATHS` (paths relative to ``/tcb``) next
to its routes, so the document and the routes change together; a test checks that every
served ``/tcb`` route is described and that the handlers answer what the document says.
"""

from __future__ import annotations

from typing import Any

#: path (under /tcb) → OpenAPI path item; filled by the services' modules
TCB_PATHS: dict[str, dict[str, Any]] = {}

ERROR = {
    "type": "object", "required": ["errcode", "errmsg"],
    "properties": {"errcode": {"type": "integer", "description": "WeChat's code: 41001 no key, 40014 wrong "
                                                                 "key, 44002 empty body, 47001 not JSON, "
                                                                 "40097 invalid args, 85088 unknown env, -1"},
                   "errmsg": {"type": "string"}},
}


def json_body(schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {"required": True, "content": {"application/json": {"schema": schema}}}
    if description:
        out["description"] = description
    return out


def tcb_operation(operation_id: str, summary: str, request: dict[str, Any], answer: dict[str, Any],
                  **extra: Any) -> dict[str, Any]:
    """A ``POST /tcb/<name>`` operation with WeChat's error answers."""
    ok = {"type": "object", "required": ["errcode", "errmsg", *answer.get("required", [])],
          "properties": {"errcode": {"type": "integer", "enum": [0]}, "errmsg": {"type": "string"},
                         **answer["properties"]}}
    error = {"content": {"application/json": {"schema": ERROR}}}
    return {"post": {
        "operationId": operation_id, "summary": summary, "requestBody": json_body(request),
        "responses": {"200": {"description": "done", "content": {"application/json": {"schema": ok}}},
                      "400": {"description": "bad request", **error},
                      "401": {"description": "no or wrong server key", **error},
                      "404": {"description": "env is not an app of this csbot", **error},
                      "413": {"description": "body too large", **error},
                      "500": {"description": "unexpected failure (errcode -1)", **error}},
        **extra}}


def tcb_openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.0.3",
        "info": {"title": "csbot server HTTP API", "version": "1",
                 "description": "WeChat's tcb/* HTTP API on csbot: same names, bodies and answers. "
                                "`env` names the csbot app (`default` for the CSBOT_* app)."},
        "servers": [{"url": "/tcb"}],
        "security": [{"serverKey": []}],
        "components": {"securitySchemes": {"serverKey": {
            "type": "http", "scheme": "bearer", "description": "CSBOT_SERVER_KEY"}}},
        "paths": dict(sorted(TCB_PATHS.items())),
    }
