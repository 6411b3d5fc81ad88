"""Sending replies and dead-letter copies until the broker acknowledges them.

At-least-once needs every reply acknowledged before its offset is committed, so a failed send is retried
(with backoff, for as long as it takes: the broker may be away for minutes) rather than dropped. A producer
that keeps failing for `RECREATE_AFTER` seconds is replaced, in case aiokafka's own was left dead.

`send` waits for the acknowledgement; `submit` only hands the record to the producer and returns a future
of it, so many replies share one produce request instead of each waiting for its own round trip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    ProducerClosed,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)

from framework.kafka.options import max_request_size, said, start_producer
from framework.settings import Settings
from framework.sources.kafka.batching import ReplyBatches
from framework.tasks import within

log = logging.getLogger("faas.kafka")

PERMANENT = (InvalidTopicError, MessageSizeTooLargeError, RecordTooLargeError, TopicAuthorizationFailedError)
"""Errors no retry can fix: the caller decides what to send instead."""
MAX_BACKOFF = 5.0
"""Seconds between retries of a failing send, at most (doubling from 0.1 s)."""
BATCH_BYTES = 512 * 1024
"""Records per partition buffered in one batch (aiokafka's default is 16 KiB). Replies are submitted
without waiting for acks, so hundreds queue per partition while a produce request is in flight; with small
batches each further submitter parks in `asyncio.wait` until the batch drains, which cost more than the
sends themselves."""
RECREATE_AFTER = 30.0
"""Seconds of failing sends after which the producer is closed and a new one started."""


_Submission = tuple[
    "asyncio.Future[None]",
    str,
    "bytes | None",
    "bytes | None",
    Sequence[tuple[str, "bytes | None"]],
    "Callable[[BaseException], bool] | None",
]
"""A submitted record: its future, then `ReplyProducer._retry`'s arguments."""


def _stale_partition(exc: BaseException) -> bool:
    """aiokafka's own check refusing a partition its metadata no longer has (`AssertionError`): a lane
    made for a partition of a topic that came back with fewer (a memory-only broker restarted). The send
    is retried with fresh metadata, which picks a partition the topic has; given up, its event was left
    unanswered and its partition's commits held until the next rebalance."""
    return isinstance(exc, AssertionError) and "Unrecognized partition" in str(exc)


class PermanentSendError(Exception):
    """The broker refused the record for good (too large, bad topic, not authorised)."""


class ReplyProducer:
    """One shared producer (acks=all) that sends each record until it is acknowledged."""

    def __init__(self, bootstrap: str, settings: Settings) -> None:
        self.bootstrap = bootstrap
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._failing_since: float | None = None
        self._stale = False
        """Metadata to fetch again before the next send (`_fresh`): sends failed, or the broker changed."""
        self._closed = False
        self._retries: set[asyncio.Task[None]] = set()
        self._batches: ReplyBatches | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        await self._get()

    def metadata_stale(self) -> None:
        """The broker may have been replaced (the probe saw a new cluster): fresh metadata before the next
        send (`_fresh`)."""
        self._stale = True

    @staticmethod
    def _refresh_failed(producer: AIOKafkaProducer) -> bool:
        """Whether the producer's last metadata refresh failed (aiokafka internals, pinned in
        tests/kafka/test_aiokafka_internals.py). aiokafka refreshes once when a connection breaks; with the
        broker away that fails, and it tries again only `metadata_max_age_ms` (5 min) later. A broker back
        under the same cluster id (Tansu's default) refuses no send to a partition its topic no longer
        has, so nothing else would say the producer's partitions are a lost broker's."""
        cluster = producer.client.cluster
        return bool(cluster._last_refresh_ms > cluster._last_successful_refresh_ms)

    async def _fresh(self, producer: AIOKafkaProducer) -> None:
        """Fetch the cluster's metadata again when sends failed, the broker changed or was away since the
        last look, or the producer's own refresh failed (`_refresh_failed`).

        A memory-only broker that restarted (the embedded one) acknowledges writes to partitions its topics
        no longer have, and those records are never readable: the partitions of the producer's last look
        must not outlive an outage. Raises (the send is then retried) while no broker answers."""
        if not await producer.client.force_metadata_update():
            raise KafkaConnectionError("no metadata from the broker")
        self._stale = False

    async def _get(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._closed:
                raise RuntimeError("the reply sender is closed")
            if self._producer is None:
                self._producer = await start_producer(
                    self.bootstrap, self.settings, max_batch_size=BATCH_BYTES
                )
            return self._producer

    async def _replace(self, broken: AIOKafkaProducer) -> None:
        stop = broken.stop
        async with self._lock:
            if self._producer is not broken:
                return  # another send replaced it already
            self._producer = None
            self._failing_since = None
        log.warning("kafka producer kept failing for %.0f s: starting a new one", RECREATE_AFTER)
        try:
            await within(stop(), 5)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.debug("closing the old producer: %r", exc)

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
        *,
        permanent_if: Callable[[BaseException], bool] | None = None,
    ) -> None:
        """Send one record and wait for the broker's acknowledgement, retrying until it comes.

        Raises PermanentSendError for errors no retry can fix, and for those `permanent_if` says are;
        cancellation is the only other way out.
        """
        delay = 0.1
        while True:
            producer: AIOKafkaProducer | None = None
            try:
                producer = await self._get()
                if self._stale or self._refresh_failed(producer):
                    await self._fresh(producer)
                future = await producer.send(topic, value=value, key=key, headers=list(headers))
                await future
                self._failing_since = None
                return
            except Exception as exc:
                await self._failed(exc, topic, producer, permanent_if, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def submit(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
        *,
        permanent_if: Callable[[BaseException], bool] | None = None,
    ) -> asyncio.Future[None]:
        """Hand one record to the producer without waiting for its acknowledgement.

        Returns a future that resolves once the broker acknowledged the record (retrying as `send` does,
        in a task of this sender) or fails with PermanentSendError. Records go into per-partition batches
        (`batching.py`); records submitted one after another to one partition land in that order unless
        one has to be retried here. `stop` and `cancel_retries` cancel the retries (the futures too).
        """
        loop = self._loop
        if loop is None:  # kept: `asyncio.get_running_loop()` is a getpid() system call on Python 3.11
            loop = self._loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        entry: _Submission = (done, topic, value, key, headers, permanent_if)
        producer = self._producer
        try:
            if producer is None or self._closed:
                producer = await self._get()
            if self._stale or self._refresh_failed(producer):
                await self._fresh(producer)
            batches = self._batches
            if batches is None or batches.producer is not producer:
                batches = self._batches = self._new_batches(producer)
            await batches.add(topic, value, key, headers, entry)
        except Exception as exc:
            self._spawn(self._retry(*entry, exc, producer))
        return done

    def _new_batches(self, producer: AIOKafkaProducer) -> ReplyBatches:
        if self._batches is not None:  # a replaced producer: what it did not take yet is sent again
            self._batches.close(ProducerClosed())
        return ReplyBatches(producer, max_request_size(self.settings), self._settle)

    def _settle(
        self, producer: AIOKafkaProducer, entries: list[_Submission], exc: BaseException | None
    ) -> None:
        """A batch of submitted records ended: acknowledged, or each is retried on its own."""
        if exc is None:
            self._failing_since = None
            for entry in entries:
                if not entry[0].done():
                    entry[0].set_result(None)
            return
        for entry in entries:
            if entry[0].done():
                continue
            if isinstance(exc, asyncio.CancelledError):
                entry[0].cancel()  # the sender stopped: the record stays uncommitted, the group redoes it
            else:
                self._spawn(self._retry(*entry, exc, producer))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro, name="kafka-resend")
        self._retries.add(task)
        task.add_done_callback(self._retries.discard)

    async def _retry(
        self,
        done: asyncio.Future[None],
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: Sequence[tuple[str, bytes | None]],
        permanent_if: Callable[[BaseException], bool] | None,
        first: BaseException,
        producer: AIOKafkaProducer | None,
    ) -> None:
        """A submitted record failed (`first`): send it again until acknowledged, resolving `done`."""
        try:
            await self._failed(first, topic, producer, permanent_if, 0.1)
            await asyncio.sleep(0.1)
            await self.send(topic, value, key, headers, permanent_if=permanent_if)
        except PermanentSendError as exc:
            if not done.done():
                done.set_exception(exc)
            return
        except asyncio.CancelledError:
            done.cancel()  # stop or consumer failure: the record stays uncommitted
            raise
        except Exception as exc:  # e.g. the sender was closed meanwhile
            log.warning("gave up sending a record to %s: %r", topic, exc)
            done.cancel()
            return
        if not done.done():
            done.set_result(None)

    async def _failed(
        self,
        exc: BaseException,
        topic: str,
        producer: AIOKafkaProducer | None,
        permanent_if: Callable[[BaseException], bool] | None,
        delay: float,
    ) -> None:
        """Classify one failed attempt: raise PermanentSendError, or log it (and maybe replace the
        producer) so the caller retries after `delay`. Anything not a Kafka or socket error, nor a partition
        the metadata no longer has (`_stale_partition`), is re-raised."""
        if isinstance(exc, PERMANENT):
            raise PermanentSendError(said(exc)) from exc
        if not isinstance(exc, KafkaError | OSError) and not _stale_partition(exc):
            raise exc
        if permanent_if is not None and permanent_if(exc):
            raise PermanentSendError(said(exc)) from exc
        now = time.monotonic()
        self._failing_since = self._failing_since or now
        self._stale = True  # an outage, perhaps: the broker that answers next may be another (`_fresh`)
        log.warning("sending to %s failed (%r); retrying in %.1f s", topic, exc, delay)
        if producer is not None and now - self._failing_since > RECREATE_AFTER:
            await self._replace(producer)

    def cancel_retries(self) -> None:
        """Give up on submitted records still being retried (their futures are cancelled)."""
        for task in list(self._retries):
            task.cancel()

    async def stop(self) -> None:
        """Flush and close the producer (pending sends are acknowledged or fail)."""
        self.cancel_retries()
        if self._batches is not None:  # after the source settled: nothing it waits for is left here
            self._batches.close(asyncio.CancelledError())
            self._batches = None
        async with self._lock:
            self._closed = True
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await within(producer.stop(), 10)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("closing the kafka producer: %r", exc)
