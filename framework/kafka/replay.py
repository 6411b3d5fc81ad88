"""Re-drive dead-lettered events (DESIGN.md section 15): what `faas replay` does.

The dead-letter topic is read from its start until nothing more comes, with no consumer group (nothing
is committed, so a replay can be repeated and never disturbs another reader). Each record is classified
(`deadletter.classify`); failed-event copies that match the selection are produced to the events topic
again with their original key, value and headers (`faas_*` removed, `faas_replayed: n` added), in their
dead-letter order per partition (so per key). Choices:

- An event dead-lettered more than once (it failed, was replayed and failed again) is replayed once, from
  its newest copy; the older copies count as `superseded`. Its `faas_replayed` is one more than the
  highest count on any of its copies.
- `since` is checked against each record's own timestamp: `offsets_for_times` cannot be trusted (Tansu
  answers offset 0 for every time), and reading from the start costs only time.
- Skipped records are counted by reason: `bad_event`, `foreign`, `not selected`, `superseded`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from aiokafka import ConsumerRecord, TopicPartition
from aiokafka.errors import KafkaConnectionError, KafkaError

from framework.kafka.deadletter import DeadLetter, classify, replay_headers
from framework.kafka.options import reader, start_producer
from framework.settings import Settings

READ_STALL = 30.0
"""Seconds without a new record before reading the dead-letter topic is given up as stuck."""
QUIET_FETCHES = 2
FETCH_WAIT_MS = 300
"""Reading ends after QUIET_FETCHES fetches in a row found nothing new, each waiting FETCH_WAIT_MS."""
PROGRESS_EVERY = 500
"""Records produced between two progress lines (only replays longer than that print them)."""
READ_PROGRESS_EVERY = 10_000
"""Dead-letter records read between two progress lines."""

Progress = Callable[[str, int, int | None], None]
"""`(stage, done, total)`: stage `read` (total unknown: None) or `replay`."""


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


async def read_topic(
    bootstrap: str, topic: str, settings: Settings, progress: Progress | None = None
) -> list[ConsumerRecord[bytes, bytes]] | None:
    """Every record of `topic`, read until nothing more comes; None when the topic does not exist."""
    consumer = reader(
        bootstrap,
        settings,
        max_partition_fetch_bytes=16 * 1024 * 1024,
        fetch_max_wait_ms=20,  # Tansu holds a fetch this long even with records there: keep it short
    )
    try:
        await consumer.start()
    except (KafkaConnectionError, OSError) as exc:
        await consumer.stop()
        raise BrokerUnreachable(str(exc)) from exc
    try:
        if topic not in await consumer.topics():
            return None
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        left = {tp for tp in tps if ends[tp] > 0}
        out: list[ConsumerRecord[bytes, bytes]] = []
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
                before = len(out)
                out.extend(records)
                if progress is not None and len(out) // READ_PROGRESS_EVERY > before // READ_PROGRESS_EVERY:
                    progress("read", len(out), None)
                if records and records[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
        return out
    finally:
        await consumer.stop()


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One record to produce to the events topic."""

    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


def select(
    records: Collection[ConsumerRecord[bytes, bytes]], selection: Selection, now: float, report: Report
) -> list[Outgoing]:
    """The records to replay, in (partition, offset) order, each with `faas_replayed` worked out."""
    newest: dict[str, tuple[ConsumerRecord[bytes, bytes], DeadLetter]] = {}
    counts: dict[str, int] = {}
    for record in records:
        letter = classify(record.value, list(record.headers or ()))
        if letter.kind != "failed" or letter.event_id is None:
            report.skipped[letter.kind] += 1
            continue
        counts[letter.event_id] = max(counts.get(letter.event_id, 0), letter.replayed)
        if not selection.wants(letter, record.timestamp, now):
            report.skipped["not selected"] += 1
            continue
        if letter.event_id in newest:
            report.skipped["superseded"] += 1
        newest[letter.event_id] = (record, letter)  # records come in offset order: later is newer
    chosen = sorted(newest.values(), key=lambda rl: (rl[0].partition, rl[0].offset))
    report.replayed = [letter.event_id or "" for _, letter in chosen]
    report.missing = sorted(selection.ids - counts.keys())
    return [
        Outgoing(
            record.key,
            record.value,
            [
                (k, v or b"")
                for k, v in replay_headers(list(record.headers), counts[letter.event_id or ""] + 1)
            ],
        )
        for record, letter in chosen
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
    try:
        producer = await start_producer(bootstrap, settings)
    except (KafkaConnectionError, OSError) as exc:
        raise BrokerUnreachable(str(exc)) from exc
    try:
        for start in range(0, len(chosen), PROGRESS_EVERY):
            futures = [
                await producer.send(settings.events_topic, value=r.value, key=r.key, headers=r.headers)
                for r in chosen[start : start + PROGRESS_EVERY]
            ]
            for future in futures:
                await future
            done = min(start + PROGRESS_EVERY, len(chosen))
            if progress is not None and len(chosen) > PROGRESS_EVERY:
                progress("replay", done, len(chosen))
    finally:
        await producer.stop()
    return report
