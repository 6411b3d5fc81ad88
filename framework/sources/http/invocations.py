"""The invocation routes (DESIGN.md sections 5 and 13): this node's recent records and per-function stats.

- `GET /invocations?function=&ok=&trigger=&limit=`: `{"invocations": [...]}`, newest first. `function` is a
  name or a uuid, `ok` is `true` or `false`, `trigger` one of `event`, `direct`, `schedule`, `warmup`,
  `limit` 0..FAAS_RECENT_INVOCATIONS (default 100); beyond the contract, `cancelled=false` leaves out the
  invocations cancelled before they ended (the dashboard's failed view: they did not fail). A bad value,
  or a filter given twice, is 400 `BadRequest` naming the parameter; other parameters are ignored.
- `GET /invocations/{invocation_id}`: the record with its logs, 404 `NotFound` if this node has none.
- `GET /functions/{uuid}/stats`: the function's last 15 minutes (count, failures, p50_ms, p99_ms, and the
  same per minute, oldest first): what the dashboard charts. 404 for a uuid the manifest does not know.
- `GET /invocations/stats?active=`: the same for every function of the manifest, in manifest order;
  `active=true` leaves out those not invoked here in the window (what the dashboard polls).

The routes depend on `InvocationLog` (the node's records) and a listing of the manifest's functions, never on
the node. They sit under `/functions` and `/invocations`, so the API keys guard them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from framework.errors import BadRequest, NotFound
from framework.sources.http.openapi_schemas import ref
from framework.sources.http.responses import JSONResponse

Endpoint = Callable[[Request], Awaitable[Response]]
TRIGGERS = ("event", "direct", "schedule", "warmup")
QUERY = ("function", "ok", "trigger", "limit", "cancelled")
"""The filters of `GET /invocations` (the OpenAPI document describes each)."""
DEFAULT_LIMIT = 100


class InvocationLog(Protocol):
    """What the routes read: the node's invocation records and aggregates."""

    capacity: int
    """How many records are kept (FAAS_RECENT_INVOCATIONS)."""

    def recent(
        self, function: str | None, ok: bool | None, trigger: str | None, limit: int, cancelled: bool | None
    ) -> list[dict[str, Any]]: ...

    def get(self, invocation_id: str) -> dict[str, Any] | None: ...

    def function_stats(self, uuid: str, name: str) -> dict[str, Any]: ...

    def ran_lately(self, uuid: str, name: str) -> bool: ...


Functions = Callable[[], Sequence[tuple[str, str]]]
"""The manifest's functions as (name, uuid), in manifest order."""


def _bool(name: str, value: str | None) -> bool | None:
    if value is None:
        return None
    if value == "true":
        return True
    if value == "false":
        return False
    raise BadRequest(f"query parameter {name!r} must be true or false, not {value!r}")


def _limit(value: str | None, most: int) -> int:
    if value is None:
        return DEFAULT_LIMIT
    # ASCII digits only: int() would also take '+1', ' 1', '1_000' and other scripts' digits.
    if not (value.isascii() and value.isdigit()):
        shown = value if len(value) <= 40 else f"{value[:40]}..."
        raise BadRequest(f"query parameter 'limit' must be a whole number 0 or more, not {shown!r}")
    return min(int(value) if len(value) <= 18 else most, max(most, 0))


class InvocationRoutes:
    def __init__(self, log: InvocationLog, functions: Functions) -> None:
        self.log = log
        self.functions = functions

    async def listing(self, request: Request) -> Response:
        q = request.query_params
        for name in QUERY:  # Starlette would take the last of them: say it rather than guess
            given = len(q.getlist(name))
            if given > 1:
                raise BadRequest(f"query parameter {name!r} is given {given} times: give it once")
        trigger = q.get("trigger")
        if trigger is not None and trigger not in TRIGGERS:
            raise BadRequest(
                f"query parameter 'trigger' must be one of {', '.join(TRIGGERS)}, not {trigger!r}"
            )
        records = self.log.recent(
            q.get("function") or None,
            _bool("ok", q.get("ok")),
            trigger,
            _limit(q.get("limit"), self.log.capacity),
            _bool("cancelled", q.get("cancelled")),
        )
        return JSONResponse({"invocations": records})

    async def one(self, request: Request) -> Response:
        invocation_id: str = request.path_params["invocation_id"]
        record = self.log.get(invocation_id.lower())  # ids are uuids, written lower-case
        if record is None:
            raise NotFound(
                f"no invocation {invocation_id} on this node (it keeps the newest {self.log.capacity})"
            )
        return JSONResponse(record)

    async def function_stats(self, request: Request) -> Response:
        uuid: str = request.path_params["uuid"]
        for name, known in self.functions():
            if known.lower() == uuid.lower():
                return JSONResponse(self.log.function_stats(known, name))
        raise NotFound(f"no function with uuid {uuid}")

    async def all_stats(self, request: Request) -> Response:
        given = len(request.query_params.getlist("active"))
        if given > 1:
            raise BadRequest(f"query parameter 'active' is given {given} times: give it once")
        # The dashboard polls with active=true: a project of 1,000 functions mostly idle is a few bytes,
        # not 1.4 MB of empty minutes every 2 s.
        active = _bool("active", request.query_params.get("active"))
        stats = [
            self.log.function_stats(uuid, name)
            for name, uuid in self.functions()
            if not active or self.log.ran_lately(uuid, name)
        ]
        return JSONResponse({"functions": stats})

    def routes(self, guard: Callable[[Endpoint], Endpoint]) -> list[Route]:
        endpoints = (self.listing, self.all_stats, self.one, self.function_stats)
        return [Route(p, guard(end), methods=["GET"]) for p, end in zip(PATHS, endpoints, strict=True)]


PATHS = ("/invocations", "/invocations/stats", "/invocations/{invocation_id}", "/functions/{uuid}/stats")
"""The paths of these routes. A node with records off (FAAS_RECORDS=false) serves them all the same (no
record: empty lists, zero counts), but does not list them to the dashboard, which then shows `-`, not
figures that read as "nothing ran"."""


# ---- OpenAPI ----


def _query(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def openapi_paths(auth: bool) -> dict[str, Any]:
    """The routes' entries for `openapi.json`; with `auth` they require the bearer key."""
    secured: dict[str, Any] = {"security": [{"bearer": []}]} if auth else {}
    unauthorized = {"401": _json(ref("Error"), "Unauthorized: missing or wrong bearer key")} if auth else {}
    bad = {"400": _json(ref("Error"), "BadRequest: a query parameter has a bad value")}
    return {
        "/invocations": {
            "get": {
                "summary": "This node's recent invocation records, newest first",
                "operationId": "listInvocations",
                **secured,
                "parameters": [
                    _query("function", "A function's name or uuid.", {"type": "string"}),
                    _query("ok", "Only successes (`true`) or failures (`false`).", {"type": "boolean"}),
                    _query("trigger", "Only this trigger.", {"type": "string", "enum": list(TRIGGERS)}),
                    _query("limit", "Records at most.", {"type": "integer", "minimum": 0, "default": 100}),
                    _query(
                        "cancelled",
                        "Only invocations cancelled before they ended (`true`), or none of them (`false`).",
                        {"type": "boolean"},
                    ),
                ],
                "responses": {
                    "200": _json(ref("InvocationList"), "The records"),
                    **bad,
                    **unauthorized,
                },
            }
        },
        "/invocations/stats": {
            "get": {
                "summary": "Every function's last 15 minutes on this node",
                "operationId": "invocationStats",
                **secured,
                "parameters": [
                    _query(
                        "active",
                        "Only the functions invoked on this node in the last 15 minutes (`true`).",
                        {"type": "boolean", "default": False},
                    )
                ],
                "responses": {
                    "200": _json(ref("StatsList"), "One entry per function"),
                    **bad,
                    **unauthorized,
                },
            }
        },
        "/invocations/{invocation_id}": {
            "get": {
                "summary": "One invocation record with its logs",
                "operationId": "getInvocation",
                **secured,
                "parameters": [
                    {
                        "name": "invocation_id",
                        "in": "path",
                        "required": True,
                        "description": "The invocation's id.",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json(ref("InvocationRecord"), "The record"),
                    **unauthorized,
                    "404": _json(ref("Error"), "NotFound: this node keeps no such record"),
                },
            }
        },
        "/functions/{uuid}/stats": {
            "get": {
                "summary": "A function's invocations over the last 15 minutes on this node",
                "operationId": "functionStats",
                **secured,
                "parameters": [
                    {
                        "name": "uuid",
                        "in": "path",
                        "required": True,
                        "description": "The function's UUID.",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json(ref("FunctionStats"), "Counts and percentiles"),
                    **unauthorized,
                    "404": _json(ref("Error"), "NotFound: unknown uuid"),
                },
            }
        },
    }


_NUMBER_OR_NULL = {"type": ["number", "null"]}
_WINDOW = {
    "count": {"type": "integer"},
    "failures": {"type": "integer"},
    "p50_ms": _NUMBER_OR_NULL,
    "p99_ms": _NUMBER_OR_NULL,
}

SCHEMAS: dict[str, Any] = {
    "InvocationRecord": {
        "type": "object",
        "required": ["invocation_id", "function", "uuid", "trigger", "ok", "logs"],
        "properties": {
            "invocation_id": {"type": "string"},
            "function": {"type": "string"},
            "uuid": {"type": "string"},
            "revision": {"type": ["integer", "null"]},
            "trigger": {"type": "string", "enum": list(TRIGGERS)},
            "event": {"type": ["string", "null"]},
            "event_id": {"type": ["string", "null"]},
            "trace_id": {"type": ["string", "null"]},
            "node": {"type": "string"},
            "instance_id": {"type": ["string", "null"]},
            "started_at": {"type": "string", "format": "date-time"},
            "duration_ms": {"type": "number"},
            "cold_start": {"type": "boolean"},
            "attempt": {"type": "integer"},
            "ok": {"type": "boolean"},
            "error": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["type", "message"],
                        "properties": {"type": {"type": "string"}, "message": {"type": "string"}},
                    },
                ]
            },
            "logs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["time", "level", "message"],
                    "properties": {
                        "time": {"type": "string"},
                        "level": {"type": "string"},
                        "message": {"type": "string"},
                        "truncated": {"type": "boolean"},
                    },
                },
            },
        },
    },
    "InvocationList": {
        "type": "object",
        "required": ["invocations"],
        "properties": {"invocations": {"type": "array", "items": ref("InvocationRecord")}},
    },
    "FunctionStats": {
        "type": "object",
        "required": ["function", "uuid", "window_s", "count", "failures", "minutes"],
        "properties": {
            "function": {"type": "string"},
            "uuid": {"type": "string"},
            "window_s": {"type": "integer"},
            **_WINDOW,
            "minutes": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"minute": {"type": "string", "format": "date-time"}, **_WINDOW},
                },
            },
        },
    },
    "StatsList": {
        "type": "object",
        "required": ["functions"],
        "properties": {"functions": {"type": "array", "items": ref("FunctionStats")}},
    },
}
