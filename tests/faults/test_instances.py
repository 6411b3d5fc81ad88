"""Scenarios 3 and 4: an instance dies with a full batch, and a handler blocks its loop in C code."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from framework.kafka.embedded import EmbeddedBroker
from tests.faults.conftest import BUSY_A, BUSY_B, HOLD, STUCK
from tests.faults.kit import ReplyReader, events, producer, send_all
from tests.support import Node, metric, wait_for

pytestmark = pytest.mark.faults


def invoke_url(node: Node, uuid: str) -> str:
    return f"{node.url}/functions/{uuid}/invoke"


def error_type(r: httpx.Response) -> str | None:
    return r.json()["error"]["type"] if r.status_code != 200 else None


async def crash_with_full_batch(node: Node, broker: EmbeddedBroker, pidfile: Path) -> None:
    url = invoke_url(node, HOLD)
    p = await producer(broker.bootstrap)
    async with ReplyReader(broker.bootstrap, node.replies) as reader, httpx.AsyncClient(timeout=60) as client:
        assert (await client.post(url, json={"sleep": 0})).status_code == 200  # a warm instance
        calls = [
            asyncio.create_task(client.post(url, json={"sleep": 20, "pidfile": str(pidfile)}))
            for _ in range(50)
        ]
        ids, records = events("fault.hold", 50, keys=50, payload={"sleep": 20})
        await send_all(p, node.events, records)
        await asyncio.to_thread(
            wait_for,
            lambda: metric(node, "faas_inflight_requests", function="hold") >= 100,
            20,
            0.1,
            "100 held",
        )
        # Every held call writes the file (truncated, then written): read it until it holds a pid.
        written = await asyncio.to_thread(
            wait_for, lambda: (text := pidfile.read_text().strip()).isdigit() and text, 10, 0.05, "the pid"
        )
        victim = int(written)
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()

        done, pending = await asyncio.wait(calls, timeout=10)
        assert not pending, f"{len(pending)} HTTP requests still hanging 10 s after the crash"
        http = Counter(error_type(t.result()) for t in done)
        assert not await reader.wait(ids, 10), "events still unanswered 10 s after the crash"
        kafka = Counter(reader.first[i]["error"]["type"] if reader.first[i]["error"] else None for i in ids)
        waited = time.monotonic() - killed
        print(
            f"\ncrash with 100 held: HTTP {dict(http)}, Kafka {dict(kafka)}, "
            f"all answered {waited:.2f} s after the kill"
        )
        assert http == {"InstanceCrashed": 50} and kafka == {"InstanceCrashed": 50}
        assert all(t.result().status_code == 502 for t in done)

        after = await asyncio.gather(*(client.post(url, json={"sleep": 0}) for _ in range(10)))
        assert [r.status_code for r in after] == [200] * 10, [r.text for r in after]
        assert {r.json()["result"]["pid"] for r in after} != {victim}, "served by the dead instance?"
        more, records = events("fault.hold", 10, payload={"sleep": 0})
        await send_all(p, node.events, records)
        assert not await reader.wait(more, 20)
        assert all(reader.first[i]["ok"] for i in more), [reader.first[i] for i in more]
    await p.stop()


def test_instance_crash_with_100_in_flight(
    project: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Function `hold` (one instance, concurrency 500) gets 50 HTTP requests and 50 Kafka events that
       each sleep 20 s; the node's in-flight gauge shows all 100 held.
    2. The instance process is SIGKILLed.
    Result: all 100 are answered within 10 s (502 / reply error `InstanceCrashed`), far before their 20 s;
    10 HTTP requests and 10 events afterwards succeed on a fresh instance."""
    node = nodes(project, broker.bootstrap).wait_ready()
    asyncio.run(crash_with_full_batch(node, broker, project / "hold.pid"))
    assert node.proc.poll() is None


async def stuck_among_others(node: Node) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=200)) as client:
        warm = await asyncio.gather(
            *(client.post(invoke_url(node, u), json={}) for u in (STUCK, BUSY_A, BUSY_B))
        )
        assert [r.status_code for r in warm] == [200] * 3
        old_pid = warm[0].json()["result"]["pid"]
        started = time.monotonic()
        blocker = asyncio.create_task(client.post(invoke_url(node, STUCK), json={"block": True}))
        # The blocker first, so its instance's loop is blocked for the rest: wait until the node holds it.
        await asyncio.to_thread(
            wait_for,
            lambda: metric(node, "faas_inflight_requests", function="stuck") >= 1,
            10,
            0.02,
            "the blocking request in flight",
        )
        neighbours = [asyncio.create_task(client.post(invoke_url(node, STUCK), json={})) for _ in range(4)]
        others = [
            asyncio.create_task(client.post(invoke_url(node, u), json={})) for u in [BUSY_A, BUSY_B] * 25
        ]
        _, pending = await asyncio.wait([blocker, *neighbours, *others], timeout=15)
        assert not pending, f"{len(pending)} requests hanging"
        elapsed = time.monotonic() - started
        after = await client.post(invoke_url(node, STUCK), json={})
        return {
            "blocker": blocker.result(),
            "neighbours": [t.result() for t in neighbours],
            "others": [t.result() for t in others],
            "elapsed": elapsed,
            "after": after,
            "old_pid": old_pid,
        }


def test_c_level_block_fails_only_its_instance(project: Path, nodes: Callable[..., Node]) -> None:
    """1. Function `stuck` (timeout 1 s, one instance) blocks its loop in `select.select` for 8 s; 4 more
       requests wait on that instance; 50 requests to two other functions (2.5 s each) are in flight.
    2. The instance cannot cancel the request at 1 s: the node kills it 1 s later.
    Result: the blocked request is 504 `Timeout`; its 4 neighbours fail (`Timeout`/`InstanceCrashed`); all
    50 others are 200; nothing waits for the 8 s; the next `stuck` request is 200 on a fresh instance; the
    instance logged the blocked loop first."""
    node = nodes(project, None, kafka=False).wait_ready()
    out = asyncio.run(stuck_among_others(node))
    blocker: httpx.Response = out["blocker"]
    assert blocker.status_code == 504 and error_type(blocker) == "Timeout", blocker.text
    assert {error_type(r) for r in out["neighbours"]} <= {"Timeout", "InstanceCrashed"}
    assert all(r.status_code in (502, 504) for r in out["neighbours"])
    others = Counter(r.status_code for r in out["others"])
    print(f"\nC-level block: others {dict(others)}, everything answered in {out['elapsed']:.2f} s")
    assert others == {200: 50}, [r.text for r in out["others"] if r.status_code != 200][:3]
    assert out["elapsed"] < 7, "something waited for the blocked call to end"
    assert out["after"].status_code == 200 and out["after"].json()["result"]["pid"] != out["old_pid"]
    log = node.tail(400)
    assert "blocked the event loop" in log and "killing it" in log
    assert orjson.loads(httpx.get(f"{node.url}/healthz").content) == {"status": "ok"}
