"""Sending replies and dead-letter copies until the broker acknowledges them.

At-least-once needs every reply acknowledged before its offset is committed, so a failed send is retried
(with backoff, for as long as it takes: the broker may be away for minutes) rather than dropped. A producer
that keeps failing for `RECREATE_AFTER` seconds is replaced, in case aiokafka's own was left dead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidTopicError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
    TopicAuthorizationFailedError,
)

from framework.kafka_config import start_producer
from framework.settings import Settings

log = logging.getLogger("faas.kafka")

PERMANENT = (InvalidTopicError, MessageSizeTooLargeError, RecordTooLargeError, TopicAuthorizationFailedError)
"""Errors no retry can fix: the caller decides what to send instead."""
MAX_BACKOFF = 5.0
"""Seconds between retries of a failing send, at most (doubling from 0.1 s)."""
RECREATE_AFTER = 30.0
"""Seconds of failing sends after which the producer is closed and a new one started."""


class PermanentSendError(Exception):
    """The broker refused the record for good (too large, bad topic, not authorised)."""


class ReplySender:
    """One shared producer (acks=all) that sends each record until it is acknowledged."""

    def __init__(self, bootstrap: str, settings: Settings) -> None:
        self.bootstrap = bootstrap
        self.settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._failing_since: float | None = None
        self._closed = False

    async def start(self) -> None:
        await self._get()

    async def _get(self) -> AIOKafkaProducer:
        async with self._lock:
            if self._closed:
                raise RuntimeError("the reply sender is closed")
            if self._producer is None:
                self._producer = await start_producer(self.bootstrap, self.settings)
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
            await asyncio.wait_for(stop(), 5)
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
                future = await producer.send(topic, value=value, key=key, headers=list(headers))
                await future
                self._failing_since = None
                return
            except PERMANENT as exc:
                raise PermanentSendError(f"{type(exc).__name__}: {exc}") from exc
            except (KafkaError, OSError) as exc:
                if permanent_if is not None and permanent_if(exc):
                    raise PermanentSendError(f"{type(exc).__name__}: {exc}") from exc
                now = time.monotonic()
                self._failing_since = self._failing_since or now
                log.warning("sending to %s failed (%r); retrying in %.1f s", topic, exc, delay)
                if producer is not None and now - self._failing_since > RECREATE_AFTER:
                    await self._replace(producer)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF)

    async def stop(self) -> None:
        """Flush and close the producer (pending sends are acknowledged or fail)."""
        async with self._lock:
            self._closed = True
            producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), 10)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("closing the kafka producer: %r", exc)
