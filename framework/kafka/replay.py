"""Re-drive dead-lettered events (DESIGN.md section 15): what `faas replay` does.

The dead-letter topic is read from its start until nothing more comes, with no consumer group (nothing
is committed, so a replay can be repeated and never disturbs another reader). Each record is classified
(`deadletter.classify`); failed-event copies that match the selection are produced to the events topic
again with their original key, value and headers (`faas_*` removed, `faas_replayed: n` added; a header
whose value is null stays null), in their dead-letter order per partition (so per key). Choices:

- An event dead-lettered more than once (it failed, was replayed and failed again) is replayed once, from
  its newest copy; the older copies count as `superseded`.
- `faas_replayed` counts every replay, the successful ones too (a replay that succeeded leaves no
  dead-letter copy behind). The replayed copies themselves are the record of it: each is on the events
  topic with the event's id and its `faas_replayed`. So before producing, the events topic is read too,
  from the first record stamped at most CLOCK_SKEW before the oldest dead-letter copy of any event to be
  replayed (no replay of an event can be older than its first dead-letter copy), to the end; n is one more
  than the highest count on any copy of the event, on either topic. Cost: one more read of the events
  topic from that time on, which is long when the oldest selected dead letter is old and the topic busy
  (select with `--id`, `--since` to keep it short); a dry run skips it. Only records carrying
  `faas_replayed` are looked into, so memory stays small. Two replays of the same event running at the
  very same moment may both give the same n.
- Finding that first record: Kafka answers `offsets_for_times` exactly; Tansu answers offset 0 for every
  time. So the answer is checked against the timestamp of the record it names, and when that does not
  match, the offset is found by a binary search on record timestamps (one small fetch per step). The
  search takes timestamps to grow with offsets, which holds up to clock differences between producers:
  CLOCK_SKEW covers those.
- `since` is checked against each dead-letter record's own timestamp, for the same reason (Tansu), and
  reading the dead-letter topic from the start costs only time.
- The end offsets are a floor only (Tansu reports a partition's last batch base offset + 1), so every read
  goes on until fetches come back empty.
- Skipped records are counted by reason: `bad_event`, `foreign`, `not selected`, `superseded`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from framework.kafka import cloudevents
from framework.kafka.deadletter import REPLAYED, DeadLetter, classify, replay_headers, strip
from framework.kafka.options import reader, start_producer
from framework.settings import Settings

READ_STALL = 30.0
"""Seconds without a new record before reading a topic is given up as stuck."""
QUIET_FETCHES = 2
FETCH_WAIT_MS = 300
"""Reading ends after QUIET_FETCHES fetches in a row found nothing new, each waiting FETCH_WAIT_MS."""
PROGRESS_EVERY = 500
"""Records produced between two progress lines (only replays longer than that print them)."""
READ_PROGRESS_EVERY = 10_000
"""Records read (of either topic) between two progress lines."""
CLOCK_SKEW = 300.0
"""Seconds the events topic is read from before the oldest selected dead letter: room for the clocks of
the node that wrote it, of the host replaying, and of the events' producers to differ."""
READ_FETCH_BYTES = 16 * 1024 * 1024
PROBE_FETCH_BYTES = 64 * 1024
"""Fetch size per partition (bytes) when reading a topic / when probing one record's timestamp."""

Progress = Callable[[str, int, int | None], None]
"""`(stage, done, total)`: stage `read` (the dead-letter topic) or `count` (the events topic, for the
replay counts), total unknown: None; or `replay`."""


class BrokerUnreachable(Exception):
    """The broker did not answer; nothing was replayed."""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which failed events to replay; an empty selection takes every one."""

    ids: frozenset[str] = frozenset()
    function: str | None = None
    type: str | None = None
    since: float | None = None
    """Seconds: only records dead-lettered at most this long ago."""

    def wants(self, letter: DeadLetter, timestamp_ms: int, now: float) -> bool:
        if self.ids and letter.event_id not in self.ids:
            return False
        if self.function is not None and letter.function != self.function:
            return False
        if self.type is not None and letter.type != self.type:
            return False
        return self.since is None or timestamp_ms / 1000 >= now - self.since


@dataclass(slots=True)
class Report:
    """What a replay did: the ce_ids replayed (or, in a dry run, to be replayed) and the skipped records."""

    replayed: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    dry_run: bool = False
    topic_missing: bool = False

    missing: list[str] = field(default_factory=list)
    """`--id`s with no failed-event copy on the topic."""

    def summary(self) -> str:
        """`replayed N, skipped M (reasons)`; a dry run replays nothing and says how many it would."""
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        total = sum(self.skipped.values())
        done = 0 if self.dry_run else len(self.replayed)
        line = f"replayed {done}, skipped {total}" + (f" ({reasons})" if reasons else "")
        return f"dry run: {line}; {len(self.replayed)} would be replayed" if self.dry_run else line


Record: TypeAlias = "ConsumerRecord[bytes, bytes]"


async def _started(consumer: AIOKafkaConsumer) -> AIOKafkaConsumer:
    try:
        await consumer.start()
    except (KafkaConnectionError, OSError) as exc:
        await consumer.stop()
        raise BrokerUnreachable(str(exc)) from exc
    return consumer


def _reader(bootstrap: str, settings: Settings, fetch_bytes: int = READ_FETCH_BYTES) -> AIOKafkaConsumer:
    return reader(
        bootstrap,
        settings,
        max_partition_fetch_bytes=fetch_bytes,
        fetch_max_wait_ms=20,  # Tansu holds a fetch this long even with records there: keep it short
    )


async def _scan(
    consumer: AIOKafkaConsumer,
    starts: Mapping[TopicPartition, int],
    each: Callable[[Record], None],
    stage: str,
    progress: Progress | None,
) -> None:
    """Hand every record of the partitions in `starts`, from those offsets on, to `each`, until nothing
    more comes."""
    tps = list(starts)
    consumer.assign(tps)
    for tp, offset in starts.items():
        consumer.seek(tp, offset)
    ends = await consumer.end_offsets(tps)
    left = {tp for tp in tps if ends[tp] > starts[tp]}
    topic = tps[0].topic if tps else ""
    seen = 0
    stalled_at = time.monotonic() + READ_STALL
    quiet = 0
    # The end offsets are a floor only: Tansu counts a batch of records as one there. So reading goes
    # on past them until the fetches come back empty QUIET_FETCHES times in a row.
    while left or quiet < QUIET_FETCHES:
        if time.monotonic() > stalled_at:
            raise KafkaError(f"reading {topic} stalled with {len(left)} partitions unread")
        batch = await consumer.getmany(timeout_ms=FETCH_WAIT_MS)
        quiet = 0 if batch else quiet + 1
        for tp, records in batch.items():
            stalled_at = time.monotonic() + READ_STALL
            for record in records:
                each(record)
            before, seen = seen, seen + len(records)
            if progress is not None and seen // READ_PROGRESS_EVERY > before // READ_PROGRESS_EVERY:
                progress(stage, seen, None)
            if records and records[-1].offset + 1 >= ends[tp]:
                left.discard(tp)


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> list[TopicPartition] | None:
    """The partitions of `topic`; None when it does not exist."""
    if topic not in await consumer.topics():
        return None
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]


async def read_topic(
    bootstrap: str, topic: str, settings: Settings, progress: Progress | None = None
) -> list[Record] | None:
    """Every record of `topic`, read until nothing more comes; None when the topic does not exist."""
    consumer = await _started(_reader(bootstrap, settings))
    try:
        tps = await _partitions(consumer, topic)
        if tps is None:
            return None
        out: list[Record] = []
        await _scan(consumer, await consumer.beginning_offsets(tps), out.append, "read", progress)
        return out
    finally:
        await consumer.stop()


async def _probe(consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int) -> tuple[int, int] | None:
    """(offset, timestamp ms) of the first record of `tp` at `offset` or later; None when there is none."""
    consumer.assign([tp])
    consumer.seek(tp, offset)
    for _ in range(QUIET_FETCHES):
        records = (await consumer.getmany(tp, timeout_ms=FETCH_WAIT_MS, max_records=1)).get(tp)
        if records:
            return records[0].offset, records[0].timestamp
    return None


async def _search(consumer: AIOKafkaConsumer, tp: TopicPartition, lo: int, hi: int, at_ms: int) -> int:
    """The first offset in [lo, hi] whose record is stamped `at_ms` or later, as if timestamps grew with
    offsets (`hi`: none before it is)."""
    while lo < hi:
        mid = (lo + hi) // 2
        found = await _probe(consumer, tp, mid)
        if found is None or found[1] >= at_ms:
            hi = mid
        else:
            lo = found[0] + 1
    return min(lo, hi)


async def offsets_at(
    bootstrap: str, settings: Settings, consumer: AIOKafkaConsumer, tps: list[TopicPartition], at_ms: int
) -> dict[TopicPartition, int]:
    """Per partition, the offset of the first record stamped `at_ms` or later (or the end offset)."""
    answers = await consumer.offsets_for_times({tp: at_ms for tp in tps})
    begins = await consumer.beginning_offsets(tps)
    ends = await consumer.end_offsets(tps)
    starts: dict[TopicPartition, int] = {}
    # Small fetches: a probe wants one record's timestamp, not a batch of 16 MiB.
    prober = await _started(_reader(bootstrap, settings, PROBE_FETCH_BYTES))
    try:
        for tp in tps:
            answer = answers.get(tp)
            if ends[tp] <= begins[tp] or answer is None:  # empty, or (Kafka) nothing that recent
                starts[tp] = ends[tp]
            elif answer.timestamp >= at_ms and await _probe(prober, tp, answer.offset) == (
                answer.offset,
                answer.timestamp,
            ):
                starts[tp] = answer.offset  # the answer names a record that is what it says: Kafka's
            else:
                starts[tp] = await _search(prober, tp, begins[tp], ends[tp], at_ms)
    finally:
        await prober.stop()
    return starts


def _replayed_copy(record: Record) -> tuple[str, int] | None:
    """(ce_id, faas_replayed) of a record `faas replay` produced; None for any other record."""
    headers = list(record.headers or ())
    raw = None
    for key, value in headers:
        if key == REPLAYED:
            raw = value
    if raw is None:
        return None
    try:
        count = int(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    event = cloudevents.parse(record.value, strip(headers), max_payload=len(record.value or b"") + 1)
    if isinstance(event, cloudevents.BadRecord) or count < 1:
        return None
    return event.id, count


async def replay_counts(
    bootstrap: str, settings: Settings, ids: Collection[str], since_ms: int, progress: Progress | None = None
) -> dict[str, int]:
    """How often each of `ids` was replayed, as the highest `faas_replayed` on its copies on
    FAAS_EVENTS_TOPIC stamped `since_ms` or later (read to the end); ids with none are left out."""
    wanted = set(ids)
    counts: dict[str, int] = {}

    def count(record: Record) -> None:
        found = _replayed_copy(record)
        if found is not None and found[0] in wanted:
            counts[found[0]] = max(counts.get(found[0], 0), found[1])

    consumer = await _started(_reader(bootstrap, settings))
    try:
        tps = await _partitions(consumer, settings.events_topic)
        if not tps:
            return counts
        starts = await offsets_at(bootstrap, settings, consumer, tps, since_ms)
        await _scan(consumer, starts, count, "count", progress)
        return counts
    finally:
        await consumer.stop()


@dataclass(slots=True)
class Candidate:
    """A failed event to replay: its newest dead-letter copy and what its copies say."""

    record: Record
    event_id: str
    replayed: int
    """The highest `faas_replayed` on any of its dead-letter copies (0: none)."""
    first_ms: int
    """Timestamp (ms) of its oldest dead-letter copy: no replay of it is older."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One record to produce to the events topic."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes | None]]


def select(records: Collection[Record], selection: Selection, now: float, report: Report) -> list[Candidate]:
    """The events to replay, in (partition, offset) order of their newest copy."""
    newest: dict[str, Record] = {}
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    for record in records:
        letter = classify(record.value, list(record.headers or ()))
        eid = letter.event_id
        if letter.kind != "failed" or eid is None:
            report.skipped[letter.kind] += 1
            continue
        counts[eid] = max(counts.get(eid, 0), letter.replayed)
        first[eid] = min(first.get(eid, record.timestamp), record.timestamp)
        if not selection.wants(letter, record.timestamp, now):
            report.skipped["not selected"] += 1
            continue
        if eid in newest:
            report.skipped["superseded"] += 1
        newest[eid] = record  # records come in offset order: later is newer
    chosen = sorted(newest.items(), key=lambda er: (er[1].partition, er[1].offset))
    report.replayed = [eid for eid, _ in chosen]
    report.missing = sorted(selection.ids - counts.keys())
    return [Candidate(record, eid, counts[eid], first[eid]) for eid, record in chosen]


def outgoing(chosen: Collection[Candidate], counts: Mapping[str, int]) -> list[Outgoing]:
    """The records to produce: each event's original record, `faas_replayed` one more than its highest
    count on either topic (`counts`: the events topic's)."""
    return [
        Outgoing(
            c.record.key,
            c.record.value,
            replay_headers(list(c.record.headers), max(c.replayed, counts.get(c.event_id, 0)) + 1),
        )
        for c in chosen
    ]


async def replay(
    bootstrap: str,
    settings: Settings,
    selection: Selection,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> Report:
    """Replay the selected failed events of FAAS_DEADLETTER_TOPIC to FAAS_EVENTS_TOPIC.

    Raises BrokerUnreachable when the broker does not answer, KafkaError when producing fails (events
    produced before that stay produced). `progress` is called every READ_PROGRESS_EVERY records read and
    every PROGRESS_EVERY records produced (when more than that are to be).
    """
    report = Report(dry_run=dry_run)
    records = await read_topic(bootstrap, settings.deadletter_topic, settings, progress)
    if records is None:
        report.topic_missing = True
        return report
    chosen = select(records, selection, time.time(), report)
    if dry_run or not chosen:
        return report
    since_ms = max(0, min(c.first_ms for c in chosen) - int(CLOCK_SKEW * 1000))
    counts = await replay_counts(bootstrap, settings, [c.event_id for c in chosen], since_ms, progress)
    records_out = outgoing(chosen, counts)
    try:
        producer = await start_producer(bootstrap, settings)
    except (KafkaConnectionError, OSError) as exc:
        raise BrokerUnreachable(str(exc)) from exc
    try:
        for start in range(0, len(records_out), PROGRESS_EVERY):
            futures = [
                await producer.send(settings.events_topic, value=r.value, key=r.key, headers=r.headers)
                for r in records_out[start : start + PROGRESS_EVERY]
            ]
            for future in futures:
                await future
            done = min(start + PROGRESS_EVERY, len(records_out))
            if progress is not None and len(records_out) > PROGRESS_EVERY:
                progress("replay", done, len(records_out))
    finally:
        await producer.stop()
    return report
