"""A direct invocation whose caller hung up is cancelled (`sources/http/callers.py`), on a real node."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest

from tests.support import Node, metric, wait_for, write_project

SLOW = "cacacaca-0000-4000-8000-000000000001"
MANIFEST = f"""
functions:
  - name: slow
    uuid: {SLOW}
    handler: functions.slow:handle
    state: productive
    instances: {{max: 1, concurrency: 2, queue: 2}}
"""
MODULES = {
    "slow": """
    import asyncio

    async def handle(payload, ctx):
        ctx.log.info("sleeping %s", payload)
        await asyncio.sleep(payload)
        return payload
    """
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = write_project(tmp_path_factory.mktemp("callers"), MANIFEST, MODULES)
    n = Node(root, None, kafka=False).wait_ready()
    yield n
    n.kill()


async def _hang_up_once_held(node: Node, calls: int, payload: float) -> None:
    """Open `calls` connections, each sending a whole invocation of `slow`; once the node holds them all
    (running or queued: the in-flight gauge), close every connection without reading an answer."""
    body = json.dumps(payload).encode()
    head = (
        f"POST /functions/{SLOW}/invoke HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    writers = []
    for _ in range(calls):
        _, writer = await asyncio.open_connection("127.0.0.1", node.port)
        writer.write(head + body)
        await writer.drain()
        writers.append(writer)
    await asyncio.to_thread(
        wait_for, lambda: metric(node, "faas_inflight_requests", function="slow") >= calls, 30, 0.05, "held"
    )
    for writer in writers:
        writer.close()


def test_calls_whose_callers_hung_up_give_their_places_to_callers_still_there(node: Node) -> None:
    """1. `slow` has one instance of 2 slots and a queue of 2. 2. Four callers each ask for a 4 s call and
    hang up once the node holds all four: two run, two are queued. 3. A fifth caller asks for a 0.1 s call.
    Result: the node lets go of the four within 3 s, well before they would have ended, and the fifth is
    answered 200, not 429 Overloaded; the four are recorded as cancelled (not run to their end as if
    someone waited), and counted under status 499."""
    url = f"{node.url}/functions/{SLOW}/invoke"
    asyncio.run(_hang_up_once_held(node, 4, 4))
    # Let go of well before the 4 s the calls would run (they are watched from 0.1-0.2 s on).
    wait_for(lambda: metric(node, "faas_inflight_requests", function="slow") == 0, 3, 0.05, "places freed")
    r = httpx.post(url, json=0.1, timeout=30)
    assert r.status_code == 200 and r.json()["result"] == 0.1, r.text

    def abandoned() -> list[dict[str, object]]:
        records = httpx.get(f"{node.url}/invocations", params={"function": "slow"}, timeout=30).json()
        return [x for x in records["invocations"] if x["ok"] is False]  # the other calls succeed

    records = wait_for(lambda: len(abandoned()) == 4 and abandoned(), 30, message="four records")
    assert all(x["error"]["type"] == "Cancelled" for x in records), records
    assert all(x["duration_ms"] < 3000 for x in records), records
    metrics = httpx.get(f"{node.url}/metrics", timeout=30).text
    line = next(ln for ln in metrics.splitlines() if 'status="499"' in ln and "_total" in ln)
    assert line.endswith(" 4.0"), line
    # The outcome label is the record's error type, as Timeout and Overloaded are.
    assert metric(node, "faas_invocations_total", function="slow", outcome="Cancelled") == 4


def test_a_call_whose_caller_stays_is_not_cancelled(node: Node) -> None:
    """1. A caller waits for a 1 s call (longer than the watch's rounds). Result: 200 with its result."""
    r = httpx.post(f"{node.url}/functions/{SLOW}/invoke", json=1, timeout=30)
    assert r.status_code == 200 and r.json()["result"] == 1, r.text
