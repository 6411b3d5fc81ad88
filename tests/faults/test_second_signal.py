"""A second SIGTERM while a node drains: what is in flight is cut at once, and no event is answered failed."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from framework.kafka.embedded import EmbeddedBroker
from tests.support import Node, ce_headers, consume, new_id, produce, wait_for, write_project

pytestmark = pytest.mark.faults

MANIFEST = """
functions:
  - name: slow
    uuid: 2e721e00-0000-4000-8000-0000000000f2
    handler: functions.s:slow
    state: productive
    events: [second.signal]
"""
MODULES = {
    "s": """
import asyncio, os, pathlib

async def slow(payload, ctx):
    out = pathlib.Path(os.environ["T_OUT"])
    (out / f"started-{os.environ['T_NODE']}").touch()
    while (out / "slow").exists():
        await asyncio.sleep(0.1)
    return {"node": os.environ["T_NODE"]}
"""
}


def test_a_second_sigterm_cuts_running_events_and_the_group_redoes_them(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Node a (FAAS_SHUTDOWN_GRACE=60) runs an event whose function waits while OUT/slow exists.
    2. SIGTERM; once a is draining, SIGTERM again.
    3. `slow` is removed and node b joins the same group.
    Result: a exits 0 within seconds of the second signal (it waited for the whole grace), having sent no
    reply and no dead letter for the event (a cut event is not a failed one); b answers it ok."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "slow").write_text("")
    root = write_project(tmp_path / "proj", MANIFEST, MODULES)
    tag = "ss" + new_id()[:6]
    env = {"T_OUT": str(out), "FAAS_SHUTDOWN_GRACE": "60"}
    a = nodes(root, broker.bootstrap, tag=tag, env={**env, "T_NODE": "a"}).wait_ready()
    eid = new_id()
    produce(broker.bootstrap, a.events, [(b"k", b"{}", ce_headers("second.signal", eid))])
    wait_for(lambda: (out / "started-a").exists(), 60, message="the event running on a")
    a.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "received: draining" in a.log.read_text(), 10, message="a draining")
    second = time.monotonic()
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(30) == 0, a.tail()
    assert time.monotonic() - second < 20, a.tail()

    def replies() -> list[dict[str, Any]]:
        got = consume(broker.bootstrap, a.replies, 100_000, timeout=3, ids={eid})
        return [r["value"] for r in got if isinstance(r["value"], dict) and r["value"].get("id") == eid]

    assert replies() == [], "the cut event was answered"
    assert consume(broker.bootstrap, a.deadletter, 100, timeout=2) == []
    (out / "slow").unlink()
    nodes(root, broker.bootstrap, tag=tag, env={**env, "T_NODE": "b"})
    answered = wait_for(replies, timeout=90, interval=1, message="b's reply")
    assert [json.dumps(r["results"][0]["result"]) for r in answered] == ['{"node": "b"}'], answered
    assert answered[0]["ok"] is True
