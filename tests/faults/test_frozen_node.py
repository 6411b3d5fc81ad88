"""A node frozen past its session timeout (SIGSTOP: a stalled VM, a debugger) wakes without its partitions."""

from __future__ import annotations

import asyncio
import itertools
import signal
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from framework.kafka.embedded import EmbeddedBroker
from tests.faults.kit import ReplyReader, events, producer, send_all
from tests.support import Node, new_id, records_now, settled, wait_for

pytestmark = pytest.mark.faults

EVENTS = 1_200
KEYS = 12
"""Twelve hot keys, 100 events each at 0.1 s a run: each key's backlog lasts about 10 s."""
SESSION_MS = 6_000
FROZEN = 10.0
"""Seconds node b is stopped: past its session timeout, so the group gives its partitions to a."""


def overlaps(runs_file: Path) -> list[tuple[str, str, str]]:
    """(key, node, node) for each run of a key that started before the key's previous run ended, on
    another node: two nodes answering one key at once."""
    by_key: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    for line in runs_file.read_text().splitlines():
        run = orjson.loads(line)
        by_key[run["key"]].append((run["start"], run["end"], run["node"]))
    found = []
    for key, runs in by_key.items():
        for before, after in itertools.pairwise(sorted(runs)):
            if after[0] < before[1] and after[2] != before[2]:
                found.append((key, before[2], after[2]))
    return found


def test_a_node_frozen_past_its_session_timeout_leaves_its_queued_events_to_their_new_owner(
    project: Path, broker: EmbeddedBroker, nodes: Callable[..., Node], tmp_path: Path
) -> None:
    """1. Two nodes in one group (session timeout 6 s); 1,200 events over 12 keys whose handler takes
    0.1 s, all produced at once, so each node holds a queue behind every key it owns.
    2. Two seconds in, node b is stopped (SIGSTOP) for 10 s: the group gives its partitions to a, which
    answers their events from the last commit. 3. b is continued (SIGCONT).
    Result: every event is answered; b says the group dropped it and that it dropped its queue; no key
    runs on both nodes at once (b used to run its whole queue beside a for up to 5 s: hundreds of runs on
    keys a was running, every one of them answered twice); no event is a dead letter (b's instances used to
    be killed as stuck as it ran again, their answers unread, and what they held failed `Timeout`)."""
    runs = tmp_path / "runs.jsonl"
    tag = "frozen" + new_id()[:6]
    env = {"FAAS_KAFKA_SESSION_TIMEOUT_MS": str(SESSION_MS), "T_RUNS": str(runs)}
    a = nodes(project, broker.bootstrap, tag=tag, env={**env, "T_NODE": "a"})
    b = nodes(project, broker.bootstrap, tag=tag, env={**env, "T_NODE": "b"})
    a.wait_ready()
    b.wait_ready()
    settled(a, b, 6)
    replyto = f"t.frozenreplies.{tag}"
    ids, records = events("fault.keyed", EVENTS, keys=KEYS, replyto=replyto)

    async def scenario() -> set[str]:
        p = await producer(broker.bootstrap)
        try:
            async with ReplyReader(broker.bootstrap, replyto) as reader:
                await send_all(p, a.events, records)
                assert await reader.wait_records(100, 30) >= 100, a.tail()
                b.proc.send_signal(signal.SIGSTOP)
                try:
                    await asyncio.sleep(FROZEN)  # the freeze itself is the scenario
                finally:
                    b.proc.send_signal(signal.SIGCONT)
                return await reader.wait(ids, 120)
        finally:
            await p.stop()

    missing = asyncio.run(scenario())
    assert not missing, f"{len(missing)} events never answered\na:\n{a.tail()}\nb:\n{b.tail()}"
    both = overlaps(runs)
    assert len(both) <= 2, f"{len(both)} runs of a key on both nodes at once, e.g. {both[:5]}"
    wait_for(lambda: "the group dropped this node" in b.log.read_text(errors="replace"), 30, message=b.tail())
    # What b's instances answered while b stood still was read as b ran again: nothing of it was failed
    # (Timeout, its instances killed as stuck) and sent to the dead-letter topic.
    assert "did not cut off" not in b.log.read_text(errors="replace"), b.tail()
    dead = records_now(broker.bootstrap, a.deadletter)
    assert not dead, f"{len(dead)} dead letters, e.g. {dead[:2]}"
