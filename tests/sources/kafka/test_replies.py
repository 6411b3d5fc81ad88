"""The reply producer (framework/sources/kafka/replies.py) across a restart of a memory-only broker that
keeps its cluster id (Tansu's default `tansu_cluster`; the embedded broker `faas run` starts takes a new id
each time, which the node's probe notices)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from framework.kafka.embedded import EmbeddedBroker, free_port
from framework.kafka.partitioner import KeyHashes
from framework.settings import Settings
from framework.sources.kafka.replies import ReplyProducer
from framework.tasks import within
from tests.support import SameIdBroker


async def replies_on(bootstrap: str, topic: str, value: bytes) -> list[int]:
    """The partitions of `topic` holding a record `value` (fetched until two fetches find nothing new)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer.topics()
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        found: list[int] = []
        quiet = 0
        while quiet < 2:
            batch = await consumer.getmany(timeout_ms=500)
            quiet = 0 if batch else quiet + 1
            found += [tp.partition for tp, records in batch.items() for r in records if r.value == value]
        return found
    finally:
        await consumer.stop()


async def test_a_reply_after_a_restart_under_the_same_cluster_id_is_readable(tmp_path: Path) -> None:
    """1. A reply topic of 6 partitions; a reply on a key of partition 5 is acknowledged. 2. The broker is
    killed, and started again empty under the same cluster id (no probe can tell it from the old one);
    the producer's own metadata refresh, when its connection broke, failed. 3. Another reply on that key.
    Result: it lands where a reader finds it: the topic is made again (4 partitions, the broker's default)
    and the reply goes to one of those. Before, it went to partition 5, which the new broker acknowledged
    and no reader ever saw: a reply lost, its event's offset committed."""
    port = free_port()
    bootstrap = f"127.0.0.1:{port}"
    first = SameIdBroker(port=port, log_path=tmp_path / "first.log").start()
    second: EmbeddedBroker | None = None
    sender = ReplyProducer(bootstrap, Settings())
    try:
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic("rep", 6, 1)])
        finally:
            await admin.close()
        key = next(
            k for k in (f"k{i}".encode() for i in range(100)) if KeyHashes().partition(k, [*range(6)]) == 5
        )
        await sender.start()
        await within(await sender.submit("rep", b"before", key, []), 10)
        producer = await sender._get()
        first.kill()
        deadline = time.monotonic() + 20
        while not ReplyProducer._refresh_failed(producer):
            assert time.monotonic() < deadline, "the producer's refresh did not fail with its broker gone"
            await asyncio.sleep(0.05)
        second = SameIdBroker(port=port, log_path=tmp_path / "second.log").start()
        await within(await sender.submit("rep", b"after", key, []), 30)
        found = await replies_on(bootstrap, "rep", b"after")
        assert len(found) == 1 and found[0] < 4, found
    finally:
        await within(sender.stop(), 10)
        first.stop()
        if second is not None:
            second.stop()


async def test_a_partition_the_metadata_no_longer_has_is_sent_again_not_given_up(
    broker: EmbeddedBroker,
) -> None:
    """1. A reply's batch is refused by aiokafka's own check, `AssertionError('Unrecognized partition')`, as
    for a lane made for a partition its topic no longer has (a broker back with fewer partitions).
    Result: the reply is sent again, with fresh metadata, and acknowledged (it used to be given up: its
    event unanswered and its partition's commits held until the next rebalance)."""
    sender = ReplyProducer(broker.bootstrap, Settings())
    await sender.start()
    try:
        producer = await sender._get()
        real = producer.send_batch
        refused: list[tuple[Any, ...]] = []

        async def refusing(*args: Any, **kwargs: Any) -> Any:
            if not refused:
                refused.append(args)
                raise AssertionError("Unrecognized partition")
            return await real(*args, **kwargs)

        producer.send_batch = refusing
        await within(await sender.submit("rep-stale", b"v", b"k", []), 30)
        assert refused and await replies_on(broker.bootstrap, "rep-stale", b"v")
    finally:
        await within(sender.stop(), 10)
