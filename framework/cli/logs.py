"""`faas logs [NAME] [--since 10m] [--failed] [--invocation ID] [--follow] [--json]` (DESIGN.md section 13).

Reads FAAS_INVOCATIONS_TOPIC, where every node produces its invocation records, so it shows every node's
invocations. It reads with no consumer group (nothing to join, nothing committed, any number of readers at
once): every partition is assigned, positioned by `offsets_for_times` at `--since` (a hint only: the
embedded broker answers offset 0 for every time), and each record's `started_at` is checked against it (not
the time the record reached Kafka: a node buffers records while the broker is away and sends them later;
a record is produced after its invocation started, so the seek skips none of those in the window).
Without `--follow` it reads up to the end offsets it saw at start, prints what it kept ordered by
`started_at`, and exits 0; with `--follow` it then prints records as they arrive until Ctrl-C (exit 0).

`--invocation ID` looks through the whole topic unless `--since` is given too; finding no record of it is
said on stderr (exit 0, as for a NAME). Output: one line per
invocation (time, function, the full invocation id, trigger, event, outcome, duration, cold/warm, the
attempt when over 1, the node), its log lines indented below; colours only on a terminal (and never with
`NO_COLOR`); `--json` prints each record as one JSON line. Values on the topic that are not invocation
records are skipped and counted on stderr (after each fetch while following). A follower reads the topic
again from its start when the broker comes back as another cluster (the probe's id) or no longer holds the
last record read of a partition (`_replaced`: a broker restarted under the same id). An unreachable broker
is one line on stderr and exit 1. A NAME that matches no record and is neither a function of the manifest
nor a uuid gets one warning line on stderr, exit 0: records of functions since removed stay on the topic,
so only the topic can say.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import click
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from framework.cli.common import (
    bootstrap_option,
    cutoff_ms,
    duration,
    looks_like_uuid,
    need_broker,
    option,
    pass_settings,
    quiet_kafka_client,
    shown,
)
from framework.control.manifest import load_manifest
from framework.control.registry import Registry
from framework.errors import ManifestError
from framework.kafka.options import reader, said, security_options, stop_quietly
from framework.kafka.probe import BrokerProbe
from framework.kafka.topic_read import (
    CONNECT_TIMEOUT,
    PROBE_FETCH_BYTES,
    holds,
    reader_of,
    stall_message,
    started,
    why_unreachable,
)
from framework.settings import Settings

CLOSE_TIMEOUT = 5.0
"""Seconds closing the reader may take before the command exits anyway."""
PROBE_EVERY = 2.0
"""Seconds between the follower's probes of the cluster's id (`kafka/probe.py`), to notice a restarted
embedded broker."""
QUIET = 1.0
"""Seconds without new records after which the follower checks the next ones are of the log it was reading
(`_replaced`)."""
STALL_TIMEOUT = 30.0
"""Seconds without progress after which a read to the end gives up (a partition that never fills)."""
REQUIRED = ("invocation_id", "function", "uuid", "trigger", "ok", "started_at")


class Unreachable(Exception):
    """The broker could not be reached."""


class Stalled(Exception):
    """A read to the end made no progress for STALL_TIMEOUT seconds: the broker does not serve the rest."""


class Selection:
    """Which records to print."""

    def __init__(self, name: str | None, failed: bool, invocation: str | None, cutoff_ms: int | None) -> None:
        self.name = name
        self.uuid = None if name is None else name.lower()
        """NAME as a uuid: compared without case, as the HTTP API compares them."""
        self.failed = failed
        self.invocation = None if invocation is None else invocation.lower()
        self.cutoff_ms = cutoff_ms
        self.skipped = 0
        self.told = 0
        """Of `skipped`, how many were said on stderr already (`tell_skipped`)."""

    def tell_skipped(self) -> None:
        """Say on stderr how many records were skipped since the last time it was said."""
        if self.skipped > self.told:
            click.echo(
                f"faas logs: skipped {self.skipped - self.told} records that are not invocation records",
                err=True,
            )
            self.told = self.skipped

    def pick(self, timestamp: int, value: bytes | None) -> dict[str, Any] | None:
        """The record, parsed, if selected; `timestamp` (the Kafka record's, ms) stands in for `started_at`
        only when that is not a time."""
        try:
            record = orjson.loads(value or b"")  # not json: a lone surrogate escape is no text to print
        except ValueError:
            record = None
        if not isinstance(record, dict) or any(k not in record for k in REQUIRED):
            self.skipped += 1
            return None
        if self.cutoff_ms is not None and _started_ms(record["started_at"], timestamp) < self.cutoff_ms:
            return None
        named = self.name is None or self.name == record["function"]
        if not named and self.uuid != str(record["uuid"]).lower():
            return None
        if self.failed and record["ok"] is not False:
            return None
        if self.invocation is not None and str(record["invocation_id"]).lower() != self.invocation:
            return None
        return record


def _started_ms(started_at: object, fallback: int) -> int:
    """`started_at` (RFC 3339) as epoch milliseconds; `fallback` when it is not such a time."""
    if isinstance(started_at, str):
        with contextlib.suppress(ValueError):
            when = datetime.fromisoformat(started_at.upper())  # RFC 3339 allows `t` and `z` too
            if when.tzinfo is not None:
                return int(when.timestamp() * 1000)
    return fallback


def _duration(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return "?"
    return f"{ms:.1f}ms" if ms < 1000 else f"{ms / 1000:.2f}s"


def _cell(value: object) -> str:
    """A field of the invocation's line, on that one line, its control characters escaped: any field may
    hold what a producer, an event's sender or a handler wrote (records are checked only at their head)."""
    return shown(str(value), cell=True)


def render(record: dict[str, Any]) -> str:
    """The human form: the invocation's line, then its log lines indented. Every field has its control
    characters escaped (its log lines keep their line breaks); a field of the wrong type is shown as it
    is, or left out (`logs` that is not a list), never an error."""
    ok = record.get("ok") is True
    error: dict[str, Any] = record["error"] if isinstance(record.get("error"), dict) else {}
    outcome = (
        click.style("ok", fg="green")
        if ok
        else click.style(
            f"{_cell(error.get('type', 'failed'))}: {_cell(str(error.get('message', ''))[:300])}", fg="red"
        )
    )
    parts = [
        click.style(_cell(record.get("started_at")), dim=True),
        click.style(_cell(record.get("function")), bold=True),
        _cell(record.get("invocation_id")),
        _cell(record.get("trigger")),
        _cell(record.get("event") or "-"),
        outcome,
        _duration(record.get("duration_ms")),
        "cold" if record.get("cold_start") else "warm",
    ]
    if isinstance(record.get("attempt"), int) and record["attempt"] > 1:
        parts.append(f"attempt {record['attempt']}")
    if record.get("node"):
        parts.append(click.style(f"on {_cell(record['node'])}", dim=True))
    lines = ["  ".join(parts)]
    entries = record.get("logs")
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict):
            continue
        level = _cell(entry.get("level", ""))
        colour = "red" if level in ("ERROR", "CRITICAL") else "yellow" if level == "WARNING" else None
        text = shown(str(entry.get("message", ""))) + (" …" if entry.get("truncated") else "")
        when = _cell(entry.get("time", ""))[11:23]  # the record's line has the date
        shown_level = click.style(f"{level:<7}", fg=colour) if colour else f"{level:<7}"  # no bare reset code
        head = f"    {click.style(when, dim=True)} {shown_level} "
        body = text.replace("\n", "\n" + " " * 8)
        lines.append(head + body)
    return "\n".join(lines)


async def read(
    servers: str,
    settings: Settings,
    selection: Selection,
    follow: bool,
    show: Callable[[dict[str, Any]], None],
    caught_up: Callable[[], None] = lambda: None,
) -> None:
    """Print the selected records of FAAS_INVOCATIONS_TOPIC (ordered by started_at), call `caught_up`, then,
    with `follow`, print new ones."""
    topic = settings.invocations_topic
    consumer = reader(servers, settings, max_partition_fetch_bytes=8 * 1024 * 1024, metadata_max_age_ms=2000)
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            await consumer.start()
    except (KafkaError, OSError, TimeoutError) as exc:
        with contextlib.suppress(Exception):
            await consumer.stop()
        raise Unreachable(why_unreachable(exc) or type(exc).__name__) from exc
    except asyncio.CancelledError:  # Ctrl-C while connecting: closed, not left to the collector's warning
        with contextlib.suppress(Exception):
            await consumer.stop()
        raise
    try:
        tps = await _assign(consumer, topic, selection, follow)
        if not tps:
            caught_up()
            return
        end = await consumer.end_offsets(tps)
        # The selected records' bytes as fetched, with their start: a parsed record takes about three
        # times their size (59,553 records took 194 MB), and a busy hour holds a million.
        kept: list[tuple[int, bytes]] = []
        last_read: dict[TopicPartition, tuple[int, int]] = {}
        """Per partition, the offset and timestamp of the last record read (`_replaced`)."""
        stalled_at, last = time.monotonic(), -1
        stalled: str | None = None
        while True:
            positions = {tp: await consumer.position(tp) for tp in tps}
            if all(positions[tp] >= end[tp] for tp in tps):
                break
            progress = sum(positions.values())
            if progress != last:
                stalled_at, last = time.monotonic(), progress
            elif time.monotonic() - stalled_at > STALL_TIMEOUT:
                # Not the end: what was read is shown, and then why the rest is not (exit 1), unless
                # following, where new records may still come.
                left = {tp: at for tp, at in positions.items() if at < end[tp]}
                stalled = stall_message(topic, left, end, STALL_TIMEOUT)
                break
            for tp, messages in (await consumer.getmany(timeout_ms=300)).items():
                for m in messages:
                    if (r := selection.pick(m.timestamp, m.value)) is not None:
                        kept.append((_started_ms(r["started_at"], m.timestamp), m.value or b""))
                if messages:
                    last_read[tp] = (messages[-1].offset, messages[-1].timestamp)
        kept.sort(key=lambda item: item[0])  # by start: offsets follow the ends, and partitions differ
        for _, value in kept:
            show(orjson.loads(value))
        if stalled is not None and not follow:
            raise Stalled(stalled)
        if stalled is not None:
            click.echo(f"faas logs: {stalled}; following new records", err=True)
        caught_up()
        if not follow:
            return
        # Ctrl-C (and SIGTERM) only set a flag: the loop sees it within one fetch (0.5 s) and ends the
        # read itself, so the consumer is closed in order however busy the machine is.
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stopping.set)
        # A broker that comes back as another cluster (the embedded one restarted: empty, a new id) holds a
        # new topic: the offsets read so far mean nothing there. Tansu does not refuse a fetch beyond a
        # partition's end, so the reader would wait there, skipping the first records of the new topic.
        restarted = False

        async def seen(topics: set[str], new_cluster: bool) -> None:
            nonlocal restarted
            restarted = restarted or new_cluster

        probe = BrokerProbe(servers, security_options(settings), seen)
        logging.getLogger("faas.kafka").setLevel(logging.ERROR)  # its outage lines are the node's, not ours
        prober: AIOKafkaConsumer | None = None
        """A reader of small fetches for `_replaced`, started once the broker answers."""

        async def replaced(tps: set[TopicPartition]) -> bool:
            nonlocal prober
            if prober is None:
                with contextlib.suppress(Exception):  # tried again at the next look
                    prober = await started(reader_of(servers, settings, PROBE_FETCH_BYTES))
            read = {tp: last_read[tp] for tp in tps if tp in last_read}
            return prober is not None and bool(read) and await _replaced(prober, read)

        gone = f"no longer holds the records read of {topic} (restarted?)"
        next_probe = last_records = 0.0
        lost = False
        why = "is a new cluster (restarted?)"
        try:
            while not stopping.is_set():
                if loop.time() >= next_probe:
                    next_probe = loop.time() + PROBE_EVERY
                    if await probe.once() and not restarted and await replaced(set(last_read)):
                        restarted, why = True, gone
                    if lost != (probe.unreachable_for() is not None):
                        lost = not lost  # said once each way: the reader waits for the broker meanwhile
                        news = "does not answer: waiting for it" if lost else "answers again"
                        click.echo(f"faas logs: the broker at {servers} {news}", err=True)
                if restarted and await _start_over(consumer, topic):
                    restarted = False
                    last_read.clear()
                    click.echo(f"faas logs: {servers} {why}: reading {topic} from its start", err=True)
                    why = "is a new cluster (restarted?)"
                fetched = await consumer.getmany(timeout_ms=500)
                # Records after a quiet spell (an outage is one) may be a new log's, at offsets past the old
                # position: looked at before they are shown (they are read again from the start then).
                if fetched and loop.time() - last_records >= QUIET and await replaced(set(fetched)):
                    restarted, why = True, gone
                    continue
                if fetched:
                    last_records = loop.time()
                for tp, messages in fetched.items():
                    for m in messages:
                        new = selection.pick(m.timestamp, m.value)
                        if new is not None:
                            show(new)
                    if messages:
                        last_read[tp] = (messages[-1].offset, messages[-1].timestamp)
                selection.tell_skipped()
        finally:
            await probe.close()
            if prober is not None:
                await stop_quietly(prober, CLOSE_TIMEOUT)
    finally:
        await stop_quietly(consumer, CLOSE_TIMEOUT)  # with the broker gone, aiokafka's stop re-raises its
        # own fetch's CancelledError: not ours, and no traceback at a Ctrl-C


async def _replaced(prober: AIOKafkaConsumer, last_read: dict[TopicPartition, tuple[int, int]]) -> bool:
    """Whether a partition no longer holds, at its offset, the last record read of it (the same timestamp):
    a broker that came back empty under the same cluster id (Tansu started without `--cluster-id`) that the
    probe cannot tell. Its end offset alone cannot say: Tansu gives a partition's end as its last batch's
    base offset + 1, below records read, and a new log may have grown past the old position already. One
    small fetch per partition read, every PROBE_EVERY seconds; a fetch that fails says nothing."""
    for tp, (offset, timestamp) in list(last_read.items()):
        try:
            if not await holds(prober, tp, offset, timestamp):
                return True
        except (KafkaError, OSError):
            return False
    return False


async def _start_over(consumer: AIOKafkaConsumer, topic: str) -> bool:
    """Read every partition of `topic` from its start (a new cluster's topic); False while it has none yet
    (the nodes create it again with their next records)."""
    if topic not in await consumer.topics():
        return False
    partitions = consumer.partitions_for_topic(topic) or set()
    if not partitions:
        return False
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    await consumer.seek_to_beginning(*tps)
    return True


async def _assign(
    consumer: AIOKafkaConsumer, topic: str, selection: Selection, follow: bool
) -> list[TopicPartition]:
    """Assign every partition of `topic` and seek to `--since`; waits for the topic when following."""
    told = False
    while True:
        try:
            listed = topic in await consumer.topics()
            if listed and (partitions := consumer.partitions_for_topic(topic) or set()):
                break
        except KafkaError as exc:  # the broker went while we wait for the topic to appear
            if not follow:
                raise Unreachable(said(exc)) from exc
            listed = True  # unknown: not said to be missing
        if not told and not listed:
            told = True  # silence read as "no records", and a typo in the name went unseen
            click.echo(
                f"faas logs: the broker has no topic {topic} (FAAS_INVOCATIONS_TOPIC): no node has recorded "
                "an invocation there yet" + ("; waiting for it" if follow else ""),
                err=True,
            )
        if not follow:
            return []
        await asyncio.sleep(1)
    tps = [TopicPartition(topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    if selection.cutoff_ms is None:
        await consumer.seek_to_beginning(*tps)
        return tps
    found = await consumer.offsets_for_times({tp: selection.cutoff_ms for tp in tps})
    late = [tp for tp in tps if found.get(tp) is None]
    for tp, at in found.items():
        if at is not None:
            consumer.seek(tp, at.offset)
    if late:  # nothing that recent: only what comes next
        await consumer.seek_to_end(*late)
    return tps


def _invocation_id(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--invocation`: not empty (an unset shell variable), which matched nothing and exited 0 saying so."""
    if value is not None and not value.strip():
        raise click.BadParameter("is empty: give an invocation id, or leave the option out")
    return value


@click.command(name="logs")
@click.argument("name", required=False)
@option(
    "--since",
    callback=duration,
    help="How far back: 30s, 10m, 2h, 7d.  [default: 1h; the whole topic with --invocation]",
)
@option("--failed", is_flag=True, help="Only invocations that failed.")
@option("--invocation", "invocation_id", callback=_invocation_id, help="Only this invocation id.")
@option("--follow", "-f", is_flag=True, help="Keep printing new invocations until Ctrl-C.")
@option("--json", "as_json", is_flag=True, help="Print the records as JSON lines.")
@bootstrap_option
@pass_settings
def logs(
    settings: Settings,
    name: str | None,
    since: float | None,
    failed: bool,
    invocation_id: str | None,
    follow: bool,
    as_json: bool,
    bootstrap: str | None,
) -> None:
    """Invocation records and their logs, from every node (FAAS_INVOCATIONS_TOPIC). NAME: a function's name
    or uuid."""
    if since is None and invocation_id is None:
        since = 3600.0
    cutoff = None if since is None else cutoff_ms(since, time.time())
    selection = Selection(name, failed, invocation_id, cutoff)
    servers = need_broker(settings, bootstrap)
    colour = False if os.environ.get("NO_COLOR") else None  # None: click colours only on a terminal
    shown = 0

    def show(record: dict[str, Any]) -> None:
        nonlocal shown
        shown += 1
        text = json.dumps(record, ensure_ascii=False) if as_json else render(record)
        click.echo(text, color=colour)

    def caught_up() -> None:
        if not shown and invocation_id is not None:
            also = [f"of {name!r}"] if name is not None else []
            also += ["failed"] if failed else []
            also += ["started in the time --since covers"] if since is not None else []
            which = f" {', '.join(also)}" if also else ""
            click.echo(f"faas logs: no record of invocation {invocation_id!r}{which} on the topic", err=True)
        elif not shown and name is not None and _unknown(settings, name):
            click.echo(
                f"faas logs: no function named {name!r} in {settings.manifest}, and no invocation records "
                "of it matched",
                err=True,
            )

    quiet_kafka_client()
    try:
        asyncio.run(read(servers, settings, selection, follow, show, caught_up))
    except Unreachable as exc:
        click.echo(f"faas logs: cannot reach the Kafka broker at {servers}: {exc}", err=True)
        sys.exit(1)
    except Stalled as exc:
        click.echo(f"faas logs: {exc} (the records above are those read before)", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        pass  # Ctrl-C ends --follow: quietly, exit 0
    except BrokenPipeError:  # `faas logs | head`
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps the interpreter's exit flush quiet
        return
    selection.tell_skipped()


def _unknown(settings: Settings, name: str) -> bool:
    """NAME is no function of the manifest and not a uuid. Records of functions since removed (or deployed
    from elsewhere) are still on the topic, so this only explains an empty answer; an unreadable manifest
    proves nothing."""
    if looks_like_uuid(name):
        return False
    try:
        manifest = load_manifest(settings.manifest, check_handlers=False)
    except (ManifestError, OSError):
        return False
    return Registry(manifest).find(name) is None
