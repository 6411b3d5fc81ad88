"""Commit bookkeeping and per-key scheduling of the Kafka source, without a broker."""

from __future__ import annotations

import asyncio
import random

import pytest

from framework.sources.kafka.keyed import Job, KeyedRunner
from framework.sources.kafka.offsets import OffsetTracker, PartitionOffsets
from framework.tasks import within

# ---- offsets ----


def test_commit_point_waits_for_every_lower_offset() -> None:
    part = PartitionOffsets()
    for off in (10, 11, 12, 13):
        part.take(off)
    assert part.committable() == 10
    part.done(12)
    part.done(11)
    assert part.committable() == 10, "11 and 12 are done but 10 is not"
    part.done(10)
    assert part.committable() == 13
    part.done(13)
    assert part.committable() == 14  # every record taken is done: the point passed them all


def test_committable_only_when_it_moved() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.take("p0", 0).done(0)
    tracker.take("p1", 5)
    assert tracker.committable() == {"p0": 1, "p1": 5}
    tracker.committed({"p0": 1, "p1": 5})
    assert tracker.committable() == {}
    tracker.take("p0", 1)
    assert tracker.committable() == {}, "1 is in flight: the point is still 1"
    tracker.partitions["p0"].done(1)
    assert tracker.committable(["p0", "p9"]) == {"p0": 2}


def test_random_completion_order_never_commits_past_a_pending_offset() -> None:
    rng = random.Random(7)
    part = PartitionOffsets()
    offsets = list(range(1000))
    for off in offsets:
        part.take(off)
    done: set[int] = set()
    for off in rng.sample(offsets, len(offsets)):
        part.done(off)
        done.add(off)
        point = part.committable()
        expected = min(set(offsets) - done, default=1000)
        assert point in (None, expected)
        if point is not None:
            part.committed = point
    assert part.committed == 1000


def test_forget_detaches_old_partition_state() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    old = tracker.take("p0", 3)
    tracker.forget(["p0"])
    new = tracker.take("p0", 3)
    old.done(3)  # a record of the revoked assignment finishing late
    assert new.committable() == 3 and tracker.committable() == {"p0": 3}  # the new 3 is still pending


def test_refetched_offsets_are_not_tracked_twice() -> None:
    part = PartitionOffsets()
    part.take(1)
    part.take(1)
    part.done(1)
    assert part.committable() == 2


# ---- per-key chains ----


async def test_same_key_runs_in_order_different_keys_concurrently() -> None:
    runner: KeyedRunner[int] = KeyedRunner(limit=100)
    log: list[tuple[bytes, int]] = []
    running = 0
    peak = 0

    def job(key: bytes, seq: int) -> Job:
        async def run() -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(random.random() / 200)
            log.append((key, seq))
            running -= 1

        return run

    for seq in range(60):
        key = b"k%d" % (seq % 4)
        runner.submit(0, key, job(key, seq))
    assert runner.size == 60
    await runner.drain(None, 5)
    assert runner.size == 0
    for key in {k for k, _ in log}:
        seqs = [s for k, s in log if k == key]
        assert seqs == sorted(seqs)
    assert peak == 4, "one job per key at a time, all keys at once"


async def test_null_keys_do_not_wait_for_each_other() -> None:
    runner: KeyedRunner[int] = KeyedRunner()
    gate = asyncio.Event()
    started = 0

    async def blocked() -> None:
        nonlocal started
        started += 1
        await gate.wait()

    for _ in range(5):
        runner.submit(0, None, blocked)
    for _ in range(1000):  # yield until all five run (each waits on the gate): none waits for another
        if started == 5:
            break
        await asyncio.sleep(0)
    assert started == 5
    gate.set()
    assert await runner.drain(None, 1)


async def test_room_and_drop_and_cancel() -> None:
    runner: KeyedRunner[str] = KeyedRunner(limit=3)
    gate, both_started = asyncio.Event(), asyncio.Event()
    started: list[str] = []
    finished: list[str] = []

    def job(name: str) -> Job:
        async def run() -> None:
            started.append(name)
            if len(started) == 2:
                both_started.set()
            await gate.wait()
            finished.append(name)

        return run

    runner.submit("p0", b"a", job("a1"))
    runner.submit("p0", b"a", job("a2"))
    runner.submit("p1", b"b", job("b1"))
    assert runner.room == 0
    await within(both_started.wait(), 5)
    assert sorted(started) == ["a1", "b1"]  # both chains run their first job; a2 waits behind a1
    assert runner.drop_queued(["p0"]) == 1  # a2 never starts
    assert runner.room == 1
    assert not await runner.drain(["p1"], 0.01), "b1 is blocked: cancelled"
    assert runner.size == 1 and await runner.drain(["p1"], 0.01)  # nothing of p1 is left
    gate.set()
    assert await runner.drain(None, 1)
    assert finished == ["a1"] and runner.size == 0


async def test_a_failing_job_does_not_stop_its_chain(caplog: pytest.LogCaptureFixture) -> None:
    runner: KeyedRunner[int] = KeyedRunner()
    ran: list[int] = []

    async def boom() -> None:
        raise RuntimeError("bug")

    async def after() -> None:
        ran.append(1)

    runner.submit(0, b"k", boom)
    runner.submit(0, b"k", after)
    await runner.drain(None, 1)
    assert ran == [1] and "event job failed" in caplog.text
