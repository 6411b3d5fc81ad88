"""The aiokafka internals the node relies on, checked against the installed release (pyproject pins aiokafka
below the next minor version for them): when a release moves or renames one, this fails before a node does.

Used by `sources/kafka/batching.py` (hand-built reply batches), `kafka/probe.py` (the metadata probe),
`sources/kafka/replies.py` (a failed metadata refresh) and `sources/kafka/source.py` (a rejoin after a
broker restart).
"""

from __future__ import annotations

import inspect

from aiokafka import AIOKafkaProducer
from aiokafka.client import AIOKafkaClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.partitioner import DefaultPartitioner, murmur2
from aiokafka.record.default_records import DefaultRecordBatchBuilder


def _params(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]


async def test_batching_internals_are_where_batching_uses_them() -> None:
    """`producer.client.cluster` listeners, `create_batch`/`send_batch`, the batch builder's `append` and
    size estimate, and murmur2 partitioning as DefaultPartitioner does it."""
    producer = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1")
    try:
        assert isinstance(producer.client, AIOKafkaClient)
        assert isinstance(producer.client.cluster, ClusterMetadata)
        batch = producer.create_batch()
        assert batch.append(key=b"k", value=b"{}", timestamp=None, headers=[("h", b"v")]) is not None
    finally:
        await producer.stop()  # never started: stopping closes its client without a broker
    assert {"batch", "topic", "partition"} <= set(_params(AIOKafkaProducer.send_batch))
    cluster = ClusterMetadata()
    cluster.add_listener(lambda c: None)
    assert cluster.available_partitions_for_topic("none") is None
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(b"k", b"{}", [("h", b"v")])
    assert isinstance(size, int) and size > 0
    assert DefaultPartitioner()(b"key", [0, 1, 2], [0, 1, 2]) == (murmur2(b"key") & 0x7FFFFFFF) % 3


def test_the_refresh_times_the_reply_producer_reads_exist() -> None:
    """`ClusterMetadata._last_refresh_ms` and `_last_successful_refresh_ms`: a failed refresh sets the first
    only (`replies.ReplyProducer._refresh_failed`)."""
    cluster = ClusterMetadata()
    assert cluster._last_refresh_ms == cluster._last_successful_refresh_ms == 0
    cluster.failed_update(RuntimeError("broker away"))
    assert cluster._last_refresh_ms > cluster._last_successful_refresh_ms


def test_probe_internals() -> None:
    """`AIOKafkaClient(bootstrap_servers=, request_timeout_ms=)`, `bootstrap`, `fetch_all_metadata`,
    `close` and the metadata's `topics()`."""
    assert {"bootstrap_servers", "request_timeout_ms"} <= set(_params(AIOKafkaClient.__init__))
    for name in ("bootstrap", "fetch_all_metadata", "close"):
        assert inspect.iscoroutinefunction(getattr(AIOKafkaClient, name)), name
    assert ClusterMetadata().topics() == set()


def test_the_rejoin_the_source_asks_for_after_a_broker_restart_exists() -> None:
    """`sources/kafka/source.py` asks the group coordinator for a rejoin once it sees a new cluster."""
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    assert _params(GroupCoordinator.request_rejoin) == ["self"]


def test_the_leave_step_a_silent_stop_replaces_exists() -> None:
    """`kafka/group.py` replaces the coordinator's `_maybe_leave_group` (awaited by `close`, itself by the
    consumer's `stop`) and calls `reset_generation`, and asks for the cluster id on `AIOKafkaClient.send`."""
    from aiokafka.consumer.group_coordinator import GroupCoordinator

    assert inspect.iscoroutinefunction(GroupCoordinator._maybe_leave_group)
    assert "_maybe_leave_group" in inspect.getsource(GroupCoordinator.close)
    assert _params(GroupCoordinator.reset_generation) == ["self"]
    assert inspect.iscoroutinefunction(AIOKafkaClient.send)


def test_an_expelled_member_is_told_by_its_generation() -> None:
    """`kafka/group.py` `expelled`: a coordinator told its member id or generation is unknown resets its
    `generation` to the default (-1) before it rejoins, and the revocation runs before the new join."""
    from aiokafka.consumer.group_coordinator import GroupCoordinator
    from aiokafka.protocol.commit import OffsetCommitRequest

    assert OffsetCommitRequest.DEFAULT_GENERATION_ID == -1
    assert "self.generation = OffsetCommitRequest.DEFAULT_GENERATION_ID" in inspect.getsource(
        GroupCoordinator.reset_generation
    )
    assert "on_partitions_revoked" in inspect.getsource(GroupCoordinator._on_join_prepare)
