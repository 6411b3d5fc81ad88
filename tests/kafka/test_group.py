"""`framework/kafka/group.py`: group consumers on the embedded broker stop without LeaveGroup, on a broker
of this test's own (the bug it avoids leaves a group unjoinable for as long as the broker runs)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from framework.kafka import group
from framework.kafka.embedded import EmbeddedBroker
from framework.settings import Switch
from tests.support import LOGS, run_async

SESSION_MS = 6000


def consumer(bootstrap: str, name: str, topic: str = "t", group_id: str = "g") -> AIOKafkaConsumer:
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        client_id=name,
        session_timeout_ms=SESSION_MS,
        heartbeat_interval_ms=SESSION_MS // 3,
        request_timeout_ms=SESSION_MS + 10_000,
    )


async def assigned_within(c: AIOKafkaConsumer, seconds: float) -> float | None:
    """Seconds until `c` holds partitions (polling it, as a node does), or None."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        await c.getmany(timeout_ms=200)
        if c.assignment():
            return time.monotonic() - started
    return None


async def two_stopped_follower_first(bootstrap: str) -> float | None:
    """A joins, then B (a rebalance: A leads); both stop, the follower B first, each through
    `group.stop_member`, as the node's consumers do. Then C joins: seconds until it holds partitions."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic("t", 6, 1)])
    finally:
        await admin.close()
    a, b = consumer(bootstrap, "A"), consumer(bootstrap, "B")
    await a.start()
    assert await assigned_within(a, 30) is not None, "A never joined"
    await b.start()
    polling = asyncio.create_task(assigned_within(a, 60))
    try:
        assert await assigned_within(b, 40) is not None, "B never joined"
    finally:
        polling.cancel()
    cluster = await group.cluster_id(a)
    assert group.is_embedded(cluster), cluster
    for leaving in (b, a):  # the follower first: the order that left the group unjoinable
        assert await group.stop_member(leaving, 20) is None
    c = consumer(bootstrap, "C")
    await asyncio.wait_for(c.start(), 30)
    try:
        return await assigned_within(c, 45)
    finally:
        await asyncio.wait_for(c.stop(), 10)


def test_a_group_whose_members_stop_at_once_can_be_joined_again() -> None:
    """1. Consumers A then B join group g on an embedded broker of their own. 2. Both stop, the follower
    first, each as the node stops its consumers. 3. C joins g. Result: C gets partitions once the
    stopped members' sessions have timed out (with a LeaveGroup each, as aiokafka sends by default, the
    broker kept the departed leader and C never got one: 3 runs in 3 without `leave_silently`)."""
    broker = EmbeddedBroker(log_path=LOGS / "broker-group.log").start()
    try:
        took = run_async(two_stopped_follower_first(broker.bootstrap))
    finally:
        broker.stop()
    assert took is not None, "C never got a partition in 45 s: the group was left unjoinable"


async def sends_leave_group(bootstrap: str, policy: Switch, cluster: str | None) -> bool:
    """A consumer joins a group of its own, then stops through `group.stop_member` with `policy`: whether
    its coordinator went on to send LeaveGroup (aiokafka's leave step ran)."""
    tag = uuid.uuid4().hex[:8]
    c = consumer(bootstrap, f"leave-{policy}", f"leave-{tag}", f"leave-{tag}")
    await c.start()
    left: list[bool] = []
    try:
        assert await assigned_within(c, 30) is not None, "never joined"
        coordinator: Any = c._coordinator
        leave = coordinator._maybe_leave_group

        async def spy() -> None:
            left.append(True)
            await leave()

        coordinator._maybe_leave_group = spy  # replaced again by `leave_silently` when it goes silent
        assert await group.stop_member(c, 20, policy, cluster) is None
    finally:
        await c.stop()
    return bool(left)


@pytest.mark.parametrize(
    ("policy", "cluster", "leaves"),
    [
        ("auto", None, False),  # the embedded broker, told by its cluster id (asked)
        ("auto", "some-kafka-cluster", True),  # any other broker
        ("off", "some-kafka-cluster", False),  # a Tansu faas did not start
        ("on", None, True),  # forced, even on the embedded broker
    ],
)
def test_leave_group_follows_the_setting(
    broker: Any, policy: Switch, cluster: str | None, leaves: bool
) -> None:
    """FAAS_KAFKA_LEAVE_GROUP: 1. A consumer joins a group on the session's embedded broker. 2. It stops as
    the node stops its consumers, with the setting's value and the cluster id the node knows (None: asked).
    Result: LeaveGroup is sent with `on`, and with `auto` on a broker that is not the embedded one."""
    assert run_async(sends_leave_group(broker.bootstrap, policy, cluster)) is leaves
