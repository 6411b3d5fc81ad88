"""The source's room: FAAS_MAX_INFLIGHT_EVENTS records held at most, and fetching again once one is done.

Unit tests drive the poll loop with a consumer double (what it asks of aiokafka is small: `getmany`,
`pause`, `resume`, `paused`, `assignment`); the scenario runs a real node on the real broker.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import TopicPartition

from framework.kafka import group
from framework.kafka.embedded import EmbeddedBroker
from framework.observe.metrics import Metrics
from framework.settings import Settings
from framework.sources.kafka import source as source_module
from framework.sources.kafka.source import KafkaSource
from framework.tasks import within
from tests.faults.kit import ReplyReader, producer, send_all
from tests.support import ce_headers, consume, metric, new_id, produce, wait_for, write_project

TP = TopicPartition("events", 0)


class Consumer:
    """The consumer's calls, recorded; `getmany` returns nothing after a short wait, as an empty fetch."""

    def __init__(self) -> None:
        self.fetches: list[tuple[int, int | None]] = []
        """(timeout_ms, max_records) of every `getmany`."""
        self.fetched = asyncio.Event()
        self._paused: set[TopicPartition] = set()
        self.pauses = 0

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def pause(self, *tps: TopicPartition) -> None:
        self.pauses += 1
        self._paused.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._paused.difference_update(tps)

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> dict[Any, Any]:
        self.fetches.append((timeout_ms, max_records))
        self.fetched.set()
        await asyncio.sleep(min(timeout_ms, 10) / 1000)
        return {}


def full_source(limit: int) -> tuple[KafkaSource, Consumer]:
    """A source whose runner holds `limit` records already (nothing fetched can be taken)."""
    source = KafkaSource(Settings(max_inflight_events=limit), cast(Any, None), Metrics(), "127.0.0.1:1")
    consumer = Consumer()
    source.consumer = cast(Any, consumer)
    source.runner.size = limit
    return source, consumer


async def stop(source: KafkaSource, poll: asyncio.Task[None]) -> None:
    """Stop the source's poll loop as `KafkaSource.stop` does (the flag, then a wake-up); wait for it."""
    source._stopping = True
    source._room_freed()
    await within(poll, 5)


async def test_a_full_loop_fetches_again_as_soon_as_a_held_record_is_done(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1. A source holds its limit of records; its poll loop runs (FULL_POLL raised to a minute).
    2. One held record finishes.
    Result: nothing is fetched while full; right after the release the loop fetches at most one record,
    without the minute's wait and without having paused a partition."""
    monkeypatch.setattr(source_module, "FULL_POLL", 60.0)
    source, consumer = full_source(3)
    poll = asyncio.create_task(source._poll())
    try:
        for _ in range(20):  # the loop runs its iterations: still nothing fetched
            await asyncio.sleep(0)
        assert consumer.fetches == []
        source.runner._release(1)
        await within(consumer.fetched.wait(), 5)
        assert consumer.fetches[0] == (200, 1), "takes only the room there is"
        assert consumer.pauses == 0
    finally:
        await stop(source, poll)


async def test_a_reply_acknowledged_makes_room_too(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. A source full of replies waiting for their acknowledgement (none running).
    2. One is acknowledged (the outbox releases it).
    Result: the loop fetches again at once."""
    monkeypatch.setattr(source_module, "FULL_POLL", 60.0)
    source, consumer = full_source(2)
    source.runner.size = 0
    source.outbox.unacked = 2
    poll = asyncio.create_task(source._poll())
    part = source.tracker.take(TP, 0)
    part.acking = 1
    try:
        await asyncio.sleep(0)
        assert consumer.fetches == []
        source.outbox._release(part)
        await within(consumer.fetched.wait(), 5)
        assert consumer.fetches == [(200, 1)]
    finally:
        await stop(source, poll)


async def test_a_loop_full_for_long_polls_with_every_partition_paused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1. A source stays full past FULL_POLL (shortened to 20 ms).
    Result: it polls (so the group keeps the member) with its partitions paused and a zero timeout,
    never asking for a record; once room comes back it resumes them before fetching."""
    monkeypatch.setattr(source_module, "FULL_POLL", 0.02)
    source, consumer = full_source(1)
    poll = asyncio.create_task(source._poll())
    try:
        await within(consumer.fetched.wait(), 5)
        assert consumer.fetches[0] == (0, None)
        assert consumer.paused() == {TP}
        consumer.fetched.clear()
        source.runner._release(1)

        def fetched_records() -> bool:
            return any(max_records == 1 for _, max_records in consumer.fetches)

        while not fetched_records():
            await within(consumer.fetched.wait(), 5)
            consumer.fetched.clear()
        assert consumer.paused() == set(), "resumed before taking records"
    finally:
        await stop(source, poll)


async def test_stop_wakes_a_full_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """A full source told to stop ends its poll loop at once, not after FULL_POLL (raised to a minute)."""
    monkeypatch.setattr(source_module, "FULL_POLL", 60.0)
    source, consumer = full_source(1)
    poll = asyncio.create_task(source._poll())
    await asyncio.sleep(0)
    await stop(source, poll)
    assert consumer.fetches == []


TP1 = TopicPartition("events", 1)


class TwoPartitions(Consumer):
    def assignment(self) -> set[TopicPartition]:
        return {TP, TP1}


async def test_a_partition_holding_most_of_the_limit_is_paused_and_the_others_go_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1. A source with FAAS_MAX_INFLIGHT_EVENTS=8 and two partitions; partition 0 holds 6 records (one
       key's backlog: PARTITION_SHARE of 8).
    2. Two of them are done, then one more.
    Result: while partition 0 holds 6 it is paused and the loop fetches for the other (room 2); at 4 it
    stays paused (the margin); at 3 (half of 6) it is resumed. A fetch never takes more than would bring
    the other partition to 6."""
    monkeypatch.setattr(source_module, "FULL_POLL", 60.0)
    source = KafkaSource(Settings(max_inflight_events=8), cast(Any, None), Metrics(), "127.0.0.1:1")
    consumer = TwoPartitions()
    source.consumer = cast(Any, consumer)
    part = source.tracker.take(TP, 0)
    for offset in range(1, 6):
        source.tracker.take(TP, offset)
    source.runner.size = 6
    poll = asyncio.create_task(source._poll())
    try:
        await within(consumer.fetched.wait(), 5)
        assert consumer.paused() == {TP}
        assert consumer.fetches[-1] == (200, 2)
        for offset in (0, 1):
            part.done(offset)
        source.runner._release(2)
        consumer.fetched.clear()
        await within(consumer.fetched.wait(), 5)
        assert consumer.paused() == {TP}, "resumed before it was down to half"
        assert consumer.fetches[-1] == (200, 4)
        part.done(2)
        source.runner._release(1)
        consumer.fetched.clear()
        await within(consumer.fetched.wait(), 5)
        assert consumer.paused() == set()
        assert consumer.fetches[-1] == (200, 3), "fetches at most what brings partition 0 back to 6"
    finally:
        await stop(source, poll)


async def test_a_single_partition_may_hold_the_whole_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """A source with one partition holding 6 of 8 is not paused: it fetches the room there is (2)."""
    monkeypatch.setattr(source_module, "FULL_POLL", 60.0)
    source = KafkaSource(Settings(max_inflight_events=8), cast(Any, None), Metrics(), "127.0.0.1:1")
    consumer = Consumer()
    source.consumer = cast(Any, consumer)
    for offset in range(6):
        source.tracker.take(TP, offset)
    source.runner.size = 6
    poll = asyncio.create_task(source._poll())
    try:
        await within(consumer.fetched.wait(), 5)
        assert consumer.paused() == set() and consumer.fetches[-1] == (200, 2)
    finally:
        await stop(source, poll)


MANIFEST = """
functions:
  - name: hold
    uuid: dddddddd-0000-4000-8000-000000000001
    handler: functions.hold:hold
    state: productive
    events: [hold]
  - name: quick
    uuid: dddddddd-0000-4000-8000-000000000002
    handler: functions.hold:quick
    state: productive
    events: [quick]
"""
MODULES = {
    "hold": """
import asyncio, os

async def hold(payload, ctx):
    open(os.path.join(payload["started"], ctx.event_id), "w").close()
    while not os.path.exists(payload["until"]):
        await asyncio.sleep(0.01)
    return "released"

async def quick(payload, ctx):
    return "quick"
"""
}


def test_a_node_holds_at_most_its_limit_of_events(tmp_path: Path, broker: EmbeddedBroker, nodes: Any) -> None:
    """1. A node with FAAS_MAX_INFLIGHT_EVENTS=4; 12 events of 12 keys whose handler waits for a file.
    2. Four start; the node has taken (consumed) four and leaves the other eight on the topic.
    3. The file appears.
    Result: the lag is 12 while they wait (the four running count: the gauge counts what is not answered,
    not only what is not fetched, which said 8 and, with a roomier limit, 0 while events queued behind
    their key); every event is answered ok and the lag falls to 0."""
    root = write_project(tmp_path / "p", MANIFEST, MODULES)
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    n = nodes(root, broker.bootstrap, env={"FAAS_MAX_INFLIGHT_EVENTS": "4"}).wait_ready()
    ids = [f"hold-{i}-{new_id()[:6]}" for i in range(12)]
    payload = f'{{"started": "{started}", "until": "{release}"}}'.encode()
    produce(broker.bootstrap, n.events, [(i.encode(), payload, ce_headers("hold", i)) for i in ids])
    wait_for(lambda: len(list(started.iterdir())) == 4, timeout=30, message=f"4 events started\n{n.tail()}")
    wait_for(  # the lag gauge is updated every 2 s
        lambda: metric(n, "faas_consumer_lag") == 12,
        timeout=30,
        message=f"twelve events not answered\n{n.tail()}",
    )
    assert metric(n, "faas_events_consumed_total") == 4
    assert len(list(started.iterdir())) == 4
    release.touch()
    replies = consume(broker.bootstrap, n.replies, 12, timeout=60, ids=set(ids))
    assert {r["value"]["id"] for r in replies} == set(ids)
    assert all(r["value"]["ok"] for r in replies), replies
    wait_for(lambda: metric(n, "faas_consumer_lag") == 0, timeout=30, message="lag back to 0")


class StuckCommits(Consumer):
    """A consumer whose commits never return (aiokafka's, retrying a coordinator it cannot reach)."""

    def __init__(self) -> None:
        super().__init__()
        self.commits = 0

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits += 1
        await asyncio.Event().wait()


async def test_a_commit_that_never_returns_holds_up_neither_commits_nor_a_rebalance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1. A source has a finished record of a partition to commit; its consumer's commits never return.
    2. The partition is revoked (a rebalance's hand-over commits last).
    3. Another record is finished and the housekeeping's commit runs.
    Result: the hand-over ends (once the commit is given up after COMMIT_WAIT, not waited for forever,
    which held the group's rejoin), and the later commit is tried (the lock was released)."""
    monkeypatch.setattr(source_module, "COMMIT_WAIT", 0.2)
    source = KafkaSource(Settings(), cast(Any, None), Metrics(), "127.0.0.1:1")
    consumer = StuckCommits()
    source.consumer = cast(Any, consumer)
    source.tracker.take(TP, 7).done(7)
    await within(source.on_partitions_revoked([TP]), 30)
    assert consumer.commits == 1
    source.tracker.take(TP, 8).done(8)
    await within(source._commit(None), 5)
    assert consumer.commits == 2


def test_one_keys_backlog_holds_up_its_own_partition_only(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Any
) -> None:
    """1. A node with FAAS_MAX_INFLIGHT_EVENTS=8; 20 events of one key on partition 0, whose handler waits
       for a file: the first runs, the others queue behind it.
    2. The node takes 6 of them (PARTITION_SHARE of 8) and leaves the rest on the topic.
    3. 10 events of other keys arrive on partitions 1-5; then the file appears.
    Result: the 10 are answered while the key is still held (before, the backlog took the whole limit and
    they waited for it); then the key's 20 are answered, in order."""
    root = write_project(tmp_path / "p", MANIFEST, MODULES)
    started, release = tmp_path / "started", tmp_path / "release"
    started.mkdir()
    n = nodes(root, broker.bootstrap, env={"FAAS_MAX_INFLIGHT_EVENTS": "8"}).wait_ready()
    payload = f'{{"started": "{started}", "until": "{release}"}}'.encode()
    held = [f"held-{i}-{new_id()[:6]}" for i in range(20)]
    others = [f"other-{i}-{new_id()[:6]}" for i in range(10)]

    async def scenario() -> None:
        p = await producer(broker.bootstrap)
        try:
            async with ReplyReader(broker.bootstrap, n.replies) as reader:
                await send_all(p, n.events, [(b"K", payload, ce_headers("hold", i)) for i in held], 0)
                deadline = time.monotonic() + 30
                while metric(n, "faas_events_consumed_total") < 6 or not any(started.iterdir()):
                    assert time.monotonic() < deadline, f"the key's events not taken\n{n.tail()}"
                    await asyncio.sleep(0.1)
                for index, eid in enumerate(others):
                    record = (f"o{index}".encode(), b"{}", ce_headers("quick", eid))
                    await send_all(p, n.events, [record], 1 + index % 5)
                missing = await reader.wait(others, 30)
                assert not missing, (
                    f"{len(missing)} events of other partitions wait behind the key\n{n.tail()}"
                )
                assert not release.exists() and not set(held) & set(reader.first)
                assert metric(n, "faas_events_consumed_total") == 16, "the key's partition took more than 6"
                release.touch()
                assert not await reader.wait(held, 60), n.tail()
                assert [i for i in reader.first if i in set(held)] == held, "the key's replies out of order"
                assert all(reader.first[i]["ok"] for i in held + others)
        finally:
            await p.stop()

    asyncio.run(scenario())


class LagConsumer:
    """What `_update_lag` asks of a consumer: partitions 0 and 1, each 10 records long, fetched to 7; a
    rebalance takes partition 1 away while its position is being asked."""

    def __init__(self) -> None:
        self.assigned = {TopicPartition("t", 0), TopicPartition("t", 1)}

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def highwater(self, tp: TopicPartition) -> int:
        return 10

    async def position(self, tp: TopicPartition) -> int:
        if tp.partition == 1:
            self.assigned.discard(tp)  # revoked while the answer was awaited
        await asyncio.sleep(0)
        return 7


async def test_lag_counts_what_is_not_answered_and_never_a_revoked_partition() -> None:
    """1. Partition 0: records 3 and 5 taken, 3 still running (5 done), fetched to 7. 2. Partition 1 is
    revoked while its position is asked. Result: partition 0's lag is 7 (from record 3 to the end of 10,
    not 3 from the fetch position); partition 1 has no series (one came back after the revoke removed it,
    and stayed stale on the node that lost the partition)."""
    source = KafkaSource(Settings(), cast(Any, None), Metrics(), "127.0.0.1:1")
    source.consumer = cast(Any, LagConsumer())
    tp = TopicPartition("t", 0)
    part = source.tracker.take(tp, 3)
    source.tracker.take(tp, 5)
    part.done(5)
    await source._update_lag()
    registry = source.metrics.registry
    assert registry.get_sample_value("faas_consumer_lag", {"topic": "t", "partition": "0"}) == 7
    assert registry.get_sample_value("faas_consumer_lag", {"topic": "t", "partition": "1"}) is None


class ShortConsumer:
    """A consumer at position 100 of partition 0, whose fetches report the log ending at `highwater`;
    seeks are recorded."""

    def __init__(self) -> None:
        self.highwaters = [98, 100, 40, 40]
        self.seeks: list[tuple[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition("t", 0)}

    def highwater(self, tp: TopicPartition) -> int:
        return self.highwaters[0]

    async def position(self, tp: TopicPartition) -> int:
        return 100

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))


async def test_a_log_that_ends_below_the_position_twice_in_a_row_is_read_from_its_start() -> None:
    """Lag checks of a partition read to 100 whose fetches report its end at 98 (a newly elected Kafka
    leader's watermark, trailing the old one's for a fetch round), 100, then 40 and 40 (the topic was
    deleted and made again). Result: only the second 40 in a row makes it read from offset 0; a single
    short end, which a leader change gives, does not (it read the whole partition again: every event
    answered twice)."""
    source = KafkaSource(Settings(), cast(Any, None), Metrics(), "127.0.0.1:1")
    consumer = ShortConsumer()
    source.consumer = cast(Any, consumer)
    seeks_after = []
    while consumer.highwaters:
        await source._update_lag()
        seeks_after.append(len(consumer.seeks))
        consumer.highwaters.pop(0)
    assert seeks_after == [0, 0, 0, 1] and consumer.seeks == [(TopicPartition("t", 0), 0)]


async def test_a_read_from_the_start_asked_before_the_consumer_started_is_done_at_its_first_assignment(
    broker: EmbeddedBroker,
) -> None:
    """On the real broker. 1. A source is told its events log is new (a broker restart seen by its probe)
    while it has no consumer yet. 2. It opens its consumer (aiokafka's start waits for the first assignment,
    so the listener runs before the source holds the consumer). Result: that assignment reads from the
    start, and nothing is left for the next one (a later rebalance then read every partition the node kept
    from 0 again: all of it answered twice)."""
    topic, group_id = f"events-{new_id()[:8]}", f"group-{new_id()[:8]}"
    settings = Settings(
        events_topic=topic,
        replies_topic=f"{topic}-replies",
        deadletter_topic=f"{topic}-dead",
        kafka_group_id=group_id,
    )
    source = KafkaSource(settings, cast(Any, None), Metrics(), broker.bootstrap)
    source._read_from_start()
    try:
        await within(source._open(), 60)
        assert source.consumer is not None and source.consumer.assignment()
        assert source._reread is False
    finally:
        await within(source._close_consumer(), 30)
        await within(source.sender.stop(), 30)


def test_events_waiting_between_attempts_count_toward_the_room_up_to_the_limit_again() -> None:
    """The room leaves out events in a backoff, up to FAAS_MAX_INFLIGHT_EVENTS of them: what a node holds
    stays bounded (twice the limit) however many events fail at once."""
    source, _ = full_source(8)
    assert source.room == 0
    source._waiting_total = 5  # five of the eight held wait between attempts
    assert source.room == 5
    source.runner.size, source._waiting_total = 16, 16  # as many again taken, all of them waiting
    assert source.room == 0
    source.runner.size, source._waiting_total = 20, 20
    assert source.room == -4


class Coordinator:
    generation = -1  # aiokafka's reset: the group no longer knows this member


class ExpelledConsumer:
    _coordinator = Coordinator()


@pytest.mark.parametrize(
    ("joined", "now", "taken"),
    [("c1", "c1", True), ("c1", "c2", False), (None, "c1", False), ("c1", None, False)],
)
async def test_only_an_expulsion_on_the_cluster_joined_gives_the_queue_up(
    monkeypatch: pytest.MonkeyPatch, joined: str | None, now: str | None, taken: bool
) -> None:
    """A revocation after aiokafka reset this member's generation, the node having joined on cluster
    `joined` and the broker now answering as `now`. Result: the queue is given up only when both are
    known and the same (the group dropped this node; others own its partitions); after a broker restart
    (another id, however soon the probe saw it) the node runs what it holds, as no one else has it."""
    source = KafkaSource(Settings(), cast(Any, None), Metrics(), "127.0.0.1:1")
    source.consumer = cast(Any, ExpelledConsumer())
    source._member_of = joined

    async def cluster_id(consumer: object) -> str | None:
        return now

    monkeypatch.setattr(group, "cluster_id", cluster_id)
    assert await source._taken_over([TopicPartition("t", 0)]) is taken


class RecordedCommits:
    def __init__(self) -> None:
        self.committed: list[dict[TopicPartition, int]] = []

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.committed.append(dict(offsets))


@pytest.mark.parametrize("expelled", [True, False], ids=["expelled", "ordinary rebalance"])
async def test_an_expelled_nodes_replies_still_being_retried_are_given_up(
    monkeypatch: pytest.MonkeyPatch, expelled: bool
) -> None:
    """1. A source holds record 7 of a partition, answered, whose reply is being retried (every send fails:
       no broker answers), as after a process stood still past its session timeout.
    2. The partition is revoked, the group having dropped this node (`_taken_over`), or at an ordinary
       rebalance.
    Result: expelled: the retry is cancelled at once (sent later, the reply would land after the new
    owner's answer to the same event) and record 7 is not committed; ordinary: the hand-over waits for the
    reply (REVOKE_WAIT, 0.5 s here) with the retry still going, as before."""
    monkeypatch.setattr(source_module, "REVOKE_WAIT", 0.5)
    source = KafkaSource(Settings(), cast(Any, None), Metrics(), "127.0.0.1:1")
    consumer = RecordedCommits()
    source.consumer = cast(Any, consumer)

    async def taken_over(tps: list[TopicPartition]) -> bool:
        return expelled

    monkeypatch.setattr(source, "_taken_over", taken_over)
    part = source.tracker.take(TP, 7)
    record = SimpleNamespace(key=b"k", offset=7)
    event = SimpleNamespace(replyto=None, id="e-7")
    reply = SimpleNamespace(to_json=lambda: b"{}", traceparent=None, tracestate=None, ok=True)
    await source.outbox.reply_later(part, cast(Any, record), cast(Any, event), cast(Any, reply))
    sender = source.outbox.sender
    retries = set(sender._retries)  # the send failed at once: retried from now on
    assert source.tracker.acking([TP]) and retries
    await within(source.on_partitions_revoked([TP]), 30)
    if expelled:
        await asyncio.sleep(0)  # the cancelled task's last step
        assert all(task.done() for task in retries) and not sender._retries
        assert not source.tracker.acking([TP])
        committed = [offsets[TP] for offsets in consumer.committed if TP in offsets]
        assert all(offset <= 7 for offset in committed), committed
    else:
        assert not any(task.done() for task in retries)
        sender.cancel_retries()
    await sender.stop()
