"""The invoker before the node serves what its deployment log says (framework/invoker.py `serving`)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from framework.errors import Overloaded
from framework.invoker import Invoker
from tests.sources.http_fakes import ECHO, FakeNode


async def test_before_the_log_is_read_an_event_waits_and_a_direct_call_is_refused() -> None:
    """1. An invoker whose registry is not served yet (a node still reading its deployment log), with a
    listener of `ping` in it. 2. A direct call; a `ping` event. 3. The node serves the registry.
    Result: the direct call is Overloaded, saying the node is starting (it was NotFound: no such
    function); the event waits, and is answered by the listener once served (it was answered with no
    listener at all, and its offset committed: the event never ran)."""
    node = FakeNode()
    invoker = Invoker(cast(Any, node.runtime), node.invoker.registry, node.metrics, serving=False)
    with pytest.raises(Overloaded, match="the node is starting"):
        await invoker.direct(ECHO, b"{}")
    event = asyncio.ensure_future(invoker.event("ping", "e-1", b"{}"))
    for _ in range(20):  # the event's task runs as far as it can (the fake runtime answers at once)
        await asyncio.sleep(0)
    assert not event.done(), "answered before the node knew who listens"
    invoker.serving()
    reply = await asyncio.wait_for(event, 5)
    assert [spec.name for spec, _ in reply.results] == ["echo"]
    result = await invoker.direct(ECHO, b"{}")
    assert result.invocation_id
