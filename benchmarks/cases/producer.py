"""What producing invocation records costs the node's process, per record, against raw aiokafka batches.

The `costs` group measures records end to end (throughput with records on and off), where the producer's
share is lost in the noise of a saturated machine. This group takes that share alone: the same rendered
records (`record_json.render`, three functions, about 400 bytes each) go to the suite's broker once through
a `RecordSender` (`observe/sender.py`: bounded buffer, a round per 0.5 s, fresh metadata each round, one
batch per partition) and once through the strongest raw form of the same work: aiokafka's own
`create_batch`/`send_batch` per partition, each key's partition computed once, the sender's codec, every
acknowledgement awaited, no buffer and no metadata round. Both run in this process on the suite's loop, in
alternating rounds, each on a fresh 6-partition topic (Tansu's in-memory log slows as a topic grows).

Series: `records producer CPU per record` (us, this process's CPU time from the first record offered to
the last acknowledged, divided by the records); its `extra` holds the broker's CPU per record on both
sides. The sender's round is started (producer up, metadata known) by one record before the clock starts,
as on a node that has been serving; the raw producer is started before its clock too.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from functools import partial
from typing import Any

from aiokafka import AIOKafkaProducer

from benchmarks import procs
from benchmarks.env import Env, baseline, guarded
from benchmarks.eventload import create_topics
from benchmarks.stats import Series
from framework.kafka.partitioner import KeyHashes
from framework.observe.record_json import render
from framework.observe.records import RecordCounters
from framework.observe.sender import BATCH_BYTES, COMPRESSION, MAX_BATCH, RecordSender
from framework.settings import Settings

FUNCTIONS = 3
ROUND_TIMEOUT = 120.0
"""Seconds a round may take before it counts as failed."""

Record = tuple[bytes, bytes]


def _records(count: int) -> list[Record]:
    uuids = [str(uuid.uuid4()) for _ in range(FUNCTIONS)]
    now = time.time()
    out: list[Record] = []
    for i in range(count):
        fn, name = uuids[i % FUNCTIONS], f"fn-{i % FUNCTIONS}"
        traceparent = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
        value = render(
            str(uuid.uuid4()), name, fn, 1, "direct", None, None, traceparent, "bench-node:8080",
            f"{name}-1a2b3c4d", now, 0.042, False, 1, None, None,
        )  # fmt: skip
        out.append((fn.encode(), value))
    return out


def _cpu(env: Env) -> tuple[float, float]:
    broker = procs.cpu_seconds(env.broker_pid) if env.broker_pid else 0.0
    return time.process_time(), broker


def _per_record(before: tuple[float, float], count: int, env: Env) -> tuple[float, float]:
    after = _cpu(env)
    return (after[0] - before[0]) / count * 1e6, (after[1] - before[1]) / count * 1e6


async def _until(done: Any, what: str) -> None:
    deadline = time.monotonic() + ROUND_TIMEOUT
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not done within {ROUND_TIMEOUT:g} s")
        await asyncio.sleep(0.01)


async def _sender(env: Env, records: list[Record], broker_cpu: list[float]) -> float:
    topic = f"bench.producer.sender.{uuid.uuid4().hex[:8]}"
    await create_topics(env.bootstrap, [topic], 6)
    settings = Settings(invocations_topic=topic, records_buffer=len(records) + 1)
    counters = RecordCounters(None)
    sender = RecordSender(env.bootstrap, settings, counters)
    sender.start()
    try:
        sender.offer(*records[0])  # the producer started and the topic's metadata known, as on a live node
        counters.made += 1
        await _until(lambda: counters.sent + counters.dropped >= 1, "the first record")
        before = _cpu(env)
        for key, value in records:
            counters.made += 1
            sender.offer(key, value)
        await _until(lambda: counters.sent + counters.dropped >= counters.made, "sending")
        node, broker = _per_record(before, len(records), env)
        if counters.dropped:
            raise RuntimeError(f"{counters.dropped} records dropped")
    finally:
        await sender.stop(1)
    broker_cpu.append(broker)
    return node


async def _raw(env: Env, records: list[Record], broker_cpu: list[float]) -> float:
    topic = f"bench.producer.raw.{uuid.uuid4().hex[:8]}"
    await create_topics(env.bootstrap, [topic], 6)
    producer = AIOKafkaProducer(
        bootstrap_servers=env.bootstrap, acks="all", max_batch_size=BATCH_BYTES, compression_type=COMPRESSION
    )
    await producer.start()
    try:
        partitions = sorted(await producer.partitions_for(topic))
        before = _cpu(env)
        hashes = KeyHashes()  # the partitioner's rule, each key's hash computed once, as the sender's
        for start in range(0, len(records), MAX_BATCH):  # the rounds a sender would make of them
            lanes: dict[int, list[Record]] = {}
            for key, value in records[start : start + MAX_BATCH]:
                lanes.setdefault(hashes.partition(key, partitions), []).append((key, value))
            acks = []
            for partition, items in lanes.items():
                builder = producer.create_batch()
                for key, value in items:
                    if builder.append(key=key, value=value, timestamp=None) is None:
                        acks.append(await producer.send_batch(builder, topic, partition=partition))
                        builder = producer.create_batch()
                        builder.append(key=key, value=value, timestamp=None)
                acks.append(await producer.send_batch(builder, topic, partition=partition))
            await asyncio.gather(*acks)
        node, broker = _per_record(before, len(records), env)
    finally:
        await producer.stop()
    broker_cpu.append(broker)
    return node


async def run(env: Env) -> list[Series]:
    count = env.profile.producer_records
    cpu = Series(
        f"records producer CPU per record, {count} records",
        "us",
        "lower",
        "raw aiokafka create_batch/send_batch per partition, same records, same process",
    )
    if not env.bootstrap:
        cpu.fail(env.node_error or "no broker")
        return [cpu]
    records = _records(count)
    broker_on: list[float] = []
    broker_off: list[float] = []
    for rep in range(env.profile.repeats):
        for sender_side in (True, False) if rep % 2 == 0 else (False, True):
            if sender_side:
                value = await guarded([cpu], partial(_sender, env, records, broker_on))
                if value is not None:
                    cpu.samples.append(value)
            else:
                value = await baseline([cpu], partial(_raw, env, records, broker_off))
                if value is not None:
                    cpu.baseline_samples.append(value)
    cpu.extra |= {
        "record_bytes": round(statistics.mean(len(v) for _, v in records)),
        "broker_cpu_us_per_record": round(statistics.median(broker_on), 2) if broker_on else None,
        "baseline_broker_cpu_us_per_record": round(statistics.median(broker_off), 2) if broker_off else None,
    }
    return [cpu]
