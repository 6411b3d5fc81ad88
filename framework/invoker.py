"""Invoke one function, or fan an event out to its productive listeners and combine their replies.

The invoker knows nothing of Kafka or HTTP: sources hand it raw JSON payloads and get results back.
Event and scheduled invocations go through their function's retry policy (`framework.retry`).
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from framework.context import Trigger
from framework.control.manifest import FunctionSpec
from framework.control.registry import Registry
from framework.errors import FaasError, FunctionError, NotFound
from framework.retry import RETRIED_TRIGGERS, with_retries
from framework.types import Invocation, InvokeResult, new_id

if TYPE_CHECKING:
    from framework.observe.metrics import Metrics
    from framework.runtime.pools import Runtime

__all__ = ["EventReply", "Invoker", "new_id"]


@dataclass(slots=True)
class EventReply:
    """The combined reply of section 4: `results` holds each finished listener, in manifest order."""

    id: str | None
    event: str | None
    results: list[tuple[FunctionSpec, InvokeResult]] = field(default_factory=list)
    error: dict[str, Any] | None = None
    attempts: int = 1
    """Attempts the failing listener made (its last `ctx.attempt`): the dead-letter copy's `faas_attempts`."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def error_type(self) -> str | None:
        return None if self.error is None else str(self.error["type"])

    @classmethod
    def bad_event(cls, event_id: str | None, event: str | None, message: str) -> EventReply:
        return cls(
            event_id, event, error={"function": None, "uuid": None, "type": "BadEvent", "message": message}
        )

    def fail(self, spec: FunctionSpec, exc: BaseException) -> None:
        """`spec` failed with `exc`: the chain's error."""
        self.error = _chain_error(spec, exc)
        self.attempts = exc.attempts if isinstance(exc, FaasError) else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "event": self.event,
            "ok": self.ok,
            "results": [
                {
                    "function": spec.name,
                    "uuid": spec.uuid,
                    "ok": True,
                    # The handler's JSON goes into the reply as it came from the instance: never re-encoded.
                    "result": orjson.Fragment(res.result),
                    "duration_ms": round(res.duration_ms, 3),
                }
                for spec, res in self.results
            ],
            "error": self.error,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())


class Invoker:
    """Runs invocations through the runtime and counts them. `registry` is swapped by the node on reload."""

    def __init__(self, runtime: Runtime, registry: Registry, metrics: Metrics | None = None) -> None:
        self.runtime = runtime
        self.registry = registry
        self.metrics = metrics
        # prometheus-client's labels() costs microseconds per call: keep the children of the hot path.
        self._counters: dict[tuple[str, str, str], Any] = {}
        self._histograms: dict[tuple[str, str], Any] = {}
        self.completed = [0, 0]
        """Invocations that ended, [succeeded, failed]: the node's shutdown summary."""
        self._retries: dict[tuple[str, str], Any] = {}

    def _observe(self, name: str, trigger: str, outcome: str, seconds: float) -> None:
        self.completed[outcome != "ok"] += 1
        if self.metrics is None:
            return
        counter = self._counters.get((name, trigger, outcome))
        if counter is None:
            counter = self._counters[name, trigger, outcome] = self.metrics.invocations.labels(
                name, trigger, outcome
            )
        histogram = self._histograms.get((name, trigger))
        if histogram is None:
            histogram = self._histograms[name, trigger] = self.metrics.duration.labels(name, trigger)
        counter.inc()
        histogram.observe(seconds)

    async def call(
        self,
        spec: FunctionSpec,
        payload: bytes,
        trigger: Trigger,
        event: str | None = None,
        invocation_id: str | None = None,
    ) -> InvokeResult:
        """Invoke `spec` (event and scheduled invocations with its retry policy); raises the FaasError the
        last attempt ended with."""
        if trigger in RETRIED_TRIGGERS and spec.retry.attempts:
            attempt = functools.partial(self._attempt, spec, payload, trigger, event)
            return await with_retries(
                spec, invocation_id, attempt, functools.partial(self._retried, spec.name)
            )
        return await self._attempt(spec, payload, trigger, event, invocation_id)

    def _retried(self, name: str, error_type: str) -> None:
        if self.metrics is None:
            return
        counter = self._retries.get((name, error_type))
        if counter is None:
            counter = self._retries[name, error_type] = self.metrics.retries.labels(name, error_type)
        counter.inc()

    async def _attempt(
        self,
        spec: FunctionSpec,
        payload: bytes,
        trigger: Trigger,
        event: str | None,
        invocation_id: str | None,
        attempt: int = 1,
    ) -> InvokeResult:
        """One invocation of `spec`; raises the FaasError it ended with."""
        inv = Invocation(invocation_id or new_id(), trigger, event, payload, attempt=attempt)
        started = time.perf_counter()
        outcome = "ok"
        try:
            return await self.runtime.invoke(spec, inv)
        except FaasError as exc:
            outcome = exc.type
            raise
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        finally:
            self._observe(spec.name, trigger, outcome, time.perf_counter() - started)

    async def direct(self, uuid: str, payload: bytes) -> InvokeResult:
        """HTTP direct invocation: only productive functions; anything else is NotFound."""
        spec = self.lookup(uuid)
        return await self.call(spec, payload, "direct")

    def lookup(self, uuid: str) -> FunctionSpec:
        spec = self.registry.productive(uuid)
        if spec is None:
            raise NotFound(f"no productive function with uuid {uuid}")
        return spec

    async def event(self, event_type: str, event_id: str, payload: bytes) -> EventReply:
        """Run every productive listener of `event_type` concurrently; the first failure aborts the chain."""
        reply = EventReply(event_id, event_type)
        listeners = self.registry.listeners(event_type)
        if len(listeners) == 1:  # the common case: no task, no waiting set
            spec = listeners[0]
            try:
                reply.results = [(spec, await self.call(spec, payload, "event", event_type))]
            except Exception as exc:
                reply.fail(spec, exc)
        elif listeners:
            await self._fan_out(reply, listeners, payload)
        return reply

    async def _fan_out(self, reply: EventReply, listeners: tuple[FunctionSpec, ...], payload: bytes) -> None:
        """One task per listener; done-callbacks count them down and wake this coroutine once, when all
        finished or at the first failure (cheaper than looping over `asyncio.wait`)."""
        loop = asyncio.get_running_loop()
        settled: asyncio.Future[None] = loop.create_future()
        results: list[InvokeResult | None] = [None] * len(listeners)
        left = len(listeners)

        def finished(i: int, task: asyncio.Task[InvokeResult]) -> None:
            nonlocal left
            left -= 1
            if settled.done() or task.cancelled():
                return  # aborted meanwhile: what ends now is not part of the reply
            exc = task.exception()
            if exc is None:
                results[i] = task.result()
            else:
                reply.fail(listeners[i], exc)
            if left == 0 or exc is not None:
                settled.set_result(None)

        tasks = []
        for i, spec in enumerate(listeners):
            task = loop.create_task(self.call(spec, payload, "event", reply.event))
            task.add_done_callback(functools.partial(finished, i))
            tasks.append(task)
        try:
            await settled
        finally:
            pending = [t for t in tasks if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
        reply.results = [(spec, res) for spec, res in zip(listeners, results, strict=True) if res is not None]

    async def warmup(self, spec: FunctionSpec) -> int:
        """Keep-warm: ensure a live instance and run the `warmup` hook in each; never reaches `handle`."""
        outcome = "ok"
        try:
            return await self.runtime.warmup(spec)
        except FaasError as exc:
            outcome = exc.type
            raise
        finally:
            if self.metrics is not None:
                self.metrics.warmups.labels(spec.name, outcome).inc()

    def instance_count(self, name: str) -> int:
        """Live instances of a function on this node (for listings; sources never reach instances)."""
        return self.runtime.instance_count(name)


def _chain_error(spec: FunctionSpec, exc: BaseException) -> dict[str, Any]:
    """The `error` of a combined reply: the failing listener and its contract error type."""
    err = exc if isinstance(exc, FaasError) else FunctionError(repr(exc))
    return {"function": spec.name, "uuid": spec.uuid, **err.to_dict()}
