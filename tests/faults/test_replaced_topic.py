"""The events topic deleted and made again under a running node: the new log is read from its start."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from framework.kafka.embedded import EmbeddedBroker
from tests.faults.kit import ReplyReader, events, producer, send_all
from tests.support import Node, wait_for

pytestmark = pytest.mark.faults

PARTITIONS = 6


async def committed(bootstrap: str, group: str, topic: str) -> int:
    """The sum of the group's committed offsets on `topic` (asked without joining the group)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return sum([await consumer.committed(TopicPartition(topic, p)) or 0 for p in range(PARTITIONS)])
    finally:
        await consumer.stop()


def test_an_events_topic_deleted_and_made_again_is_read_from_its_start(
    project: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. A node answers 240 events over 24 keys (about 40 on each of the 6 partitions) and commits them.
    2. The events topic is deleted and made again at once, 6 partitions, before the node's probe can see it
    gone. 3. 60 events (about 10 a partition) are produced to the new topic.
    Result: all 60 are answered, and the node says why it read the partitions again. (It went on at its
    old positions, about 40 a partition, and never answered them; nor any of the new log's first 40 a
    partition.)"""
    node = nodes(project, broker.bootstrap).wait_ready()
    group = f"t-{node.tag}"
    replyto = f"t.replacedreplies.{node.tag}"
    before, records = events("fault.tick", 240, keys=24, replyto=replyto)
    after, later = events("fault.tick", 60, keys=24, replyto=replyto)

    async def scenario() -> set[str]:
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        p = await producer(broker.bootstrap)
        try:
            async with ReplyReader(broker.bootstrap, replyto) as reader:
                await send_all(p, node.events, records)
                assert not await reader.wait(before, 60), node.tail()
                deadline = asyncio.get_running_loop().time() + 30
                while await committed(broker.bootstrap, group, node.events) < 240:
                    assert asyncio.get_running_loop().time() < deadline, "the node never committed them"
                    await asyncio.sleep(0.2)
                await admin.delete_topics([node.events])
                await admin.create_topics([NewTopic(node.events, PARTITIONS, 1)])
                await send_all(p, node.events, later, retry_for=20)
                return await reader.wait(after, 60)
        finally:
            await p.stop()
            await admin.close()

    missing = asyncio.run(scenario())
    assert not missing, f"{len(missing)} of 60 events on the new topic never answered\n{node.tail()}"
    # Rarely, the node's 2 s probe finds the topic missing between the two admin calls and makes it again
    # itself (then the test's create is refused as existing, and the node reads the new log from its start).
    said = ("reading the partition from its start", f"created topics {node.events}")
    wait_for(lambda: any(s in node.log.read_text(errors="replace") for s in said), 10, message=node.tail())
