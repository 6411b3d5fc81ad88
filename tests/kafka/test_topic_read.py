"""Reading a topic from the first record of a time (framework/kafka/topic_read.py) on the real broker,
whose time lookups answer offset 0: the binary search on record timestamps."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from framework.kafka import topic_read
from framework.kafka.embedded import EmbeddedBroker
from framework.kafka.options import reader
from framework.settings import Settings


async def test_offsets_at_finds_the_first_record_of_a_time(broker: EmbeddedBroker) -> None:
    """1. Partition 0 of a topic: 40 records stamped 10 hours ago, then 7 stamped now; partition 1 empty.
    2. `offsets_at` for 1 hour ago, for 11 hours ago and for an hour from now.
    Result: offset 40 (the first recent record), 0, and past the last record; partition 1 at its end."""
    topic = f"t.tread.{uuid.uuid4().hex[:8]}"
    now_ms = int(time.time() * 1000)
    old_ms, hour_ms = now_ms - 10 * 3600 * 1000, 3600 * 1000
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    await p.start()
    try:
        for i in range(47):
            ts = old_ms + i if i < 40 else now_ms + i
            await (await p.send(topic, b"v%d" % i, partition=0, timestamp_ms=ts))
    finally:
        await p.stop()
    settings = Settings()
    consumer = reader(broker.bootstrap, settings)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, 0), TopicPartition(topic, 1)]

        async def at(ms: int) -> dict[TopicPartition, int]:
            return await topic_read.offsets_at(broker.bootstrap, settings, consumer, tps, ms)

        recent = await at(now_ms - hour_ms)
        assert recent[tps[0]] == 40, recent
        assert (await at(old_ms - hour_ms))[tps[0]] == 0
        ends = await consumer.end_offsets(tps)
        future = await at(now_ms + hour_ms)
        assert future[tps[0]] >= ends[tps[0]] and future[tps[1]] == ends[tps[1]], (future, ends)
    finally:
        await consumer.stop()


async def test_offsets_at_on_empty_partitions_only(broker: EmbeddedBroker) -> None:
    """1. A topic with nothing in it. 2. `offsets_at` for an hour ago on its partition 0.
    Result: the end offset, and no CancelledError from stopping a prober that never had to probe."""
    topic = f"t.tread.{uuid.uuid4().hex[:8]}"
    p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await p.start()
    try:
        await p.partitions_for(topic)  # the broker creates it
    finally:
        await p.stop()
    settings = Settings()
    consumer = await topic_read.started(reader(broker.bootstrap, settings))
    try:
        tp = TopicPartition(topic, 0)
        at = await topic_read.offsets_at(broker.bootstrap, settings, consumer, [tp], int(time.time() * 1000))
        assert at == await consumer.end_offsets([tp])
    finally:
        await consumer.stop()


async def _batches(bootstrap: str, topic: str, sizes: list[int]) -> None:
    """Records to partition 0 of `topic`, `sizes[i]` of them in the i-th batch (one produce request each)."""
    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    try:
        await p.partitions_for(topic)
        n = 0
        for size in sizes:
            batch = p.create_batch()
            for _ in range(size):
                batch.append(key=None, value=b"v%d" % n, timestamp=None)
                n += 1
            await (await p.send_batch(batch, topic, partition=0))
    finally:
        await p.stop()


async def _read(bootstrap: str, starts: dict[TopicPartition, int]) -> list[int]:
    got: list[int] = []
    consumer = reader(bootstrap, Settings())
    await consumer.start()
    try:
        await topic_read.scan(consumer, starts, lambda r: got.append(r.offset), "read", None)
    finally:
        await consumer.stop()
    return got


async def test_a_read_gets_the_records_past_the_floor_of_the_end_offset(broker: EmbeddedBroker) -> None:
    """1. Partition 0 holds two batches, offsets 0-9 and 10-14 (the embedded broker then reports its end
    offset as 11, the last batch's base + 1). 2. Read it from 0; read it from 11, the reported end.
    Result: 0-14, then 11-14: nothing past the floor is lost."""
    topic = f"t.tread.{uuid.uuid4().hex[:8]}"
    await _batches(broker.bootstrap, topic, [10, 5])
    tp = TopicPartition(topic, 0)
    assert await _read(broker.bootstrap, {tp: 0}) == list(range(15))
    assert await _read(broker.bootstrap, {tp: 11}) == [11, 12, 13, 14]


async def test_a_read_ends_while_records_keep_coming(broker: EmbeddedBroker) -> None:
    """1. Partition 0 holds 20 records; partition 1 is empty. 2. While a producer writes a record to
    partition 0 every 20 ms, read both from 0. Result: the read ends (within 30 s) with at least the 20
    records that were there when it started, although the topic was never quiet."""
    topic = f"t.tread.{uuid.uuid4().hex[:8]}"
    await _batches(broker.bootstrap, topic, [20])
    stop = asyncio.Event()

    async def keep_writing() -> None:
        p = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
        await p.start()
        try:
            while not stop.is_set():
                await (await p.send(topic, b"more", partition=0))
                await asyncio.sleep(0.02)
        finally:
            await p.stop()

    writer = asyncio.create_task(keep_writing())
    try:
        tps = {TopicPartition(topic, 0): 0, TopicPartition(topic, 1): 0}
        got = await asyncio.wait_for(_read(broker.bootstrap, tps), 30)
    finally:
        stop.set()
        await writer
    assert got[:20] == list(range(20)), got[:25]


class GhostRecords:
    """A consumer whose partition's end offset says 3 records and whose fetches bring none (the embedded
    broker after a restart under its producers)."""

    def __init__(self) -> None:
        self.positions: dict[TopicPartition, int] = {}

    def assign(self, tps: list[TopicPartition]) -> None:
        pass

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.positions[tp] = offset

    async def end_offsets(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: 3 for tp in tps}

    async def getmany(self, *tps: TopicPartition, timeout_ms: int = 0) -> dict[TopicPartition, list[Any]]:
        await asyncio.sleep(0.01)
        return {}

    async def position(self, tp: TopicPartition) -> int:
        return self.positions[tp]


async def test_a_read_that_stalls_names_the_partitions_and_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. Read a topic whose partition 4's end offset says there are records no fetch brings.
    Result: the read fails after READ_STALL naming the topic, the partition, its offset and end, and the
    likely cause (it said only "stalled with 1 partitions unread")."""
    monkeypatch.setattr(topic_read, "READ_STALL", 0.2)
    tp = TopicPartition("faas.deadletter", 4)
    with pytest.raises(KafkaError) as failed:
        await topic_read.scan(cast(Any, GhostRecords()), {tp: 0}, lambda r: None, "read", None)
    message = str(failed.value)
    assert (
        "stalled: no record came for 0.2 s, and the end offsets of partition(s) 4 (at offset 0 of 3)"
        in message
    )
    assert "the embedded broker, restarted under producers" in message
