"""Events over 24 partitions: what four times the partitions of `events` change, and what a second node
in the same consumer group adds on the same machine.

A node and a relay, each on topics of `PARTITIONS` partitions of their own, the same broker and the same
client and load shapes as `cases/events.py` (which runs on 6). One listener: the difference to the
6-partition figures is what partitions cost or buy (more, smaller fetches and reply batches; more chains
that can run side by side with unique keys). Then a second node joins the node's group and a second relay
the relay's (each group splits the partitions between its two members), and the same rounds run again:
what scaling out on one machine buys, against the relay scaled out the same way. Each second member is
started once the first rounds are done and is in its group (and a warm-up round has passed, so the
rebalance is over) before a round is measured.
"""

from __future__ import annotations

import uuid
from functools import partial

from benchmarks import procs
from benchmarks.config import Profile
from benchmarks.env import Env, baseline, guarded
from benchmarks.eventload import EventClient, create_topics
from benchmarks.project import EVENT_TYPES
from benchmarks.stats import Series
from framework.kafka.embedded import free_port

PARTITIONS = 24
SHAPES = {"64 keys": 64, "unique keys": None}


def _series(members: int) -> dict[str, Series]:
    suffix = "" if members == 1 else f", {members} nodes"
    relay = "raw aiokafka relay on uvloop" if members == 1 else f"{members} raw aiokafka relays on uvloop"
    return {
        shape: Series(
            f"events 1 listener(s) throughput, {shape}, {PARTITIONS} partitions{suffix}",
            "events/s",
            "higher",
            f"{relay} in one group, {PARTITIONS} partitions",
        )
        for shape in SHAPES
    }


async def _rounds(p: Profile, series: dict[str, Series], on_node: EventClient, on_relay: EventClient) -> None:
    """A warm-up on each side, then `repeats` rounds of each shape, relay and node in turn."""
    every = list(series.values())
    event_type = EVENT_TYPES[1]
    await guarded(every, partial(on_node.throughput, event_type, p.event_warmup))
    await baseline(every, partial(on_relay.throughput, event_type, p.event_warmup))
    for _ in range(p.repeats):
        for shape, keys in SHAPES.items():
            b = await baseline(every, partial(on_relay.throughput, event_type, p.event_count, keys))
            if b is not None:
                series[shape].baseline_samples.append(b)
            r = await guarded([series[shape]], partial(on_node.throughput, event_type, p.event_count, keys))
            if r is not None:
                series[shape].samples.append(r)


async def run(env: Env) -> list[Series]:
    p = env.profile
    one, two = _series(1), _series(2)
    every = [*one.values(), *two.values()]
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
    node_group, relay_group = f"bench-p-{tag}", f"relay-p-{tag}"
    port = free_port()
    started = [
        procs.start_node(env.project.root, port, env.bootstrap, topics, node_group, env.logs, "node p24"),
        procs.start_relay(env.bootstrap, relay_in, relay_out, relay_group, env.logs, "relay p24"),
    ]
    clients: list[EventClient] = []
    try:
        await started[0].wait_http_ready(port, "/readyz", 90)
        await started[1].wait_log_line("ready", 60)
        on_node = EventClient(env.bootstrap, topics["events"], topics["replies"], check_ok=True)
        on_relay = EventClient(env.bootstrap, relay_in, relay_out, check_ok=False)
        for client in (on_node, on_relay):
            await client.start()
            clients.append(client)
        await _rounds(p, one, on_node, on_relay)
        second = free_port()
        started += [
            procs.start_node(
                env.project.root, second, env.bootstrap, topics, node_group, env.logs, "node p24 second"
            ),
            procs.start_relay(env.bootstrap, relay_in, relay_out, relay_group, env.logs, "relay p24 second"),
        ]
        await started[2].wait_http_ready(second, "/readyz", 90)  # ready: it joined, so the group rebalanced
        await started[3].wait_log_line("ready", 60)
        await _rounds(p, two, on_node, on_relay)
    finally:
        for client in clients:
            await client.stop()
        procs.stop_all(started)
    return every
