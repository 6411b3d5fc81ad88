"""The event client: produces CloudEvents to a topic and times the replies read back from another.

Used the same way against the node and against the raw relay. Replies are matched by the event's id: the
node's reply carries it as `ce_correlationid`, the relay's copy as the event's own `ce_id`. Reading needs no
group: the reply topic's partitions are assigned directly and read from their end.

Load shapes (`keys`): `None` gives every event a key of its own (no ordering constraint between events);
a number spreads the events round-robin over that many keys, so events of one key queue behind each other
on both sides, as a real producer keyed by conversation or customer would.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

PAYLOAD = b'{"n":1}'
KEYED = 64
"""Keys of the keyed load shape."""


def _event_id(headers: list[tuple[str, bytes]]) -> bytes | None:
    """The id of the event a reply answers: `ce_correlationid` (the node's reply) or `ce_id` (the relay)."""
    found = None
    for name, value in headers:
        if name == "ce_correlationid":
            return value
        if name == "ce_id":
            found = value
    return found


async def create_topics(bootstrap: str, names: list[str], partitions: int) -> str:
    """Create the topics up front so the node and the relay see the same partitioning; returns a note."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(n, partitions, 1) for n in names])
        return f"{partitions} partitions per topic"
    except Exception as exc:  # the broker may refuse; topics are then auto-created on first use
        return f"topic creation failed ({type(exc).__name__}), auto-created topics"
    finally:
        await admin.close()


def headers(event_type: str, event_id: str) -> list[tuple[str, bytes]]:
    return [
        ("ce_specversion", b"1.0"),
        ("ce_type", event_type.encode()),
        ("ce_id", event_id.encode()),
        ("ce_source", b"bench"),
        ("content-type", b"application/json"),
    ]


class EventClient:
    def __init__(self, bootstrap: str, events_topic: str, replies_topic: str, check_ok: bool) -> None:
        self.bootstrap = bootstrap
        self.events_topic = events_topic
        self.replies_topic = replies_topic
        self.check_ok = check_ok
        """The node's replies say whether every listener succeeded; the relay's are the event itself."""
        self.producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        self.consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
        )
        self._waiting: dict[bytes, float] = {}
        self._latencies: list[float] = []
        self._failed: list[bytes] = []
        self._all_in = asyncio.Event()
        self._last_reply = 0.0
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.producer.start()
        await self.consumer.start()
        parts = None
        for _ in range(100):  # metadata of a just-created topic can take a moment
            parts = self.consumer.partitions_for_topic(self.replies_topic)
            if parts:
                break
            await self.consumer._client.force_metadata_update()
            await asyncio.sleep(0.1)
        if not parts:
            raise RuntimeError(f"no partitions for {self.replies_topic}")
        tps = [TopicPartition(self.replies_topic, p) for p in sorted(parts)]
        self.consumer.assign(tps)
        await self.consumer.seek_to_end(*tps)
        for tp in tps:  # resolve the end offsets now, not when the first reply arrives
            await self.consumer.position(tp)
        self._reader = asyncio.create_task(self._read())

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        await self.consumer.stop()
        await self.producer.stop()

    async def _read(self) -> None:
        while True:
            batch = await self.consumer.getmany(timeout_ms=100)
            now = time.perf_counter()
            for msgs in batch.values():
                for m in msgs:
                    event_id = _event_id(m.headers)
                    sent = None if event_id is None else self._waiting.pop(event_id, None)
                    if sent is None:
                        continue  # a duplicate (at-least-once) or a leftover of an earlier run
                    self._latencies.append(now - sent)
                    self._last_reply = now
                    if self.check_ok and b'"ok":true' not in (m.value or b"")[:200]:
                        self._failed.append(m.value or b"")
            if not self._waiting:
                self._all_in.set()

    def _reset(self) -> str:
        self._waiting.clear()
        self._latencies = []
        self._failed = []
        self._all_in = asyncio.Event()
        return uuid.uuid4().hex[:12]

    async def _send(self, event_type: str, tag: str, i: int, keys: int | None) -> asyncio.Future[object]:
        event_id = f"{tag}-{i}"
        key = (event_id if keys is None else f"{tag}-k{i % keys}").encode()
        self._waiting[event_id.encode()] = time.perf_counter()
        fut: asyncio.Future[object] = await self.producer.send(
            self.events_topic, PAYLOAD, key, headers=headers(event_type, event_id)
        )
        return fut

    async def _finish(self, sends: list[asyncio.Future[object]], limit: float) -> None:
        await asyncio.gather(*sends)
        try:
            await asyncio.wait_for(self._all_in.wait(), limit)
        except TimeoutError:
            raise RuntimeError(f"{len(self._waiting)} replies missing after {limit} s") from None
        if self._failed:
            raise RuntimeError(f"{len(self._failed)} replies not ok, e.g. {self._failed[0][:300]!r}")

    async def throughput(
        self, event_type: str, count: int, keys: int | None = KEYED, limit: float = 120.0
    ) -> float:
        """Produce `count` events as fast as possible; events/s from the first send to the last reply."""
        tag = self._reset()
        start = time.perf_counter()
        sends = [await self._send(event_type, tag, i, keys) for i in range(count)]
        await self._finish(sends, limit)
        return count / (self._last_reply - start)

    async def latency(
        self, event_type: str, rate: float, seconds: float, keys: int | None = KEYED, limit: float = 60.0
    ) -> list[float]:
        """Produce at a fixed `rate` for `seconds`; returns every event-to-reply latency in seconds."""
        tag = self._reset()
        count = max(10, int(rate * seconds))
        start = time.perf_counter()
        sends = []
        for i in range(count):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sends.append(await self._send(event_type, tag, i, keys))
        await self._finish(sends, limit)
        return list(self._latencies)
