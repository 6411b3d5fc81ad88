"""Events over Kafka: events/s end to end with 1, 3 and 8 listeners, and latency at one common rate.

The baseline is the raw aiokafka relay (`relay.py`) on the same broker, with its own topics of the same
partitioning; both are driven by the same client (`eventload.py`) with the same two load shapes: 64 keys
(events of a key queue behind each other) and a key per event. Latency is measured on both sides at the
same rate, half of what the relay sustained with 64 keys, so the ratio compares the same offered load.
CPU per event (CPU time of every thread of the node and its instances, or of the relay process, over a
64-key throughput run, divided by its events) tells what each event and each listener costs, whatever the
machine's other load did to the rates.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable
from functools import partial

from benchmarks.env import Env, baseline, guarded
from benchmarks.eventload import KEYED, EventClient
from benchmarks.procs import Proc, cpu_seconds
from benchmarks.project import EVENT_TYPES
from benchmarks.stats import Series, percentile

RELAY = "raw aiokafka relay on uvloop (consume, produce same bytes, commit after acks)"
SHAPES: dict[str, int | None] = {f"{KEYED} keys": KEYED, "unique keys": None}


async def _start_client(env: Env, target: str) -> EventClient:
    if target == "node":
        env.node_ok()
        client = EventClient(env.bootstrap, env.topics["events"], env.topics["replies"], check_ok=True)
    else:
        if env.relay is None:
            raise RuntimeError("relay not started")
        await env.relay.wait_log_line("ready", 60)  # its first group join takes seconds on Tansu
        client = EventClient(env.bootstrap, env.topics["relay_in"], env.topics["relay_out"], check_ok=False)
    await client.start()
    return client


async def _with_cpu(proc: Proc, count: int, run: Callable[[], Awaitable[float]]) -> tuple[float, float]:
    """(events/s, CPU microseconds per event of `proc` and its children) of one throughput run."""
    before = cpu_seconds(proc.pid, children=True)
    rate = await run()
    return rate, (cpu_seconds(proc.pid, children=True) - before) / count * 1e6


async def _latencies(env: Env, client: EventClient, event_type: str, rate: float) -> tuple[float, float]:
    seconds = min(env.profile.event_latency_seconds, env.profile.event_latency_max / rate)
    lat = await client.latency(event_type, rate, seconds)
    return percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3


async def run(env: Env) -> list[Series]:
    p = env.profile
    tput: dict[tuple[int, str], Series] = {}
    lat: dict[int, tuple[Series, Series]] = {}
    for n in EVENT_TYPES:
        for shape in SHAPES:
            tput[n, shape] = Series(
                f"events {n} listener(s) throughput, {shape}",
                "events/s",
                "higher",
                RELAY,
                extra={"instances": "{max: 1, concurrency: 1000} per listener"},
            )
        lat[n] = (
            Series(f"events {n} listener(s) p50 at half the relay's rate", "ms", "lower", RELAY),
            Series(f"events {n} listener(s) p99 at half the relay's rate", "ms", "lower", RELAY),
        )
    cpu = {
        n: Series(
            f"events {n} listener(s) CPU per event, {KEYED} keys",
            "us",
            "lower",
            "raw aiokafka relay process, same load",
            extra={"what": "CPU time of the node and its instances / events (procs.cpu_seconds)"},
        )
        for n in EVENT_TYPES
    }
    every = [*tput.values(), *cpu.values(), *(s for pair in lat.values() for s in pair)]
    relay = await baseline(every, partial(_start_client, env, "relay"))
    node = await guarded(every, partial(_start_client, env, "node"))
    try:
        # Warm-up: connections, instances of every listener, the relay's first fetches.
        if relay is not None:
            await baseline(every, partial(relay.throughput, "bench.e1", p.event_warmup))
        if node is not None:
            for n, event_type in EVENT_TYPES.items():
                mine = [s for (m, _), s in tput.items() if m == n]
                await guarded([*mine, *lat[n]], partial(node.throughput, event_type, p.event_warmup))
        for _ in range(p.repeats):
            for shape, keys in SHAPES.items():
                if relay is not None and env.relay is not None:
                    measure = partial(relay.throughput, "bench.e1", p.event_count, keys)
                    b = await baseline(every, partial(_with_cpu, env.relay, p.event_count, measure))
                    for n in EVENT_TYPES:
                        if b is not None:
                            tput[n, shape].baseline_samples.append(b[0])
                            if keys is not None:
                                cpu[n].baseline_samples.append(b[1])
                for n, event_type in EVENT_TYPES.items():
                    if node is not None and env.node is not None:
                        run = partial(node.throughput, event_type, p.event_count, keys)
                        r = await guarded([tput[n, shape]], partial(_with_cpu, env.node, p.event_count, run))
                        if r is not None:
                            tput[n, shape].samples.append(r[0])
                            if keys is not None:
                                cpu[n].samples.append(r[1])
        keyed = tput[1, f"{KEYED} keys"].baseline_samples
        if not keyed:
            return every
        rate = statistics.median(keyed) / 2
        for _ in range(p.repeats):
            if relay is not None:
                b2 = await baseline(every, partial(_latencies, env, relay, "bench.e1", rate))
                for n in EVENT_TYPES:
                    lat[n][0].extra["rate"] = round(rate, 1)
                    if b2 is not None:
                        lat[n][0].baseline_samples.append(b2[0])
                        lat[n][1].baseline_samples.append(b2[1])
            for n, event_type in EVENT_TYPES.items():
                if node is None:
                    continue
                r2 = await guarded(list(lat[n]), partial(_latencies, env, node, event_type, rate))
                if r2 is not None:
                    lat[n][0].samples.append(r2[0])
                    lat[n][1].samples.append(r2[1])
    finally:
        for client in (relay, node):
            if client is not None:
                await client.stop()
    return every
