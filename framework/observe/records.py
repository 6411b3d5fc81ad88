"""Invocation records (DESIGN.md section 13): one per invocation that ends on this node, whatever its trigger.

Every invocation (event, direct, schedule, warm-up, and each retry attempt, which is an invocation of its
own) passes through a function pool, which tells the recorder once it has ended: success, error, timeout,
crash, overload, or cancellation (a listener cancelled by its chain's abort ends with error type
`Cancelled`, not a contract error type: it did not fail, it was stopped).

Records arrive as JSON bytes (`record_json.py`): rendered by the instance that answered (`keep`), or here
when none did (`finish`: crash, backstop timeout, overload, cancellation). Either way this runs on the
invocation's path, after its result is known but before it is handed back, so it only does cheap things
(about 2 us): keep the bytes on the in-memory ring of the newest `FAAS_RECENT_INVOCATIONS` with the few
fields the filters need, count the invocation in the function's 15-minute aggregates (`stats.py`), and
offer the bytes to the `RecordSender` (`sender.py`), which produces them later from its own task. Nothing
here awaits, so the answer never waits for its record; records are parsed only when read (GET, the
dashboard), which most never are.

`started_at` is when the pool took the request; `duration_ms` is the instance's own measure when the
instance answered (the figure the caller's response carries), else the time the node waited.
"""

from __future__ import annotations

import asyncio
import socket
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import orjson
from prometheus_client.core import CounterMetricFamily

from framework.errors import FaasError
from framework.observe.record_json import error_fields, render
from framework.observe.stats import StatsBook

if TYPE_CHECKING:
    from framework.control.spec import FunctionSpec
    from framework.observe.metrics import Metrics
    from framework.observe.sender import RecordSender
    from framework.settings import Settings
    from framework.types import Invocation


class Recorder(Protocol):
    """What a function pool tells when an invocation ends."""

    @property
    def node(self) -> str:
        """The node's name, for the records its instances render (FAAS_NODE_NAME)."""
        ...

    def keep(
        self, spec: FunctionSpec, inv: Invocation, started: float, duration_ms: float, ok: bool, record: bytes
    ) -> None:
        """An invocation an instance answered, with the record the instance rendered."""
        ...

    def finish(
        self,
        spec: FunctionSpec,
        inv: Invocation,
        started: float,
        duration_ms: float,
        cold: bool,
        instance_id: str | None,
        error: BaseException | None,
        logs: list[Any] | None = None,
    ) -> None:
        """An invocation no instance answered: its record is rendered here, with `logs` (the lines its
        instance sent before it died, capped as an instance caps them)."""
        ...


def node_name(settings: Settings) -> str:
    """FAAS_NODE_NAME, or `<hostname>:<http port>` (unique among nodes of one host)."""
    return settings.node_name or f"{socket.gethostname()}:{settings.http_port}"


def error_of(exc: BaseException) -> dict[str, str]:
    """`{"type", "message"}` of how an invocation failed."""
    if isinstance(exc, FaasError):
        kind, message = exc.type, exc.message
    elif isinstance(exc, asyncio.CancelledError):
        kind, message = (
            "Cancelled",
            "the invocation was cancelled before it ended (its caller hung up, its event's chain aborted, "
            "or the node stopped)",
        )
    else:
        kind, message = "FunctionError", repr(exc)
    return error_fields(kind, message)


class RecordCounters:
    """`faas_invocation_records_{total,sent_total,dropped_total}`: made, acknowledged by the broker, given
    up (buffer full, send failed, still buffered at shutdown, or made after it). Once the buffer is empty,
    sent + dropped = made, for records of a node with Kafka. Plain integers read when scraped: a
    prometheus_client `Counter.inc` (a lock) per record would cost more than the rest of the record."""

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
            "Invocation records given up: buffer full, send failed, unsent at shutdown, or made after it.",
            value=self.dropped,
        )


Kept = tuple[str, "FunctionSpec", str, bool, bytes, bool]
"""A record on the ring: (invocation id, spec, trigger, ok, the record's JSON, cancelled) — the filters'
fields beside the bytes, which are parsed only when read."""


def _parsed(kept: Kept) -> dict[str, Any]:
    """A kept record, parsed. Instances render them, and a handler runs in the same process: one that
    mangled its instance's renderer must not break the node's reads (the node checked only the head)."""
    invocation_id, spec, trigger, ok, record, _ = kept
    try:
        return orjson.loads(record)  # type: ignore[no-any-return]
    except orjson.JSONDecodeError as exc:
        return {
            "invocation_id": invocation_id,
            "function": spec.name,
            "uuid": spec.uuid,
            "trigger": trigger,
            "ok": ok,
            "unreadable": f"the instance sent a record that is not JSON: {exc}",
        }


class InvocationRecords:
    """The node's records: the newest in memory, aggregates per function, and the topic (via `sender`)."""

    def __init__(self, settings: Settings, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.node = node_name(settings)
        self.capacity = max(settings.recent_invocations, 0)
        """Records kept in memory (FAAS_RECENT_INVOCATIONS)."""
        self._recent: deque[Kept] = deque(maxlen=self.capacity)
        self.stats = StatsBook()
        self.counters = RecordCounters(metrics)
        self.sender: RecordSender | None = None
        """Set once Kafka is known; records made before (or without Kafka) stay in memory only."""

    def keep(
        self,
        spec: FunctionSpec,
        inv: Invocation,
        started: float,
        duration_ms: float,
        ok: bool,
        record: bytes,
        counted: bool = True,
    ) -> None:
        """`counted`: in the dashboard's stats. An invocation cancelled before it ended (a chain's abort, a
        caller that hung up, a stop) is not: it neither failed nor ran its course, and its duration is cut."""
        self._recent.append((inv.invocation_id, spec, inv.trigger, ok, record, not counted))
        if counted:
            self.stats.observe(spec.uuid, spec.name, started, duration_ms, ok)
        if self.sender is not None:
            self.counters.made += 1
            self.sender.offer(spec.uuid.encode(), record)

    def finish(
        self,
        spec: FunctionSpec,
        inv: Invocation,
        started: float,
        duration_ms: float,
        cold: bool,
        instance_id: str | None,
        error: BaseException | None,
        logs: list[Any] | None = None,
    ) -> None:
        identity = inv.identity
        record = render(
            inv.invocation_id,
            spec.name,
            spec.uuid,
            spec.revision,
            inv.trigger,
            inv.event,
            identity.event_id if identity is not None else None,
            inv.traceparent,
            self.node,
            instance_id,
            started,
            duration_ms,
            cold,
            inv.attempt,
            None if error is None else error_of(error),
            logs,
        )
        cancelled = isinstance(error, asyncio.CancelledError)
        self.keep(spec, inv, started, duration_ms, error is None, record, counted=not cancelled)

    def send_to(self, bootstrap: str) -> None:
        """Produce every record from now on to FAAS_INVOCATIONS_TOPIC on `bootstrap` (call on the loop)."""
        from framework.observe.sender import RecordSender

        self.sender = RecordSender(bootstrap, self.settings, self.counters)
        self.sender.start()

    def hurry(self) -> None:
        """A second signal: the flush (under way or to come) stops waiting; what is left is dropped."""
        if self.sender is not None:
            self.sender.hurried = True

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
        cancelled: bool | None = None,
    ) -> list[dict[str, Any]]:
        """The newest records first; `function` matches the name or the uuid; `cancelled`: only the
        invocations cancelled before they ended (True), or none of them (False)."""
        out: list[dict[str, Any]] = []
        if limit <= 0:
            return out
        lowered = function.lower() if function is not None else None  # uuids in any case
        for kept in reversed(self._recent):
            _, spec, kept_trigger, kept_ok, _, kept_cancelled = kept
            if function is not None and function != spec.name and lowered != spec.uuid.lower():
                continue
            if ok is not None and kept_ok is not ok:
                continue
            if trigger is not None and kept_trigger != trigger:
                continue
            if cancelled is not None and kept_cancelled is not cancelled:
                continue
            out.append(_parsed(kept))
            if len(out) >= limit:
                break
        return out

    def get(self, invocation_id: str) -> dict[str, Any] | None:
        """One record by id (a scan of at most FAAS_RECENT_INVOCATIONS: cheaper than an index per record)."""
        for kept in reversed(self._recent):
            if kept[0] == invocation_id:
                return _parsed(kept)
        return None

    def function_stats(self, uuid: str, name: str) -> dict[str, Any]:
        """Counts, failures, p50/p99 of the last 15 minutes, overall and per minute (zeros when none)."""
        return self.stats.of(uuid, name)

    def ran_lately(self, uuid: str, name: str) -> bool:
        """Whether the function has an invocation in the stats' 15 minutes."""
        return self.stats.ran(uuid, name)
