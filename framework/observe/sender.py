"""Producing invocation records to FAAS_INVOCATIONS_TOPIC, off the invocations' path (DESIGN.md section 13).

`offer` (on the path) appends the record's JSON (rendered already, `record_json.py`) to a bounded buffer
and wakes the sender's task; it never awaits and never fails. The task waits `LINGER` seconds so records
arriving together travel together, then takes up to `MAX_BATCH` of them, groups them by partition
(murmur2 of the key, the function's uuid, as aiokafka's default partitioner does, so one function's
records stay in order on one partition) and hands each partition's records to the producer as one batch
(`send_batch`): no future, no coroutine per record.

Failure handling trades completeness for never slowing an invocation down:
- the buffer holds `FAAS_RECORDS_BUFFER` records at most (default 10,000, a few MB); when full, the oldest
  one is dropped;
- while the broker is unreachable no producer can start, and a started one gets no metadata: records wait
  in the buffer, the task retries with backoff (0.5 s doubling to 5 s);
- a batch the broker does not acknowledge within `SEND_TIMEOUT` seconds is dropped (not resent: it may have
  landed, and a record is not worth a duplicate) and the producer is replaced;
- at shutdown the buffer gets `FAAS_SHUTDOWN_GRACE` (at most `STOP_FLUSH`) seconds to drain; what is left is
  dropped, and a last warning says so whenever the one before was (the counters end with the process).
Every drop is counted (`faas_invocation_records_dropped_total`), every acknowledged record too
(`faas_invocation_records_sent_total`), so sent + dropped = made once the buffer is empty, and warnings are
logged at most every `WARN_EVERY` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaProducer

from framework.kafka.options import ensure_topics, security_options, start_producer
from framework.kafka.partitioner import KeyHashes

if TYPE_CHECKING:
    from framework.observe.records import RecordCounters
    from framework.settings import Settings

log = logging.getLogger("faas.records")

LINGER = 0.5
"""Seconds the task waits after waking, so one batch carries the records of a burst. Each round costs a
metadata request and a produce request whatever it carries (the embedded broker spends about 0.4 and
1 ms of CPU on them, the node some more to build and read them), so fewer rounds leave more CPU to the
invocations. A record reaches the topic (`faas logs --follow`) within about this long."""
MAX_BATCH = 10_000
"""Records taken from the buffer per round."""
BATCH_BYTES = 1024 * 1024
"""Bytes of one produce batch (aiokafka's default is 16 KiB: dozens of batches per round otherwise)."""
COMPRESSION = "snappy"
"""Codec of the records' batches. Records are JSON with names repeated in each: snappy shrinks a batch about
threefold, and the embedded broker's CPU per record stored with it, while this process spends no more
(less bytes to frame and write). 50,000 records of 406 bytes, raw aiokafka batches, CPU per record in the
producer / the broker, medians of 4 rounds: none 2.2 / 1.45 us, snappy 1.94 / 0.52, zstd 2.58 / 0.36,
lz4 3.95 / 0.41. Every Kafka client reads snappy (aiokafka through cramjam, a dependency)."""
SEND_TIMEOUT = 10.0
"""Seconds a round may take (metadata, send, acknowledgement) before its records are dropped."""
BACKOFF = (0.5, 5.0)
"""First and longest pause (seconds) between attempts to reach an unreachable broker."""
STOP_FLUSH = 5.0
"""Seconds, at most, a stopping node gives the buffer to drain."""
WARN_EVERY = 30.0
"""Seconds between warnings about dropped records."""


class NotSent(Exception):
    """A round found it could not send anything yet; its records stay buffered."""


class RecordSender:
    """A bounded buffer of records and the task that produces them."""

    def __init__(
        self,
        bootstrap: str,
        settings: Settings,
        counters: RecordCounters,
    ) -> None:
        self.bootstrap = bootstrap
        self.settings = settings
        self.topic = settings.invocations_topic
        self.capacity = settings.records_buffer
        self.counters = counters
        self._no_room = "the record buffer has no room (FAAS_RECORDS_BUFFER=0)"
        """Why a record offered when `capacity` is 0 is dropped."""
        self._buf: deque[tuple[bytes, bytes]] = deque()
        """(key: the function's uuid, value: the record's JSON) of each record not handed over yet."""
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None
        self._inflight = 0
        self._hashes = KeyHashes()
        self._dropped_since_warning = 0
        self._warned_at = 0.0
        self.hurried = False
        """A second signal: `stop` drops what is buffered now, not at the end of its grace."""

    @property
    def buffered(self) -> int:
        return len(self._buf) + self._inflight

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="faas-records")

    def offer(self, key: bytes, record: bytes) -> None:
        """Queue one record (the invocation's path: no await, no failure)."""
        if len(self._buf) >= self.capacity:
            if self.capacity == 0:
                self._drop(1, self._no_room)
                return
            self._buf.popleft()
            self._drop(1, "the record buffer is full")
        self._buf.append((key, record))
        if not self._wake.is_set():
            self._wake.set()

    async def stop(self, grace: float) -> None:
        """Give the buffer up to `grace` seconds (at most STOP_FLUSH) to drain, then drop what is left.
        A record offered afterwards is dropped (and counted) at once: nothing sends it any more."""
        deadline = time.monotonic() + min(grace, STOP_FLUSH)
        while self.buffered and self._task is not None and time.monotonic() < deadline:
            if self.hurried:  # a second signal: nothing more is waited for
                break
            await asyncio.sleep(0.02)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.capacity, self._no_room = 0, "made after the node stopped producing records"
        if self._buf:
            self._drop(len(self._buf), "still buffered at shutdown")
            self._buf.clear()
        if self._dropped_since_warning:  # the last word, whenever the last warning was: the counters die here
            c = self.counters
            self._warn(f"at shutdown ({c.made} made, {c.sent} sent, {c.dropped} dropped in all)", always=True)
        await self._close()

    # ---- the task ----

    async def _run(self) -> None:
        pause = BACKOFF[0]
        while True:
            if not self._buf:
                self._wake.clear()
                await self._wake.wait()
            await asyncio.sleep(LINGER)
            try:
                producer = await self._get()
            except Exception as exc:
                self._warn(f"cannot reach Kafka at {self.bootstrap} for invocation records: {exc!r}")
                await asyncio.sleep(pause)
                pause = min(pause * 2, BACKOFF[1])
                continue
            batch = [self._buf.popleft() for _ in range(min(MAX_BATCH, len(self._buf)))]
            self._inflight = len(batch)
            failed: int | None  # None: nothing went out, the same records go next round
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    failed = await self._send(producer, batch)
                pause = BACKOFF[0]
            except asyncio.CancelledError:
                self._drop(len(batch), "cancelled at shutdown")
                raise
            except NotSent as exc:
                self._inflight = 0  # back in the buffer: counted there once, not twice
                self._put_back(batch)
                self._warn(f"invocation records wait: {exc}")
                failed = None
            except Exception as exc:
                failed = len(batch)
                self._warn(f"invocation records not acknowledged: {exc!r}")
            finally:
                self._inflight = 0
            if failed is not None:
                self.counters.sent += len(batch) - failed
                if failed:
                    self._drop(failed, "the broker did not acknowledge them")
                    await self._close()  # a fresh producer next round: aiokafka's may be stuck
            if failed != 0:  # a round that did not land whole: a pause before the next
                await asyncio.sleep(pause)
                pause = min(pause * 2, BACKOFF[1])

    async def _get(self) -> AIOKafkaProducer:
        if self._producer is None:
            options = security_options(self.settings)
            with contextlib.suppress(Exception):  # Tansu auto-creates; Kafka may forbid creating
                await ensure_topics(self.bootstrap, [self.topic], self.settings.topic_partitions, options)
            producer = await start_producer(
                self.bootstrap,
                self.settings,
                client_id="faas-records",
                request_timeout_ms=int(SEND_TIMEOUT * 1000),
                max_batch_size=BATCH_BYTES,
                compression_type=COMPRESSION,
            )
            try:
                async with asyncio.timeout(SEND_TIMEOUT):
                    await producer.partitions_for(self.topic)  # the client follows this topic from now on
            except BaseException:
                await producer.stop()
                raise
            self._producer = producer
        return self._producer

    async def _send(self, producer: AIOKafkaProducer, records: list[tuple[bytes, bytes]]) -> int:
        """Produce `records`, one batch per partition; returns how many were not acknowledged."""
        # Fresh metadata every round (one small request): a broker replaced by an empty one (the embedded
        # broker keeps nothing across a restart) acknowledges writes to partitions its topic does not have,
        # and readers never see them, so a stale partition list would lose records counted as sent.
        if not await producer.client.force_metadata_update():
            # The last partition list may be a lost broker's (sending during an outage lands the batch on
            # whatever broker comes back, with that list): send nothing until the broker answers.
            raise NotSent("no metadata from the broker")
        partitions = sorted(producer.client.cluster.partitions_for_topic(self.topic) or ())
        if not partitions:
            partitions = sorted(await producer.partitions_for(self.topic))
        lanes: dict[int, list[tuple[bytes, bytes]]] = {}
        for key, value in records:
            lanes.setdefault(self._hashes.partition(key, partitions), []).append((key, value))
        acks: list[tuple[int, asyncio.Future[Any]]] = []
        for partition, items in lanes.items():
            builder, count = producer.create_batch(), 0
            for key, value in items:
                if builder.append(key=key, value=value, timestamp=None, headers=[]) is None:
                    acks.append((count, await producer.send_batch(builder, self.topic, partition=partition)))
                    builder, count = producer.create_batch(), 0
                    builder.append(key=key, value=value, timestamp=None, headers=[])  # an empty one takes it
                count += 1
            acks.append((count, await producer.send_batch(builder, self.topic, partition=partition)))
        for _, ack in acks:  # a round cut short (timeout, stop) leaves them: their failure is not news
            ack.add_done_callback(_retrieved)
        # Shielded: a timed-out round must not cancel futures aiokafka still owns.
        outcomes = await asyncio.gather(*(asyncio.shield(ack) for _, ack in acks), return_exceptions=True)
        failed = 0
        for (count, _), outcome in zip(acks, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed += count
                self._warn(f"invocation records not acknowledged: {outcome!r}")
        return failed

    async def _close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await producer.stop()

    def _put_back(self, batch: list[tuple[bytes, bytes]]) -> None:
        """Return a round's records to the front of the buffer, in order; the oldest beyond its capacity
        are dropped, as `offer` would have."""
        self._buf.extendleft(reversed(batch))
        excess = len(self._buf) - self.capacity
        if excess > 0:
            for _ in range(excess):
                self._buf.popleft()
            self._drop(excess, "the record buffer is full")

    def _drop(self, count: int, why: str) -> None:
        self.counters.dropped += count
        self._dropped_since_warning += count
        self._warn(why)

    def _warn(self, why: str, always: bool = False) -> None:
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY and not always:
            return
        self._warned_at = now
        log.warning(
            "invocation records: %s (%d dropped since the last warning; buffered %d)",
            why,
            self._dropped_since_warning,
            self.buffered,
        )
        self._dropped_since_warning = 0


def _retrieved(future: asyncio.Future[Any]) -> None:
    """Mark a send's outcome as seen (asyncio logs "exception was never retrieved" otherwise)."""
    if not future.cancelled():
        future.exception()
