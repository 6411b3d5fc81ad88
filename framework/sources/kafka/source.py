"""Events in, replies out: the Kafka source (DESIGN.md section 4).

One consumer in group FAAS_KAFKA_GROUP_ID reads FAAS_EVENTS_TOPIC. The poll loop never waits for a
handler: it hands each record to a per-key chain (`keyed.py`) and goes back to fetching; while
FAAS_MAX_INFLIGHT_EVENTS records are held (running, queued, or awaiting their reply's acknowledgement) it
fetches nothing and wakes as soon as one of them is done. Each record is answered (and dead-lettered when
bad) and only after the broker acknowledged that is it marked done (`offsets.py`); done prefixes are
committed every COMMIT_INTERVAL, on revocation and on stop. So a crash means replies sent twice, never zero
times, and a graceful stop or rebalance redoes nothing.

Replies are pipelined: once a record's result is known its reply is handed to the producer and the chain
goes on with the next record of that key; the acknowledgement marks the record done when it comes. Replies
of one key are handed over in processing order, so they land in order (see `ReplyProducer.submit`).

Failed events (a reply with `ok: false` after retries, `framework.retry`) are copied to the dead-letter
topic before their reply is handed over, so the offset passes them only once both are acknowledged. While
an event waits between attempts its key's later records wait behind it (the chain) and other keys go on;
the poll loop never waits for it. A rebalance or stop hands such an event over instead of waiting out its
backoff (`retry.Handover`): it stays uncommitted and the partition's next owner redoes it.

Outages: a supervisor recreates the consumer whenever it fails, sends are retried until acknowledged
(`replies.py`) and a metadata probe (`probe.py`) turns `/readyz` 503 while the broker is away.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import TYPE_CHECKING, Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaError

from framework.errors import BadEvent
from framework.invoker import EventReply
from framework.kafka import cloudevents, group
from framework.kafka.deadletter import bad_event_headers, failed_headers
from framework.kafka.options import MIB, ensure_topics, request_timeout_ms, security_options
from framework.kafka.probe import BrokerProbe
from framework.observe import tracing
from framework.observe.spans import export_event
from framework.retry import HANDOVER, Handover
from framework.sources.kafka.keyed import KeyedRunner
from framework.sources.kafka.offsets import OffsetTracker, PartitionOffsets
from framework.sources.kafka.outbox import ReplyOutbox
from framework.sources.kafka.replies import ReplyProducer
from framework.tasks import cancel_and_wait, within
from framework.types import EventIdentity

if TYPE_CHECKING:
    from framework.observe.metrics import Metrics
    from framework.settings import Settings

log = logging.getLogger("faas.kafka")


class Invoker(Protocol):
    """What the Kafka source asks of the invoker (`framework.invoker.Invoker` fits)."""

    @property
    def exporter(self) -> tracing.Exporter | None:
        """Where event spans go when OpenTelemetry export is on."""
        ...

    async def event(
        self,
        event_type: str,
        event_id: str,
        payload: bytes,
        identity: EventIdentity | None = None,
        span: tracing.Span | None = None,
    ) -> EventReply:
        """Run every productive listener of `event_type`, each a child span of `span`; the combined reply."""
        ...


COMMIT_INTERVAL = 0.5
"""Seconds between commits of finished offsets."""
REVOKE_WAIT = 5.0
"""Seconds a rebalance waits for the in-flight events of revoked partitions before cancelling them."""
COMMIT_WAIT = 10.0
"""Seconds one commit may take before it is given up (the next one tries again). aiokafka retries a commit
for as long as its errors are retriable and looks for a coordinator it cannot reach for as long as that
lasts: unbounded, one stuck commit would hold the commit lock, and with it every later commit and a
rebalance's hand-over, which commits last (the group's rejoin would wait for it, and no event be taken)."""
FINAL_COMMIT_WAIT = 5.0
"""Seconds a stopping node waits for its last commit (what it leaves uncommitted is answered again)."""
FULL_POLL = 1.0
"""Seconds the poll loop waits for room before it polls with every partition paused (see `_wait_for_room`)."""
PARTITION_SHARE = 0.75
"""The share of FAAS_MAX_INFLIGHT_EVENTS one partition may hold while the node has others: a partition
holding that many (one key's backlog behind a slow event, say) is paused until it is down to half of it,
so the other partitions' events keep coming in rather than wait behind it."""
JOIN_DELAY_MS = 3_000
"""Apache Kafka's `group.initial.rebalance.delay.ms` default: a JoinGroup may wait the rebalance timeout
(aiokafka's: the session timeout) plus this."""
LAG_INTERVAL = 2.0
"""Seconds between updates of the consumer-lag gauge."""
CONSUMER_OPTIONS: dict[str, Any] = {
    "auto_offset_reset": "earliest",  # a new group starts at the beginning: nothing produced earlier is lost
    "enable_auto_commit": False,
    "max_poll_interval_ms": 300_000,  # far above the 30 s function limit; the poll loop never blocks anyway
    "metadata_max_age_ms": 30_000,
}
"""The events consumer's options that no setting changes (`consumer_options` adds those that do)."""


def consumer_options(settings: Settings) -> dict[str, Any]:
    """The events consumer's group and fetch options; the relay baseline of `make bench` takes them too.

    The fetch wait is FAAS_KAFKA_FETCH_WAIT_MS (aiokafka's 500 ms default was most of an event's latency:
    Tansu holds a fetch that long even once records arrive). The session timeout is
    FAAS_KAFKA_SESSION_TIMEOUT_MS (at the default a SIGKILLed node's partitions move on within ~13 s on the
    embedded broker), with a heartbeat every third of it."""
    return {
        **CONSUMER_OPTIONS,
        "fetch_max_wait_ms": settings.kafka_fetch_wait_ms,
        "session_timeout_ms": settings.kafka_session_timeout_ms,
        "heartbeat_interval_ms": settings.kafka_session_timeout_ms // 3,
    }


class KafkaSource(ConsumerRebalanceListener):  # type: ignore[misc]
    """Consume events, invoke their listeners through the invoker, produce the combined replies."""

    def __init__(self, settings: Settings, invoker: Invoker, metrics: Metrics, bootstrap: str) -> None:
        self.settings = settings
        self._own_topics = settings.not_for_replies
        self.invoker = invoker
        self.metrics = metrics
        self.bootstrap = bootstrap
        self.options = security_options(settings)
        self.sender = ReplyProducer(bootstrap, settings)
        self.probe = BrokerProbe(bootstrap, self.options, self._topics_seen)
        self.runner: KeyedRunner[TopicPartition] = KeyedRunner(settings.max_inflight_events)
        self.tracker: OffsetTracker[TopicPartition] = OffsetTracker()
        self.consumer: AIOKafkaConsumer | None = None
        self.joined = False
        self.failure: str | None = None
        self._stopping = False
        self._hurry = asyncio.Event()
        """Set by `hurry`: a stop in progress stops waiting for in-flight events."""
        self._reread = False
        """The next assignment reads its partitions from their start (`_read_from_start`)."""
        self._starting: AIOKafkaConsumer | None = None
        """The consumer `_open` is starting: aiokafka's start waits for the first assignment, so the
        listener is called before `consumer` is set."""
        self._commit_lock = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self.outbox = ReplyOutbox(settings, metrics, self.sender, self.probe.unreachable_for)
        self._handovers: dict[Handover, TopicPartition] = {}
        """The events running now, by partition: those waiting between attempts can be handed over."""
        self._waiting: dict[TopicPartition, int] = {}
        """Events waiting between attempts, by partition: not work in flight (`room`)."""
        self._waiting_total = 0
        self._on_wait = self._waits
        self._leaving: set[TopicPartition] = set()
        """Partitions being revoked: their events that start now are handed over at their first backoff."""
        self._short: dict[TopicPartition, int] = {}
        """Partitions whose last lag check found their log ending below the position (`_update_lag`)."""
        self._member_of: str | None = None
        """The cluster id the probe knew at the last assignment: the cluster of the group this node is in."""
        self._room_waiter: asyncio.Future[None] | None = None
        """Set while the poll loop waits for room; done once there is some (or the source stops)."""
        self.runner.on_release = self.outbox.on_release = self._room_freed
        join_wait = settings.kafka_session_timeout_ms + JOIN_DELAY_MS
        if self._request_timeout_ms() <= join_wait:
            log.warning(
                "FAAS_KAFKA_REQUEST_TIMEOUT_MS=%d is not above FAAS_KAFKA_SESSION_TIMEOUT_MS=%d plus the "
                "broker's rebalance delay (%d ms): in a group of several nodes a rejoin may wait longer than "
                "the request may, time out and start again; fine for a group of one node",
                settings.kafka_request_timeout_ms,
                settings.kafka_session_timeout_ms,
                JOIN_DELAY_MS,
            )

    def _fetch_bytes(self) -> int:
        """The most the consumer fetches from one partition at once: two of the largest events."""
        return max(MIB, 2 * self.settings.max_payload_bytes)

    def _request_timeout_ms(self) -> int:
        """The consumer's request timeout: a fetch the broker may hold, and its bytes, included."""
        s = self.settings
        return request_timeout_ms(s, self._fetch_bytes(), s.kafka_fetch_wait_ms)

    # ---- lifecycle ----

    async def start(self) -> None:
        """Start in the background and return at once: joining takes seconds, and an unreachable broker
        must not keep the node from serving HTTP. `not_ready()` tells when the group is joined."""
        self._tasks = [
            asyncio.create_task(self._supervise(), name="kafka-consume"),
            asyncio.create_task(self.probe.run(), name="kafka-probe"),
            asyncio.create_task(self._housekeeping(), name="kafka-commit"),
        ]

    def not_ready(self) -> list[str]:
        """Reasons the node cannot take events now; empty once joined and the broker answers."""
        if self._stopping:
            return ["kafka: stopping"]
        away = self.probe.unreachable_for()
        if away is not None:
            return [f"kafka: broker {self.bootstrap} unreachable for {away:.0f} s ({self.probe.error})"]
        if not self.joined:
            return [f"kafka: {self.failure}" if self.failure else "kafka: joining consumer group"]
        return []

    async def stop(self, grace: float) -> None:
        """Stop fetching, give in-flight events up to `grace` seconds to be answered, commit, close."""
        self._stopping = True
        self._room_freed()
        started = time.monotonic()
        log.info(
            "stopping the kafka source: %d events taken, %d replies awaiting acknowledgement",
            self.runner.size,
            self.outbox.unacked,
        )
        self._hand_over(None)
        if self._tasks:  # the poll loop sees the flag within its fetch timeout
            with contextlib.suppress(TimeoutError):
                await within(asyncio.shield(self._tasks[0]), 2)
        await cancel_and_wait(self._tasks)
        # Queued records are run too, not dropped: a dropped one would hold the commit point below records
        # of other keys that did finish, and the next owner would answer those twice.
        if self.runner.size:
            log.info("draining %d taken events (up to %.0f s)", self.runner.size, grace)
        deadline = time.monotonic() + grace
        if not await self._drain_unless_hurried(grace):
            log.warning("in-flight events cancelled; the group will redo them")
        if self._hurry.is_set():
            deadline = time.monotonic()
        await self.outbox.settle(self.tracker, None, deadline)
        if self.outbox.unacked:
            log.warning("%d replies not acknowledged in time: the group redoes them", self.outbox.unacked)
        try:  # aiokafka retries a commit during a rebalance for as long as it lasts: bounded here
            await within(self._commit(None), FINAL_COMMIT_WAIT)
        except TimeoutError:
            log.warning("final commit not done in %.0f s: the group redoes it", FINAL_COMMIT_WAIT)
        self.outbox.cancel()
        await self._close_consumer()
        await self.sender.stop()
        log.info("kafka source stopped in %.1f s", time.monotonic() - started)

    def hurry(self) -> None:
        """A second signal: end the stop's wait for in-flight events now. They are cancelled, unanswered and
        uncommitted, so the group delivers them again (as when the grace runs out), never answered failed."""
        self._hurry.set()

    async def _drain_unless_hurried(self, grace: float) -> bool:
        """`runner.drain` for up to `grace` seconds, cut short by `hurry`; True when everything finished."""
        drain = asyncio.ensure_future(self.runner.drain(None, grace))
        hurry = asyncio.ensure_future(self._hurry.wait())
        await asyncio.wait([drain, hurry], return_when=asyncio.FIRST_COMPLETED)
        hurry.cancel()
        if drain.done():
            return drain.result()
        drain.cancel()  # its wait only: the events' tasks run on until the drain below cancels them
        with contextlib.suppress(asyncio.CancelledError):
            await drain
        return await self.runner.drain(None, 0)

    # ---- consuming ----

    async def _supervise(self) -> None:
        backoff = 0.5
        while not self._stopping:
            try:
                await self._open()
                backoff = 0.5
                self.failure = None
                await self._poll()
            except Exception as exc:
                self.failure = f"consumer failed: {exc!r}"
                log.warning("kafka consumer failed (%r); starting a new one in %.1f s", exc, backoff)
                await self._abandon()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 10.0)

    async def _open(self) -> None:
        s = self.settings
        await ensure_topics(
            self.bootstrap,
            [s.events_topic, s.replies_topic, s.deadletter_topic],
            s.topic_partitions,
            self.options,
        )
        await self.sender.start()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=s.kafka_group_id,
            max_partition_fetch_bytes=self._fetch_bytes(),
            request_timeout_ms=self._request_timeout_ms(),
            **consumer_options(s),
            **self.options,
        )
        consumer.subscribe([s.events_topic], listener=self)
        self._starting = consumer
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        finally:
            self._starting = None
        self.consumer = consumer

    @property
    def room(self) -> int:
        """Records the poll loop may take now: FAAS_MAX_INFLIGHT_EVENTS less those held (running, queued,
        or waiting for their reply's acknowledgement), not counting up to as many again that wait between
        retry attempts: a burst of failing events in their backoffs would hold every slot, and every other
        key and function of the node would wait for them (minutes, with long backoffs), doing nothing."""
        return self.runner.room - self.outbox.unacked + min(self._waiting_total, self.runner.limit)

    def _waits(self, handover: Handover, delta: int) -> None:
        """An event starts (+1) or stops (-1) waiting between attempts (`Handover.on_wait`)."""
        tp = self._handovers.get(handover)
        if tp is None:
            return
        self._waiting_total += delta
        self._waiting[tp] = self._waiting.get(tp, 0) + delta
        if delta > 0:
            self._room_freed()

    async def _poll(self) -> None:
        consumer = self.consumer
        assert consumer is not None
        while not self._stopping:
            room = self.room
            if room <= 0:
                await self._wait_for_room(consumer)
                continue
            paused = consumer.paused()
            crowded, headroom = self._crowded(consumer, paused)
            if paused != crowded:
                consumer.resume(*(paused - crowded))
                consumer.pause(*(crowded - paused))
            batch = await consumer.getmany(timeout_ms=200, max_records=min(room, 1000, headroom))
            for tp, records in batch.items():
                self.metrics.events_consumed.inc(len(records))
                for record in records:
                    part = self.tracker.take(tp, record.offset)
                    self.runner.submit(tp, record.key, functools.partial(self._handle, part, record))

    def _crowded(
        self, consumer: AIOKafkaConsumer, paused: set[TopicPartition]
    ) -> tuple[set[TopicPartition], int]:
        """The partitions to keep paused, and the most records the next fetch may take so that no other
        partition goes past PARTITION_SHARE of the limit. A partition that reached it stays paused until
        down to half of it (a margin: one resumed is fetched again from its next offset). Nothing is
        paused while the node has a single partition: it may hold all there is."""
        limit = self.settings.max_inflight_events
        assigned = consumer.assignment()
        if len(assigned) < 2:
            return set(), limit
        cap = max(1, int(limit * PARTITION_SHARE))
        waiting = self._waiting  # events in a backoff hold no slot (`room`): nor do they crowd a partition
        held = {
            tp: p.held - waiting.get(tp, 0) for tp, p in self.tracker.partitions.items() if tp in assigned
        }
        crowded = {tp for tp, n in held.items() if n >= cap or (tp in paused and n > cap // 2)}
        # A revoked partition is in neither set: aiokafka would raise on pausing one.
        most = max((n for tp, n in held.items() if tp not in crowded), default=0)
        return crowded, max(1, cap - most)

    async def _wait_for_room(self, consumer: AIOKafkaConsumer) -> None:
        """Full: wait until held records are done, at most FULL_POLL seconds. Waiting in a fetch instead
        (partitions paused) held every round for the fetch's whole timeout however soon the records were
        done: 1,000 events per 200 ms was the node's ceiling."""
        self._room_waiter = waiter = asyncio.get_running_loop().create_future()
        try:
            await within(waiter, FULL_POLL)
        except TimeoutError:
            # Still full: a poll with every partition paused keeps the member in the group (aiokafka leaves
            # it after max_poll_interval_ms without one) and takes nothing. Fetched records of paused
            # partitions are dropped and fetched again on resume: only after a second of being full.
            consumer.pause(*consumer.assignment())
            await consumer.getmany(timeout_ms=0)
        finally:
            self._room_waiter = None

    def _room_freed(self) -> None:
        waiter = self._room_waiter
        if waiter is not None and not waiter.done() and (self.room > 0 or self._stopping):
            waiter.set_result(None)

    async def _abandon(self) -> None:
        """After a consumer failure: cancel its in-flight events (the group redoes them) and close it."""
        self.joined = False
        self.runner.drop_queued()
        await self.runner.drain(None, 0)
        self.outbox.cancel()  # what still waits for an ack is redone by the group
        self.tracker.forget(list(self.tracker.partitions))
        await self._close_consumer()

    async def _close_consumer(self) -> None:
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            leave = self.settings.kafka_leave_group
            problem = await group.stop_member(consumer, 10, leave, self.probe.cluster_id)
            if problem is not None:
                log.warning("closing the kafka consumer: %r", problem)

    # ---- one record ----

    async def _handle(self, part: PartitionOffsets, record: ConsumerRecord[bytes, bytes]) -> None:
        # The loop given: `current_task()` without one asks `get_running_loop()`, a getpid() per event.
        handover = Handover(asyncio.current_task(self.runner.loop), on_wait=self._on_wait)
        HANDOVER.set(handover)  # this chain task's context: its listeners' tasks inherit it
        tp = TopicPartition(record.topic, record.partition)
        handover.requested = self._stopping or tp in self._leaving
        self._handovers[handover] = tp
        try:
            await self._answer(part, record)
            return  # handed to the producer: the acknowledgement marks it done
        except Exception:  # nothing more can be done for it; the partition must not stall behind it
            log.exception(
                "record %s-%d@%d could not be answered: skipped",
                record.topic,
                record.partition,
                record.offset,
            )
        finally:
            self._handovers.pop(handover, None)
        part.done(record.offset)  # not reached on cancellation: the record stays uncommitted

    def _hand_over(self, tps: list[TopicPartition] | None) -> None:
        """Events of `tps` (None: all) waiting between attempts are cancelled now, and those running an
        attempt as soon as they would wait: their records stay uncommitted, the next owner redoes them."""
        now = sum(h.request() for h, tp in list(self._handovers.items()) if tps is None or tp in tps)
        if now:
            log.info("handed over %d events waiting between attempts", now)

    async def _answer(self, part: PartitionOffsets, record: ConsumerRecord[bytes, bytes]) -> None:
        """Answer one record: its dead-letter copy (a bad or failed event) acknowledged first, then its reply
        handed over (`reply_later`), which marks it done once acknowledged. Every reply goes that one way,
        bad records' too, so the replies of one key land in the order of its records."""
        headers = list(record.headers or ())
        try:
            event = cloudevents.parse(
                record.value, headers, self.settings.max_payload_bytes, own_topics=self._own_topics
            )
        except Exception as exc:  # a bug of the parser: the record is still answered, as a bad one, and kept
            log.exception("record %s-%d@%d could not be read", record.topic, record.partition, record.offset)
            event = cloudevents.unreadable(exc)
        if isinstance(event, cloudevents.BadRecord):
            log.warning(
                "bad record %s-%d@%d: %s", record.topic, record.partition, record.offset, event.message
            )
            # Answered in the trace it came with, like any event (section 11); else in a new one.
            span = tracing.start(event.traceparent, event.tracestate)
            reply = EventReply.failed(event.id, event.type, BadEvent(event.message)).in_trace(span)
            await self.outbox.deadletter(record.key, record.value, bad_event_headers(headers, event.message))
            await self.outbox.reply_later(part, record, event, reply)
            if self.invoker.exporter is not None:  # the reply names this span: it must exist
                export_event(self.invoker.exporter, span, event, reply, "consumer", record.topic)
            return
        if event.dropped:
            log.warning("%s", cloudevents.dropped_warning(event.id, event.type, event.dropped))
        span = tracing.start(event.traceparent, event.tracestate)
        try:
            reply = await self.invoker.event(
                event.type, event.id, event.payload, event.identity(record.key), span
            )
        except Exception as exc:  # a bug in the invoker; the event still gets an answer
            log.exception("event %s (%s) failed in the invoker", event.id, event.type)
            reply = EventReply.failed(event.id, event.type, exc).in_trace(span)
        if not reply.ok and reply.error is not None:
            # Acknowledged before the reply is handed over: the reply's ack then marks the record done.
            error = reply.error
            marked = failed_headers(
                headers, error["type"], error["message"], error["function"], reply.attempts
            )
            await self.outbox.deadletter(record.key, record.value, marked, "failed")
        await self.outbox.reply_later(part, record, event, reply)
        if self.invoker.exporter is not None:
            export_event(self.invoker.exporter, span, event, reply, "consumer", record.topic)

    # ---- rebalance (ConsumerRebalanceListener) ----

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        """Before a rebalance: no records are fetched now; let those taken from `revoked` finish
        (REVOKE_WAIT at most, then cancel), commit what is done, so the next owner redoes nothing."""
        tps = list(revoked)
        if not tps:
            return
        # Queued records of these partitions run too (see `stop`), within the same bound, unless the group
        # has given them to other members already (`_taken_over`).
        deadline = time.monotonic() + REVOKE_WAIT
        self._leaving.update(tps)
        self._hand_over(tps)
        try:
            if await self._taken_over(tps):
                await self.runner.drain(tps, 0)
                # Replies still being retried (a send that failed while the process stood still) would land
                # after the new owner's answers to the same events: given up, their records uncommitted.
                # An expelled member loses its whole assignment, so every retry is one of `tps`.
                self.outbox.cancel()
            elif not await self.runner.drain(tps, REVOKE_WAIT):
                log.warning("rebalance: events still running after %.0f s were cancelled", REVOKE_WAIT)
        finally:
            self._leaving.difference_update(tps)
        await self.outbox.settle(self.tracker, tps, deadline)
        # A rejoin follows a broker restart too: a probe first, so the old log's positions are not
        # committed into a new cluster's group (it forgets them if the cluster id changed).
        try:
            await self.probe.once()
        except Exception:  # a bug in the probe must not cost the hand-over its commit
            log.exception("kafka probe failed before a rebalance's commit")
        await self._commit(tps)
        self.tracker.forget(tps)
        for tp in tps:
            self._short.pop(tp, None)
            with contextlib.suppress(KeyError):
                self.metrics.consumer_lag.remove(tp.topic, str(tp.partition))

    async def _taken_over(self, tps: list[TopicPartition]) -> bool:
        """When the group expelled this node (its session timed out: the process was stopped or stalled),
        `tps` have other owners already, answering from the last commit: the events queued here are dropped
        and the running ones cancelled now, rather than run beside the new owner's (two nodes on one key at
        once, every event answered twice). Not after a broker restart (another cluster id, or none known),
        whose old log no other node holds: those run, as at any rebalance."""
        consumer = self.consumer or self._starting
        if not group.expelled(consumer) or consumer is None:
            return False
        # The cluster this node joined, not the probe's latest: after a broker restart the probe may see the
        # new cluster before this runs, and the restart would pass for an expulsion.
        now = await group.cluster_id(consumer)
        if now is None or now != self._member_of:
            return False
        dropped = self.runner.drop_queued(tps)
        log.warning(
            "rebalance: the group dropped this node (its session timed out: was the process stopped or "
            "stalled?) and gave partitions %s to others, which answer their events from the last commit: "
            "%d queued events dropped, the running ones cancelled",
            sorted(tp.partition for tp in tps),
            dropped,
        )
        return True

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.joined = True
        # Stale at worst (the probe has not seen a new cluster yet): `_taken_over` then drains, as it did.
        self._member_of = self.probe.cluster_id
        # The consumer being started too: a flag left for the next rebalance would read every partition
        # this node keeps then from 0 again, long after the new log was read (all of it answered twice).
        consumer = self.consumer or self._starting
        if self._reread and consumer is not None and assigned:
            self._reread = False
            for tp in assigned:
                consumer.seek(tp, 0)  # below the log start, auto_offset_reset=earliest applies
        log.info(
            "joined group %s with partitions %s",
            self.settings.kafka_group_id,
            sorted(tp.partition for tp in assigned),
        )

    # ---- housekeeping ----

    async def _commit(self, tps: list[TopicPartition] | None) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        async with self._commit_lock:
            offsets = self.tracker.committable(tps)
            if not offsets:
                return
            try:
                await within(consumer.commit(offsets), COMMIT_WAIT)
            except TimeoutError:
                log.warning("commit of %d partitions took over %.0f s; will retry", len(offsets), COMMIT_WAIT)
                return
            except (KafkaError, OSError, AssertionError) as exc:  # aiokafka asserts on unassigned partitions
                log.info("commit of %d partitions failed (%r); will retry", len(offsets), exc)
                return
            self.tracker.committed(offsets)

    async def _housekeeping(self) -> None:
        ticks = 0
        while not self._stopping:  # the flag too: a stop must never wait on a loop that missed its cancel
            await asyncio.sleep(COMMIT_INTERVAL)
            await self._commit(None)
            ticks += 1
            if ticks % int(LAG_INTERVAL / COMMIT_INTERVAL) == 0:
                await self._update_lag()

    def _read_from_start(self) -> None:
        """The events log is new, so every position held, and every offset committed into it (a commit
        retried across the restart, or the rejoin's own on revocation), points past records never read:
        read it from its start, and so does the next assignment."""
        self._reread = True
        self.tracker.forget(list(self.tracker.partitions))
        # The group may never rebalance (same member, same partitions): without a new assignment the
        # fetcher would go on at the old log's positions and skip the new log's first records.
        consumer = self.consumer or self._starting
        if consumer is not None:
            for tp in consumer.assignment():
                consumer.seek(tp, 0)  # below the log start, auto_offset_reset=earliest applies

    async def _update_lag(self) -> None:
        consumer = self.consumer
        if consumer is None:
            return
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            try:
                position = await within(consumer.position(tp), 1)
            except (KafkaError, TimeoutError, AssertionError):
                continue
            if highwater is None or tp not in consumer.assignment():  # revoked meanwhile: its series is gone
                continue
            if highwater < position:
                # Twice in a row, LAG_INTERVAL apart: once may be a newly elected leader's watermark, which
                # trails the old leader's for a fetch round (Kafka; KIP-207).
                if self._short.pop(tp, None) is None:
                    self._short[tp] = highwater
                else:
                    self._log_replaced(consumer, tp, highwater, position)
                continue
            self._short.pop(tp, None)
            # From the oldest record not answered yet: those fetched and waiting behind their key count.
            part = self.tracker.partitions.get(tp)
            oldest = part.oldest if part is not None else None
            lag = max(0, highwater - (position if oldest is None else min(oldest, position)))
            self.metrics.consumer_lag.labels(tp.topic, str(tp.partition)).set(lag)

    def _log_replaced(self, consumer: AIOKafkaConsumer, tp: TopicPartition, end: int, position: int) -> None:
        """A partition whose log ends (as its last fetch said) below the position this node read up to holds
        another log: the topic was deleted and made again, and the group kept its offsets (Tansu does), or
        it lost records. Its position and commits would skip the new log's first records until it grew
        past them, so it is read from its start (a log that lost its last records, after an unclean leader
        election, is read again whole: at-least-once). A new log that grew past the position before the
        checks cannot be told from the old one: Kafka's topic ids would, aiokafka has none."""
        log.warning(
            "partition %d of %s ends at offset %d, below the %d this node read: the topic was deleted and "
            "made again (or lost records); reading the partition from its start",
            tp.partition,
            tp.topic,
            end,
            position,
        )
        self.tracker.forget([tp])
        consumer.seek(tp, 0)  # below the log start, auto_offset_reset=earliest applies

    async def _topics_seen(self, topics: set[str], new_cluster: bool) -> None:
        """After a probe: a new cluster (a memory-only broker that restarted, say) holds none of the logs
        our positions point into; a broker that lost our topics needs them again."""
        s = self.settings
        wanted = [s.events_topic, s.replies_topic, s.deadletter_topic]
        joined = self.joined
        if new_cluster or self.probe.error is not None:  # a new cluster, or back after an outage
            self.sender.metadata_stale()  # its partitions may be the old broker's (same cluster id: Tansu's)
            # Not a member of the new cluster's group until it assigns us partitions: not ready before
            # (`/readyz` said 200 for seconds after a broker restart, events unread meanwhile). Set before
            # any await; and a rejoin is asked for, so an assignment surely follows even when the new
            # group assigned us before this probe saw the new cluster (aiokafka internal, pinned in
            # tests/kafka/test_aiokafka_internals.py).
            self.joined = False
            if self.consumer is not None:
                self.consumer._coordinator.request_rejoin()
        if new_cluster or (joined and s.events_topic not in topics):
            self._read_from_start()
        if joined and not set(wanted) <= topics:
            await ensure_topics(self.bootstrap, wanted, s.topic_partitions, self.options)
            self.sender.metadata_stale()  # the topics made again have partitions of their own
