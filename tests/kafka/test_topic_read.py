"""Reading a topic from the first record of a time (framework/kafka/topic_read.py) on the real broker,
whose time lookups answer offset 0: the binary search on record timestamps."""

from __future__ import annotations

import time
import uuid

from aiokafka import AIOKafkaProducer, TopicPartition

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
