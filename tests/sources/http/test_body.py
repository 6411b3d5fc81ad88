"""Reading request bodies (sources/http/body.py) at the ASGI level: the stop's deadline for bodies still on
their way. The stalled-body bound and the limits are tested on a real node (test_http.py)."""

from __future__ import annotations

import asyncio

import pytest
from starlette.types import Message, Receive

from framework.errors import Overloaded
from framework.sources.http.body import BodyReader

SCOPE = {"type": "http", "headers": [(b"content-length", b"10")]}


def stalled_after(first: bytes) -> tuple[asyncio.Event, Receive]:
    """An ASGI `receive` that gives `first` (more to come), then waits for a byte that never comes."""
    never = asyncio.Event()
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": first, "more_body": True}
        await never.wait()
        return {"type": "http.request", "body": b"", "more_body": False}

    return never, receive


async def test_the_stop_ends_a_read_in_progress_and_refuses_later_ones() -> None:
    """1. A body brings 3 of its 10 bytes, then nothing (the body timeout is 30 s).
    2. The node stops: `drain_by` now. 3. Another read starts after that.
    Result: the first read ends at once with Overloaded saying how many bytes came; the second is
    Overloaded before reading anything; a body that arrived whole before the stop was read as usual."""
    reader = BodyReader(limit=100, idle=30)
    _, receive = stalled_after(b'"ab')
    whole = await reader.read(
        {"type": "http", "headers": []},
        _whole(b'{"k": 1}'),
    )
    assert whole == b'{"k": 1}'
    reading = asyncio.ensure_future(reader.read(SCOPE, receive))
    await asyncio.sleep(0)
    assert not reading.done()
    reader.drain_by(asyncio.get_running_loop().time())
    with pytest.raises(Overloaded, match=r"the node is stopping: .*\(3 bytes of the 10 its Content-Length"):
        await asyncio.wait_for(reading, 5)
    _, later = stalled_after(b"1")
    with pytest.raises(Overloaded, match="the node is stopping: the request body was not read"):
        await reader.read(SCOPE, later)


async def test_a_read_that_ends_before_the_deadline_is_not_touched() -> None:
    """1. The stop's deadline is 5 s away. 2. A body arrives whole meanwhile.
    Result: it is read as usual."""
    reader = BodyReader(limit=100, idle=30)
    reader.drain_by(asyncio.get_running_loop().time() + 5)
    assert await reader.read({"type": "http", "headers": []}, _whole(b"[1, 2]")) == b"[1, 2]"


def _whole(body: bytes) -> Receive:
    async def receive() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    return receive
