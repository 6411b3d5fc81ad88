"""Scenarios 1 and 2: a node of a pair dies (SIGKILL) or stops (SIGTERM) in the middle of 10,000 events."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from framework.kafka.embedded import EmbeddedBroker
from tests.faults.kit import ReplyReader, events, producer, send_all
from tests.support import Node, ce_headers, new_id, partitions, settled

pytestmark = pytest.mark.faults

EVENTS = 10_000
BATCH = 1_000


async def handover(broker: EmbeddedBroker, a: Node, b: Node, stop_b: Callable[[], None]) -> ReplyReader:
    """Stream EVENTS events (reply-to set) to the pair; stop `b` once 2,000 are answered. Returns the
    reader after every event has a reply, and after a final event on each partition was answered by `a`."""
    replyto = f"t.faultreplies.{a.tag}"
    ids, records = events("fault.tick", EVENTS, keys=200, replyto=replyto)
    p = await producer(broker.bootstrap)
    try:
        async with ReplyReader(broker.bootstrap, replyto) as reader:
            for start in range(0, EVENTS, BATCH):
                await send_all(p, a.events, records[start : start + BATCH])
                if start == 3 * BATCH:
                    assert await reader.wait_records(2_000, 60) >= 2_000, a.tail()
                    stop_b()  # with ~2,000 produced and not answered yet, and 6,000 still to come
            missing = await reader.wait(ids, 120)
            assert not missing, f"{len(missing)} of {EVENTS} events never answered\na:\n{a.tail()}"
            failed = [i for i in ids if not reader.first[i]["ok"]]
            assert not failed, f"{len(failed)} replies not ok, e.g. {reader.first[failed[0]]}"

            count = len(await p.partitions_for(a.events))
            assert partitions(a) == list(range(count)), f"survivor's partitions {partitions(a)}"
            final = {part: new_id() for part in range(count)}
            for part, eid in final.items():
                await send_all(p, a.events, [(None, b"{}", ce_headers("fault.tick", eid, replyto))], part)
            assert not await reader.wait(set(final.values()), 30), "a partition has no owner"
            owners = {reader.first[eid]["results"][0]["result"]["node"] for eid in final.values()}
            assert owners == {"a"}, f"final events answered by {owners}"
            return reader
    finally:
        await p.stop()


def answered_by(reader: ReplyReader, node: str) -> int:
    """Events whose first reply came from `node` (the `T_NODE` its handler reports)."""
    return sum(1 for v in reader.first.values() if v["results"][0]["result"]["node"] == node)


def start_pair(project: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]) -> tuple[Node, Node]:
    tag = "pair" + new_id()[:6]
    a = nodes(project, broker.bootstrap, tag=tag, env={"T_NODE": "a"})
    b = nodes(project, broker.bootstrap, tag=tag, env={"T_NODE": "b"})
    a.wait_ready()
    b.wait_ready()
    settled(a, b, 6)
    return a, b


def test_sigkill_mid_stream_loses_nothing(
    project: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Two nodes in one group; 10,000 events with reply-to set, produced in batches.
    2. Once 2,000 are answered, node b is SIGKILLed (instances included).
    3. The rest is produced; the survivor takes b's partitions after the session timeout.
    Result: every event has at least one `ok` reply; duplicates are counted and printed; a final event on
    each partition is answered by the survivor, which names all of them in its last assignment."""
    a, b = start_pair(project, broker, nodes)
    started = time.monotonic()
    reader = asyncio.run(handover(broker, a, b, b.kill))
    ids = list(reader.first)
    duplicates = reader.duplicates(ids)
    answered_by_b = answered_by(reader, "b")
    print(
        f"\nSIGKILL: {EVENTS} events all answered in {time.monotonic() - started:.1f} s; "
        f"{answered_by_b} first answered by the killed node; {duplicates} duplicate replies"
    )
    assert answered_by_b > 0, "b was killed before it answered anything: the scenario proved nothing"
    assert a.proc.poll() is None


def test_sigterm_mid_stream_has_no_duplicates(
    project: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Two nodes in one group; 10,000 events with reply-to set, produced in batches.
    2. Once 2,000 are answered, node b gets SIGTERM: it drains what it took, commits and leaves.
    3. The rest is produced; the survivor takes b's partitions at the rebalance.
    Result: b answered events before it stopped; every event has exactly one `ok` reply (zero duplicates),
    b exits 0, and the survivor owns every partition."""
    a, b = start_pair(project, broker, nodes)
    started = time.monotonic()
    reader = asyncio.run(handover(broker, a, b, lambda: b.proc.send_signal(signal.SIGTERM)))
    ids = list(reader.first)
    duplicates = reader.duplicates(ids)
    answered_by_b = answered_by(reader, "b")
    print(
        f"\nSIGTERM: {EVENTS} events answered in {time.monotonic() - started:.1f} s; "
        f"{answered_by_b} answered by the stopped node; {duplicates} duplicates"
    )
    assert answered_by_b > 0, "b was stopped before it answered anything: the handover proved nothing"
    assert b.proc.wait(40) == 0, b.tail()
    assert duplicates == 0, f"{duplicates} events answered twice after a graceful stop"
