"""A direct invocation whose caller hung up is cancelled (`sources/http/callers.py`), on a real node."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.support import Node, wait_for, write_project

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


async def _abandon(url: str, payload: float, after: float) -> None:
    async with httpx.AsyncClient() as client:
        with pytest.raises(httpx.TimeoutException):
            await client.post(url, json=payload, timeout=after)


def test_calls_whose_callers_hung_up_give_their_places_to_callers_still_there(node: Node) -> None:
    """1. `slow` has one instance of 2 slots and a queue of 2. 2. Four callers each ask for a 4 s call and
    hang up after 0.3 s: two calls run, two are queued. 3. A fifth caller asks for a 0.1 s call.
    Result: the fifth is answered 200 within 2 s, not 429 nor after the abandoned calls; the four are
    recorded as cancelled (not run to their end as if someone waited), and counted under status 499."""
    url = f"{node.url}/functions/{SLOW}/invoke"

    async def four() -> None:
        await asyncio.gather(*(_abandon(url, 4, 0.3) for _ in range(4)))

    asyncio.run(four())
    started = time.monotonic()
    r = httpx.post(url, json=0.1, timeout=30)
    assert r.status_code == 200 and r.json()["result"] == 0.1, r.text
    assert time.monotonic() - started < 2, "the fifth call waited behind calls nobody waits for"

    def abandoned() -> list[dict[str, object]]:
        records = httpx.get(f"{node.url}/invocations", params={"function": "slow"}, timeout=30).json()
        return [x for x in records["invocations"] if x["ok"] is False]  # the other calls succeed

    records = wait_for(lambda: len(abandoned()) == 4 and abandoned(), 30, message="four records")
    assert all(x["error"]["type"] == "Cancelled" for x in records), records
    assert all(x["duration_ms"] < 3000 for x in records), records
    metrics = httpx.get(f"{node.url}/metrics", timeout=30).text
    line = next(ln for ln in metrics.splitlines() if 'status="499"' in ln and "_total" in ln)
    assert line.endswith(" 4.0"), line


def test_a_call_whose_caller_stays_is_not_cancelled(node: Node) -> None:
    """1. A caller waits for a 1 s call (longer than the watch's rounds). Result: 200 with its result."""
    r = httpx.post(f"{node.url}/functions/{SLOW}/invoke", json=1, timeout=30)
    assert r.status_code == 200 and r.json()["result"] == 1, r.text
