"""Re-drive dead-lettered events (DESIGN.md section 15): what `faas replay` does.

The dead-letter topic is read from its start until nothing more comes, with no consumer group (nothing
is committed, so a replay can be repeated and never disturbs another reader). Each record is classified
(`deadletter.classify`); the failed events whose newest copy matches the selection are produced to the
events topic again with their original key, value and headers (`faas_*` removed, `faas_replayed: n`
added; a header whose value is null stays null), in their dead-letter order per partition (so per key).
Choices:

- An event is its (`ce_source`, `ce_id`): two events of different sources with one id are two events
  (CloudEvents makes an id unique within its source only). One dead-lettered more than once (it failed,
  was replayed and failed again) is replayed once, from its newest copy (the later offset in a partition;
  by timestamp across partitions, where copies of an event without a key may sit, so the choice does not
  depend on the order partitions are read in); the older copies count as `superseded`. The selection
  judges an event by that copy: `--function f` replays the events f was the last to fail, `--since` those
  that failed last within it.
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
- That first record is found by `topic_read.offsets_at`: Kafka's time lookup. The embedded broker's
  answers offset 0, and the events topic's producers may stamp records with times older than their
  neighbours' (an event's own time), so no search on timestamps can be trusted there: on it the events
  topic is read from its beginning (a development broker, whose topics live in memory). Reads go on
  until fetches come back empty (`topic_read`: the end offsets are a floor only).
- Producing stops at the first record the broker does not take: the error (`ReplayStopped`) says which
  events it acknowledged (replayed), which it was sent but did not acknowledge (they may have landed),
  and how many were never sent, so a second run can be chosen with `--id`.
- `since` is checked against the newest copy's own record timestamp, for the same reason (Tansu), and
  reading the dead-letter topic from the start costs only time.
- Skipped records are counted by reason: `bad_event`, `foreign`, `not selected`, `superseded`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from framework.kafka.deadletter import DeadLetter, EventKey, classify, replay_headers, replayed_copy
from framework.kafka.options import said, start_producer, stop_quietly
from framework.kafka.topic_read import (
    Progress,
    Record,
    offsets_at,
    partitions,
    reach,
    read_topic,
    reader_of,
    scan,
    started,
    topic_exists,
)
from framework.settings import Settings

PROGRESS_EVERY = 500
"""Records produced between two progress lines (only replays longer than that print them)."""
STOP_TIMEOUT = 10.0
"""Seconds the producer may take to stop (it waits for what it holds; a broker gone holds it longer)."""
CLOCK_SKEW = 300.0
"""Seconds the events topic is read from before the oldest selected dead letter: room for the clocks of
the node that wrote it, of the host replaying, and of the events' producers to differ."""


@dataclass(frozen=True, slots=True)
class Selection:
    """Which failed events to replay; an empty selection takes every one."""

    ids: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    """Only events one of these functions failed (none: any)."""
    types: frozenset[str] = frozenset()
    """Only events of one of these types (none: any)."""
    since: float | None = None
    """Seconds: only records dead-lettered at most this long ago."""

    def wants(self, letter: DeadLetter, timestamp_ms: int, now: float) -> bool:
        if self.ids and letter.event_id not in self.ids:
            return False
        if self.functions and letter.function not in self.functions:
            return False
        if self.types and letter.type not in self.types:
            return False
        return self.since is None or timestamp_ms / 1000 >= now - self.since


@dataclass(slots=True)
class Report:
    """What a replay did: the ce_ids replayed (or, in a dry run, to be replayed) and the skipped records."""

    replayed: list[str] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    dry_run: bool = False
    topic_missing: bool = False
    """The dead-letter topic does not exist: nothing to replay."""
    events_missing: bool = False
    """The events topic does not exist: nothing was replayed (a broker that creates topics on first write
    would make one no node reads, e.g. for a mistyped FAAS_EVENTS_TOPIC)."""

    missing: list[str] = field(default_factory=list)
    """`--id`s with no failed-event copy on the topic."""
    functions: set[str] = field(default_factory=set)
    """The functions that failed the events on the topic (their newest copies' `faas_function`), to say
    which a `--function` that selected nothing could have meant."""
    all_types: set[str] = field(default_factory=set)
    """The types of the failed events on the topic, for a `--type` that selected nothing."""
    types: Counter[str] = field(default_factory=Counter)
    """The replayed events (or, in a dry run, those to be) by CloudEvent type."""
    failed_by: Counter[tuple[str, str]] = field(default_factory=Counter)
    """The replayed events by (the function that failed them, their type): their copies' `faas_function`
    and `ce_type`."""

    def summary(self) -> str:
        """`replayed N, skipped M (reasons)`; a dry run replays nothing and says how many it would."""
        reasons = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items()))
        total = sum(self.skipped.values())
        done = 0 if self.dry_run else len(self.replayed)
        line = f"replayed {done}, skipped {total}" + (f" ({reasons})" if reasons else "")
        return f"dry run: {line}; {len(self.replayed)} would be replayed" if self.dry_run else line


async def replay_counts(
    bootstrap: str,
    settings: Settings,
    events: Collection[EventKey],
    since_ms: int,
    progress: Progress | None = None,
) -> dict[EventKey, int] | None:
    """How often each of `events` was replayed, as the highest `faas_replayed` on its copies on
    FAAS_EVENTS_TOPIC stamped `since_ms` or later (read to the end); events with none are left out. None
    when the events topic does not exist."""
    wanted = set(events)
    counts: dict[EventKey, int] = {}

    def count(record: Record) -> None:
        found = replayed_copy(record.value, list(record.headers or ()))
        if found is not None and found[0] in wanted:
            counts[found[0]] = max(counts.get(found[0], 0), found[1])

    consumer = await started(reader_of(bootstrap, settings))
    try:
        tps = await partitions(consumer, settings.events_topic)
        if tps is None:
            return None
        if not tps:
            return counts
        starts = await offsets_at(bootstrap, settings, consumer, tps, since_ms, ordered=False)
        await scan(consumer, starts, count, "count", progress)
        return counts
    finally:
        await stop_quietly(consumer)


class ReplayStopped(Exception):
    """Producing failed part way (the broker went away, or refused a record)."""

    def __init__(self, report: Report, unconfirmed: list[str], unsent: int, cause: BaseException) -> None:
        super().__init__(said(cause))
        self.report = report
        """`replayed`: the ce_ids the broker acknowledged."""
        self.unconfirmed = unconfirmed
        """The ce_ids sent and not acknowledged: they may have landed."""
        self.unsent = unsent
        """Selected events never sent."""


@dataclass(slots=True)
class Candidate:
    """A failed event to replay: its newest dead-letter copy and what its copies say."""

    record: Record
    event: EventKey
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
    """The events to replay, in (partition, offset) order of their oldest copy: the order they first
    failed in, which is their key's order (a replay that failed again writes a newer copy after the later
    events' copies, and ordering by it would replay the key's events backwards).

    An event is judged by its newest copy: a replayed event that failed again, in another function, is
    that function's failure now (`--function` of the first one does not send it again), and `--since`
    asks when it last failed. Older copies of a selected event count as superseded; every copy of an
    event whose newest copy is not selected counts as not selected."""
    in_partition: dict[tuple[EventKey, int], tuple[Record, DeadLetter]] = {}
    """The newest copy of each event in each partition: the later offset (whatever the writers' clocks)."""
    counts: dict[EventKey, int] = {}
    first: dict[EventKey, int] = {}
    origin: dict[EventKey, tuple[int, int]] = {}
    """(partition, offset) of each event's oldest copy: where it first failed."""
    copies: Counter[EventKey] = Counter()
    for record in records:
        letter = classify(record.value, list(record.headers or ()))
        event = letter.event
        if letter.kind != "failed" or event is None:
            report.skipped[letter.kind] += 1
            continue
        counts[event] = max(counts.get(event, 0), letter.replayed)
        first[event] = min(first.get(event, record.timestamp), record.timestamp)
        place = (record.partition, record.offset)
        origin[event] = min(origin.get(event, place), place)
        copies[event] += 1
        held = in_partition.get((event, record.partition))
        if held is None or held[0].offset < record.offset:
            in_partition[event, record.partition] = (record, letter)
    # Across partitions (copies of an event without a key) only the timestamps can tell; the partition
    # breaks a tie, so the choice never depends on the order the partitions were read in.
    newest: dict[EventKey, tuple[Record, DeadLetter]] = {}
    for (event, _), (record, letter) in in_partition.items():
        held = newest.get(event)
        if held is None or (held[0].timestamp, held[0].partition) < (record.timestamp, record.partition):
            newest[event] = (record, letter)
    chosen: list[tuple[EventKey, tuple[Record, DeadLetter]]] = []
    for event, (record, letter) in newest.items():
        if letter.function:
            report.functions.add(letter.function)
        if letter.type:
            report.all_types.add(letter.type)
        if selection.wants(letter, record.timestamp, now):
            chosen.append((event, (record, letter)))
            if copies[event] > 1:
                report.skipped["superseded"] += copies[event] - 1
        else:
            report.skipped["not selected"] += copies[event]
    chosen.sort(key=lambda er: origin[er[0]])
    report.replayed = [event[1] for event, _ in chosen]
    report.missing = sorted(selection.ids - {event[1] for event in counts})
    for _, (_, letter) in chosen:
        report.types[letter.type or ""] += 1
        if letter.function:
            report.failed_by[letter.function, letter.type or ""] += 1
    return [Candidate(record, event, counts[event], first[event]) for event, (record, _) in chosen]


def outgoing(chosen: Collection[Candidate], counts: Mapping[EventKey, int]) -> list[Outgoing]:
    """The records to produce: each event's original record, `faas_replayed` one more than its highest
    count on either topic (`counts`: the events topic's)."""
    return [
        Outgoing(
            c.record.key,
            c.record.value,
            replay_headers(list(c.record.headers), max(c.replayed, counts.get(c.event, 0)) + 1),
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

    Raises BrokerUnreachable when the broker does not answer, KafkaError when reading fails (nothing was
    produced), ReplayStopped when producing fails (events acknowledged before that stay produced).
    `progress` is called every READ_PROGRESS_EVERY records read and every PROGRESS_EVERY records produced
    (when more than that are to be).
    """
    report = Report(dry_run=dry_run)
    records = await read_topic(bootstrap, settings.deadletter_topic, settings, progress)
    if records is None:
        report.topic_missing = True
        return report
    chosen = select(records, selection, time.time(), report)
    if not chosen:
        return report
    if dry_run:  # the run it stands for would stop at a missing events topic: so does the dry run
        report.events_missing = not await topic_exists(bootstrap, settings.events_topic, settings)
        return report
    since_ms = max(0, min(c.first_ms for c in chosen) - int(CLOCK_SKEW * 1000))
    counts = await replay_counts(bootstrap, settings, [c.event for c in chosen], since_ms, progress)
    if counts is None:
        report.events_missing = True  # `replayed` still names the events that would have been
        return report
    records_out = outgoing(chosen, counts)
    producer = await reach(start_producer(bootstrap, settings))
    try:
        await _produce(producer, settings.events_topic, chosen, records_out, report, progress)
    finally:
        with contextlib.suppress(Exception):  # a broker gone: its error is the one to tell
            await asyncio.wait_for(producer.stop(), STOP_TIMEOUT)
    return report


async def _produce(
    producer: AIOKafkaProducer,
    topic: str,
    chosen: list[Candidate],
    records_out: list[Outgoing],
    report: Report,
    progress: Progress | None,
) -> None:
    """Produce `records_out` (the records of `chosen`) in rounds of PROGRESS_EVERY, each awaited whole;
    `report.replayed` becomes the ce_ids acknowledged. ReplayStopped at the first round that fails."""
    ids = [c.event[1] for c in chosen]
    report.replayed = []
    for start in range(0, len(records_out), PROGRESS_EVERY):
        sent: list[tuple[str, asyncio.Future[Any]]] = []
        failure: BaseException | None = None
        end = start + PROGRESS_EVERY
        for event_id, r in zip(ids[start:end], records_out[start:end], strict=True):
            try:
                sent.append(
                    (event_id, await producer.send(topic, value=r.value, key=r.key, headers=r.headers))
                )
            except KafkaError as exc:
                failure = exc
                break
        # Every outcome is taken, failed ones too: none is left for asyncio to report as never retrieved.
        outcomes = await asyncio.gather(*(f for _, f in sent), return_exceptions=True)
        unconfirmed = []
        for (event_id, _), outcome in zip(sent, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failure = failure or outcome
                unconfirmed.append(event_id)
            else:
                report.replayed.append(event_id)
        if failure is not None:
            raise ReplayStopped(
                report, unconfirmed, len(ids) - len(report.replayed) - len(unconfirmed), failure
            )
        if progress is not None and len(records_out) > PROGRESS_EVERY:
            progress("replay", min(start + PROGRESS_EVERY, len(records_out)), len(records_out))
