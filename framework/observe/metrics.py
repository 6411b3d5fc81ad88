"""Prometheus metrics of one node. Instances report to the node, which alone owns these.

Besides the `faas_*` families, a node's registry carries what Prometheus users expect of any process:
`process_*` (CPU, memory, file descriptors), `python_*` (interpreter info and GC) and
`faas_build_info{version}`. Counters have no `_created` series (one extra series per label set that few
dashboards use): `disable_created_metrics` is process-wide, so it is called once here.
"""

from __future__ import annotations

from collections.abc import Collection

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

from framework import __version__

disable_created_metrics()  # type: ignore[no-untyped-call]

DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)


class Metrics:
    """One registry per node, so tests can run several nodes' worth in one process."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        Info("faas_build", "The version of the faas node.", registry=r).info({"version": __version__})
        self.http_requests = Counter(
            "faas_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "faas_http_request_duration_seconds",
            "HTTP request time, from the request to the last byte of the response.",
            ["route", "method", "status"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.invocations = Counter(
            "faas_invocations",
            "Invocations by function, trigger and outcome.",
            ["function", "trigger", "outcome"],
            registry=r,
        )
        self.duration = Histogram(
            "faas_invocation_duration_seconds",
            "Invocation time seen by the node: queueing and cold starts included.",
            ["function", "trigger"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.cold_starts = Counter(
            "faas_cold_starts", "Instances started on demand.", ["function"], registry=r
        )
        self.cold_start_seconds = Histogram(
            "faas_cold_start_seconds",
            "Time to start an instance.",
            ["function"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.instances = Gauge("faas_instances", "Live instances per function.", ["function"], registry=r)
        self.inflight = Gauge(
            "faas_inflight_requests", "Requests in flight per function.", ["function"], registry=r
        )
        self.queued = Gauge(
            "faas_queued_requests", "Requests waiting for a free instance.", ["function"], registry=r
        )
        self.instance_crashes = Counter(
            "faas_instance_crashes", "Instances that died or were killed.", ["function", "reason"], registry=r
        )
        self.instance_kills = Counter(
            "faas_instance_kills",
            "Instances that ended against their will, by reason: memory (over instances.memory_mb), "
            "timeout (loop stuck past a time limit), crash (the process died).",
            ["function", "reason"],
            registry=r,
        )
        self.blocked_loop = Counter(
            "faas_blocked_loop",
            "Times a handler blocked its instance's loop >100 ms.",
            ["function"],
            registry=r,
        )
        self.warmups = Counter(
            "faas_warmups",
            "Keep-warm invocations (apart from real ones).",
            ["function", "outcome"],
            registry=r,
        )
        self.events_consumed = Counter(
            "faas_events_consumed", "Kafka records taken from the events topic.", registry=r
        )
        self.events_replied = Counter(
            "faas_events_replied", "Combined replies acknowledged by the broker.", ["ok"], registry=r
        )
        self.events_deadlettered = Counter(
            "faas_events_deadlettered",
            "Records copied to the dead-letter topic, by reason (bad_event, failed).",
            ["reason"],
            registry=r,
        )
        self.retries = Counter(
            "faas_retries",
            "Attempts retried (DESIGN.md section 15), by function and the error type that failed them.",
            ["function", "error"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "faas_consumer_lag",
            "Records of the partition not answered yet: its end less the oldest record still running or "
            "waiting behind its key (the fetch position when none is).",
            ["topic", "partition"],
            registry=r,
        )
        self.schedule_runs = Counter(
            "faas_schedule_runs",
            "Scheduled runs by function and outcome.",
            ["function", "outcome"],
            registry=r,
        )
        self.schedule_skipped = Counter(
            "faas_schedule_skipped",
            "Ticks skipped: missed while down, or the previous run still going.",
            ["function", "reason"],
            registry=r,
        )
        self.manifest_reloads = Counter(
            "faas_manifest_reloads", "Manifest reloads by outcome.", ["outcome"], registry=r
        )

        self._per_function = [
            (family, list(family._labelnames).index("function"))
            for family in vars(self).values()
            if isinstance(family, Counter | Gauge | Histogram) and "function" in family._labelnames
        ]
        """The families labelled by function, with the label's position (`forget`)."""

    def forget(self, functions: Collection[str]) -> None:
        """Remove every series of `functions` (they left what the node serves, and no instance of theirs is
        left): a project whose functions are renamed or removed over weeks of watch-mode edits does not
        carry their series for ever. A function that comes back starts its counters at zero, as after a
        restart. One pass over the label sets each family holds (no rendering: `collect` built every
        sample of every function, 175 ms a name at 1,000 functions, on the node's loop)."""
        for family, at in self._per_function:
            for values in [v for v in list(family._metrics) if v[at] in functions]:
                family.remove(*values)

    def render(self) -> bytes:
        return generate_latest(self.registry)
