"""Invocation records through a broker outage: the invocations never wait for their records, and every
record is either sent or counted as dropped (DESIGN.md section 13)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from framework.kafka.embedded import EmbeddedBroker, free_port
from tests.support import LOGS, Node, run_async, wait_for, write_project

ECHO = "0a0a0a0a-0000-4000-8000-000000000001"
MANIFEST = f"""
functions:
  - {{name: echo, uuid: {ECHO}, handler: functions.out:echo, state: productive}}
"""
MODULES = {
    "out": """
        async def echo(payload, ctx):
            ctx.log.info("during %s", payload)
            return payload
    """
}
PROMPT = 5.0
"""Seconds any one invocation may take during the outage (they take milliseconds; the machine is shared)."""


def counts(n: Node) -> dict[str, float]:
    text = httpx.get(f"{n.url}/metrics", timeout=10).text
    names = (
        "faas_invocation_records_total",
        "faas_invocation_records_sent_total",
        "faas_invocation_records_dropped_total",
    )
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in names:
                out[sample.name.split("_")[-2]] = sample.value
    return out  # keys: records (made), sent, dropped


async def _during_outage(n: Node) -> tuple[list[str], float]:
    """100 direct invocations, 20 at a time; returns their ids and the slowest answer's seconds."""
    slowest = 0.0
    ids: list[str] = []
    gate = asyncio.Semaphore(20)
    async with httpx.AsyncClient(timeout=30) as client:

        async def one(i: int) -> None:
            nonlocal slowest
            async with gate:
                t0 = time.monotonic()
                r = await client.post(f"{n.url}/functions/{ECHO}/invoke", json=i)
                slowest = max(slowest, time.monotonic() - t0)
                assert r.status_code == 200 and r.json()["result"] == i, r.text
                ids.append(r.json()["invocation_id"])

        await asyncio.gather(*(one(i) for i in range(100)))
    return ids, slowest


async def _topic_ids(bootstrap: str, topic: str, want: int, timeout: float) -> set[str]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        metadata_max_age_ms=500,
    )
    await consumer.start()
    found: set[str] = set()
    deadline = time.monotonic() + timeout
    try:
        while len(found) < want and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=300)).values():
                found |= {json.loads(m.value)["invocation_id"] for m in msgs}
    finally:
        await consumer.stop()
    return found


@pytest.mark.usefixtures("broker_kills")
def test_records_during_a_broker_outage(tmp_path: Path, nodes: Callable[..., Node]) -> None:
    """1. A node on a broker of its own invokes echo 5 times; their records are sent.
    2. The broker is SIGKILLed; 100 direct invocations run, 20 at a time.
    3. A new (empty) broker starts on the same port.
    Result: every invocation of step 2 answers 200 within PROMPT seconds; all 100 records are in
    GET /invocations at once; once the buffer drains, sent + dropped = made = 105, and the records counted
    sent after the outage are on the new broker's topic."""
    port = free_port()
    own = [EmbeddedBroker(port=port, log_path=LOGS / f"broker-records-{port}.log").start()]
    try:
        root = write_project(tmp_path, MANIFEST, MODULES)
        n = nodes(root, own[0].bootstrap).wait_ready(90)
        for i in range(5):
            assert httpx.post(f"{n.url}/functions/{ECHO}/invoke", json=i, timeout=30).status_code == 200
        wait_for(lambda: counts(n).get("sent") == 5, 30, 0.2, "the first 5 records sent")

        own[0].kill()
        ids, slowest = run_async(_during_outage(n))
        assert slowest < PROMPT, f"an invocation took {slowest:.1f} s during the outage"
        listed = httpx.get(f"{n.url}/invocations", params={"limit": "200"}, timeout=10).json()["invocations"]
        assert set(ids) <= {r["invocation_id"] for r in listed}

        own.append(EmbeddedBroker(port=port, log_path=LOGS / f"broker-records-{port}-2.log").start())

        def settled() -> dict[str, float] | None:
            c = counts(n)
            return c if c.get("records") == 105 and c["sent"] + c["dropped"] == 105 else None

        final = wait_for(settled, 120, 0.5, f"sent + dropped = made ({counts(n)})")
        after = int(final["sent"]) - 5
        on_topic = run_async(_topic_ids(own[1].bootstrap, n.invocations, after, 30)) if after else set()
        assert len(on_topic) >= after and on_topic <= set(ids)
        print(
            f"\nrecords through an outage: slowest invocation {slowest * 1000:.0f} ms; "
            f"{after} sent after it, {int(final['dropped'])} dropped"
        )
        assert n.proc.poll() is None
    finally:
        for b in own:
            b.stop()
