"""Deploy: one function's new revision, from publication until the node serves it, among 50+ productive ones.

The node under test serves the benchmark project, where every function is productive (well over 50). Each
sample publishes a new revision of `deployed` the way `faas deploy` does (working copy read, code zipped,
the deployment log read to its end, code then revision record written and acknowledged) with one env
value changed, then polls the function over one keep-alive connection until it answers with the new
revision number (its handler returns `ctx.revision`). The contract asks for under 1 s (median).

Baseline: the floor of anything Kafka carries to a node, on the same broker: one record produced
(acknowledged) to a one-partition topic until a consumer that follows the topic has fetched it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from functools import partial

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from benchmarks.env import Env, baseline, guarded
from benchmarks.httpclient import Connection, encode_request
from benchmarks.stats import Series
from framework.control.kafka_log import KafkaLog
from framework.control.log_state import LogState
from framework.control.manifest import load_manifest
from framework.control.revisions import Revision
from framework.control.working_copy import CodeZips, candidates
from framework.settings import Settings

FUNCTION = "deployed"
POLL = 0.005
"""Seconds between polls of the function while waiting for the new revision."""
LIMIT = 30.0
"""Seconds one sample may take before it counts as failed."""


async def _served(env: Env, conn: Connection, number: int) -> None:
    raw = encode_request("POST", "127.0.0.1", env.port("node"), env.invoke_path(FUNCTION), b"null")
    deadline = time.monotonic() + LIMIT
    while True:
        status, body = await asyncio.wait_for(conn.request(raw), LIMIT)
        if status == 200 and orjson.loads(body)["result"] == number:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"revision {number} not served within {LIMIT:g} s: {status} {body[:200]!r}")
        await asyncio.sleep(POLL)


async def _deploy(env: Env, log: KafkaLog, conn: Connection, sample: int) -> float:
    started = time.perf_counter()
    manifest = load_manifest(env.project.manifest, check_handlers=False)
    found = candidates(manifest, CodeZips(log.settings.max_code_bytes), f"bench sample {sample}")
    spec = next(c for c in found.values() if c.spec.name == FUNCTION)
    assert spec.revision is not None
    changed = {**spec.revision.spec, "env": {"BENCH_SAMPLE": str(sample)}}
    rev, new = await log.publish(Revision(**{**spec.revision.to_json(), "spec": changed}), spec.code)
    if not new:
        raise RuntimeError(f"sample {sample}: the publication was not a new revision")
    await _served(env, conn, rev.revision)
    return (time.perf_counter() - started) * 1000


async def _kafka_round_trip(topic: str, consumer: AIOKafkaConsumer, p: AIOKafkaProducer) -> float:
    tp = TopicPartition(topic, 0)
    marker = uuid.uuid4().bytes
    started = time.perf_counter()
    await p.send_and_wait(topic, value=marker, partition=0)
    while True:
        batch = await consumer.getmany(tp, timeout_ms=int(LIMIT * 1000))
        if any(m.value == marker for m in batch.get(tp, [])):
            return (time.perf_counter() - started) * 1000
        if time.perf_counter() - started > LIMIT:
            raise RuntimeError("the baseline record was never fetched")


async def run(env: Env) -> list[Series]:
    median = Series("deploy one function to served (50+ productive)", "ms", "lower", "Kafka produce-to-fetch")
    out = [median]
    env.node_ok()
    settings = Settings(manifest=env.project.manifest, deployments_topic=env.topics["deployments"])
    log = KafkaLog(LogState(), settings, env.bootstrap, follow=False)
    topic = f"bench.roundtrip.{uuid.uuid4().hex[:8]}"
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap, linger_ms=0)
    consumer = AIOKafkaConsumer(bootstrap_servers=env.bootstrap, fetch_max_wait_ms=100, group_id=None)
    conn = await Connection.open("127.0.0.1", env.port("node"))
    try:
        await log.start()
        await producer.start()
        await consumer.start()
        await producer.send_and_wait(topic, value=b"create", partition=0)
        consumer.assign([TopicPartition(topic, 0)])
        await consumer.seek_to_end(TopicPartition(topic, 0))
        for sample in range(env.profile.repeats):
            b = await baseline(out, partial(_kafka_round_trip, topic, consumer, producer))
            if b is not None:
                median.baseline_samples.append(b)
            ms = await guarded(out, partial(_deploy, env, log, conn, sample))
            if ms is not None:
                median.samples.append(ms)
    finally:
        conn.close()
        await log.stop()
        await producer.stop()
        await consumer.stop()
    return out
