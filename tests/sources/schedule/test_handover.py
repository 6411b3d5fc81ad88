"""Scheduler leadership moving between two `faas run` nodes on the real broker: ticks that fell due while
no node led are caught up from the tick log, none twice (`framework/sources/schedule/catchup.py`)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from framework.kafka.embedded import EmbeddedBroker
from tests.support import Node, wait_for, write_project

StartNode = Callable[..., Node]

MODULES = {
    "sch": """
import json, os, time

def tick(payload, ctx):
    with open(os.path.join(os.environ["OUT"], "ticks"), "a") as f:
        f.write(json.dumps({"id": ctx.invocation_id, "t": time.time(), "pid": os.getpid()}) + "\\n")
    return "ok"
"""
}


def manifest(out: Path) -> str:
    return f"""
functions:
  - name: ticker
    uuid: dddddddd-0000-4000-8000-0000000000a1
    handler: functions.sch:tick
    state: productive
    env: {{OUT: "{out}"}}
    schedules:
      - cron: "* * * * * */1"
"""


def ticks(out: Path) -> list[dict[str, Any]]:
    path = out / "ticks"
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_text().splitlines() if line.strip()]


def tick_of(row: dict[str, Any]) -> int:
    return int(str(row["id"]).rsplit(":", 1)[1])


def owner(row: dict[str, Any], *candidates: Node) -> Node | None:
    """The node whose process is an ancestor of the instance that wrote `row`."""
    pid = int(row["pid"])
    while pid > 1:
        for node in candidates:
            if node.proc.pid == pid:
                return node
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return None
    return None


def test_leadership_moves_without_losing_or_doubling_a_tick(
    tmp_path: Path, broker: EmbeddedBroker, nodes: StartNode
) -> None:
    """1. A node with a per-second schedule whose handler appends its tick to a file; wait for its first
    ticks. 2. A second node joins the group (a rebalance: leadership may move to it); wait until it is
    ready and three more ticks fired. 3. SIGTERM the node that fires them. 4. Wait until the other node
    fired three ticks of its own after that.
    Result: every tick from the first one on fired exactly once: none lost while the group moved
    leadership (about 0.6 s at the join and 4 s after the SIGTERM on the embedded broker), none twice."""
    out = tmp_path / "out"
    out.mkdir()
    root = write_project(tmp_path / "proj", manifest(out), MODULES)
    a = nodes(root, broker.bootstrap).wait_ready()
    wait_for(lambda: len(ticks(out)) >= 2, 30, message="first ticks")
    b = nodes(root, broker.bootstrap, tag=a.tag).wait_ready()
    seen = len(ticks(out))
    wait_for(lambda: len(ticks(out)) >= seen + 3, 30, message="three ticks with both nodes up")
    leader = owner(ticks(out)[-1], a, b)
    assert leader is not None, "the ticking instance belongs to neither node"
    other = b if leader is a else a

    assert leader.stop() == 0, leader.tail()
    stopped = time.time()

    def taken() -> list[dict[str, Any]]:
        return [r for r in ticks(out) if r["t"] > stopped and owner(r, other) is other]

    wait_for(lambda: len(taken()) >= 3, 40, message=f"three ticks on the new leader\n{other.tail()}")
    fired = sorted(tick_of(r) for r in ticks(out))
    first, last = fired[0], fired[-1]
    lost = sorted(set(range(first, last + 1)) - set(fired))
    twice = sorted({t for t in fired if fired.count(t) > 1})
    assert not lost and not twice, f"lost {lost}, fired twice {twice} (ticks {first}..{last})\n{other.tail()}"


def test_a_node_restarted_with_sigterm_catches_up_on_its_downtime(
    tmp_path: Path, broker: EmbeddedBroker, nodes: StartNode
) -> None:
    """1. A node alone with a per-second schedule whose handler appends its tick to a file; wait for its
    first ticks. 2. SIGTERM it; let 4 s pass. 3. Start it again (same topics and group) and wait for three
    ticks of the new process.
    Result: every tick from the first one on fired exactly once, the ticks of the downtime included (the
    new process fires them late, from the tick log): the node's first table from the deployment log is its
    start, not a deploy."""
    out = tmp_path / "out"
    out.mkdir()
    root = write_project(tmp_path / "proj", manifest(out), MODULES)
    a = nodes(root, broker.bootstrap).wait_ready()
    wait_for(lambda: len(ticks(out)) >= 2, 30, message="first ticks")
    assert a.stop() == 0, a.tail()
    stopped = time.time()
    wait_for(lambda: time.time() >= stopped + 4, 10, message="a downtime of 4 s")
    b = nodes(root, broker.bootstrap, tag=a.tag).wait_ready()
    wait_for(
        lambda: len([r for r in ticks(out) if owner(r, b) is b]) >= 3, 40, message=f"new ticks\n{b.tail()}"
    )
    fired = sorted(tick_of(r) for r in ticks(out))
    first, last = fired[0], fired[-1]
    lost = sorted(set(range(first, last + 1)) - set(fired))
    twice = sorted({t for t in fired if fired.count(t) > 1})
    assert not lost and not twice, f"lost {lost}, fired twice {twice} (ticks {first}..{last})\n{b.tail()}"
