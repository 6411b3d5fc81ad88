"""What tracing adds to each event and direct invocation (DESIGN.md section 11), measured in this process.

- `tracing traceparent per event`: a request carrying a caller's `traceparent` and `tracestate` (read from
  the raw ASGI headers, parsed, continued as the event's span, one child span per invocation) vs one
  without (a new trace: two random ids, no parsing). Both are what every event and direct invocation pays
  with export off; compare them with `warm invoke c=1 p50` and the direct and event latencies.
- `tracing OTel export per span`: ending one `invoke <fn>` span through the OTLP exporter's path
  (`NodeExporter.end`: the ReadableSpan with its FaaS attributes, queued to the batch processor) vs the
  export-off path (the invoker's `exporter is None` check). Serialising and sending happen on the batch
  processor's own thread, off the request path (here into an in-memory exporter, so no network is timed).
  Without the `otel` extra this case is reported failed with that reason.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from benchmarks.env import Env, baseline, guarded
from benchmarks.stats import Series
from framework import __version__
from framework.observe import tracing

TP = b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
WITHOUT = [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")]
WITH = [*WITHOUT, (b"traceparent", TP), (b"tracestate", b"a=1")]
ATTRIBUTES: dict[str, str | bool | int | float] = {
    "faas.name": "noop",
    "faas.trigger": "http",
    "faas.invocation_id": "0c5e1b0a-5a3c-4f0e-9a53-0c3b9f1d2e4f",
    "faas.coldstart": False,
}


def _per_call(fn: Callable[[], object], n: int) -> float:
    """Microseconds per call of `fn`, over `n` calls."""
    started = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - started) / n * 1e6


def _event_spans(headers: list[tuple[bytes, bytes]]) -> Callable[[], object]:
    def run() -> object:
        span = tracing.from_headers(headers)
        return span.child().traceparent, span.traceparent

    return run


def _exporter() -> Any:
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from framework.observe.otel import NodeExporter

    exporter = NodeExporter(__version__)
    exporter.processor.shutdown()  # the OTLP/HTTP one: replaced so no network is involved
    exporter.processor = BatchSpanProcessor(InMemorySpanExporter(), max_queue_size=1 << 20)
    return exporter


async def run(env: Env) -> list[Series]:
    parse = Series("tracing traceparent per event", "us", "lower", "no traceparent (new trace)")
    export = Series("tracing OTel export per span", "us", "lower", "export off (exporter is None)")
    n = env.profile.warm_calls * 20
    span = tracing.start(TP.decode()).child()
    off: Any = None

    def skipped() -> None:
        if off is not None:
            off.end("invoke noop", span, "internal", ATTRIBUTES)

    exporter: Any = None

    async def make() -> Any:
        return _exporter()

    exporter = await guarded([export], make)
    for _ in range(env.profile.repeats):

        async def parsed() -> float:
            return _per_call(_event_spans(WITH), n)

        async def fresh() -> float:
            return _per_call(_event_spans(WITHOUT), n)

        if (p := await guarded([parse], parsed)) is not None:
            parse.samples.append(p)
        if (b := await baseline([parse], fresh)) is not None:
            parse.baseline_samples.append(b)

        async def exported() -> float:
            return _per_call(lambda: exporter.end("invoke noop", span, "internal", ATTRIBUTES), n)

        async def unexported() -> float:
            return _per_call(skipped, n)

        if exporter is not None and (e := await guarded([export], exported)) is not None:
            export.samples.append(e)
        if (u := await baseline([export], unexported)) is not None:
            export.baseline_samples.append(u)
    if exporter is not None:
        exporter.shutdown()
    return [parse, export]
