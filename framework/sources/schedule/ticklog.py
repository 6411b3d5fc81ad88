"""The tick log: what the scheduler leader fired, kept on FAAS_SCHEDULER_TOPIC (DESIGN.md sections 1 and 7).

The election (`leader.py`) joins a consumer group on this one-partition topic; the leader also writes to
it, one record per schedule tick it fires (or skips because the previous run is still going): partition 0,
key `<function uuid>:s<12 hex digits>` (the schedule by what it is: `entry.CronEntry.key`; records written
before that are keyed `<function uuid>:<schedule index>`, and read too), value `{"tick": <epoch seconds>,
"node": <node name>, "group": <FAAS_KAFKA_GROUP_ID>}`; once the tick's run ended, the same again with its
result, `"last": {"at", "ok", "duration_ms", "error"}` (every node follows those: `last_runs.py`). A node
that becomes leader reads the recent records
back to learn the newest tick of each schedule (`catchup.py` decides what to fire from that), its own
group's only: groups sharing a broker and this topic each fire their schedules, and another group's ticks
say nothing of what this one missed. A record without `group` (written before it was added) counts for
every group.

- Writing stays off the firing path: `record` and `result` never await and never fail. They keep the
  newest tick (and the newest result) per key, an older one adds nothing, and wake a task that produces
  them. A failed send is logged and its records are tried again after a pause (`BACKOFF`), so the buffer
  holds two records per schedule at most, whatever the outage. A tick the next leader does not find may
  fire again there (at-least-once).
- `stop` gives the writer up to `STOP_FLUSH` seconds; the scheduler calls it before leaving the election
  group, so the next leader reads the last tick of this one.
- Reading (`newest`) uses `kafka/topic_read.py`: partition 0 from the first record stamped `since` on
  (Tansu answers no time lookups: a binary search) to the end offset seen when the read started. Records
  that are not tick records (not JSON, wrong key or fields) are skipped with a warning.
- Topic size: created by `leader.py` with `TOPIC_CONFIGS` (a day of records, in hourly segments); a topic
  that already exists keeps its own settings (Kafka's default keeps a week).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from aiokafka import AIOKafkaProducer, TopicPartition

from framework.kafka.options import start_producer, stop_quietly
from framework.kafka.topic_read import Record, offsets_at, partitions, reader_of, scan, started
from framework.observe.records import node_name
from framework.settings import Settings
from framework.tasks import cancel_and_wait, within

log = logging.getLogger("faas.scheduler.ticklog")

SEND_TIMEOUT = 5.0
"""Seconds one round of sends may take before it counts as failed; also the producer's request timeout,
which bounds its start."""
BACKOFF = (0.5, 5.0)
"""First and longest pause (seconds) between attempts after a failed send; the pause doubles."""
STOP_FLUSH = 2.0
"""Seconds, at most, a stopping scheduler waits for its last ticks to be written."""
TOPIC_CONFIGS = {"retention.ms": str(24 * 3600 * 1000), "segment.ms": str(3600 * 1000)}
"""Settings of the topic when the election creates it: a reader needs minutes (`catchup.CATCH_UP_WINDOW`);
a day is there to look at, and retention drops whole segments only, hence hourly ones."""
LAST_TICK = 253_402_300_799
"""The greatest tick (epoch seconds) a record may hold: 9999-12-31T23:59:59Z, the last a datetime holds."""
MESSAGE_CHARS = 4_096
"""Characters of a run's error message a result record holds (what a listing needs, far below the
broker's record limit); a longer one, written or read, is cut to this and ends in `...`."""


_SCHEDULE = re.compile(r"s[0-9a-f]{12}|[0-9]+")
"""A key's schedule part: its digest (`entry.CronEntry.key`), or its index in records written before."""


Results = dict[str, tuple[int, dict[str, Any]]]
"""Per schedule key, a tick (epoch seconds) and its run's result."""


class TickRecord(NamedTuple):
    key: str
    tick: int
    """Epoch seconds."""
    group: str | None
    last: dict[str, Any] | None
    """The run's result (`at`, `ok`, `duration_ms`, `error`), in a record written when the run ended."""

    def of(self, group: str) -> bool:
        """Whether it counts for consumer group `group`: written by its leader, or without a group (before
        records named theirs). Another group's leader fired its own schedules, not ours."""
        return self.group is None or self.group == group


def parse(record: Record) -> TickRecord | str:
    """The tick record `record` holds, or why it is not one."""
    try:
        key = (record.key or b"").decode()
    except UnicodeDecodeError:
        return "its key is not UTF-8"
    uuid, _, schedule = key.rpartition(":")
    if not uuid or not _SCHEDULE.fullmatch(schedule):
        return f"its key {key[:80]!r} is not <function uuid>:s<12 hex digits> (or :<schedule index>)"
    try:
        value = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        return "its value is not JSON"
    tick = value.get("tick") if isinstance(value, dict) else None
    group = value.get("group") if isinstance(value, dict) else None
    if (
        type(tick) is not int
        or not 0 <= tick <= LAST_TICK
        or not isinstance(value.get("node"), str)
        or not isinstance(group, str | None)
    ):
        return 'its value is not {"tick": <epoch seconds>, "node": <name>, "group": <group id>}'
    last = value.get("last")
    if last is not None:
        last = run_result(last)
        if last is None:
            return 'its "last" is not {"at": <time>, "ok": <bool>, "duration_ms": <number>, "error": ...}'
    return TickRecord(key, tick, group, last)


def run_result(value: object) -> dict[str, Any] | None:
    """`value` as a run's result (the message cut to MESSAGE_CHARS), or None when it is not one: `at` a
    time, `ok` true with `error` null or false with `error` `{"type", "message"}` (strings), `duration_ms`
    a number from 0."""
    if not isinstance(value, dict) or set(value) != {"at", "ok", "duration_ms", "error"}:
        return None
    at, ok, duration, error = value["at"], value["ok"], value["duration_ms"], value["error"]
    if not isinstance(at, str) or len(at) > 64 or type(ok) is not bool:
        return None
    try:
        datetime.fromisoformat(at)
    except ValueError:
        return None
    if type(duration) not in (int, float) or not 0 <= duration < 1e12:
        return None
    if ok:
        return value if error is None else None
    if (
        not isinstance(error, dict)
        or set(error) != {"type", "message"}
        or not isinstance(error["type"], str)
        or not isinstance(error["message"], str)
        or len(error["type"]) > 200
    ):
        return None
    return {**value, "error": {"type": error["type"], "message": cut(error["message"])}}


def cut(message: str) -> str:
    return message if len(message) <= MESSAGE_CHARS else message[: MESSAGE_CHARS - 3] + "..."


def newest(records: Iterable[Record], since_ms: int, group: str) -> dict[str, int]:
    """The newest tick per key among the records of `group` (or of none) stamped `since_ms` or later; the
    others are skipped, and the broken ones named in one warning."""
    found: dict[str, int] = {}
    broken: list[str] = []
    for record in records:
        if record.timestamp < since_ms:  # a read starts at a batch or a search step: it may begin earlier
            continue
        parsed = parse(record)
        if isinstance(parsed, str):
            broken.append(f"offset {record.offset}: {parsed}")
            continue
        if not parsed.of(group):
            continue
        found[parsed.key] = max(parsed.tick, found.get(parsed.key, parsed.tick))
    if broken:
        log.warning(
            "tick log: %d record(s) skipped, not tick records (%s)", len(broken), "; ".join(broken[:3])
        )
    return found


class TickLog:
    """Writes the leader's ticks to partition 0 of `settings.scheduler_topic` and reads them back."""

    def __init__(self, settings: Settings, bootstrap: str) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.topic = settings.scheduler_topic
        self.node = node_name(settings)
        self._pending: dict[str, int] = {}
        """Per key, the newest tick not written yet."""
        self._results: Results = {}
        """Per key, the newest tick's result not written yet."""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        """Set while nothing waits to be written."""
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._producer: AIOKafkaProducer | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler-ticklog")

    def record(self, key: str, tick: int) -> None:
        """Note that the schedule `key` fired (or skipped) `tick` (epoch seconds); written soon after."""
        if tick > self._pending.get(key, -1):
            self._pending[key] = tick
        self._idle.clear()
        self._wake.set()

    def result(self, key: str, tick: int, last: dict[str, Any]) -> None:
        """Note how the run of `tick` of schedule `key` went (`last`: `at`, `ok`, `duration_ms`, `error`, its
        message cut to MESSAGE_CHARS already: `cut`)."""
        if tick >= self._results.get(key, (-1, last))[0]:
            self._results[key] = (tick, last)
        self._idle.clear()
        self._wake.set()

    async def stop(self) -> None:
        """Write what is pending (at most STOP_FLUSH seconds), then stop; what is left is dropped."""
        if self._task is not None:
            with contextlib.suppress(TimeoutError):
                await within(self._idle.wait(), STOP_FLUSH)
            await cancel_and_wait([self._task])
            self._task = None
        if self._pending:
            left = len(self._pending)
            log.warning("tick log: %d tick(s) not written at stop: the next leader may fire them again", left)
        if self._results:
            log.warning("tick log: %d run result(s) not written at stop", len(self._results))
        await self._close()

    async def newest(self, since: float) -> dict[str, int]:
        """The newest tick per key among the records stamped `since` (epoch seconds) or later."""
        since_ms = int(since * 1000)
        records: list[Record] = []
        consumer = await started(reader_of(self.bootstrap, self.settings))
        try:
            tp = TopicPartition(self.topic, 0)
            if tp not in (await partitions(consumer, self.topic) or []):
                return {}
            if (await consumer.end_offsets([tp]))[tp] <= (await consumer.beginning_offsets([tp]))[tp]:
                return {}  # empty (a new cluster): no need to wait for fetches that find nothing
            starts = await offsets_at(self.bootstrap, self.settings, consumer, [tp], since_ms)
            await scan(consumer, starts, records.append, "read", None)
        finally:
            await stop_quietly(consumer)
        return newest(records, since_ms, self.settings.kafka_group_id)

    # ---- the writer ----

    async def _run(self) -> None:
        pause, failing = BACKOFF[0], False
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, {}
            results, self._results = self._results, {}
            if not batch and not results:
                self._idle.set()
                continue
            try:
                await within(self._send(await self._started(), batch, results), SEND_TIMEOUT)
            except Exception as exc:
                for key, tick in batch.items():  # tried again, unless a newer tick came meanwhile
                    self._pending[key] = max(tick, self._pending.get(key, tick))
                for key, (tick, last) in results.items():  # likewise, unless a newer result came
                    if tick > self._results.get(key, (-1, last))[0]:
                        self._results[key] = (tick, last)
                if not failing:
                    log.warning("tick log: cannot write to %s (%r); retrying", self.topic, exc)
                failing = True
                await self._close()  # a fresh producer next round: aiokafka's may be stuck
                await asyncio.sleep(pause)
                pause = min(pause * 2, BACKOFF[1])
                self._wake.set()
                continue
            if failing:
                log.info("tick log: writing to %s again", self.topic)
            pause, failing = BACKOFF[0], False
            if not self._pending and not self._results:
                self._idle.set()

    async def _started(self) -> AIOKafkaProducer:
        # Not under the send's timeout: a start cut short would leave a producer nobody stops.
        if self._producer is None:
            self._producer = await start_producer(
                self.bootstrap,
                self.settings,
                client_id="faas-scheduler",
                request_timeout_ms=int(SEND_TIMEOUT * 1000),
            )
        return self._producer

    async def _send(self, producer: AIOKafkaProducer, batch: dict[str, int], results: Results) -> None:
        acks = []
        group = self.settings.kafka_group_id
        for key, tick in batch.items():
            value = orjson.dumps({"tick": tick, "node": self.node, "group": group})
            acks.append(await producer.send(self.topic, value, key.encode(), partition=0))
        for key, (tick, last) in results.items():  # after the ticks: a reader sees a run's tick first
            value = orjson.dumps({"tick": tick, "node": self.node, "group": group, "last": last})
            acks.append(await producer.send(self.topic, value, key.encode(), partition=0))
        # Shielded: a timed-out round must not cancel futures aiokafka still owns.
        await asyncio.gather(*(asyncio.shield(ack) for ack in acks))

    async def _close(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):
                await within(producer.stop(), 2)
