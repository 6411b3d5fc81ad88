"""The HTTP source (DESIGN.md section 5): direct invocation, listings, HTTP events and the ops endpoints.

Plain `Route` endpoints and no middleware beyond the bearer check (installed only when `FAAS_API_KEYS` is
set). Each endpoint turns a `FaasError` into its contract status and `{"error": {"type", "message"}}` body
itself, which is cheaper than raising through Starlette's handlers. `POST /functions/{uuid}/invoke`, the hot
path, is answered in front of Starlette (`App.__call__`) on the raw ASGI messages, with the same checks in
the same order: Starlette's middleware stack, router, Request and Response objects cost more per request
than the whole platform path behind them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

import orjson
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from framework.control.registry import Registry
from framework.control.spec import FunctionSpec, event_type
from framework.errors import BadRequest, FaasError, NotFound, status_of
from framework.invoker import EventReply, new_id
from framework.observe import tracing
from framework.observe.spans import export_event
from framework.settings import Settings
from framework.sources.http.auth import ApiKeys, BearerAuth
from framework.sources.http.body import BodyReader, discard
from framework.sources.http.browsers import BrowserGuard
from framework.sources.http.callers import CallerLeft, Callers
from framework.sources.http.cloudevents import kafka_headers, receive, typed_event, typed_event_id
from framework.sources.http.dashboard import Dashboard
from framework.sources.http.invocations import PATHS as invocation_paths
from framework.sources.http.invocations import InvocationLog, InvocationRoutes
from framework.sources.http.openapi import openapi_document
from framework.sources.http.requests import RequestCounters, RequestMetrics
from framework.sources.http.responses import (
    INTERNAL_ERROR,
    JSONResponse,
    error_body,
    error_response,
)
from framework.sources.http.stopping import InflightRequests
from framework.types import EventIdentity, InvokeResult

log = logging.getLogger("faas.http")


RAN = frozenset({"FunctionError", "Timeout", "InstanceCrashed"})
"""Error types of a direct invocation that ran: its answer names it in the `faas-invocation-id` header
(its record, when records are on, is `GET /invocations/{id}`). An error of an invocation that did not run
but has a record (`FaasError.recorded`: an `Overloaded` from a full queue) names it too. A request refused
before it became an invocation has neither, whatever its status: 400, 404, 413, and the 429 a stopping node
answers a request whose body has not arrived (`body.py`), which has no payload to invoke with, as a 413 has
none. The header only ever names a record that `GET /invocations/{id}` can find."""

Endpoint = Callable[[Request], Awaitable[Response]]


def _event_route(path: str, endpoint: Endpoint, method: str) -> Route:
    """A route whose `{type}` is an event type, `/` included (`com.acme/order.created` is a valid type;
    Starlette's `{type}` stops at the first `/`, so such a type had no route). `POST /events/x/listeners`
    stays the listeners route's (405), not an event of type `x/listeners`: such a type is raised through
    `POST /events`. The path stays as written: it labels the metrics and `/ui/session` lists it."""
    route = Route(path, endpoint, methods=[method])
    pattern = route.path_regex.pattern.replace("(?P<type>[^/]+)", "(?P<type>(?s:.+))")
    if not path.endswith("/listeners"):
        pattern = pattern.removesuffix("$") + "(?<!/listeners)$"
    route.path_regex = re.compile(pattern)
    return route


class Invoker(Protocol):
    """What the HTTP source asks of the invoker. Its `registry` is read per request: reloads swap it."""

    @property
    def registry(self) -> Registry: ...

    @property
    def exporter(self) -> tracing.Exporter | None: ...

    def lookup(self, uuid: str) -> FunctionSpec: ...

    async def direct(
        self, uuid: str, payload: bytes, span: tracing.Span | None = None, invocation_id: str | None = None
    ) -> InvokeResult: ...

    async def event(
        self,
        event_type: str,
        event_id: str,
        payload: bytes,
        identity: EventIdentity | None = None,
        span: tracing.Span | None = None,
    ) -> EventReply: ...

    def instance_count(self, name: str) -> int: ...


class ScheduleStatus(Protocol):
    def status(self, name: str) -> list[dict[str, Any]]:
        """A function's schedules with their next fire time and last result."""
        ...


class Readiness(Protocol):
    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """(ready, the `/readyz` body)."""
        ...


class Deployments(Protocol):
    """The deployment log as the listings see it (DESIGN.md section 12)."""

    def status(self, uuid: str) -> dict[str, Any]:
        """`revision`, `modified` and `deployed_at` of a function."""
        ...

    def revisions(self, uuid: str) -> list[dict[str, Any]] | None:
        """Its kept revisions, newest first; None for a uuid neither the log nor the manifest has."""
        ...


class MetricsRenderer(RequestCounters, Protocol):
    def render(self) -> bytes:
        """The Prometheus text exposition. Called from a thread of its own: what it reads of the node must
        be safe to read while the loop changes it."""
        ...


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
    """The endpoints, over the small views above (never the node itself)."""

    def __init__(
        self,
        settings: Settings,
        invoker: Invoker,
        schedules: ScheduleStatus | None,
        readiness: Readiness,
        metrics: MetricsRenderer,
        deployments: Deployments | None = None,
    ) -> None:
        self.invoker = invoker
        self.schedules = schedules
        self.readiness_view = readiness
        self.deployments = deployments
        self.metrics_renderer = metrics
        self._rendering: asyncio.Future[bytes] | None = None
        """The `/metrics` render under way, which concurrent scrapes share."""
        self.body = BodyReader(settings.max_payload_bytes, settings.http_body_timeout)
        self.inflight = InflightRequests()
        self.callers = Callers()
        self.openapi = orjson.dumps(openapi_document(auth=bool(settings.keys)))

    # ---- functions ----

    async def invoke_body(
        self,
        uuid: str,
        scope: Scope,
        receive: Receive,
        span: tracing.Span,
        invocation_id: str,
        task: asyncio.Task[Any],
    ) -> bytes:
        """Direct invocation: the 200 body, or the FaasError to answer. `span` is the invocation's; `task`
        the request's (cancelled if its caller hangs up)."""
        invoker = self.invoker
        try:
            invoker.lookup(uuid)  # 404 before the body is read (the contract's check order)
        except FaasError:
            await discard(scope, receive)  # so the 404 reaches a client still sending
            raise
        payload = await self.body.read(scope, receive)
        self.callers.add(task, receive)
        try:
            # `direct` looks the function up again: one that left `productive` meanwhile gets no new work.
            res = await invoker.direct(uuid, payload, span, invocation_id)
        except asyncio.CancelledError:
            if self.callers.hung_up(task):
                task.uncancel()
                raise CallerLeft from None
            raise
        finally:
            self.callers.discard(task)
        return orjson.dumps(
            {
                "invocation_id": res.invocation_id,
                "result": orjson.Fragment(res.result),  # the handler's JSON as the instance sent it
                "duration_ms": round(res.duration_ms, 3),
                "cold_start": res.cold_start,
            }
        )

    async def invoke_asgi(
        self, uuid: str, scope: Scope, receive: Receive, send: Send, task: asyncio.Task[Any] | None = None
    ) -> int:
        """`POST /functions/{uuid}/invoke` on raw ASGI messages: the route's one implementation.
        Returns the status sent; the response carries the invocation's `traceparent`. `task`: the request's,
        when the caller has it at hand."""
        content_type: list[tuple[bytes, bytes]] = [(b"content-type", b"application/json")]
        span = tracing.from_headers(scope["headers"])
        invocation_id = new_id()
        try:
            try:
                # The request's task, as the caller found it (`current_task` costs a getpid() on 3.11).
                task = task or asyncio.current_task()
                assert task is not None
                status, body = 200, await self.invoke_body(uuid, scope, receive, span, invocation_id, task)
            except asyncio.CancelledError:
                cut = self.inflight.error()  # the node's stop ran out of grace: said in the contract's body
                if cut is None:
                    raise
                raise cut from None
        except FaasError as exc:
            status, body = exc.status, error_body(exc.type, exc.message)
            if exc.type in RAN or exc.recorded:  # GET /invocations/{id}: the body has no room for the id
                content_type = [*content_type, (b"faas-invocation-id", invocation_id.encode())]
        except ClientDisconnect:  # the caller left mid-body: nobody reads this answer
            status, body, content_type = 400, b"", []
        except CallerLeft:  # and its invocation was cancelled: no answer is sent to nobody
            return CALLER_LEFT
        except Exception:
            log.exception("unexpected error serving POST %s", scope["path"])
            status, body = 500, error_body(INTERNAL_ERROR, "internal error; see the node's log")
        headers = [
            (b"content-length", str(len(body)).encode()),
            *content_type,
            (b"traceparent", span.traceparent.encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return status

    async def list_functions(self, request: Request) -> Response:
        functions = [self.describe(spec) for spec in self.invoker.registry.functions]
        return JSONResponse({"functions": functions})

    async def get_function(self, request: Request) -> Response:
        return JSONResponse(self.describe(self.invoker.lookup(request.path_params["uuid"])))

    def describe(self, spec: FunctionSpec) -> dict[str, Any]:
        """The listing entry of one function; `schedules` from the scheduler (next fire, last result)."""
        schedules: list[Any] = (
            self.schedules.status(spec.name)
            if self.schedules is not None  # no scheduler: the manifest's entries, nothing fired
            else [{**s.model_dump(mode="json"), "next_fire": None, "last": None} for s in spec.schedules]
        )
        return {
            "name": spec.name,
            "uuid": spec.uuid,
            "state": spec.state,
            "events": list(spec.events),
            "schedules": schedules,
            "instances": self.invoker.instance_count(spec.name),
            **self._deployment(spec.uuid),
        }

    def _deployment(self, uuid: str) -> dict[str, Any]:
        """`revision`, `modified`, `deployed_at` (section 12); null, false, null without a log."""
        if self.deployments is None:
            return {"revision": None, "modified": False, "deployed_at": None}
        return self.deployments.status(uuid)

    async def function_revisions(self, request: Request) -> Response:
        uuid: str = request.path_params["uuid"]
        kept = self.deployments.revisions(uuid) if self.deployments is not None else None
        if kept is None and self.invoker.registry.by_uuid(uuid) is None:
            raise NotFound(f"no function with uuid {uuid}")
        return JSONResponse({"revisions": kept or []})

    # ---- events ----

    async def listeners(self, request: Request) -> Response:
        event = _path_type(request)
        functions = [{"name": f.name, "uuid": f.uuid} for f in self.invoker.registry.listeners(event)]
        return JSONResponse({"event": event, "functions": functions})

    async def emit(self, request: Request) -> Response:
        event: str = request.path_params["type"]
        headers = kafka_headers(request.scope["headers"])
        bad_id: BadRequest | None = None
        try:
            event_id = typed_event_id(headers) or new_id()
        except BadRequest as exc:
            event_id, bad_id = new_id(), exc
        try:
            payload = await self.body.read_request(request)  # its 413 comes before any 400 (section 5)
            event = _path_type(request)
            try:
                event_type(event)  # blank (`/events/%20`): no event can have it, as `faas emit` says
            except ValueError as exc:
                raise BadRequest(f"event type {event!r}: {exc}") from None
            if bad_id is not None:
                raise bad_id
        except FaasError as exc:
            # A request refused before any listener ran is an error of the request, answered in the
            # contract's error shape as `POST /events` answers it (section 5); in the trace the headers
            # name, as any answer to an event (section 11).
            _, span = typed_event(event, event_id, headers, b"null")
            return error_response(exc, headers={"traceparent": span.traceparent})
        ev, span = typed_event(event, event_id, headers, payload)
        invoker = self.invoker
        try:
            with self.inflight.retries_end_on_stop():
                reply = await invoker.event(event, event_id, payload, ev.identity(), span)
        except asyncio.CancelledError:
            cut = self.inflight.error()
            if cut is None:
                raise
            reply = EventReply.failed(event_id, event, cut)
        if invoker.exporter is not None:
            export_event(invoker.exporter, span, ev, reply, "server", None)
        status = 200 if reply.ok else status_of(reply.error_type)
        return JSONResponse(reply.to_json(), status, headers={"traceparent": span.traceparent})

    async def cloudevent(self, request: Request) -> Response:
        return await receive(self.invoker, request, self.body, self.inflight)

    # ---- operations ----

    async def healthz(self, request: Request) -> Response:
        return JSONResponse(b'{"status":"ok"}')

    async def readyz(self, request: Request) -> Response:
        ready, body = self.readiness_view.readiness()
        return JSONResponse(body, 200 if ready else 503)

    async def metrics(self, request: Request) -> Response:
        # In a thread: with 1,000 functions the text is about 3 MB and takes a second or more to render,
        # which on the loop held every request and event that long (the thread takes turns with it). One
        # render at a time: scrapes that come meanwhile get its text, not a thread each.
        if self._rendering is None or self._rendering.done():
            self._rendering = asyncio.ensure_future(asyncio.to_thread(self.metrics_renderer.render))
        body = await asyncio.shield(self._rendering)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    async def openapi_json(self, request: Request) -> Response:
        return JSONResponse(self.openapi)

    def routes(self) -> list[Route]:
        g = _guarded
        return [
            Route("/functions/{uuid}/invoke", _InvokeRoute(self), methods=["POST"]),
            Route("/functions", g(self.list_functions), methods=["GET"]),
            Route("/functions/{uuid}", g(self.get_function), methods=["GET"]),
            Route("/functions/{uuid}/revisions", g(self.function_revisions), methods=["GET"]),
            _event_route("/events/{type}/listeners", g(self.listeners), "GET"),
            _event_route("/events/{type}", g(self.emit), "POST"),
            Route("/events", g(self.cloudevent), methods=["POST"]),
            Route("/healthz", g(self.healthz), methods=["GET"]),
            Route("/readyz", g(self.readyz), methods=["GET"]),
            Route("/metrics", g(self.metrics), methods=["GET"]),
            Route("/openapi.json", g(self.openapi_json), methods=["GET"]),
        ]


def _path_type(request: Request) -> str:
    """The `{type}` of an event route. The server decodes `%XX` in the path with errors replaced, so a
    type whose escapes are not UTF-8 (`/events/%FF`) would become another type (`\ufffd`) and be raised
    or looked up as such: BadRequest, as `ce-type` that is not UTF-8 is on `POST /events`."""
    event: str = request.path_params["type"]
    if "\ufffd" in event:
        try:
            unquote_to_bytes((request.scope.get("raw_path") or b"").partition(b"?")[0]).decode()
        except UnicodeDecodeError:
            raise BadRequest(
                "the event type in the path is not UTF-8 once its %XX escapes are decoded"
            ) from None
    return event


class _InvokeRoute:
    """The router's entry for the invoke route (reached when `App` did not answer it first, e.g. under
    `root_path`): the same ASGI implementation, `HttpSource.invoke_asgi`."""

    def __init__(self, source: HttpSource) -> None:
        self.source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.source.invoke_asgi(scope["path_params"]["uuid"], scope, receive, send)


async def _http_exception(request: Request, exc: Exception) -> Response:
    """Unknown routes and wrong methods, in the contract's error shape instead of Starlette's plain text."""
    assert isinstance(exc, HTTPException)
    await discard(request.scope, request.receive)  # the router answers before any body is read
    if exc.status_code == 404:
        return error_response(NotFound(f"no route {request.method} {request.url.path}"), headers=exc.headers)
    error_type = "MethodNotAllowed" if exc.status_code == 405 else "BadRequest"
    return JSONResponse(error_body(error_type, str(exc.detail)), exc.status_code, headers=exc.headers)


CALLER_LEFT = 499
"""The status a direct invocation whose caller hung up is counted under (nginx's "client closed request");
nothing is sent."""
_INVOKE_PREFIX, _INVOKE_SUFFIX = "/functions/", "/invoke"
_INVOKE_ROUTE = "/functions/{uuid}/invoke"


class App(Starlette):
    """Starlette, with `POST /functions/{uuid}/invoke` answered before its middleware stack."""

    def __init__(
        self,
        source: HttpSource,
        auth: BearerAuth | None,
        keys: ApiKeys,
        counters: RequestCounters,
        guard: BrowserGuard,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # A path with a trailing slash is another path: 404 in the contract's body, not an empty 307 that a
        # client following redirects would turn into a GET (or replay a POST body to).
        self.router.redirect_slashes = False
        self.source = source
        self.auth = auth
        self.keys = keys
        """The API keys in force (`ApiKeys.replace` rotates them); empty: the API is open."""
        self.requests = RequestMetrics(counters, self.router.routes)
        self.guard = guard

    def drain_by(self, deadline: float) -> None:
        """The node is stopping: requests still waiting for their body at loop time `deadline` are
        answered 429 `Overloaded` (`body.py`)."""
        self.source.body.drain_by(deadline)

    def cut_at(self, deadline: float, grace: float, why: str | None = None) -> None:
        """The node is stopping: requests whose function has not answered at loop time `deadline` are
        answered 502 `InstanceCrashed` (`stopping.py`)."""
        self.source.inflight.cut_at(deadline, grace, why)

    def end_retries(self) -> None:
        """The node is stopping: events raised over HTTP make no more retry attempts (`stopping.py`)."""
        self.source.inflight.end_retries()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        tasks, task = self.source.inflight.tasks, asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            refused = self.guard.problem(scope)
            if refused is not None:  # before anything else, the bearer check included (as a firewall's)
                await discard(scope, receive)
                await self.requests.track(error_response(refused), scope, receive, send)
                return
            if scope["method"] == "POST" and not scope.get("root_path"):
                path: str = scope["path"]
                if path.startswith(_INVOKE_PREFIX) and path.endswith(_INVOKE_SUFFIX):
                    uuid = path[len(_INVOKE_PREFIX) : -len(_INVOKE_SUFFIX)]
                    # The route's `{uuid}` is one non-empty path segment; the bearer check comes first.
                    if uuid and "/" not in uuid and (self.auth is None or self.auth.allowed(scope)):
                        started = time.perf_counter()
                        status = await self.source.invoke_asgi(uuid, scope, receive, send, task)
                        self.requests.observe(_INVOKE_ROUTE, "POST", status, time.perf_counter() - started)
                        return
            await self.requests.track(super().__call__, scope, receive, send)
        finally:
            tasks.discard(task)


def create_app(
    settings: Settings,
    invoker: Invoker,
    schedules: ScheduleStatus | None,
    readiness: Readiness,
    metrics: MetricsRenderer,
    deployments: Deployments | None = None,
    invocations: InvocationLog | None = None,
) -> App:
    """The Starlette app the node serves with uvicorn; `invocations` adds the routes of section 13."""
    keys = ApiKeys(settings.keys)  # one holder for every check: a rotation reaches them all
    middleware = [Middleware(BearerAuth, keys=keys)] if keys else []
    source = HttpSource(settings, invoker, schedules, readiness, metrics, deployments)
    routes = source.routes()
    if invocations is not None:
        listing = InvocationRoutes(
            invocations, lambda: [(f.name, f.uuid) for f in invoker.registry.functions]
        )
        routes += listing.routes(_guarded)
    unlisted = () if settings.records else invocation_paths
    routes += Dashboard(keys, readiness.readiness, unlisted).routes()
    return App(
        source,
        BearerAuth(_no_app, keys) if keys else None,
        keys,
        metrics,
        BrowserGuard(settings.http_host, settings.http_allowed_hosts),
        routes=routes,
        middleware=middleware,
        exception_handlers={HTTPException: _http_exception},
    )


async def _no_app(scope: Scope, receive: Receive, send: Send) -> None:
    raise RuntimeError("only BearerAuth.allowed is used on this instance")
