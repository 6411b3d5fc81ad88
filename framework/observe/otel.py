"""OpenTelemetry export over OTLP/HTTP (DESIGN.md section 11), when the `otel` extra is installed.

On when `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set (and
`OTEL_SDK_DISABLED` is not `true`); the exporter reads the other standard `OTEL_EXPORTER_OTLP_*` and
`OTEL_BSP_*` variables itself. Off (no extra, or no endpoint), nothing from `opentelemetry` is imported: this
module's own imports are deferred into the functions that run only when it is on.

The node does not use the SDK's tracer: its spans' ids are already fixed by `observe/tracing.py` (they are
what the handler sees as `ctx.span_id` and what replies carry), so `NodeExporter.end` builds the finished
`ReadableSpan` with those ids and hands it to a `BatchSpanProcessor` (a background thread batching exports).
It never installs a global tracer provider, so a process forked from the node could still install its own.

Inside an instance (`setup_instance`, run after the fork and only when on) a global `TracerProvider` with
its own batch processor is installed, and `invocation_context` makes the invocation's span the current
OpenTelemetry context, so `trace.get_tracer(...).start_as_current_span(...)` in a handler makes a child of
`invoke <function>`. `shutdown` flushes what is left when the instance exits on its own; an instance that is
killed loses its unsent spans (at most `OTEL_BSP_SCHEDULE_DELAY`, default 5 s, of them).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import time
from collections.abc import Iterator
from typing import Any

from framework.observe.tracing import Span

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
_provider: Any = None
"""The instance's TracerProvider once `setup_instance` ran (None: export off in this process)."""


def enabled(environ: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    """Export is on: an OTLP endpoint is set, the SDK is not disabled and the `otel` extra is installed."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if not any(environ.get(name) for name in ENDPOINT_VARIABLES):
        return False
    return importlib.util.find_spec("opentelemetry.sdk") is not None


def _resource(service: str, **attributes: str) -> Any:
    from opentelemetry.sdk.resources import Resource

    name = os.environ.get("OTEL_SERVICE_NAME") or service
    return Resource.create({"service.name": name, **attributes})


def _processor() -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    return BatchSpanProcessor(OTLPSpanExporter())


class NodeExporter:
    """The node's spans (events and invocations), exported with the ids `observe/tracing.py` gave them."""

    def __init__(self, version: str) -> None:
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.resource = _resource("faas", **{"service.version": version})
        self.scope = InstrumentationScope("framework", version)
        self.processor = _processor()

    def end(
        self,
        name: str,
        span: Span,
        kind: str,
        attributes: dict[str, str | bool | int | float],
        error: str | None = None,
    ) -> None:
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.trace import SpanKind, Status, StatusCode

        if not span.sampled:
            return
        parent = None
        if span.parent_id is not None:
            parent = _span_context(span.trace_id, span.parent_id, span, remote=span.remote_parent)
        finished = ReadableSpan(
            name=name,
            context=_span_context(span.trace_id, span.span_id, span, remote=False),
            parent=parent,
            resource=self.resource,
            attributes=attributes,
            kind=SpanKind[kind.upper()],
            status=Status(StatusCode.ERROR, error) if error else Status(StatusCode.UNSET),
            start_time=span.start_ns,
            end_time=time.time_ns(),
            instrumentation_scope=self.scope,
        )
        self.processor.on_end(finished)

    def shutdown(self) -> None:
        """Export what is queued (bounded by the processor's export timeout) and stop its thread."""
        self.processor.shutdown()


def _span_context(trace_id: str, span_id: str, span: Span, remote: bool) -> Any:
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState

    state = TraceState.from_header([span.tracestate]) if span.tracestate else None
    return SpanContext(int(trace_id, 16), int(span_id, 16), remote, TraceFlags(int(span.flags, 16)), state)


def setup_instance(function: str, instance_id: str) -> None:
    """In a freshly forked instance: install a global TracerProvider exporting over OTLP/HTTP."""
    global _provider
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider(
        resource=_resource("faas", **{"faas.name": function, "faas.instance": instance_id})
    )
    provider.add_span_processor(_processor())
    trace.set_tracer_provider(provider)
    _provider = provider


_NOTHING = contextlib.nullcontext()


def invocation_context(
    traceparent: str, tracestate: str | None = None
) -> contextlib.AbstractContextManager[None]:
    """Make the invocation's span (`traceparent` and `tracestate`, from the node) the current OpenTelemetry
    context; without export, a shared context manager that does nothing (no generator made per
    invocation)."""
    if _provider is None:
        return _NOTHING
    return _attached(traceparent, tracestate)


@contextlib.contextmanager
def _attached(traceparent: str, tracestate: str | None) -> Iterator[None]:
    from opentelemetry import context, trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    state = TraceState.from_header([tracestate]) if tracestate else None
    parent = SpanContext(
        int(traceparent[3:35], 16),
        int(traceparent[36:52], 16),
        True,
        TraceFlags(int(traceparent[53:55], 16)),
        state,
    )
    token = context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        yield
    finally:
        context.detach(token)


def shutdown() -> None:
    """Flush the instance's spans before it exits (no-op when export is off)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None
