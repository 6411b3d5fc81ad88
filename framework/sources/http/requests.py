"""HTTP request metrics: `faas_http_requests` and `faas_http_request_duration_seconds` by route template
(e.g. `/functions/{uuid}/invoke`, never the raw path, so label sets stay few), method and status.

A request that matched no route (404, 405) is labelled `route="none"`; one refused by the bearer check
before routing is labelled with the route it would have matched. Label children are cached: a
`labels()` lookup costs microseconds, the cached `inc`/`observe` well under one.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from prometheus_client import Counter, Histogram
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UNMATCHED = "none"


class RequestCounters(Protocol):
    """The two families requests are recorded in (`framework.observe.metrics.Metrics` has them)."""

    @property
    def http_requests(self) -> Counter: ...

    @property
    def http_duration(self) -> Histogram: ...


class RequestMetrics:
    """Counts and times requests; `track` wraps an ASGI call, `observe` records one already timed."""

    def __init__(self, metrics: RequestCounters, routes: list[BaseRoute]) -> None:
        self.metrics = metrics
        self.routes = routes
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        pair = self._children.get(key)
        if pair is None:
            labels = (route, method, str(status))
            pair = self._children[key] = (
                self.metrics.http_requests.labels(*labels),
                self.metrics.http_duration.labels(*labels),
            )
        pair[0].inc()
        pair[1].observe(seconds)

    def route_of(self, scope: Scope) -> str:
        route = scope.get("route")
        if isinstance(route, Route):
            return route.path
        for candidate in self.routes:
            if isinstance(candidate, Route) and candidate.matches(scope)[0] == Match.FULL:
                return candidate.path
        return UNMATCHED

    async def track(self, app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before starting a response

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await app(scope, receive, send_status)
        finally:
            self.observe(self.route_of(scope), scope["method"], status, time.perf_counter() - started)
