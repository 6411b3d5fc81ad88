"""Scenario 5: the broker dies while events flow, and a new one comes back on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaProducer

from framework.kafka.embedded import EmbeddedBroker, free_port
from tests.faults.conftest import TICK
from tests.faults.kit import ReplyReader, events, producer, send_all
from tests.support import LOGS, Node, ce_headers, new_id

pytestmark = pytest.mark.faults


class Flow:
    """Produces one event every 20 ms for as long as it runs, remembering when each was acknowledged."""

    def __init__(self, p: AIOKafkaProducer, topic: str) -> None:
        self.p, self.topic = p, topic
        self.acked: dict[str, float] = {}
        self.failed = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            eid = new_id()
            try:
                await asyncio.wait_for(
                    self.p.send_and_wait(
                        self.topic, b"{}", key=eid.encode(), headers=ce_headers("fault.tick", eid)
                    ),
                    2,
                )
                self.acked[eid] = time.monotonic()
            except Exception:  # the broker is away: the flow goes on trying
                self.failed += 1
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.p.stop(), 5)


async def readyz(client: httpx.AsyncClient, node: Node) -> int:
    return (await client.get(f"{node.url}/readyz")).status_code


async def outage(node: Node, own: list[EmbeddedBroker]) -> None:
    """Kill `own[0]` under load, start a second broker on its port (appended to `own`), check recovery."""
    port = own[0].port
    bootstrap = f"127.0.0.1:{port}"
    invoke = f"{node.url}/functions/{TICK}/invoke"
    async with httpx.AsyncClient(timeout=10) as client:
        flow = Flow(await producer(bootstrap), node.events)
        try:
            async with ReplyReader(bootstrap, node.replies) as reader:
                assert await reader.wait_records(20, 30) >= 20, (
                    f"no events answered before the outage\n{node.tail()}"
                )
            own[0].kill()
            died = time.monotonic()
            went_unready = None
            direct: list[float] = []
            while went_unready is None or len(direct) < 20:  # HTTP keeps working meanwhile
                t0 = time.monotonic()
                r = await client.post(invoke, json={})
                assert r.status_code == 200, r.text
                direct.append(time.monotonic() - t0)
                if went_unready is None and await readyz(client, node) == 503:
                    went_unready = time.monotonic() - died
                assert went_unready is not None or time.monotonic() - died < 10, (
                    "readyz 200 10 s into the outage"
                )
                await asyncio.sleep(0.05)
            body = (await client.get(f"{node.url}/readyz")).json()
            assert any("kafka" in reason for reason in body["reasons"]), body

            second = EmbeddedBroker(port=port, log_path=LOGS / f"broker-outage-{port}-2.log").start()
            own.append(second)
            back = time.monotonic()
            while await readyz(client, node) != 200:
                assert time.monotonic() - back < 45, (
                    f"not ready 45 s after the broker came back\n{node.tail()}"
                )
                await asyncio.sleep(0.2)
            ready_again = time.monotonic() - back
            async with ReplyReader(bootstrap, node.replies) as reader:
                ids, records = events("fault.tick", 50)
                p = await producer(bootstrap)
                try:
                    await send_all(p, node.events, records, retry_for=20)
                finally:
                    await p.stop()
                assert not await reader.wait(ids, 45), f"events after the outage unanswered\n{node.tail()}"
                flowed = [eid for eid, at in flow.acked.items() if at > back]
                assert len(flowed) > 10, "the flow never resumed on the new broker"
                missing = await reader.wait(flowed, 30)
                assert not missing, (
                    f"{len(missing)} of {len(flowed)} events acknowledged by the new broker unanswered"
                )
                assert all(reader.first[i]["ok"] for i in ids)
        finally:
            await flow.stop()
    print(
        f"\nbroker outage: readyz 503 after {went_unready:.1f} s; direct invocations during it "
        f"max {max(direct) * 1000:.0f} ms; ready {ready_again:.1f} s after the broker came back; "
        f"{len(flowed)} flowing events answered after it"
    )


def test_broker_outage_and_return(project: Path, nodes: Callable[..., Node]) -> None:
    """1. A node on a broker of its own; events flow (one every 20 ms) and are answered.
    2. The broker is SIGKILLed while they flow.
    3. Direct HTTP invocations go on; `/readyz` turns 503 (naming Kafka) within 10 s.
    4. A new broker starts on the same port (memory-only: it knows no topics, offsets or groups).
    Result: without a restart, `/readyz` is 200 again, 50 new events are all answered `ok`, and so is
    every flowing event the new broker acknowledged."""
    port = free_port()
    own = [EmbeddedBroker(port=port, log_path=LOGS / f"broker-outage-{port}.log").start()]
    try:
        node = nodes(project, own[0].bootstrap).wait_ready()
        pid = node.proc.pid
        asyncio.run(outage(node, own))
        assert node.proc.poll() is None and node.proc.pid == pid
    finally:
        for b in own:
            b.stop()
