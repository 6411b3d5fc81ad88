"""What invocation records and OpenTelemetry export cost on the end-to-end figures, as same-run ratios.

Three nodes of this group's own serve the same small project on the suite's broker, each with its own
topics (events, replies, invocations, ...) and consumer group, and differ in one setting each:

- `default`: `FAAS_RECORDS=true` (the default: records kept, aggregated and produced to the topic), no
  OTLP endpoint (export off);
- `records off`: `FAAS_RECORDS=false`;
- `export on`: as `default`, plus `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a local OTLP/HTTP receiver
  (`benchmarks/otlp.py`, a process of its own that decodes every export and counts its spans by name),
  the exporter's other settings left at their defaults, as a user would start it.

Series (the figure is the feature on; the baseline the same figure with it off, so the ratio is its cost):

- `records on, direct invoke c=64 throughput` (req/s) and `records on, events 1 listener throughput,
  64 keys` (events/s): `default` vs `records off`;
- `OTel export on, direct invoke c=64 throughput` (req/s), `OTel export on, direct invoke c=1 p50` (ms)
  and `OTel export on, events 1 listener throughput, 64 keys` (events/s): `export on` vs `default`.

Direct load comes from the load generator (`loadgen.py`) on a function per concurrency (`noop` at c=64,
`noop-c1` at c=1, so the receiver tells their spans apart), events from `EventClient` (one listener, 64
keys, `event_count` events per round). Each figure is measured in rounds that alternate between the nodes
concerned, in an order that rotates every repetition, so drift on a shared machine hits every node alike;
the median of `repeats` rounds is reported. `default` is the "on" side of the records comparison and the
"off" side of the export one: its samples serve both.

Every series' `extra` holds the median CPU time per request (or event) of the node with its instances and of
the broker, on both sides (`procs.cpu_seconds`). On a busy shared machine it moves less than throughput does,
and it shows what records cost the broker (one more record stored per invocation), which throughput on a
machine with idle cores would not. The broker's figure includes its background work (the other nodes' polls),
alike for every node: read the difference. Each export series' `extra` also holds the spans of its kind the
receiver got (`spans_received`, once the `export on` node stopped, which flushes its exporter;
`spans_received_while_running`, before that) against the invocations and events that node handled
(`spans_expected`, warm-ups included): fewer means the exporter's queue dropped some. A series none of whose
spans reached the receiver is failed.

Before each round every node is let go quiet (`_quiet`): an exporter still sending the last round's spans,
or a records buffer still draining, would otherwise charge its CPU to whichever node is measured next.

Trade-offs: the three nodes, the receiver, the broker and the load clients share the machine's cores. The
receiver's decoding takes some CPU from the node, as a collector on the same host would; the idle nodes
take a little. Export serialises and sends on the exporter's own thread, so what the export ratios show
is mostly that thread's CPU and GIL time taken from the node's event loop, plus building each span.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import orjson

from benchmarks import loadgen, procs
from benchmarks.env import Env
from benchmarks.eventload import KEYED, EventClient, create_topics
from benchmarks.httpclient import fetch
from benchmarks.project import entry, fn_uuid, write_functions
from benchmarks.stats import Better, Series, describe
from framework.kafka.embedded import free_port

Figure = Literal["c64", "c1", "events"]
EVENT_TYPE = "bench.costs"
DIRECT: dict[Figure, tuple[int, str]] = {"c64": (64, "noop"), "c1": (1, "noop-c1")}
"""Connections and function of each direct figure."""
LISTENER = "listener"
SPANS: dict[Figure, tuple[str, ...]] = {
    "c64": ("invoke noop",),
    "c1": ("invoke noop-c1",),
    "events": (f"invoke {LISTENER}", f"{EVENT_TYPE} process"),
}
"""Names of the spans each figure makes on the `export on` node (events: the event's and the invocation's)."""
READY_TIMEOUT = 90.0
RECORDS_OFF = "the same node with FAAS_RECORDS=false"
EXPORT_OFF = "the same node without an OTLP endpoint (export off)"


@dataclass
class Node:
    key: str
    settings: dict[str, str | None]
    proc: procs.Proc | None = None
    port: int = 0
    topics: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    client: EventClient | None = None
    invocations: dict[Figure, int] = field(default_factory=dict)
    """Invocations of each figure's function(s) this node handled, warm-ups included."""
    cpu: dict[Figure, list[tuple[float, float]]] = field(default_factory=dict)
    """Per round: CPU microseconds per request (or event) of the node (instances included) and the broker."""

    def ok(self) -> procs.Proc:
        if self.proc is None:
            raise RuntimeError(self.error or f"node {self.key} not started")
        self.proc.check_alive()
        return self.proc


@dataclass
class Pair:
    """A series, the figure it reports, and the nodes of its samples (`on`) and baseline (`off`)."""

    series: Series
    figure: Figure
    on: str
    off: str

    def side(self, node: str) -> bool | None:
        """True when `node` gives this series' samples, False its baseline, None neither."""
        return True if node == self.on else False if node == self.off else None


def _pairs() -> list[Pair]:
    tput = f"events 1 listener throughput, {KEYED} keys"
    records, export = (
        ("records on", RECORDS_OFF, "default", "records off"),
        ("OTel export on", EXPORT_OFF, "export on", "default"),
    )
    specs: list[tuple[tuple[str, str, str, str], str, str, Better, Figure]] = [
        (records, "direct invoke c=64 throughput", "req/s", "higher", "c64"),
        (records, tput, "events/s", "higher", "events"),
        (export, "direct invoke c=64 throughput", "req/s", "higher", "c64"),
        (export, "direct invoke c=1 p50", "ms", "lower", "c1"),
        (export, tput, "events/s", "higher", "events"),
    ]
    return [
        Pair(Series(f"{feature}, {case}", unit, better, base), figure, on, off)
        for (feature, base, on, off), case, unit, better, figure in specs
    ]


def _cpu_now(env: Env, node: procs.Proc) -> tuple[float, float]:
    """CPU seconds so far of the node (with its instances) and of the broker (0 when unknown)."""
    broker = procs.cpu_seconds(env.broker_pid) if env.broker_pid else 0.0
    return procs.cpu_seconds(node.pid, children=True), broker


QUIET_SHARE = 0.15
"""A node is quiet when it (with its instances) uses less than this share of a core (an idle node polls
Kafka: about 6% of a core here)."""
QUIET_LIMIT = 20.0
"""Seconds to wait for quiet nodes before a round starts anyway."""


def _busy(pids: list[int]) -> float:
    """CPU seconds so far of these nodes with their instances."""
    return sum(procs.cpu_seconds(pid, children=True) for pid in pids)


async def _quiet(nodes: dict[str, Node]) -> None:
    """Wait until every node is quiet: what one round left behind (an exporter's queue of spans, a
    records buffer) is done on that node's own time, not on the next round's node."""
    pids = [n.proc.pid for n in nodes.values() if n.proc is not None and n.proc.popen.poll() is None]
    deadline = time.monotonic() + QUIET_LIMIT
    while time.monotonic() < deadline:
        before, started = sum(procs.cpu_seconds(pid, children=True) for pid in pids), time.monotonic()
        await asyncio.sleep(0.3)
        if sum(procs.cpu_seconds(pid, children=True) for pid in pids) - before < QUIET_SHARE * len(pids) * (
            time.monotonic() - started
        ):
            return


def _per_unit(before: tuple[float, float], after: tuple[float, float], units: int) -> tuple[float, float]:
    """CPU microseconds per request (or event) of the node and of the broker between two readings."""
    return (after[0] - before[0]) / units * 1e6, (after[1] - before[1]) / units * 1e6


def _otel_missing() -> str | None:
    """Why the export side cannot run here, or None."""
    for module in ("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http", "opentelemetry.proto"):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return f"{module} is not installed (the `otel` extra)"
    return None


async def _measure(pairs: list[Pair], node: str, call: Callable[[], Awaitable[float | None]]) -> None:
    """One round on `node`: its figure goes to the samples or baseline of every pair it serves (None: a
    warm-up, kept nowhere); a failure marks those sides failed, and once all of them failed later rounds
    are skipped."""
    sides = [(p.series, side) for p in pairs if (side := p.side(node)) is not None]
    if all((s.error if on else s.baseline_error) is not None for s, on in sides):
        return
    try:
        value = await call()
    except Exception as exc:
        for s, on in sides:
            (s.fail if on else s.fail_baseline)(describe(exc))
        return
    for s, on in sides:
        if value is not None:
            (s.samples if on else s.baseline_samples).append(value)


async def _start(env: Env, nodes: dict[str, Node], receiver: int | None) -> None:
    tag = uuid.uuid4().hex[:8]
    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("OTEL_")}
    for node in nodes.values():
        slug = node.key.replace(" ", "-")
        node.topics = {
            k: f"bench.costs.{slug}.{k}.{tag}"
            for k in ("events", "replies", "deadletter", "scheduler", "deployments", "invocations")
        }
    await create_topics(
        env.bootstrap, [n.topics[k] for n in nodes.values() for k in ("events", "replies")], 6
    )
    entries = [
        entry(DIRECT["c64"][1], "noop"),
        entry(DIRECT["c1"][1], "noop"),
        entry(LISTENER, "noop", [EVENT_TYPE], "{max: 1, concurrency: 1000}"),
    ]
    for node in nodes.values():
        if node.key == "export on" and receiver is None:
            continue
        slug = node.key.replace(" ", "-")
        project = write_functions(env.project.root.parent / "costs" / slug, entries)
        node.port = free_port()
        extra = {**clean, "FAAS_INVOCATIONS_TOPIC": node.topics["invocations"], **node.settings}
        if node.key == "export on":
            extra["OTEL_EXPORTER_OTLP_ENDPOINT"] = f"http://127.0.0.1:{receiver}"
        group = f"bench-costs-{slug}-{tag}"
        node.proc = procs.start_node(
            project.root, node.port, env.bootstrap, node.topics, group, env.logs, f"costs-{slug}", extra
        )

    async def ready(node: Node) -> None:
        if node.proc is None:
            return
        try:
            await node.proc.wait_http_ready(node.port, "/readyz", READY_TIMEOUT)
        except Exception as exc:
            node.error = describe(exc)
            node.proc.stop()
            node.proc = None

    await asyncio.gather(*(ready(n) for n in nodes.values()))


async def _direct(env: Env, node: Node, figure: Figure, warmup: float) -> float:
    proc = node.ok()
    connections, name = DIRECT[figure]
    before = _cpu_now(env, proc)
    res = await loadgen.run(
        "127.0.0.1",
        node.port,
        f"/functions/{fn_uuid(name)}/invoke",
        body='{"n":1}',
        connections=connections,
        duration=env.profile.direct_duration,
        warmup=warmup,
    )
    total = res.requests + res.warmup_requests
    node.invocations[figure] = node.invocations.get(figure, 0) + total
    res.check()
    node.cpu.setdefault(figure, []).append(_per_unit(before, _cpu_now(env, proc), total))
    return res.rps if figure == "c64" else res.p50_ms


async def _event_client(env: Env, node: Node) -> None:
    """Start the node's event client and warm the path up (connections, the listener's instance)."""
    node.ok()
    client = EventClient(env.bootstrap, node.topics["events"], node.topics["replies"], check_ok=True)
    await client.start()
    node.client = client
    node.invocations["events"] = env.profile.event_warmup
    await client.throughput(EVENT_TYPE, env.profile.event_warmup)


async def _events(env: Env, node: Node) -> float:
    proc = node.ok()
    client = node.client
    if client is None:
        raise RuntimeError(f"no event client for node {node.key}")
    count = env.profile.event_count
    before = _cpu_now(env, proc)
    node.invocations["events"] = node.invocations.get("events", 0) + count
    rate = await client.throughput(EVENT_TYPE, count, KEYED)
    node.cpu.setdefault("events", []).append(_per_unit(before, _cpu_now(env, proc), count))
    return rate


def _cpu_extra(nodes: dict[str, Node], pair: Pair) -> dict[str, float]:
    unit = "event" if pair.figure == "events" else "request"
    out: dict[str, float] = {}
    for label, key in (("", pair.on), ("baseline_", pair.off)):
        rounds = nodes[key].cpu.get(pair.figure, [])
        if rounds:
            out[f"{label}node_cpu_us_per_{unit}"] = round(statistics.median(r[0] for r in rounds), 1)
            out[f"{label}broker_cpu_us_per_{unit}"] = round(statistics.median(r[1] for r in rounds), 1)
    return out


async def _spans(port: int) -> dict[str, Any]:
    status, body = await fetch("127.0.0.1", port, "GET", "/stats")
    if status != 200:
        raise RuntimeError(f"OTLP receiver /stats answered {status}: {body[:200]!r}")
    stats: dict[str, Any] = orjson.loads(body)
    return stats


def _check_export(pair: Pair, node: Node, running: dict[str, Any], final: dict[str, Any]) -> None:
    names = SPANS[pair.figure]
    received = sum(final["spans"].get(n, 0) for n in names)
    pair.series.extra |= {
        "spans_received": received,
        "spans_received_while_running": sum(running["spans"].get(n, 0) for n in names),
        "spans_expected": node.invocations.get(pair.figure, 0) * len(names),
        "receiver": {
            **{k: final[k] for k in ("requests", "bytes", "errors")},
            "bytes_per_span": round(final["bytes"] / max(1, sum(final["spans"].values())), 1),
        },
    }
    if not received and pair.series.samples:
        pair.series.fail(f"no span named {' or '.join(names)} reached the OTLP receiver")


async def run(env: Env) -> list[Series]:
    p = env.profile
    pairs = _pairs()
    out = [pair.series for pair in pairs]
    exporting = [pair for pair in pairs if pair.on == "export on"]
    nodes = {
        "default": Node("default", {"FAAS_RECORDS": "true"}),
        "records off": Node("records off", {"FAAS_RECORDS": "false"}),
        "export on": Node("export on", {"FAAS_RECORDS": "true"}),
    }
    if not env.bootstrap:
        for s in out:
            s.fail(env.node_error or "no broker")
        return out
    receiver: procs.Proc | None = None
    receiver_port: int | None = None
    if (missing := _otel_missing()) is not None:
        nodes["export on"].error = missing
    else:
        receiver_port = free_port()
        args = [sys.executable, "-m", "benchmarks.otlp", str(receiver_port)]
        receiver = procs.Proc("OTLP receiver", args, env.logs / "costs-otlp.log")
    try:
        if receiver is not None and receiver_port is not None:
            try:
                await receiver.wait_http_ready(receiver_port, "/stats", 30)
            except Exception as exc:
                nodes["export on"].error = describe(exc)
                receiver_port = None
        await _start(env, nodes, receiver_port)
        figures: tuple[Figure, ...] = ("c64", "c1", "events")
        for figure in figures:
            mine = [pair for pair in pairs if pair.figure == figure]
            keys = [k for k in nodes if any(pair.side(k) is not None for pair in mine)]
            if figure == "events":  # every client polls its replies from now on: start them all first
                for key in keys:
                    await _measure(mine, key, partial(_event_client, env, nodes[key]))
            for rep in range(p.repeats):
                warmup = p.direct_warmup if rep == 0 else p.direct_warmup / 4
                for key in keys[rep % len(keys) :] + keys[: rep % len(keys)]:
                    await _quiet(nodes)
                    if figure == "events":
                        await _measure(mine, key, partial(_events, env, nodes[key]))
                    else:
                        await _measure(mine, key, partial(_direct, env, nodes[key], figure, warmup))
        for pair in pairs:
            pair.series.extra |= _cpu_extra(nodes, pair)
        exporter = nodes["export on"]
        if receiver_port is not None and exporter.proc is not None:
            running = await _spans(receiver_port)
            if exporter.client is not None:
                await exporter.client.stop()
                exporter.client = None
            exporter.proc.stop()  # a clean stop flushes the exporter's queue
            final = await _spans(receiver_port)
            for pair in exporting:
                _check_export(pair, exporter, running, final)
    finally:
        for node in nodes.values():
            if node.client is not None:
                await node.client.stop()
        procs.stop_all([*(node.proc for node in nodes.values()), receiver])
    for pair in pairs:
        if not pair.series.samples and nodes[pair.on].error:
            pair.series.fail(nodes[pair.on].error or "")
        if not pair.series.baseline_samples and nodes[pair.off].error:
            pair.series.fail_baseline(nodes[pair.off].error or "")
    return out
