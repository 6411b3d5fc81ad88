"""Invocation records (DESIGN.md section 13): one per invocation that ends on this node, whatever its trigger.

Every invocation (event, direct, schedule, warm-up, and each retry attempt, which is an invocation of its
own) passes through a function pool, which calls `Recorder.finish` once it has ended: success, error,
timeout, crash, overload, or cancellation (a listener cancelled by its chain's abort ends with error type
`Cancelled`, not a contract error type: it did not fail, it was stopped).

`finish` runs on the invocation's path, after its result is known but before it is handed back, so it only
does cheap things (about 2 us): keep a tuple of the facts on the in-memory ring of the newest
`FAAS_RECENT_INVOCATIONS`, count it in the function's 15-minute aggregates (`stats.py`), and offer it to
the `RecordSender` (`sender.py`), which builds the record, serialises and produces it later from its own
task. Nothing here awaits, so the answer never waits for its record.

Record fields: `started_at` is when the pool took the request (RFC 3339 UTC, ms); `duration_ms` is the
instance's own measure when the instance answered (the figure the caller's response carries), else the
time the node waited (timeouts that killed the instance, crashes, overload, cancellation). Error messages
are cut at `MAX_ERROR_CHARS`.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import CounterMetricFamily

from framework.errors import FaasError
from framework.observe.stats import StatsBook
from framework.runtime.worker.capture import utc_ms

if TYPE_CHECKING:
    from framework.control.manifest import FunctionSpec
    from framework.observe.metrics import Metrics
    from framework.observe.sender import RecordSender
    from framework.settings import Settings
    from framework.types import Invocation

MAX_ERROR_CHARS = 4000
"""Characters of an error message a record keeps."""


class Recorder(Protocol):
    """What a function pool tells when an invocation ends."""

    def finish(
        self,
        spec: FunctionSpec,
        inv: Invocation,
        started: float,
        duration_ms: float,
        cold: bool,
        instance_id: str | None,
        error: BaseException | None,
        logs: list[Any],
    ) -> None: ...


def node_name(settings: Settings) -> str:
    """FAAS_NODE_NAME, or `<hostname>:<http port>` (unique among nodes of one host)."""
    return settings.node_name or f"{socket.gethostname()}:{settings.http_port}"


def error_of(exc: BaseException) -> dict[str, str]:
    """`{"type", "message"}` of how an invocation failed."""
    if isinstance(exc, FaasError):
        kind, message = exc.type, exc.message
    elif isinstance(exc, asyncio.CancelledError):
        kind, message = "Cancelled", "the invocation was cancelled before it ended (chain abort, shutdown)"
    else:
        kind, message = "FunctionError", repr(exc)
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "…"
    return {"type": kind, "message": message}


class RecordCounters:
    """`faas_invocation_records_{total,sent_total,dropped_total}`: made, acknowledged by the broker, given
    up (buffer full, send failed, or still buffered at shutdown). Once the buffer is empty, sent + dropped
    = made, for records of a node with Kafka. Plain integers read when scraped: a prometheus_client
    `Counter.inc` (a lock) per record would cost more than the rest of the record."""

    def __init__(self, metrics: Metrics | None) -> None:
        self.made = self.sent = self.dropped = 0
        if metrics is not None:
            metrics.registry.register(self)

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily("faas_invocation_records", "Invocation records made.", value=self.made)
        yield CounterMetricFamily(
            "faas_invocation_records_sent", "Invocation records the broker acknowledged.", value=self.sent
        )
        yield CounterMetricFamily(
            "faas_invocation_records_dropped",
            "Invocation records given up: buffer full, send failed, or unsent at shutdown.",
            value=self.dropped,
        )


Ended = tuple[
    str,
    "FunctionSpec",
    str,
    "str | None",
    "str | None",
    "str | None",
    int,
    "str | None",
    float,
    float,
    bool,
    "dict[str, str] | None",
    list[Any],
]
"""An invocation that ended, as `finish` keeps it: (invocation id, spec, trigger, event, event id,
traceparent, attempt, instance id, started (epoch s), duration ms, cold, error, logs). The record dict is
built from it only when someone reads it (GET, the sender): a tuple is cheaper to make than a 17-key dict
with a formatted time, and most records are never read. It holds no payload."""


class InvocationRecords:
    """The node's records: the newest in memory, aggregates per function, and the topic (via `sender`)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.node = node_name(settings)
        self.keep = settings.recent_invocations
        self._recent: deque[Ended] = deque(maxlen=max(self.keep, 0))
        self.stats = StatsBook()
        self.counters = RecordCounters(metrics)
        self.sender: RecordSender | None = None
        """Set once Kafka is known; records made before (or without Kafka) stay in memory only."""

    def finish(
        self,
        spec: FunctionSpec,
        inv: Invocation,
        started: float,
        duration_ms: float,
        cold: bool,
        instance_id: str | None,
        error: BaseException | None,
        logs: list[Any],
    ) -> None:
        identity = inv.identity
        ended: Ended = (
            inv.invocation_id,
            spec,
            inv.trigger,
            inv.event,
            identity.event_id if identity is not None else None,
            inv.traceparent,
            inv.attempt,
            instance_id,
            started,
            duration_ms,
            cold,
            None if error is None else error_of(error),
            logs,
        )
        self._recent.append(ended)
        self.stats.observe(spec.uuid, spec.name, started, duration_ms, error is None)
        if self.sender is not None:
            self.counters.made += 1
            self.sender.offer(ended)

    def record(self, ended: Ended) -> dict[str, Any]:
        """The record of section 13."""
        inv_id, spec, trigger, event, event_id, tp, attempt, instance_id, started, ms, cold, error, logs = (
            ended
        )
        return {
            "invocation_id": inv_id,
            "function": spec.name,
            "uuid": spec.uuid,
            "revision": spec.revision,
            "trigger": trigger,
            "event": event,
            "event_id": event_id,
            "trace_id": tp[3:35] if tp else None,
            "node": self.node,
            "instance_id": instance_id,
            "started_at": utc_ms(started),
            "duration_ms": round(ms, 3),
            "cold_start": cold,
            "attempt": attempt,
            "ok": error is None,
            "error": error,
            "logs": logs,
        }

    def send_to(self, bootstrap: str) -> None:
        """Produce every record from now on to FAAS_INVOCATIONS_TOPIC on `bootstrap` (call on the loop)."""
        from framework.observe.sender import RecordSender

        self.sender = RecordSender(bootstrap, self.settings, self.counters, self.record)
        self.sender.start()

    async def stop(self, grace: float) -> None:
        """Flush what is buffered (bounded), then stop producing."""
        if self.sender is not None:
            await self.sender.stop(grace)

    # ---- reading (GET /invocations, the dashboard) ----

    def recent(
        self,
        function: str | None = None,
        ok: bool | None = None,
        trigger: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The newest records first; `function` matches the name or the uuid."""
        out: list[dict[str, Any]] = []
        if limit <= 0:
            return out
        lowered = function.lower() if function is not None else None  # uuids in any case
        for ended in reversed(self._recent):
            spec = ended[1]
            if function is not None and function != spec.name and lowered != spec.uuid.lower():
                continue
            if ok is not None and (ended[11] is None) is not ok:
                continue
            if trigger is not None and ended[2] != trigger:
                continue
            out.append(self.record(ended))
            if len(out) >= limit:
                break
        return out

    def get(self, invocation_id: str) -> dict[str, Any] | None:
        """One record by id (a scan of at most FAAS_RECENT_INVOCATIONS: cheaper than an index per record)."""
        for ended in reversed(self._recent):
            if ended[0] == invocation_id:
                return self.record(ended)
        return None

    def function_stats(self, uuid: str, name: str) -> dict[str, Any]:
        """Counts, failures, p50/p99 of the last 15 minutes, overall and per minute (zeros when none)."""
        return self.stats.of(uuid, name)
