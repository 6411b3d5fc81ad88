"""Scenario 5: the broker dies while events flow, and a new one comes back on the same port."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from framework.kafka.embedded import EmbeddedBroker, free_port
from framework.tasks import within
from tests.faults.conftest import TICK
from tests.faults.kit import ReplyReader, events, producer, send_all
from tests.support import LOGS, Node, ce_headers, metric, new_id, run_async, wait_for, write_project

pytestmark = pytest.mark.faults


class Flow:
    """Produces one event every 20 ms for as long as it runs, remembering when each was acknowledged."""

    def __init__(self, p: AIOKafkaProducer, topic: str) -> None:
        self.p, self.topic = p, topic
        self.acked: dict[str, float] = {}
        self.failed = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        stale = False
        while True:
            eid = new_id()
            try:
                # After a failure, fresh metadata first: the restarted memory broker acknowledges a write to
                # a partition it no longer has (the old broker's) and never serves it, which would count an
                # event lost by this producer against the node (the node's reply producer does the same).
                if stale and not await within(self.p.client.force_metadata_update(), 2):
                    raise ConnectionError("no metadata yet")
                stale = False
                await within(
                    self.p.send_and_wait(
                        self.topic, b"{}", key=eid.encode(), headers=ce_headers("fault.tick", eid)
                    ),
                    2,
                )
                self.acked[eid] = time.monotonic()
            except Exception:  # the broker is away: the flow goes on trying
                self.failed += 1
                stale = True
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        with contextlib.suppress(Exception):
            await within(self.p.stop(), 5)


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

            joins = node.log.read_text().count("joined group")
            second = EmbeddedBroker(port=port, log_path=LOGS / f"broker-outage-{port}-2.log").start()
            own.append(second)
            back = time.monotonic()
            while await readyz(client, node) != 200:
                if time.monotonic() - back >= 45:
                    why = (await client.get(f"{node.url}/readyz")).text  # which part did not come back
                    raise AssertionError(f"not ready 45 s after the broker came back: {why}\n{node.tail()}")
                await asyncio.sleep(0.2)
            # Ready means joined to the new broker's group (a stale "joined" said 200 seconds before).
            assert node.log.read_text().count("joined group") > joins, node.tail()
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
        run_async(outage(node, own))
        assert node.proc.poll() is None and node.proc.pid == pid
    finally:
        for b in own:
            b.stop()


def test_a_node_stopped_while_its_broker_is_down_stops_cleanly(
    project: Path, nodes: Callable[..., Node]
) -> None:
    """1. A node on a broker of its own, ready. 2. The broker is SIGKILLed; `/readyz` turns 503 and the
    node's Kafka clients go on retrying. 3. SIGTERM. Result: the node exits 0 within its bounds, having
    logged its `stopped:` summary, with no traceback: every step of the stop ran, though the clients' stops
    met fetches cancelled in their retry backoff."""
    port = free_port()
    own = EmbeddedBroker(port=port, log_path=LOGS / f"broker-stop-{port}.log").start()
    try:
        node = nodes(project, own.bootstrap).wait_ready()
        own.kill()
        wait_for(lambda: unready(node), timeout=15, interval=0.2, message="readyz 503 once the broker died")
        code = node.stop(signal.SIGTERM, timeout=40)
        out = node.tail(400)
        assert code == 0, out
        assert "Traceback" not in out and "stopped: " in out, out
    finally:
        own.stop()


TICKER = """
functions:
  - name: ticker
    uuid: eeeeeeee-0000-4000-8000-000000000001
    handler: functions.o:tick
    state: productive
    env: {{OUT: "{out}"}}
    schedules:
      - cron: "* * * * * */1"
"""
TICKER_MODULES = {
    "o": """
import json, os, time

def tick(payload, ctx):
    with open(os.path.join(os.environ["OUT"], "ticks"), "a") as f:
        f.write(json.dumps({"id": ctx.invocation_id, "t": time.time()}) + "\\n")
"""
}


def ticks(out: Path) -> list[int]:
    """The tick numbers (a scheduled invocation's id ends with its tick) the ticker recorded, in order."""
    path = out / "ticks"
    if not path.exists():
        return []
    return [int(orjson.loads(line)["id"].rsplit(":", 1)[1]) for line in path.read_text().splitlines() if line]


def unready(node: Node) -> bool:
    return httpx.get(f"{node.url}/readyz", timeout=5).status_code == 503


def test_schedules_keep_firing_while_the_broker_is_down(tmp_path: Path, nodes: Callable[..., Node]) -> None:
    """1. A node on a broker of its own, with a per-second schedule; two ticks fire.
    2. The broker is SIGKILLed; `/readyz` turns 503.
    Result: while the broker is still down (`/readyz` 503 before and after), the schedule fires at least
    eight more ticks, each once, on consecutive seconds."""
    out = tmp_path / "out"
    out.mkdir()
    root = write_project(tmp_path / "proj", TICKER.format(out=out), TICKER_MODULES)
    port = free_port()
    own = EmbeddedBroker(port=port, log_path=LOGS / f"broker-sched-{port}.log").start()
    try:
        node = nodes(root, own.bootstrap).wait_ready()
        wait_for(lambda: len(ticks(out)) >= 2, timeout=30, message=f"two ticks\n{node.tail()}")
        own.kill()
        wait_for(lambda: unready(node), timeout=15, interval=0.2, message="readyz 503 once the broker died")
        seen = len(ticks(out))
        wait_for(
            lambda: len(ticks(out)) >= seen + 8, timeout=40, message=f"ticks in the outage\n{node.tail()}"
        )
        assert unready(node), "the broker is down: readiness must still say so"
        during = ticks(out)[seen:]
        assert during == list(range(during[0], during[0] + len(during))), (
            f"ticks skipped or doubled: {during}"
        )
        assert node.proc.poll() is None
    finally:
        own.stop()


async def reply_after_outage(node: Node, own: EmbeddedBroker) -> dict[str, Any]:
    """Produce one `fault.hold` event (5 s); freeze the broker while it runs; let it go once the handler
    finished in the outage; returns the reply read after it."""
    assert own.proc is not None
    eid = new_id()
    p = await producer(own.bootstrap)
    try:
        await send_all(p, node.events, [(b"k", b'{"sleep": 5}', ce_headers("fault.hold", eid))])
    finally:
        await p.stop()

    def holding() -> bool:
        return metric(node, "faas_inflight_requests", function="hold") >= 1

    await asyncio.to_thread(wait_for, holding, 30, 0.05, "the event in flight")
    own.proc.send_signal(signal.SIGSTOP)  # the broker stops answering: an outage that keeps its data
    try:
        await asyncio.to_thread(wait_for, lambda: unready(node), 20, 0.2, "readyz 503 in the outage")
        await asyncio.to_thread(wait_for, lambda: not holding(), 30, 0.1, "the handler done in the outage")
        assert await asyncio.to_thread(unready, node), "the broker is away: readyz must still say so"
    finally:
        own.proc.send_signal(signal.SIGCONT)
    async with ReplyReader(own.bootstrap, node.replies) as reader:
        missing = await reader.wait({eid}, 90)
        assert not missing, f"the reply due in the outage never arrived after it\n{node.tail()}"
        return reader.first[eid]


def test_replies_due_in_an_outage_arrive_after_it(project: Path, nodes: Callable[..., Node]) -> None:
    """1. A node on a broker of its own takes an event whose handler runs 5 s (the in-flight gauge shows it).
    2. The broker is frozen (SIGSTOP) while it runs: `/readyz` turns 503; the handler finishes in the outage
       (the gauge drops back to 0), so its reply cannot be sent then.
    3. The broker answers again (SIGCONT).
    Result: the reply arrives after the outage, `ok`, with the handler's result (at-least-once)."""
    port = free_port()
    own = EmbeddedBroker(port=port, log_path=LOGS / f"broker-replies-{port}.log").start()
    try:
        node = nodes(project, own.bootstrap).wait_ready()
        reply = run_async(reply_after_outage(node, own))
        assert reply["ok"] is True, reply
        assert reply["results"][0]["function"] == "hold" and "pid" in reply["results"][0]["result"], reply
        assert node.proc.poll() is None
    finally:
        own.stop()


async def replies_across_a_restart(node: Node, own: list[EmbeddedBroker]) -> tuple[list[str], set[str]]:
    port = own[0].port
    bootstrap = f"127.0.0.1:{port}"
    ids, records = events("fault.tick", 40, keys=40)
    p = await producer(bootstrap)
    try:
        async with ReplyReader(bootstrap, node.replies) as reader:
            await send_all(p, node.events, records)
            assert not await reader.wait(ids, 30), f"events before the restart unanswered\n{node.tail()}"
    finally:
        await within(p.stop(), 5)
    own[0].kill()
    own.append(EmbeddedBroker(port=port, log_path=LOGS / f"broker-restart-{port}-2.log").start())
    fresh, records = events("fault.tick", 40, keys=40)
    p = await producer(bootstrap)
    try:
        await send_all(p, node.events, records, retry_for=20)  # at once: the node has not rejoined yet
    finally:
        await within(p.stop(), 5)
    async with ReplyReader(bootstrap, node.replies) as reader:
        return fresh, await reader.wait(fresh, 60)


def test_replies_reach_a_restarted_memory_broker_whatever_its_partitions(
    project: Path, nodes: Callable[..., Node]
) -> None:
    """1. A node on a broker of its own answers 40 events over 40 keys (its reply producer now knows the
    replies topic's partitions). 2. The broker is SIGKILLed and a new one starts on its port at once
    (memory-only: no topics). 3. 40 new events over 40 keys are produced to it right away, before the node
    rejoined. Result: every new event's reply is readable on the new broker. (A producer still writing to
    the old broker's partitions gets them acknowledged by the new one, which then never serves them.)"""
    port = free_port()
    own = [EmbeddedBroker(port=port, log_path=LOGS / f"broker-restart-{port}.log").start()]
    try:
        node = nodes(project, own[0].bootstrap).wait_ready()
        fresh, missing = run_async(replies_across_a_restart(node, own))
        assert not missing, f"{len(missing)} of {len(fresh)} replies unreadable\n{node.tail()}"
    finally:
        for b in own:
            b.stop()
