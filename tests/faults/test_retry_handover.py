"""A node of a pair stops (SIGTERM) or dies (SIGKILL) while an event waits between attempts (DESIGN.md 15).

The event must be answered by the other node, never zero times: a node that stops hands the waiting event
over at once (its record stays uncommitted) instead of waiting out the backoff; a killed node's partition
moves after the session timeout and its new owner redoes the event from attempt 1.
"""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from framework.kafka.embedded import EmbeddedBroker
from tests.support import Node, ce_headers, new_id, partitions, produce, topic_now, wait_for, write_project

pytestmark = pytest.mark.faults

BACKOFF = 25
"""Seconds between attempt 1 and 2: far longer than a graceful handover may take."""

MANIFEST = f"""
functions:
  - name: brittle
    uuid: 2e721e00-0000-4000-8000-0000000000f1
    handler: functions.b:brittle
    state: productive
    events: [rt.handover]
    retry: {{attempts: 1, backoff: {BACKOFF}, on: [FunctionError]}}
"""
MODULES = {
    "b": """
import json, os

async def brittle(payload, ctx):
    out = os.environ["T_OUT"]
    with open(os.path.join(out, "attempts.jsonl"), "a") as f:
        row = {"id": payload["id"], "node": os.environ["T_NODE"], "attempt": ctx.attempt}
        f.write(json.dumps(row) + "\\n")
    if os.path.exists(os.path.join(out, "broken")):
        raise RuntimeError("broken")
    return {"node": os.environ["T_NODE"], "attempt": ctx.attempt}
"""
}


def attempts(out: Path, eid: str) -> list[dict[str, Any]]:
    path = out / "attempts.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [r for r in rows if r["id"] == eid]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_event_between_attempts_is_answered_by_the_other_node(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node], sig: signal.Signals
) -> None:
    """1. Two nodes in one group; `brittle` fails while OUT/broken exists and retries after 25 s.
    2. Produce one event; once its first attempt failed on node X, remove `broken` (the fix) and send X
       the signal.
    Result: the event's only reply is ok, from the other node, whose attempt 1 succeeded. With SIGTERM, X
    exits 0 well before the backoff would have ended and logs the handover."""
    out = tmp_path / "out"
    out.mkdir()
    root = write_project(tmp_path / "proj", MANIFEST, MODULES)
    (out / "broken").write_text("")
    tag = "rh" + new_id()[:6]
    pair = {
        name: nodes(root, broker.bootstrap, tag=tag, env={"T_NODE": name, "T_OUT": str(out)}) for name in "ab"
    }
    for n in pair.values():
        n.wait_ready()

    def settled() -> bool:
        pa, pb = partitions(pair["a"]), partitions(pair["b"])
        return bool(pa and pb and not set(pa) & set(pb) and len(pa) + len(pb) == 6)

    wait_for(settled, timeout=60, message="both nodes owning a share")
    eid = new_id()
    produce(
        broker.bootstrap,
        pair["a"].events,
        [(b"k", json.dumps({"id": eid}).encode(), ce_headers("rt.handover", eid))],
    )
    first = wait_for(lambda: attempts(out, eid), timeout=60, message="attempt 1")[0]
    x = pair[first["node"]]
    other = "b" if first["node"] == "a" else "a"
    (out / "broken").unlink()
    signalled = time.monotonic()
    if sig == signal.SIGTERM:
        assert x.stop(signal.SIGTERM, timeout=BACKOFF) == 0, x.tail()
        assert time.monotonic() - signalled < BACKOFF - 5, "the stop waited out the backoff"
        assert "handed over" in x.log.read_text(), x.tail()
    else:
        x.kill()

    def replies() -> list[dict[str, Any]]:
        got = topic_now(broker.bootstrap, x.replies)
        return [r["value"] for r in got if isinstance(r["value"], dict) and r["value"].get("id") == eid]

    answered = wait_for(replies, timeout=120, interval=0.1, message=f"a reply to {eid}")
    assert len(answered) == 1 and answered[0]["ok"] is True, answered
    assert answered[0]["results"][0]["result"] == {"node": other, "attempt": 1}
    rows = attempts(out, eid)
    assert [(r["node"], r["attempt"]) for r in rows] == [(first["node"], 1), (other, 1)], rows


def test_rebalance_hands_a_waiting_event_over_without_waiting_out_its_backoff(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Node a alone; `brittle` fails its first attempt and waits 25 s for the next.
    2. The fix lands (`broken` removed) and node b joins the group: a rebalance.
    Result: the event is answered ok from a fresh attempt 1 (on whichever node owns its partition now)
    long before the 25 s backoff would have ended: the revocation did not wait for it."""
    out = tmp_path / "out"
    out.mkdir()
    root = write_project(tmp_path / "proj", MANIFEST, MODULES)
    (out / "broken").write_text("")
    tag = "rb" + new_id()[:6]
    a = nodes(root, broker.bootstrap, tag=tag, env={"T_NODE": "a", "T_OUT": str(out)}).wait_ready()
    eid = new_id()
    produce(
        broker.bootstrap, a.events, [(b"k", json.dumps({"id": eid}).encode(), ce_headers("rt.handover", eid))]
    )
    wait_for(lambda: attempts(out, eid), timeout=60, message="attempt 1")
    failed_at = time.monotonic()
    (out / "broken").unlink()
    nodes(root, broker.bootstrap, tag=tag, env={"T_NODE": "b", "T_OUT": str(out)})

    def replies() -> list[dict[str, Any]]:
        got = topic_now(broker.bootstrap, a.replies)
        return [r["value"] for r in got if isinstance(r["value"], dict) and r["value"].get("id") == eid]

    answered = wait_for(replies, timeout=60, interval=0.1, message=f"a reply to {eid}")
    assert time.monotonic() - failed_at < BACKOFF - 3, "the rebalance waited out the backoff"
    assert len(answered) == 1 and answered[0]["ok"] is True, answered
    assert answered[0]["results"][0]["result"]["attempt"] == 1
    assert [r["attempt"] for r in attempts(out, eid)] == [1, 1]
