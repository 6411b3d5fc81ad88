"""EventClient: emit a CloudEvent to the platform over Kafka and wait for its combined reply.

    async with EventClient("127.0.0.1:9092") as client:
        reply = await client.emit("order.created", {"item": 7}, key=b"order-7")

    reply = await EventClient("127.0.0.1:9092").emit("order.created", {})  # one-shot: starts, stops

The event goes out in binary mode with `ce_replyto` naming the client's reply topic. By default that is one
stable topic per host (`<FAAS_REPLIES_TOPIC>.client-<hostname>`, one partition, created when missing) rather
than one per client, so repeated `faas emit` runs do not litter the cluster with topics; clients sharing it
read it independently (no consumer group) and each keeps only the replies to its own event ids.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from types import TracebackType
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError

from framework import json_exact
from framework.kafka.address import topic_named, topic_problem
from framework.kafka.cloudevents import event_headers
from framework.kafka.options import ensure_topics, reader, security_options, start_producer
from framework.settings import Settings
from framework.tasks import cancel_and_wait

log = logging.getLogger("faas.client")

ASSIGN_TIMEOUT = 10.0
"""Seconds to wait for the reply consumer to be assigned its partitions."""


def default_reply_topic(replies_topic: str) -> str:
    """`<replies_topic>.client-<hostname>`, the host name made a topic name's (`address.topic_named`)."""
    return topic_named(f"{replies_topic}.client-", socket.gethostname(), "host")


class EventClient:
    """Produce events and await their replies.

    `events_topic` defaults to FAAS_EVENTS_TOPIC, `reply_topic` to `default_reply_topic(...)`. TLS/SASL
    options come from the FAAS_KAFKA_* settings; `kafka_options` (e.g. `security_protocol`, `ssl_context`,
    `client_id`) are passed to every aiokafka client and override them.
    """

    def __init__(
        self,
        bootstrap: str,
        *,
        events_topic: str | None = None,
        reply_topic: str | None = None,
        source: str = "faas-client",
        settings: Settings | None = None,
        **kafka_options: Any,
    ) -> None:
        self.settings = settings or Settings()
        self.bootstrap = bootstrap
        self.events_topic = events_topic or self.settings.events_topic
        self.reply_topic = reply_topic or default_reply_topic(self.settings.replies_topic)
        for what, topic in (("events", self.events_topic), ("reply", self.reply_topic)):
            problem = topic_problem(topic)
            if problem is not None:  # else aiokafka fails at the first request naming it, unexplained
                raise ValueError(f"{what} topic {topic!r}: {problem}")
        self.source = source
        self._overrides = kafka_options  # the caller's own options, over the settings'
        self.options = {**security_options(self.settings), **kafka_options}
        self._producer: AIOKafkaProducer | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self._reader: asyncio.Task[None] | None = None
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}

    async def start(self) -> EventClient:
        """Create the reply topic if missing, position a reader at its end, start the producer.

        Raises ConnectionError when the broker cannot be reached.
        """
        try:
            await ensure_topics(self.bootstrap, [self.reply_topic], 1, self.options)
        except KafkaConnectionError as exc:
            raise ConnectionError(f"cannot reach Kafka at {self.bootstrap}: {exc}") from exc
        consumer = reader(
            self.bootstrap, self.settings, self.reply_topic, auto_offset_reset="latest", **self._overrides
        )
        await consumer.start()
        self._consumer = consumer
        try:
            # The reader must stand at the end *before* the event goes out, or a fast reply is missed.
            deadline = time.monotonic() + ASSIGN_TIMEOUT
            while not consumer.assignment():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no partitions of {self.reply_topic} assigned in {ASSIGN_TIMEOUT} s")
                await asyncio.sleep(0.05)
            for tp in consumer.assignment():
                await consumer.position(tp)
            self._producer = await start_producer(self.bootstrap, self.settings, **self.options)
        except BaseException:
            await self.stop()
            raise
        self._reader = asyncio.create_task(self._read(consumer), name="faas-client-replies")
        return self

    async def _read(self, consumer: AIOKafkaConsumer) -> None:
        while True:
            batch = await consumer.getmany(timeout_ms=500)
            for records in batch.values():
                for record in records:
                    self._deliver(record.value)

    def _deliver(self, value: bytes | None) -> None:
        try:
            reply = json_exact.loads(value or b"null")
        except orjson.JSONDecodeError:
            return
        if isinstance(reply, dict):
            future = self._waiting.get(str(reply.get("id")))
            if future is not None and not future.done():
                future.set_result(reply)

    async def emit(
        self,
        type: str,
        payload: Any = None,
        *,
        key: bytes | None = None,
        timeout: float = 30,
        id: str | None = None,
    ) -> dict[str, Any]:
        """Produce one event (payload encoded as JSON) and return its combined reply as a dict.

        `timeout` (seconds) covers producing and waiting; on expiry TimeoutError is raised. A client that
        was not started starts for this call and stops after it.
        """
        if self._producer is None:
            async with self:
                return await self.emit(type, payload, key=key, timeout=timeout, id=id)
        event_id = id or str(uuid.uuid4())
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiting[event_id] = future
        headers = event_headers(type, event_id, source=self.source, replyto=self.reply_topic)
        try:
            async with asyncio.timeout(timeout):
                await self._producer.send_and_wait(
                    self.events_topic, json_exact.dumps(payload), key=key, headers=headers
                )
                return await future
        finally:
            self._waiting.pop(event_id, None)

    async def stop(self) -> None:
        await cancel_and_wait([self._reader])
        self._reader = None
        for client in (self._producer, self._consumer):
            if client is not None:
                try:
                    await client.stop()
                except Exception as exc:  # closing must not hide the caller's result or error
                    log.debug("closing a kafka client: %r", exc)
        self._producer = self._consumer = None

    async def __aenter__(self) -> EventClient:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
