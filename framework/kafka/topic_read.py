"""Reading a topic without a consumer group: all of it, or from the first record of a time on.

`faas replay` reads the dead-letter topic whole and the events topic from a time on (`replay.py`). With no
group nothing is joined or committed, so a read can be repeated and never disturbs another reader. Choices:

- A read ends at the end offsets seen when it starts, so records that keep coming do not keep it going.
  Those offsets are a floor only on the embedded broker (Tansu reports a partition's end as its last
  batch's base offset + 1); fetches return whole batches, so the records past the floor come with the one
  at it, and a partition whose read starts at or past its floor is done after QUIET_FETCHES empty fetches.
- The first record of a time: Kafka answers `offsets_for_times` exactly; Tansu answers offset 0 for every
  time. So the answer is checked against the timestamp of the record it names, and when that does not
  match the offset is found by a binary search on record timestamps (one small fetch per step), which
  takes timestamps to grow with offsets (clocks of different producers may differ: callers leave room).
  That holds for a topic only the platform writes (the tick log), not for one other systems produce to:
  a producer may stamp a record with its event's own time (an older one), and the search, landing on it,
  would start past records it was looking for. There (`ordered=False`) the partition is read from its
  beginning instead.
- A read that fails (the broker gone mid-read) says why: stopping its consumer afterwards raises nothing
  of its own (aiokafka's `stop` raises CancelledError once a fetch failed), unless the read itself is
  being cancelled.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TypeAlias, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from framework.kafka.options import reader, stop_quietly
from framework.settings import Settings

READ_STALL = 30.0
"""Seconds without a new record before reading a topic is given up as stuck."""
QUIET_FETCHES = 2
FETCH_WAIT_MS = 300
"""Reading ends after QUIET_FETCHES fetches in a row found nothing new, each waiting FETCH_WAIT_MS."""
READ_PROGRESS_EVERY = 10_000
"""Records read between two progress lines."""
READ_FETCH_BYTES = 16 * 1024 * 1024
PROBE_FETCH_BYTES = 64 * 1024
"""Fetch size per partition (bytes) when reading a topic / when probing one record's timestamp."""

T = TypeVar("T")
Progress = Callable[[str, int, int | None], None]
"""`(stage, done, total)`: stage `read` (the dead-letter topic) or `count` (the events topic, for the
replay counts), total unknown: None; or `replay`."""


CONNECT_TIMEOUT = 15.0
"""Seconds a reader (or `faas replay`'s producer) may take to reach the broker. aiokafka alone waits its
40 s request timeout on an address that accepts connections and never answers (a wrong port, a proxy)."""


class BrokerUnreachable(Exception):
    """The broker did not answer; nothing was replayed."""


Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


def why_unreachable(exc: BaseException) -> str:
    """What to say of a failed attempt to reach the broker (a timeout says which bound ran out)."""
    return f"no answer within {CONNECT_TIMEOUT:g} s" if isinstance(exc, TimeoutError) else str(exc)


async def reach(start: Awaitable[T]) -> T:
    """`start` (a Kafka client starting) within CONNECT_TIMEOUT; BrokerUnreachable, saying why, if not."""
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            return await start
    except (KafkaConnectionError, OSError, TimeoutError) as exc:
        raise BrokerUnreachable(why_unreachable(exc)) from exc


async def started(consumer: AIOKafkaConsumer) -> AIOKafkaConsumer:
    try:
        await reach(consumer.start())
    except BrokerUnreachable:
        await stop_quietly(consumer)
        raise
    # Let the consumer's own task start: a group-less consumer stopped before it ran raises CancelledError
    # from `stop` (aiokafka 0.14 awaits that task, cancelled before its first step).
    await asyncio.sleep(0)
    return consumer


def reader_of(bootstrap: str, settings: Settings, fetch_bytes: int = READ_FETCH_BYTES) -> AIOKafkaConsumer:
    return reader(
        bootstrap,
        settings,
        max_partition_fetch_bytes=fetch_bytes,
        fetch_max_wait_ms=20,  # Tansu holds a fetch this long even with records there: keep it short
    )


def stall_message(
    topic: str, at: Mapping[TopicPartition, int], ends: Mapping[TopicPartition, int], seconds: float
) -> str:
    """Why a read to the end of `topic` gave up: the partitions left, their positions `at` and `ends`."""
    where = ", ".join(
        f"{tp.partition} (at offset {at[tp]} of {ends[tp]})" for tp in sorted(at, key=lambda t: t.partition)
    )
    return (
        f"reading {topic} stalled: no record came for {seconds:g} s, and the end offsets of partition(s) "
        f"{where} say there are more (the broker does not serve them: the embedded broker, restarted under "
        "producers still sending, acknowledges records it does not keep)"
    )


async def scan(
    consumer: AIOKafkaConsumer,
    starts: Mapping[TopicPartition, int],
    each: Callable[[Record], None],
    stage: str,
    progress: Progress | None,
) -> None:
    """Hand every record of the partitions in `starts`, from those offsets to the end offsets seen at the
    start of the read, to `each` (records written meanwhile may come too: a busy topic does not keep the
    read going).

    A partition is done once a record at or past its end offset came (fetches return whole batches, so
    under Tansu's floor the rest of the last batch came with it), or, when it starts at or past that offset
    (the floor may be below what it holds), once QUIET_FETCHES fetches in a row brought it nothing."""
    tps = list(starts)
    consumer.assign(tps)
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    ends = await consumer.end_offsets(tps)
    left = set(tps)
    topic = tps[0].topic if tps else ""
    seen = 0
    stalled_at = time.monotonic() + READ_STALL
    quiet = 0
    while left:
        if time.monotonic() > stalled_at:
            at = {tp: await consumer.position(tp) for tp in left}
            raise KafkaError(stall_message(topic, at, ends, READ_STALL))
        batch = await consumer.getmany(*left, timeout_ms=FETCH_WAIT_MS)
        quiet = 0 if batch else quiet + 1
        if quiet >= QUIET_FETCHES:  # nothing more where a partition's position reached its end offset
            left = {tp for tp in left if await consumer.position(tp) < ends[tp]}
            quiet = 0
        for tp, records in batch.items():
            stalled_at = time.monotonic() + READ_STALL
            for record in records:
                each(record)
            before, seen = seen, seen + len(records)
            if progress is not None and seen // READ_PROGRESS_EVERY > before // READ_PROGRESS_EVERY:
                progress(stage, seen, None)
            if records and records[-1].offset + 1 >= ends[tp]:
                left.discard(tp)


async def partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition] | None:
    """The partitions of `topic`; None when it does not exist."""
    if topic not in await consumer.topics():
        return None
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]


async def topic_exists(bootstrap: str, topic: str, settings: Settings) -> bool:
    """Whether the broker has `topic` (one metadata request; nothing is created)."""
    consumer = await started(reader_of(bootstrap, settings))
    try:
        return topic in await consumer.topics()
    finally:
        await stop_quietly(consumer)


async def read_topic(
    bootstrap: str, topic: str, settings: Settings, progress: Progress | None = None
) -> list[Record] | None:
    """Every record of `topic`, read until nothing more comes; None when the topic does not exist."""
    consumer = await started(reader_of(bootstrap, settings))
    try:
        tps = await partitions(consumer, topic)
        if tps is None:
            return None
        out: list[Record] = []
        await scan(consumer, await consumer.beginning_offsets(tps), out.append, "read", progress)
        return out
    finally:
        await stop_quietly(consumer)


async def first_at(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> tuple[int, int] | None:
    """(offset, timestamp ms) of the first record of `tp` at `offset` or later; None when there is none."""
    consumer.assign([tp])
    consumer.seek(tp, offset)
    for _ in range(QUIET_FETCHES):
        records = (await consumer.getmany(tp, timeout_ms=FETCH_WAIT_MS, max_records=1)).get(tp)
        if records:
            return records[0].offset, records[0].timestamp
    return None


async def holds(
    consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, timestamp: int | None = None
) -> bool:
    """Whether `tp` still holds the record read at `offset` (stamped `timestamp`, when given): one small
    fetch (`first_at`, which moves `consumer`). A look that finds nothing proves the record gone only when
    the broker answers meanwhile (its end offset, within FETCH_WAIT_MS * 5): a broker too slow to answer
    the fetch says nothing, and the record counts as held."""
    found = await first_at(consumer, tp, offset)
    if found is not None:
        return found[0] == offset and (timestamp is None or found[1] == timestamp)
    try:
        async with asyncio.timeout(FETCH_WAIT_MS * 5 / 1000):
            await consumer.end_offsets([tp])
    except (KafkaError, OSError, TimeoutError):
        return True
    return False


async def _search(consumer: AIOKafkaConsumer, tp: TopicPartition, lo: int, hi: int, at_ms: int) -> int:
    """The first offset in [lo, hi] whose record is stamped `at_ms` or later, as if timestamps grew with
    offsets (`hi`: none before it is)."""
    while lo < hi:
        mid = (lo + hi) // 2
        found = await first_at(consumer, tp, mid)
        if found is None or found[1] >= at_ms:
            hi = mid
        else:
            lo = found[0] + 1
    return min(lo, hi)


async def offsets_at(
    bootstrap: str,
    settings: Settings,
    consumer: AIOKafkaConsumer,
    tps: list[TopicPartition],
    at_ms: int,
    ordered: bool = True,
) -> dict[TopicPartition, int]:
    """Per partition, the offset of the first record stamped `at_ms` or later (or the end offset).

    `ordered`: the topic's timestamps grow with its offsets (up to clock skew), so a broker that cannot
    answer (Tansu) is searched; else such a partition is read from its beginning."""
    answers = await consumer.offsets_for_times({tp: at_ms for tp in tps})
    begins = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    starts: dict[TopicPartition, int] = {}
    # Small fetches: a probe wants one record's timestamp, not a batch of 16 MiB.
    prober = await started(reader_of(bootstrap, settings, PROBE_FETCH_BYTES))
    try:
        for tp in tps:
            answer = answers.get(tp)
            if ends[tp] <= begins[tp] or answer is None:  # empty, or (Kafka) nothing that recent
                starts[tp] = ends[tp]
            elif answer.timestamp >= at_ms and await first_at(prober, tp, answer.offset) == (
                answer.offset,
                answer.timestamp,
            ):
                starts[tp] = answer.offset  # the answer names a record that is what it says: Kafka's
            elif ordered:
                starts[tp] = await _search(prober, tp, begins[tp], ends[tp], at_ms)
            else:
                starts[tp] = begins[tp]
    finally:
        await stop_quietly(prober)
    return starts
