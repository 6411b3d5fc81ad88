"""Events over 24 partitions: how the event figures change with four times the partitions of `events`.

A second node and a second relay, each on topics of `PARTITIONS` partitions of their own, the same broker
and the same client and load shapes as `cases/events.py` (which runs on 6). One listener: the difference
to the 6-partition figures is what partitions cost or buy (more, smaller fetches and reply batches; more
chains that can run side by side with unique keys).
"""

from __future__ import annotations

import uuid
from functools import partial

from benchmarks import procs
from benchmarks.env import Env, baseline, guarded
from benchmarks.eventload import EventClient, create_topics
from benchmarks.project import EVENT_TYPES
from benchmarks.stats import Series
from framework.kafka.embedded import free_port

PARTITIONS = 24
SHAPES = {"64 keys": 64, "unique keys": None}


async def run(env: Env) -> list[Series]:
    p = env.profile
    relay_name = f"raw aiokafka relay on uvloop, {PARTITIONS} partitions"
    series = {
        shape: Series(
            f"events 1 listener(s) throughput, {shape}, {PARTITIONS} partitions",
            "events/s",
            "higher",
            relay_name,
        )
        for shape in SHAPES
    }
    every = list(series.values())
    if not env.bootstrap:
        for s in every:
            s.fail(env.node_error or "no broker")
        return every
    tag = uuid.uuid4().hex[:8]
    topics = {**env.topics, **{k: f"bench.{k}.p{PARTITIONS}.{tag}" for k in ("events", "replies")}}
    relay_in, relay_out = f"bench.relay_in.p{PARTITIONS}.{tag}", f"bench.relay_out.p{PARTITIONS}.{tag}"
    note = await create_topics(
        env.bootstrap, [topics["events"], topics["replies"], relay_in, relay_out], PARTITIONS
    )
    for s in every:
        s.extra["topics"] = note
    port = free_port()
    node = procs.start_node(env.project.root, port, env.bootstrap, topics, f"bench-p-{tag}", env.logs)
    relay = procs.start_relay(env.bootstrap, relay_in, relay_out, f"relay-p-{tag}", env.logs)
    clients: list[EventClient] = []
    try:
        await node.wait_http_ready(port, "/readyz", 90)
        await relay.wait_log_line("ready", 60)
        on_node = EventClient(env.bootstrap, topics["events"], topics["replies"], check_ok=True)
        on_relay = EventClient(env.bootstrap, relay_in, relay_out, check_ok=False)
        for client in (on_node, on_relay):
            await client.start()
            clients.append(client)
        event_type = EVENT_TYPES[1]
        await guarded(every, partial(on_node.throughput, event_type, p.event_warmup))
        await baseline(every, partial(on_relay.throughput, event_type, p.event_warmup))
        for _ in range(p.repeats):
            for shape, keys in SHAPES.items():
                b = await baseline(every, partial(on_relay.throughput, event_type, p.event_count, keys))
                if b is not None:
                    series[shape].baseline_samples.append(b)
                r = await guarded(
                    [series[shape]], partial(on_node.throughput, event_type, p.event_count, keys)
                )
                if r is not None:
                    series[shape].samples.append(r)
    finally:
        for client in clients:
            await client.stop()
        node.stop()
        relay.stop()
    return every
