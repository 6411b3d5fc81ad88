"""Scheduler leader election through Kafka itself: no home-made cluster protocol (DESIGN.md section 7).

Every node runs one consumer in the group `{FAAS_KAFKA_GROUP_ID}.scheduler`, subscribed to the one-partition
topic `FAAS_SCHEDULER_TOPIC`. The group coordinator gives partition 0 to exactly one member: that member is
the leader and fires the user schedules. The consumer only takes part in the group (what the leader writes
to the topic, its tick log, is read by `ticklog.py`), and `getmany` keeps being called so the member never
counts as stalled. Each time this node takes leadership `term` grows and `wake` is called: the scheduler
then catches up on the ticks no node fired meanwhile before it fires anything (`catchup.py`).

Takeover: when the leader dies (SIGKILL) the broker notices after `session_timeout_ms` (6 s here) and hands
partition 0 to another member (Tansu adds about 3 s to that). A leader that stops cleanly leaves the group,
so Kafka hands over at once; on the embedded broker it stops without leaving (`kafka/group.py`: a leave
there can leave the group unjoinable), so the handover takes the session timeout, as after a SIGKILL.

Trade-off when the broker is unreachable: the leader keeps its leadership (and keeps firing) until the group
actually revokes it, because ticks fired at least once beat ticks silently lost. If other nodes still reach
the broker they elect a new leader after the session times out, and both fire until the partition heals.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError

from framework.kafka import group
from framework.kafka.options import (
    AIOKAFKA_FETCH_WAIT_MS,
    ensure_topics,
    request_timeout_ms,
    security_options,
)
from framework.settings import Settings
from framework.sources.schedule.ticklog import TOPIC_CONFIGS
from framework.tasks import cancel_and_wait

log = logging.getLogger("faas.scheduler.leader")

SESSION_TIMEOUT_MS = 6_000
"""How long the broker waits for a silent member before taking its partitions (takeover after SIGKILL)."""
HEARTBEAT_INTERVAL_MS = 1_500
"""Heartbeats per session: a quarter of the session timeout, so one lost heartbeat costs nothing."""
RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
"""Backoff between attempts to reach the broker (the last value repeats)."""
HOLD_SECONDS = SESSION_TIMEOUT_MS / 1000
"""How long a revoked leader keeps firing while its group rejoins (see `KafkaElection.revoke`)."""


class AlwaysLeader:
    """Kafka is off (`--no-kafka`): this node is alone and fires every schedule."""

    is_leader = True
    joined = True
    term = 1

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, election: KafkaElection) -> None:
        self.election = election

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.election.revoke()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.election.set_leader(any(tp.partition == 0 for tp in assigned))
        self.election.joined = True


class KafkaElection:
    """Leader election through the consumer group `{settings.kafka_group_id}.scheduler`.

    `is_leader` flips as soon as the group assigns or takes partition 0 of `settings.scheduler_topic`, and
    `wake` (when given) is called whenever it does. `start` returns at once; joining (3-5 s on Tansu) and
    reconnecting happen in a background task.
    """

    def __init__(self, settings: Settings, bootstrap: str, wake: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.group_id = f"{settings.kafka_group_id}.scheduler"
        self.topic = settings.scheduler_topic
        self.wake = wake
        self.joined = False
        """True once the consumer has been assigned its share of the group at least once."""
        self.term = 0
        """How many times this node took leadership (kept through a rebalance, it was taken once)."""
        self._leader = False
        self._hold_until = 0.0
        self._task: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self._leader or time.monotonic() < self._hold_until

    def revoke(self) -> None:
        """A rebalance started: a leader keeps firing for at most `HOLD_SECONDS` until its new assignment.

        Eager rebalancing revokes on every member join (a new node, a restart); holding leadership until the
        new assignment arrives avoids seconds with no leader at all. A member that gets partition 0 from
        another first catches up from the tick log (`catchup.py`, which says when a tick can then fire on
        both); the gap between the old leader's new assignment and the new one's is caught up there too.
        """
        if self._leader:
            self._leader = False
            self._hold_until = time.monotonic() + HOLD_SECONDS

    def set_leader(self, leader: bool) -> None:
        was = self.is_leader
        self._leader, self._hold_until = leader, 0.0
        if leader != was:
            if leader:
                self.term += 1
            log.info("scheduler leadership %s (group %s)", "taken" if leader else "lost", self.group_id)
            if self.wake is not None:
                self.wake()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler-election")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None
        self.set_leader(False)

    async def _run(self) -> None:
        attempt = 0
        while True:
            consumer: AIOKafkaConsumer | None = None
            try:
                # One partition: brokers that auto-create topics (Tansu: 4) would give it several.
                options = security_options(self.settings)
                await ensure_topics(self.bootstrap, [self.topic], 1, options, TOPIC_CONFIGS)
                consumer = AIOKafkaConsumer(
                    bootstrap_servers=self.bootstrap,
                    group_id=self.group_id,
                    enable_auto_commit=False,
                    auto_offset_reset="latest",
                    session_timeout_ms=SESSION_TIMEOUT_MS,
                    heartbeat_interval_ms=HEARTBEAT_INTERVAL_MS,
                    request_timeout_ms=request_timeout_ms(
                        self.settings, fetch_wait_ms=AIOKAFKA_FETCH_WAIT_MS
                    ),
                    **security_options(self.settings),
                )
                consumer.subscribe([self.topic], listener=_Listener(self))
                await consumer.start()
                attempt = 0
                while True:  # heartbeats and rebalances run in aiokafka's tasks; polling keeps us "alive"
                    await consumer.getmany(timeout_ms=1000)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as exc:
                delay = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
                attempt += 1
                log.warning("scheduler election: %s; retrying in %.1f s", exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)
            finally:
                if consumer is not None:
                    # Leaving the group hands partition 0 over at once instead of after the session timeout
                    # (but on the embedded broker, where a leave can leave the group unjoinable: group.py).
                    await group.stop_member(consumer, 5, self.settings.kafka_leave_group)
