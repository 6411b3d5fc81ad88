"""Every schedule's last run, the same on every node (DESIGN.md sections 5 and 16: `last` of a schedule).

Only the scheduler leader runs user schedules, so at first only it knows how a run went. It writes each
run's result to the tick log (`ticklog.py`: the tick's record again, with `last`), and every node follows
that log (`Follower`), so `GET /functions` and the dashboard show the same `last` whichever node answers:
the leader's at once, the others' within about FETCH_WAIT_MS of the write.

- `LastRuns` keeps, per schedule key (`entry.CronEntry.key`, the schedule by what it is: a redeploy that
  keeps its cron, time zone and payload keeps its `last`, one that changes any of them starts afresh), the
  result of the newest tick; the same tick twice (fired on two nodes around a handover) keeps the one
  noted last.
- A follower starts at the records stamped WINDOW seconds ago (the election creates the topic to keep a
  day, `ticklog.TOPIC_CONFIGS`): a schedule whose last run is older shows none on a node started since,
  until it runs again.
- Only the results of this node's group count (and those written without one), as for the catch-up.
- It survives any error: a broker error is retried after a pause (BACKOFF, one warning per outage), a
  broken record is skipped with a warning (one per fetch, at most one per WARN_EVERY seconds, counting
  those skipped since the last). Every
  CHECK_EVERY seconds it asks the broker's cluster id: a broker that came back as another cluster (the
  embedded one restarted empty, whose new log starts again at offset 0, below this reader's position) is
  read again from its start; so is a log whose end is below the position and that no longer holds the
  last record read (a broker restarted under the same id), unless it grew past the position before.
- Cost: one more consumer per node, in no group, whose fetches the broker holds FETCH_WAIT_MS when there is
  nothing new: two small requests a second on an idle node.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from framework.kafka.group import cluster_id
from framework.kafka.options import reader, stop_quietly
from framework.kafka.topic_read import Record, holds, offsets_at, partitions, started
from framework.settings import Settings
from framework.sources.schedule.ticklog import parse
from framework.tasks import cancel_and_wait

log = logging.getLogger("faas.scheduler.last_runs")

WINDOW = 24 * 3600.0
"""Seconds of the tick log a follower reads at its start."""
FETCH_WAIT_MS = 500
"""Milliseconds the broker may hold a fetch with nothing new: how late a follower sees a result, at most."""
FETCH_BYTES = 1024 * 1024
"""Bytes per fetch (a day of a per-second schedule is about 170,000 small records)."""
BATCH = 500
"""Records applied per round between two turns of the event loop (about 5 ms of it)."""
CHECK_EVERY = 10.0
"""Seconds between checks of the broker's cluster id."""
BACKOFF = (0.5, 5.0)
"""First and longest pause (seconds) between attempts to read an unreachable broker or a missing topic."""
WARN_EVERY = 60.0
"""Seconds between warnings about broken records."""


class LastRuns:
    """The newest run's result per schedule key, from this node's runs and the tick log."""

    def __init__(self) -> None:
        self._runs: dict[str, tuple[int, dict[str, Any]]] = {}

    def note(self, key: str, tick: int, last: dict[str, Any]) -> None:
        """`last` (`at`, `ok`, `duration_ms`, `error`) is the result of `tick` (epoch seconds) of `key`."""
        if tick >= self._runs.get(key, (-1, last))[0]:
            self._runs[key] = (tick, last)

    def get(self, key: str) -> dict[str, Any] | None:
        found = self._runs.get(key)
        return None if found is None else found[1]


class _Missing(Exception):
    """The topic does not exist yet (the election creates it)."""


class _ClusterChanged(Exception):
    """The broker answers as another cluster, or no longer holds what was read: its log is another."""


class Follower:
    """Follows partition 0 of `settings.scheduler_topic` into `runs`. `clock` (epoch seconds) is for tests."""

    def __init__(
        self, settings: Settings, bootstrap: str, runs: LastRuns, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self.bootstrap = bootstrap
        self.runs = runs
        self.clock = clock
        self.topic = settings.scheduler_topic
        self.group = settings.kafka_group_id
        self._position: int | None = None
        """The next offset to read; None: start at WINDOW seconds ago."""
        self._cluster: str | None = None
        self._broken = 0
        self._warned = 0.0
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="scheduler-last-runs")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        self._task = None

    async def _run(self) -> None:
        pause, failing = BACKOFF[0], False
        while True:
            consumer: AIOKafkaConsumer | None = None
            try:
                consumer = await started(
                    reader(
                        self.bootstrap,
                        self.settings,
                        fetch_max_wait_ms=FETCH_WAIT_MS,
                        max_partition_fetch_bytes=FETCH_BYTES,
                    )
                )
                tp = await self._seek(consumer)
                if failing:
                    log.info("last runs: reading %s again", self.topic)
                pause, failing = BACKOFF[0], False
                await self._follow(consumer, tp)
            except asyncio.CancelledError:
                raise
            except _ClusterChanged:
                log.info("last runs: the broker holds another log now; reading %s again", self.topic)
                self._position = None
                continue
            except Exception as exc:
                if not failing and not isinstance(exc, _Missing):
                    log.warning("last runs: cannot read %s (%r); retrying", self.topic, exc)
                    failing = True
                await asyncio.sleep(pause)
                pause = min(pause * 2, BACKOFF[1])
            finally:
                if consumer is not None:
                    await stop_quietly(consumer)

    async def _seek(self, consumer: AIOKafkaConsumer) -> TopicPartition:
        tp = TopicPartition(self.topic, 0)
        if tp not in (await partitions(consumer, self.topic) or []):
            raise _Missing(self.topic)
        seen = await cluster_id(consumer)
        if self._cluster is None:
            self._cluster = seen
        elif seen is not None and seen != self._cluster:
            self._cluster, self._position = seen, None
        if self._position is None:
            since_ms = int((self.clock() - WINDOW) * 1000)
            self._position = (await offsets_at(self.bootstrap, self.settings, consumer, [tp], since_ms))[tp]
        consumer.assign([tp])
        consumer.seek(tp, self._position)
        return tp

    async def _follow(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        checked = time.monotonic()
        while True:
            broken: list[str] = []
            # At most BATCH records a round: the loop is not held while a day of them is read at start.
            fetched = await consumer.getmany(tp, timeout_ms=FETCH_WAIT_MS * 2, max_records=BATCH)
            for record in fetched.get(tp, ()):
                why = self._apply(record)
                if why is not None:
                    broken.append(f"offset {record.offset}: {why}")
                self._position = record.offset + 1
            if broken:
                self._skipped(broken)
            if time.monotonic() - checked >= CHECK_EVERY:
                checked = time.monotonic()
                seen = await cluster_id(consumer)
                if seen is not None and self._cluster is not None and seen != self._cluster:
                    self._cluster = seen
                    raise _ClusterChanged(seen)
                if not await self._still_there(consumer, tp):
                    raise _ClusterChanged(seen)

    async def _still_there(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> bool:
        """Whether the log still holds the last record read, when its end is below the position (a broker
        restarted empty under the same cluster id: Tansu's default id). An end below it is no proof alone:
        Tansu gives a partition's end as its last batch's base offset + 1."""
        position = self._position
        if not position or (await consumer.end_offsets([tp]))[tp] >= position:
            return True
        held = await holds(consumer, tp, position - 1)
        consumer.seek(tp, position)
        return held

    def _apply(self, record: Record) -> str | None:
        """Note the result `record` holds; why it is not a tick record, when it is not. A record that cannot
        hold a result (most are tick records) is not parsed: 0.3 against 10 us."""
        if record.value is None or b'"last"' not in record.value:
            return None
        parsed = parse(record)
        if isinstance(parsed, str):
            return parsed
        if parsed.last is not None and parsed.of(self.group):
            self.runs.note(parsed.key, parsed.tick, parsed.last)
        return None

    def _skipped(self, broken: list[str]) -> None:
        self._broken += len(broken)
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            log.warning(
                "last runs: %d record(s) of %s skipped, not tick records (%s)",
                self._broken,
                self.topic,
                "; ".join(broken[:3]),
            )
            self._broken, self._warned = 0, now
