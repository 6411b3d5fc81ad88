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

Export never fails or slows work, and never floods the log:

- The `OTEL_BSP_*` values are read here (the SDK raises on a zero or negative one, which would stop the
  node at start, and logs a traceback for one that is not a number): an invalid one is named in one
  warning and its SDK default used instead. So are the span limits (`LIMIT_VARIABLES`): the SDK raises on
  one that is not a non-negative integer as it is imported or as a provider is made, which stopped the node
  at start, or every instance of a function whose `env` held it; `drop_bad_limits` names and removes it
  first (the node's environment, which instances inherit, and an instance's own). An endpoint without
  `http://` or `https://`, which the exporter cannot send to, is named at start (`endpoint_problem`). A
  provider that cannot be set up in an instance leaves that instance's export off, with an error logged,
  instead of failing its start (every invocation would be `InstanceCrashed`).
- The exporter logs each failed batch and each retry (per process: the node and every instance), which
  under load and a collector answering 500 is lines per second. `_Throttle` lets one record per level
  through every `LOG_INTERVAL` seconds per process, the next one saying how many were held back.
- Stopping waits at most `SHUTDOWN_TIMEOUT` seconds for the last spans (the SDK's own bound is 30 s, and
  its exporter's 10 s request timeout and retries run within it): a collector that is down or silent
  must not hold a stopping node, and the instances it waits for, that long.
- The service name is `OTEL_SERVICE_NAME`, else `service.name` of `OTEL_RESOURCE_ATTRIBUTES` (the SDK's
  order), else `faas`.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

from framework.observe import tracing
from framework.observe.tracing import Span

if TYPE_CHECKING:  # imported at run time only where export is on (it imports opentelemetry)
    from framework.observe.span_redaction import Lengths

log = logging.getLogger("faas.otel")

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
SHUTDOWN_TIMEOUT = 2.0
"""Seconds a stopping node or instance waits for its last spans to be exported."""
LOG_INTERVAL = 60.0
"""Seconds between two log records of one level from the exporter and its batch processor."""
BATCH_VARIABLES = {
    "OTEL_BSP_MAX_QUEUE_SIZE": ("max_queue_size", 2048),
    "OTEL_BSP_SCHEDULE_DELAY": ("schedule_delay_millis", 5000),
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": ("max_export_batch_size", 512),
    "OTEL_BSP_EXPORT_TIMEOUT": ("export_timeout_millis", 30000),
}
"""The batch processor's variables: its argument and the SDK's default (spans; milliseconds)."""
_THROTTLED = (
    "opentelemetry.exporter.otlp.proto.http.trace_exporter",
    "opentelemetry.exporter.otlp.common.http",
    "opentelemetry.sdk._shared_internal",
    "opentelemetry.sdk.trace.export",
)
"""Loggers of the export path, whose records come per batch or per retry."""
_provider: Any = None
"""The instance's TracerProvider once `setup_instance` ran (None: export off in this process)."""


def enabled(environ: os._Environ[str] | dict[str, str] = os.environ) -> bool:
    """Export is on: an OTLP endpoint is set, the SDK is not disabled (`OTEL_SDK_DISABLED=true`), no trace
    exporter is asked for by name (`OTEL_TRACES_EXPORTER=none`: the only other exporter here is OTLP's)
    and the `otel` extra is installed."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return False
    if not any(environ.get(name) for name in ENDPOINT_VARIABLES):
        return False
    return importlib.util.find_spec("opentelemetry.sdk") is not None


def _resource(service: str, **attributes: str) -> Any:
    """The SDK's resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`) with `attributes`; `service`
    names it only when the user did not (the SDK would say `unknown_service:python`)."""
    from opentelemetry.sdk.resources import Resource

    resource = Resource.create(attributes)
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service}))
    return resource


def batch_settings(environ: Mapping[str, str] = os.environ) -> tuple[dict[str, int], list[str]]:
    """The batch processor's arguments from `OTEL_BSP_*`, and what was wrong with them: a value that is
    not a positive integer gives way to the SDK's default, a batch over the queue to the queue's size."""
    values: dict[str, int] = {}
    problems: list[str] = []
    for variable, (argument, default) in BATCH_VARIABLES.items():
        raw = environ.get(variable, "").strip()
        if not raw:
            values[argument] = default
            continue
        try:
            value = int(raw)
        except ValueError:
            value = 0
        if value <= 0:
            problems.append(f"{variable}={raw!r} is not a positive integer: {default} is used")
            value = default
        values[argument] = value
    queue, batch = values["max_queue_size"], values["max_export_batch_size"]
    if batch > queue:
        problems.append(
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={batch} is over OTEL_BSP_MAX_QUEUE_SIZE={queue}: {queue} is used"
        )
        values["max_export_batch_size"] = queue
    return values, problems


LIMIT_VARIABLES = (
    "OTEL_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
    "OTEL_SPAN_EVENT_COUNT_LIMIT",
    "OTEL_SPAN_LINK_COUNT_LIMIT",
    "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
    "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
)
"""The SDK's span limits, each a non-negative integer (empty: unset); it raises on any other value."""


def drop_bad_limits(environ: MutableMapping[str, str]) -> list[str]:
    """Remove from `environ` each of `LIMIT_VARIABLES` whose value the SDK would raise on, and say what was
    wrong with each: the SDK's default is used instead. Call before anything imports the SDK."""
    problems = []
    for variable in LIMIT_VARIABLES:
        raw = environ.get(variable)
        if raw is None or not raw.strip():
            continue
        try:
            ok = int(raw.strip()) >= 0
        except ValueError:
            ok = False
        if not ok:
            del environ[variable]
            problems.append(f"{variable}={raw!r} is not a non-negative integer: the SDK's default is used")
    return problems


def endpoint_problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why the endpoint spans go to cannot be sent to (no `http://` or `https://`), or None. The exporter
    would only fail each batch, naming neither the variable nor the scheme."""
    for variable in ENDPOINT_VARIABLES:
        endpoint = environ.get(variable, "").strip()
        if endpoint:
            if endpoint.lower().startswith(("http://", "https://")):
                return None
            return (
                f"{variable}={endpoint!r} has no scheme: no span can be exported (write "
                f"http://{endpoint} or https://{endpoint})"
            )
    return None


PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
"""The SDK's protocol choice, first match wins; this exporter speaks only `http/protobuf`."""


def protocol_problem(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why the protocol asked for is not the one spans go out in (`grpc`, `http/json`), or None. A
    collector listening for gRPC (port 4317) would refuse every export, and nothing would say why."""
    for variable in PROTOCOL_VARIABLES:
        asked = environ.get(variable, "").strip()
        if asked:
            if asked.lower() == "http/protobuf":
                return None
            return (
                f"{variable}={asked!r} is not supported: spans are exported over OTLP/HTTP with protobuf "
                "(point the endpoint at the collector's HTTP port, 4318 by default)"
            )
    return None


class _Throttle(logging.Filter):
    """One record per level every `interval` seconds; the next one let through counts those held back."""

    def __init__(self, interval: float) -> None:
        super().__init__()
        self.interval = interval
        self.lock = threading.Lock()  # the exporter's thread and the caller's may log at once
        self.next: dict[int, float] = {}
        self.held: dict[int, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        now = time.monotonic()
        with self.lock:
            if now < self.next.get(record.levelno, 0.0):
                self.held[record.levelno] = self.held.get(record.levelno, 0) + 1
                return False
            self.next[record.levelno] = now + self.interval
            held = self.held.pop(record.levelno, 0)
        if held:
            record.msg = (
                f"{record.getMessage()} ({held} more like it in the last {self.interval:g} s not logged)"
            )
            record.args = None
        return True


_throttle = _Throttle(LOG_INTERVAL)


def _processor(redact: Callable[[str], str] | None = None, lengths: Lengths | None = None) -> Any:
    """The batch processor exporting over OTLP/HTTP; with `redact` (an instance's secrets), each span's
    texts pass through it first, then are cut to `lengths` (`span_redaction.py`)."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    for name in _THROTTLED:
        logger = logging.getLogger(name)
        if _throttle not in logger.filters:
            logger.addFilter(_throttle)
    values, problems = batch_settings()
    for problem in problems:
        log.warning("OpenTelemetry: %s", problem)
    exporter: Any = OTLPSpanExporter()
    if redact is not None:
        from framework.observe.span_redaction import RedactingExporter

        exporter = RedactingExporter(exporter, redact, lengths)
    return BatchSpanProcessor(
        exporter,
        max_queue_size=values["max_queue_size"],
        schedule_delay_millis=values["schedule_delay_millis"],
        max_export_batch_size=values["max_export_batch_size"],
        export_timeout_millis=values["export_timeout_millis"],
    )


def _bounded_shutdown(shutdown: Any, timeout: float, hurry: threading.Event | None = None) -> None:
    """Call `shutdown` (a flush, then stop) on a thread of its own; wait for it `timeout` seconds at most,
    and no longer once `hurry` is set (a second signal). Past that the spans still unsent are lost: the
    daemon thread ends with the process."""
    thread = threading.Thread(target=shutdown, name="otel-shutdown", daemon=True)
    thread.start()
    if hurry is None:
        thread.join(timeout)
    else:
        end = time.monotonic() + timeout
        while thread.is_alive() and not hurry.is_set() and time.monotonic() < end:
            thread.join(HURRY_CHECK)
    if not thread.is_alive():
        return
    if hurry is not None and hurry.is_set():
        log.warning("OpenTelemetry: stopping at once: the last spans not exported yet are lost")
    else:
        log.warning("OpenTelemetry: the last spans were not exported within %g s: they are lost", timeout)


HURRY_CHECK = 0.02
"""Seconds between two looks at `hurry` while the last spans are exported."""


class NodeExporter:
    """The node's spans (events and invocations), exported with the ids `observe/tracing.py` gave them."""

    def __init__(self, version: str) -> None:
        # Before the SDK is imported (it reads one limit then): instances inherit the environment cleaned.
        for limit in drop_bad_limits(os.environ):
            log.warning("OpenTelemetry: %s", limit)
        from opentelemetry.sdk.util.instrumentation import InstrumentationScope

        self.resource = _resource("faas", **{"service.version": version})
        self.scope = InstrumentationScope("framework", version)
        self.processor = _processor()
        for problem in (protocol_problem(), endpoint_problem()):
            if problem is not None:
                log.warning("OpenTelemetry: %s", problem)
        if tracing.sampler.unknown:
            log.warning(
                "OpenTelemetry: OTEL_TRACES_SAMPLER=%s is not a sampler this node knows: "
                "parentbased_always_on is used (known: always_on, always_off, traceidratio and their "
                "parentbased_ forms)",
                tracing.sampler.unknown,
            )
        if tracing.sampler.bad_ratio is not None:
            log.warning(
                "OpenTelemetry: OTEL_TRACES_SAMPLER_ARG=%r is not a ratio from 0 to 1: %s is used",
                tracing.sampler.bad_ratio,
                f"{tracing.sampler.bound / (1 << 64):g}",
            )

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

    def shutdown(self, timeout: float = SHUTDOWN_TIMEOUT, hurry: threading.Event | None = None) -> None:
        """Export what is queued and stop the processor's thread, waiting `timeout` seconds at most, and no
        longer once `hurry` is set."""
        _bounded_shutdown(self.processor.shutdown, timeout, hurry)


def _span_context(trace_id: str, span_id: str, span: Span, remote: bool) -> Any:
    from opentelemetry.trace import SpanContext, TraceFlags, TraceState

    state = TraceState.from_header([span.tracestate]) if span.tracestate else None
    return SpanContext(int(trace_id, 16), int(span_id, 16), remote, TraceFlags(int(span.flags, 16)), state)


def setup_instance(function: str, instance_id: str, redact: Callable[[str], str] | None = None) -> None:
    """In a freshly forked instance: install a global TracerProvider exporting over OTLP/HTTP, each span's
    texts passed through `redact` first when given (the function has secrets). Never raises: an instance
    whose export cannot be set up serves without it (the error is logged)."""
    global _provider
    for limit in drop_bad_limits(os.environ):  # the function's own `env` (the node's was cleaned at start)
        log.error("OpenTelemetry in instance %s: %s", instance_id, limit)
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider

        limits, lengths = None, None
        if redact is not None:  # values recorded whole, cut once redacted (`span_redaction.py`)
            from framework.observe.span_redaction import unlimited

            limits, lengths = unlimited()
        provider = TracerProvider(
            resource=_resource("faas", **{"faas.name": function, "faas.instance": instance_id}),
            span_limits=limits,
        )
        provider.add_span_processor(_processor(redact, lengths))
    except Exception as exc:  # the function's own `env` can hold OTEL_* values too
        log.error("OpenTelemetry export is off in instance %s: %s", instance_id, exc)
        return
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


def shutdown(timeout: float = SHUTDOWN_TIMEOUT) -> None:
    """Flush the instance's spans before it exits, waiting `timeout` seconds at most (no-op when export is
    off)."""
    global _provider
    if _provider is not None:
        _bounded_shutdown(_provider.shutdown, timeout)
        _provider = None
