"""The HTTP source (DESIGN.md section 5): direct invocation, listings, HTTP events and the ops endpoints.

Plain `Route` endpoints and no middleware beyond the bearer check (installed only when `FAAS_API_KEYS` is
set): the invoke route sits on the hot path. Each endpoint turns a `FaasError` into its contract status and
`{"error": {"type", "message"}}` body itself, which is cheaper than raising through Starlette's handlers.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from framework.errors import FaasError, NotFound
from framework.invoker import new_id
from framework.manifest import FunctionSpec
from framework.sources.http_auth import BearerAuth
from framework.sources.http_body import read_payload
from framework.sources.http_responses import (
    INTERNAL_ERROR,
    JSONResponse,
    error_body,
    error_response,
    status_of,
)
from framework.sources.openapi import openapi_document

if TYPE_CHECKING:
    from framework.node import Node

log = logging.getLogger("faas.http")

Endpoint = Callable[[Request], Awaitable[Response]]


def _guarded(endpoint: Endpoint) -> Endpoint:
    """Answer a `FaasError` with its status and body, and anything unexpected with a logged 500."""

    @functools.wraps(endpoint)
    async def run(request: Request) -> Response:
        try:
            return await endpoint(request)
        except FaasError as exc:
            return error_response(exc)
        except ClientDisconnect:  # the caller left mid-body: nobody reads this answer
            return Response(status_code=400)
        except Exception:
            # A bug of the node, not of a function (the runtime reports those as FaasErrors).
            log.exception("unexpected error serving %s %s", request.method, request.url.path)
            return JSONResponse(error_body(INTERNAL_ERROR, "internal error; see the node's log"), 500)

    return run


class HttpSource:
    """The endpoints, bound to one node. The node's registry is read per request: reloads swap it."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.limit = node.settings.max_payload_bytes
        self.openapi = orjson.dumps(openapi_document(auth=bool(node.settings.keys)))

    # ---- functions ----

    async def invoke(self, request: Request) -> Response:
        invoker = self.node.invoker
        uuid: str = request.path_params["uuid"]
        invoker.lookup(uuid)  # 404 before the body is read (the contract's check order)
        payload = await read_payload(request, self.limit)
        # `direct` looks the function up again: one that left `productive` meanwhile gets no new work.
        res = await invoker.direct(uuid, payload)
        return JSONResponse(
            orjson.dumps(
                {
                    "invocation_id": res.invocation_id,
                    "result": orjson.Fragment(res.result),  # the handler's JSON as the instance sent it
                    "duration_ms": round(res.duration_ms, 3),
                    "cold_start": res.cold_start,
                }
            )
        )

    async def list_functions(self, request: Request) -> Response:
        return JSONResponse({"functions": [self.describe(spec) for spec in self.node.registry.functions]})

    async def get_function(self, request: Request) -> Response:
        uuid: str = request.path_params["uuid"]
        spec = self.node.registry.productive(uuid)
        if spec is None:
            raise NotFound(f"no productive function with uuid {uuid}")
        return JSONResponse(self.describe(spec))

    def describe(self, spec: FunctionSpec) -> dict[str, Any]:
        """The listing entry of one function; `schedules` from the scheduler (next fire, last result)."""
        scheduler = self.node.scheduler
        schedules: list[Any] = (
            scheduler.status(spec.name)
            if scheduler is not None  # not started yet: the manifest's entries, nothing fired
            else [{**s.model_dump(mode="json"), "next_fire": None, "last": None} for s in spec.schedules]
        )
        return {
            "name": spec.name,
            "uuid": spec.uuid,
            "state": spec.state,
            "events": list(spec.events),
            "schedules": schedules,
            "instances": self.node.invoker.instance_count(spec.name),
        }

    # ---- events ----

    async def listeners(self, request: Request) -> Response:
        event: str = request.path_params["type"]
        functions = [{"name": f.name, "uuid": f.uuid} for f in self.node.registry.listeners(event)]
        return JSONResponse({"event": event, "functions": functions})

    async def emit(self, request: Request) -> Response:
        event: str = request.path_params["type"]
        event_id = request.headers.get("ce-id") or new_id()
        try:
            payload = await read_payload(request, self.limit)
        except FaasError as exc:
            # Still the combined reply's shape, so callers read one format from this route.
            body = {
                "id": event_id,
                "event": event,
                "ok": False,
                "results": [],
                "error": {"function": None, "uuid": None, **exc.to_dict()},
            }
            return JSONResponse(body, exc.status)
        reply = await self.node.invoker.event(event, event_id, payload)
        return JSONResponse(reply.to_json(), 200 if reply.ok else status_of(reply.error_type))

    # ---- operations ----

    async def healthz(self, request: Request) -> Response:
        return JSONResponse(b'{"status":"ok"}')

    async def readyz(self, request: Request) -> Response:
        ready, body = self.node.readiness()
        return JSONResponse(body, 200 if ready else 503)

    async def metrics(self, request: Request) -> Response:
        return Response(self.node.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    async def openapi_json(self, request: Request) -> Response:
        return JSONResponse(self.openapi)

    def routes(self) -> list[Route]:
        g = _guarded
        return [
            Route("/functions/{uuid}/invoke", g(self.invoke), methods=["POST"]),
            Route("/functions", g(self.list_functions), methods=["GET"]),
            Route("/functions/{uuid}", g(self.get_function), methods=["GET"]),
            Route("/events/{type}/listeners", g(self.listeners), methods=["GET"]),
            Route("/events/{type}", g(self.emit), methods=["POST"]),
            Route("/healthz", g(self.healthz), methods=["GET"]),
            Route("/readyz", g(self.readyz), methods=["GET"]),
            Route("/metrics", g(self.metrics), methods=["GET"]),
            Route("/openapi.json", g(self.openapi_json), methods=["GET"]),
        ]


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Unknown routes and wrong methods, in the contract's error shape instead of Starlette's plain text."""
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        return error_response(NotFound(f"no route {request.method} {request.url.path}"), headers=exc.headers)
    error_type = "MethodNotAllowed" if exc.status_code == 405 else "BadRequest"
    return JSONResponse(error_body(error_type, str(exc.detail)), exc.status_code, headers=exc.headers)


def create_app(node: Node) -> Starlette:
    """The Starlette app the node serves with uvicorn."""
    keys = node.settings.keys
    middleware = [Middleware(BearerAuth, keys=keys)] if keys else []
    return Starlette(
        routes=HttpSource(node).routes(),
        middleware=middleware,
        exception_handlers={HTTPException: _http_exception},
    )
