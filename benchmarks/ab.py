"""`python -m benchmarks.ab [options] TREE [TREE ...]`: the event path of several source trees, side by side.

For changes to the event path whose effect is smaller than this machine's noise between runs: one embedded
broker, one node per source tree (each started with `PYTHONPATH=TREE`, so a `git worktree` of another commit
runs its own `framework`), each on topics of its own, and rounds that alternate between them, so every tree
sees the same moments of the machine's load. Each round produces `--events` events (over `--keys` keys, or
a key per event with `--keys 0`) to one node and waits for every reply; it prints events/s and the CPU per
event of the node, of its instances, of the broker and of this load client, then the medians per tree.

A TREE may carry settings for its node after a colon (`TREE:NAME=VALUE,NAME=VALUE`), so one tree can be
measured against itself with a setting changed.

Examples, the working tree against the last commit, and invocation records off against on:
    git worktree add /tmp/base HEAD && python -m benchmarks.ab --rounds 5 /tmp/base .
    python -m benchmarks.ab --rounds 5 .:FAAS_RECORDS=false .
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.config import FULL
from benchmarks.eventload import EventClient, create_topics
from benchmarks.procs import Proc, cpu_seconds, start_node
from benchmarks.project import EVENT_TYPES, write_project
from framework.kafka.embedded import EmbeddedBroker, free_port

READY_TIMEOUT = 90.0
"""Seconds a node may take to be ready (its first group join on the embedded broker takes seconds)."""
WARMUP = 500
"""Events each node answers before the rounds (its instance started, its connections open)."""
PARTS = ("node", "instances", "broker", "client")


@dataclass
class _Tree:
    path: Path
    label: str
    node: Proc
    client: EventClient
    rates: list[float] = field(default_factory=list)
    cpu: dict[str, list[float]] = field(default_factory=lambda: {part: [] for part in PARTS})


def _client_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def _round(tree: _Tree, broker_pid: int, event_type: str, events: int, keys: int | None) -> str:
    node_pid = tree.node.pid
    before = (
        cpu_seconds(node_pid),
        cpu_seconds(node_pid, children=True),
        cpu_seconds(broker_pid),
        _client_seconds(),
    )
    rate = await tree.client.throughput(event_type, events, keys)
    after = (
        cpu_seconds(node_pid),
        cpu_seconds(node_pid, children=True),
        cpu_seconds(broker_pid),
        _client_seconds(),
    )
    node, with_children, broker, client = ((a - b) / events * 1e6 for a, b in zip(after, before, strict=True))
    tree.rates.append(rate)
    for part, value in zip(PARTS, (node, with_children - node, broker, client), strict=True):
        tree.cpu[part].append(value)
    return f"{rate:8.0f} events/s  us/event: " + "  ".join(
        f"{part} {tree.cpu[part][-1]:6.1f}" for part in PARTS
    )


def parse_tree(arg: str) -> tuple[Path, dict[str, str]]:
    """`TREE` or `TREE:NAME=VALUE,NAME=VALUE`: the tree's path and its node's extra settings."""
    path, _, spec = arg.partition(":")
    settings: dict[str, str] = {}
    for item in filter(None, spec.split(",")):
        name, eq, value = item.partition("=")
        if not eq or not name.strip():
            raise ValueError(f"{arg}: {item!r} is not NAME=VALUE")
        settings[name.strip()] = value
    return Path(path).resolve(), settings


Trees = list[tuple[str, Path, dict[str, str]]]
"""Each tree's argument (its label), path and node settings."""


async def run(trees: Trees, rounds: int, events: int, listeners: int, keys: int | None) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="faas-ab-"))
    (tmp / "logs").mkdir()
    project = write_project(tmp / "project", FULL)
    broker = EmbeddedBroker(log_path=tmp / "logs" / "broker.log").start()
    assert broker.proc is not None
    event_type = EVENT_TYPES[listeners]
    started: list[_Tree] = []
    try:
        for i, (label, path, settings) in enumerate(trees):
            tag = uuid.uuid4().hex[:8]
            names = ("events", "replies", "deadletter", "scheduler", "deployments")
            topics = {name: f"ab.{name}.{tag}" for name in names}
            await create_topics(broker.bootstrap, [topics["events"], topics["replies"]], 6)
            port, logs = free_port(), tmp / "logs"
            extra = {"PYTHONPATH": str(path), "FAAS_INVOCATIONS_TOPIC": f"ab.invocations.{tag}", **settings}
            group, name = f"ab-{tag}", f"node{i}"
            node = start_node(project.root, port, broker.bootstrap, topics, group, logs, name, extra)
            client = EventClient(broker.bootstrap, topics["events"], topics["replies"], True)
            tree = _Tree(path, label, node, client)
            started.append(tree)
            await node.wait_http_ready(port, "/readyz", READY_TIMEOUT)
            await tree.client.start()
            await tree.client.throughput(event_type, WARMUP, keys)
        for r in range(rounds):
            for tree in started:
                line = await _round(tree, broker.proc.pid, event_type, events, keys)
                print(f"round {r + 1} {tree.label}: {line}", flush=True)
        for tree in started:
            cpu = "  ".join(f"{part} {statistics.median(tree.cpu[part]):6.1f}" for part in PARTS)
            print(f"median {tree.label}: {statistics.median(tree.rates):8.0f} events/s  us/event: {cpu}")
    finally:
        for tree in started:
            await tree.client.stop()
            tree.node.stop()
        broker.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "trees", nargs="+", help="source trees (each with a `framework` package): TREE[:NAME=VALUE,...]"
    )
    parser.add_argument("--rounds", type=int, default=5, help="rounds per tree (default 5)")
    parser.add_argument("--events", type=int, default=FULL.event_count, help="events per round")
    parser.add_argument("--listeners", type=int, choices=sorted(EVENT_TYPES), default=1)
    parser.add_argument("--keys", type=int, default=64, help="keys the events spread over; 0: one per event")
    args = parser.parse_args(argv)
    trees: Trees = []
    for arg in args.trees:
        try:
            path, settings = parse_tree(arg)
        except ValueError as exc:
            parser.error(str(exc))
        if not (path / "framework" / "__init__.py").exists():
            parser.error(f"{path}: no framework package there")
        trees.append((arg, path, settings))
    import uvloop

    uvloop.run(run(trees, args.rounds, args.events, args.listeners, args.keys or None))
    return 0


if __name__ == "__main__":
    sys.exit(main())
