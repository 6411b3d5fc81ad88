"""The deployment log on Kafka (DESIGN.md section 12): `FAAS_DEPLOYMENTS_TOPIC`, one partition, compacted.

The habits of a config store on a compacted topic (Kafka Connect's KafkaConfigBackingStore):
- read to the end before serving: `start` creates the topic when missing (one partition,
  `cleanup.policy=compact`; a log made with `create=False`, a CLI verb that only reads, reads a missing
  one as empty instead), reads it from offset 0 up to its end offset, and only then returns;
- then follow it: new records are applied as they arrive and `on_change` is called;
- writes (`publish`, in `deployment_log.py`) are read back through the same reader, and go only to a
  topic the broker lists: one it lost is created again first, with a new producer (`_topic_present`).

A lost log (a memory-only broker restarted: its cluster id changes, or the end offset drops below what
was read) is read again from 0 and `on_reset` is called, so the node can publish again what it serves, in
the order it was applied (`LogState.order`: validity depends on order). An end offset below what was read
is not proof of that on its own: Tansu reports a partition's end as its last batch's base offset + 1, so
after a batch of several records (a restore or mirror tool's; the platform writes one record a request)
the end stays below the records read until the next write. So the log counts as lost only when it no
longer holds the last record read (`_still_there`: one small fetch, once per end offset seen).

A bad record never stops the reader: `LogState.apply` skips it with a warning and never raises, and
`position` moves past each record as it is applied, so the records after a bad one in the same fetch
apply too. The follower survives any error (a broker error is retried quietly, anything else with a
warning), so a node keeps applying what is published for as long as it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Collection
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, for_code

from framework.control.deployment_log import DeploymentLog
from framework.control.log_state import LogState
from framework.control.revisions import code_key
from framework.kafka.group import cluster_id
from framework.kafka.options import ADMIN_TIMEOUT_MS, reader, security_options, start_producer, stop_quietly
from framework.kafka.topic_read import first_at, scan
from framework.settings import Settings
from framework.tasks import cancel_and_wait, within

log = logging.getLogger("faas.deployments")

POLL_MS = 200
"""Milliseconds one fetch of the follower waits for new records."""
FETCH_WAIT_MS = 100
"""Milliseconds the broker may hold a fetch with no new records: bounds how late a revision is seen."""
CHECK_EVERY = 2.0
"""Seconds between checks of the cluster id and end offset, to notice a log that was lost (broker restarted
empty)."""
CHECK_TIMEOUT = 2.0
"""Seconds each request of a check may take (a timed-out check is tried again at the next)."""
FOLLOW_RETRY = 0.5
"""Seconds the follower waits after a failed fetch before the next one."""
CHANGE_EVERY = 0.2
"""Seconds at least between two tellings of changes the follower read (the first after a quiet spell is
told at once): each telling rebuilds the whole registry, and a save of a package of 1,000 functions
publishes 2,000 records over many fetches (told after each, the rebuilds took 17-124 s to serve one
edit)."""
TOPIC_CHECK_EVERY = 1.0
"""Seconds a check that the broker lists the log's topic holds for the writes after it (`_topic_present`):
one publication's writes follow each other within it; a broker lost and restarted is not back that soon."""
RECORD_OVERHEAD = 64 * 1024
"""Bytes a produce request adds around one record's value (key, headers, batch and request framing)."""
READ_BACK_TIMEOUT = 10.0
"""Seconds a publisher waits to read its own write back before it reports a failure."""


class KafkaLog(DeploymentLog):
    """The log on the topic `FAAS_DEPLOYMENTS_TOPIC`. `follow=False` reads it once (the CLI).

    `create=False` (the CLI's reading verbs) leaves a missing topic missing and reads it as empty, with
    `missing` set: a reader with a mistyped `FAAS_DEPLOYMENTS_TOPIC` must not leave a stray log behind.
    """

    def __init__(
        self, state: LogState, settings: Settings, bootstrap: str, follow: bool = True, create: bool = True
    ) -> None:
        super().__init__(state)
        self.settings = settings
        self.bootstrap = bootstrap
        self.topic = settings.deployments_topic
        self.follow = follow
        self.create = create
        self.missing = False
        """Set by `start` when `create` is off and the broker has no such topic."""
        self.tp = TopicPartition(self.topic, 0)
        self.position = 0
        """The offset of the next record to apply."""
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self._producer_limit = 0
        """The producer's max_request_size (bytes)."""
        self._task: asyncio.Task[None] | None = None
        self._moved = asyncio.Event()
        self._told_at = -math.inf
        """Loop time changes were last told (`_tell`)."""
        self._telling: asyncio.TimerHandle | None = None
        """The telling of changes held back (CHANGE_EVERY), if one is."""
        self._low = 0
        self._prober: AIOKafkaConsumer | None = None
        """Reads one record to tell a lost log from Tansu's end offset (`_still_there`); made when needed."""
        self._floor = -1
        """An end offset below `position` that was found to be Tansu's floor, not a lost log."""
        self._listed_at = -math.inf
        """When (monotonic s) the broker last listed the topic before a write (`_topic_present`)."""
        self._cluster: str | None = None
        """The cluster id the log was read from (None until known): another one is another broker."""

    @property
    def fetch_bytes(self) -> int:
        return self.settings.max_code_bytes + 1024 * 1024

    async def start(self) -> None:
        await self.stop()  # a start that failed halfway leaves clients behind
        self._consumer = self._producer = self._prober = self._task = None
        if self.create:
            await ensure_log_topic(self.bootstrap, self.topic, security_options(self.settings))
        consumer = self._reader()
        self._consumer = consumer  # before its start: `stop` closes one whose start failed halfway
        await consumer.start()
        # Asked from the cluster's topic list, as `_topic_present` asks: assigning the partition would have
        # the broker create it.
        self.missing = not self.create and self.topic not in await consumer.topics()
        if self.missing:
            return
        consumer.assign([self.tp])
        if self.position:  # a start tried again: go on after what is applied, not from a "lost" log
            consumer.seek(self.tp, self.position)
        else:
            await consumer.seek_to_beginning(self.tp)
        await self.catch_up()
        if self.follow:
            self._cluster = self._cluster or await cluster_id(consumer)
            self._task = asyncio.create_task(self._follow(), name="deployment-log")

    async def stop(self) -> None:
        await cancel_and_wait([self._task])
        if self._telling is not None:
            self._telling.cancel()
            self._telling = None
        for client in (self._consumer, self._producer, self._prober):
            if client is not None:
                await stop_quietly(client)  # with the broker gone too: a stop always ends

    async def write(self, records: list[tuple[str, bytes | None]]) -> None:
        # A log read as missing never publishes: its reader is not on the partition to read the write back.
        assert not self.missing, "publishing to a deployment log opened without creating it"
        await self._topic_present()
        # Room for the largest record: a code record published by a deployer with a higher
        # FAAS_MAX_CODE_BYTES than this node's must still fit when this node republishes a lost log.
        needed = max((len(value) + RECORD_OVERHEAD for _, value in records if value is not None), default=0)
        if self._producer is not None and needed > self._producer_limit:
            with contextlib.suppress(KafkaError, OSError):
                await self._producer.stop()
            self._producer = None
        if self._producer is None:
            self._producer_limit = max(self.fetch_bytes, 16 * 1024 * 1024, needed)
            self._producer = await start_producer(
                self.bootstrap, self.settings, max_request_size=self._producer_limit
            )
        for key, value in records:
            # One record per request: Tansu reports a high watermark of base offset + 1 after a batch of
            # several records, which would make readers stop short of the end.
            await self._producer.send_and_wait(self.topic, value=value, key=key.encode(), partition=0)

    async def _topic_present(self) -> None:
        """Before a write: create the topic (one partition, compacted) when the broker does not list it,
        and drop a producer from before, so that the next one starts from the broker's metadata.

        Invariant: each `write` produces only after the broker listed the topic, at most
        `TOPIC_CHECK_EVERY` seconds before (one metadata round trip per publication, not per write: a
        round trip between a revision's numbering and its write would widen the window in which two
        publishers both keep one number; `KafkaError` while the broker is away). A producer whose metadata
        still lists a topic the broker lost (a memory-only broker restarted while the node's producer could
        not refresh, e.g. after an outage of a few seconds) sends to it without asking: Tansu (0.6, memory
        storage) acknowledges records for a topic it does not have, and once the topic exists again its end
        offset counts them while no fetch returns them, and the next record at their offsets is refused. Kafka
        answers UNKNOWN_TOPIC_OR_PARTITION instead. What is left: a broker lost between the check and the
        write, within one round trip.
        """
        assert self._consumer is not None, "start() first"
        if time.monotonic() - self._listed_at < TOPIC_CHECK_EVERY:
            return
        if self.topic in await self._consumer.topics():
            self._listed_at = time.monotonic()
            return
        await ensure_log_topic(self.bootstrap, self.topic, security_options(self.settings))
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(KafkaError, OSError):
                await producer.stop()

    async def end_offset(self) -> int:
        assert self._consumer is not None
        return int((await self._consumer.end_offsets([self.tp]))[self.tp])

    async def catch_up(self) -> None:
        end = await self.end_offset()
        while self.position < end:
            if self._task is not None and not self._task.done():
                self._moved.clear()
                await within(self._moved.wait(), READ_BACK_TIMEOUT)
            else:
                await self._fetch()
        if self._telling is not None:  # read back: served when this returns (ready means served)
            self._telling.cancel()
            self._told()

    async def _fetch(self) -> None:
        assert self._consumer is not None
        batch = await self._consumer.getmany(self.tp, timeout_ms=POLL_MS)
        changed = False
        try:
            for msg in batch.get(self.tp, []):
                if msg.offset < self.position:  # the consumer reset to the start: the log was lost
                    self._reset(msg.offset)
                key = msg.key.decode(errors="replace") if msg.key is not None else None
                # Never raises: a bad record is a warning, and the ones after it in this batch still apply.
                changed |= self.state.apply(key, msg.value, f"at offset {msg.offset}")
                self._observe(key, msg.value)
                self.position = msg.offset + 1
            # Past offsets compaction removed too (the consumer's position skips them; ours would wait).
            self.position = max(self.position, await self._consumer.position(self.tp))
        finally:
            self._moved.set()  # first: a failing on_change must not keep a publisher waiting to read back
            if changed and self.follow:
                self._tell()

    def _tell(self) -> None:
        """Tell of changes read: at once after a quiet spell, else at CHANGE_EVERY after the last telling,
        once for all read meanwhile."""
        if self._telling is not None:
            return  # already due: it tells of these too
        loop = asyncio.get_running_loop()
        due = self._told_at + CHANGE_EVERY
        if loop.time() >= due:
            self._told()
        else:
            self._telling = loop.call_at(due, self._told)

    def _told(self) -> None:
        self._telling = None
        self._told_at = asyncio.get_running_loop().time()
        self._changed()

    async def code_records(self, shas: Collection[str]) -> dict[str, bytes]:
        wanted = {code_key(sha): sha for sha in shas}
        found: dict[str, bytes] = {}

        def keep(record: ConsumerRecord[bytes, bytes]) -> None:
            sha = wanted.get(record.key.decode(errors="replace")) if record.key is not None else None
            if sha is None:
                return
            if record.value is None:  # tombstoned since
                found.pop(sha, None)
            else:
                found[sha] = record.value

        consumer = self._reader()  # of its own: the follower's position is the log's state
        try:
            await consumer.start()
            await scan(consumer, await consumer.beginning_offsets([self.tp]), keep, "code", None)
        finally:
            await stop_quietly(consumer)
        return found

    def _reset(self, why: str) -> None:
        log.warning(
            "deployment log %s: %s (the broker lost it): reading it again and publishing again what this "
            "node serves",
            self.topic,
            why,
        )
        self.position, self._floor = 0, -1
        self.state.keys.clear()
        assert self._consumer is not None
        self._consumer.seek(self.tp, 0)
        if self.on_reset is not None:
            self.on_reset()

    async def _follow(self) -> None:
        """Fetch and apply for as long as the node runs: no error ends it (a dead follower would leave
        the node serving old revisions while reporting ready)."""
        loop = asyncio.get_running_loop()
        checked = loop.time()
        while True:
            try:
                await self._fetch()
                if loop.time() - checked > CHECK_EVERY:
                    checked = loop.time()
                    await self._check_end()
            except (KafkaError, OSError, TimeoutError) as exc:  # the broker away: it comes back
                log.debug("deployment log: %r (retrying)", exc)
                await asyncio.sleep(FOLLOW_RETRY)
            except Exception as exc:
                log.warning("deployment log: following it failed (%r); retrying in %g s", exc, FOLLOW_RETRY)
                await asyncio.sleep(FOLLOW_RETRY)

    async def _check_end(self) -> None:
        """Notice a lost log: another cluster id, its end offset below our position, or the topic gone
        (then create it)."""
        assert self._consumer is not None
        cluster = await cluster_id(self._consumer)
        if cluster is not None:
            before, self._cluster = self._cluster, cluster
            if before is not None and cluster != before:
                # Another cluster (the memory-only broker restarted): whatever its log holds, it is not
                # what was read. Its end offset alone can miss it: a deploy right after the restart can
                # make the new log as long as the old one before a check sees it shorter.
                self._low = 0
                self._reset(f"the cluster id {before} became {cluster}")
                return
        try:
            end = await within(self.end_offset(), CHECK_TIMEOUT)
        except KafkaError:
            options = security_options(self.settings)
            await within(ensure_log_topic(self.bootstrap, self.topic, options), CHECK_TIMEOUT * 2)
            end = await within(self.end_offset(), CHECK_TIMEOUT)
        if end >= self.position or end == self._floor:
            self._low = 0
            return
        if await within(self._still_there(self.position - 1), CHECK_TIMEOUT):
            self._floor, self._low = end, 0
            return
        self._low += 1
        if self._low >= 2:  # twice in a row, CHECK_EVERY apart: not a passing glitch
            self._low = 0
            self._reset(f"its end offset {end} is below the {self.position} records read")

    async def _still_there(self, offset: int) -> bool:
        """Whether the log still holds the record at `offset` (a lost one, started again, holds fewer
        records: the fetch then answers from another offset, or nothing)."""
        if self._prober is None:
            prober = self._reader()
            self._prober = prober  # before its start: `stop` closes one whose start failed halfway
            await prober.start()
        found = await first_at(self._prober, self.tp, offset)
        return found is not None and found[0] == offset

    def _reader(self) -> AIOKafkaConsumer:
        """A group-less reader of the log, its fetches sized for the largest code record."""
        return reader(
            self.bootstrap,
            self.settings,
            max_partition_fetch_bytes=self.fetch_bytes,
            fetch_max_bytes=self.fetch_bytes,
            fetch_max_wait_ms=FETCH_WAIT_MS,
        )


async def ensure_log_topic(bootstrap: str, topic: str, options: dict[str, Any]) -> bool:
    """Create `topic` with one partition and `cleanup.policy=compact` when missing; True if created."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=ADMIN_TIMEOUT_MS, **options)
    await admin.start()
    try:
        if topic in set(await admin.list_topics()):
            return False
        brokers = len((await admin.describe_cluster())["brokers"]) or 1
        new = NewTopic(topic, 1, min(3, brokers), topic_configs={"cleanup.policy": "compact"})
        response = await admin.create_topics([new], timeout_ms=ADMIN_TIMEOUT_MS)
        for _, code, *rest in response.topic_errors:
            error = for_code(code)
            if code != 0 and error is not TopicAlreadyExistsError:
                raise error(f"cannot create the deployment log {topic}: {rest[0] if rest else ''}")
        log.info("created the deployment log %s (1 partition, compacted)", topic)
        return True
    finally:
        await admin.close()
