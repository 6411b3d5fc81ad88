"""Every schedule's last run on every node (framework/sources/schedule/last_runs.py): the store, a follower
of the tick log on the real broker (its group, its window, broken records, a topic made late), and two
`faas run` nodes listing the same `last`."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from framework.kafka.embedded import EmbeddedBroker, free_port
from framework.kafka.options import ensure_topics
from framework.settings import Settings
from framework.sources.schedule import last_runs
from framework.sources.schedule.last_runs import WINDOW, Follower, LastRuns
from framework.sources.schedule.ticklog import MESSAGE_CHARS, TOPIC_CONFIGS, TickLog
from tests.support import Node, SameIdBroker, wait_for, write_project

KEY = "dddddddd-0000-4000-8000-0000000000c1:s0123456789ab"
OTHER = "dddddddd-0000-4000-8000-0000000000c1:s0123456789ac"


def result(at: str = "2026-12-07T10:00:00+00:00", error: dict[str, str] | None = None) -> dict[str, Any]:
    return {"at": at, "ok": error is None, "duration_ms": 1.5, "error": error}


def test_the_newest_tick_wins_and_the_same_tick_keeps_the_one_noted_last() -> None:
    runs = LastRuns()
    assert runs.get(KEY) is None
    runs.note(KEY, 20, result("2026-12-07T10:00:20+00:00"))
    runs.note(KEY, 10, result("2026-12-07T10:00:10+00:00"))
    got = runs.get(KEY)
    assert got == result("2026-12-07T10:00:20+00:00"), "an older tick's result, noted late, is not the last"
    again = result("2026-12-07T10:00:20+00:00", {"type": "Timeout", "message": "ran past 1 s"})
    runs.note(KEY, 20, again)
    assert runs.get(KEY) == again
    assert runs.get(OTHER) is None


async def until(condition: Callable[[], object], within: float, message: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not within {within} s")
        await asyncio.sleep(0.02)


def settings_for(tag: str, group: str = "faas") -> Settings:
    return Settings(scheduler_topic=f"t.ticks.{tag}", node_name=f"node-{tag}", kafka_group_id=group)


async def produce(bootstrap: str, topic: str, records: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
    await producer.start()
    try:
        for key, value in records:
            await (await producer.send(topic, value, key.encode(), partition=0))
    finally:
        await producer.stop()


async def test_a_follower_takes_its_groups_results_and_skips_broken_records(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A follower starts before the topic exists. 2. The topic is made; a tick log of the follower's
    group writes a tick with no result yet, then results (one failed, its message longer than a record
    holds); another group's leader writes a newer result; garbage records follow. 3. A good result after
    the garbage.
    Result: the follower waits quietly for the topic; it holds its own group's newest results (the long
    message cut), not the other group's; the garbage is skipped with a warning and what follows still
    applies."""
    tag = uuid.uuid4().hex[:8]
    settings = settings_for(tag)
    runs = LastRuns()
    follower = Follower(settings, broker.bootstrap, runs)
    follower.start()
    try:
        await asyncio.sleep(1.0)  # the follower looks for the topic and finds none
        assert "cannot read" not in caplog.text, "a topic the election has not made yet is no failure"
        await ensure_topics(broker.bootstrap, [settings.scheduler_topic], 1, {}, TOPIC_CONFIGS)
        log = TickLog(settings, broker.bootstrap)
        log.start()
        log.record(KEY, 100)
        log.record(OTHER, 100)
        failed = result("2026-12-07T10:01:40+00:00", {"type": "HandlerError", "message": "x" * 10_000})
        log.result(OTHER, 100, failed)
        await log.stop()
        await until(lambda: runs.get(OTHER) is not None, 15, "the failed run's result")
        got = runs.get(OTHER)
        assert got is not None and got["ok"] is False and got["error"]["type"] == "HandlerError"
        assert len(got["error"]["message"]) == MESSAGE_CHARS and got["error"]["message"].endswith("...")
        assert runs.get(KEY) is None, "a tick whose run has not ended has no result"

        other_group = orjson.dumps({"tick": 200, "node": "n", "group": "elsewhere", "last": result()})
        await produce(
            broker.bootstrap,
            settings.scheduler_topic,
            [
                (OTHER, other_group),
                (KEY, b"not json"),
                (KEY, orjson.dumps({"tick": 150, "node": "n", "last": {"at": "yesterday"}})),
                (KEY, orjson.dumps({"tick": 150, "node": "n", "last": {**result(), "ok": "yes"}})),
                (KEY, orjson.dumps({"tick": 150, "node": "n", "last": {**result(), "duration_ms": -1}})),
                (KEY, orjson.dumps({"tick": 150, "node": "n", "group": "faas", "last": result()})),
            ],
        )
        await until(lambda: runs.get(KEY) is not None, 15, "the result after the garbage")
        assert runs.get(KEY) == result()
        assert runs.get(OTHER) == got, "another group's result is not this group's last run"
        # Three: the record that is not JSON holds no `"last"`, so it is not read (the catch-up says it).
        assert "3 record(s) of" in caplog.text and 'its "last" is not' in caplog.text
    finally:
        await follower.stop()


async def test_a_follower_reads_only_its_window(broker: EmbeddedBroker) -> None:
    """1. A result in the topic. 2. A follower whose clock is past the window after it starts.
    3. Another result. Result: only the second one is known."""
    tag = uuid.uuid4().hex[:8]
    settings = settings_for(tag)
    await ensure_topics(broker.bootstrap, [settings.scheduler_topic], 1, {}, TOPIC_CONFIGS)
    old = orjson.dumps({"tick": 1, "node": "n", "last": result()})
    await produce(broker.bootstrap, settings.scheduler_topic, [(OTHER, old)])
    runs = LastRuns()
    follower = Follower(settings, broker.bootstrap, runs, clock=lambda: time.time() + WINDOW + 60)
    follower.start()
    try:
        new = orjson.dumps({"tick": 2, "node": "n", "last": result("2026-12-07T11:00:00+01:00")})
        # Written until seen: the follower may still be finding where its window starts.
        deadline = time.monotonic() + 20
        while runs.get(KEY) is None and time.monotonic() < deadline:
            await produce(broker.bootstrap, settings.scheduler_topic, [(KEY, new)])
            await asyncio.sleep(1.0)
        assert runs.get(KEY) == result("2026-12-07T11:00:00+01:00")
        assert runs.get(OTHER) is None, "a result stamped before the window is not read"
    finally:
        await follower.stop()


@pytest.mark.usefixtures("broker_kills")
async def test_a_follower_reads_a_log_restarted_under_the_same_cluster_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. A broker that keeps its cluster id across restarts (Tansu's default); 30 results in the topic; a
    follower reads them. 2. The broker is killed and started again, empty, and one result written there.
    Result: the follower has it: it saw its log no longer holds the last record read, and read the new one
    from its start (it waited at offset 30 of the new log, past every record there)."""
    monkeypatch.setattr(last_runs, "CHECK_EVERY", 0.5)
    port = free_port()
    first = SameIdBroker(port=port, log_path=tmp_path / "first.log").start()
    second: EmbeddedBroker | None = None
    settings = settings_for(uuid.uuid4().hex[:8])
    runs = LastRuns()
    follower = Follower(settings, first.bootstrap, runs)
    try:
        await ensure_topics(first.bootstrap, [settings.scheduler_topic], 1, {}, TOPIC_CONFIGS)
        old = [(OTHER, orjson.dumps({"tick": t, "node": "n", "last": result()})) for t in range(30)]
        await produce(first.bootstrap, settings.scheduler_topic, old)
        follower.start()
        await until(lambda: runs.get(OTHER) is not None, 20, "the old results")
        first.kill()
        second = SameIdBroker(port=port, log_path=tmp_path / "second.log").start()
        await ensure_topics(second.bootstrap, [settings.scheduler_topic], 1, {}, TOPIC_CONFIGS)
        new = orjson.dumps({"tick": 99, "node": "n", "last": result("2026-12-07T12:00:00+00:00")})
        await produce(second.bootstrap, settings.scheduler_topic, [(KEY, new)])
        await until(lambda: runs.get(KEY) is not None, 30, "the result written after the restart")
    finally:
        await follower.stop()
        first.stop()
        if second is not None:
            second.stop()


MODULES = {
    "sch": """
def tick(payload, ctx):
    raise ValueError("failed " + ctx.invocation_id)
"""
}

MANIFEST = """
functions:
  - name: ticker
    uuid: dddddddd-0000-4000-8000-0000000000c2
    handler: functions.sch:tick
    state: productive
    schedules:
      - cron: "* * * * * */1"
"""


def last_of(node: Node) -> dict[str, Any] | None:
    try:
        listed = httpx.get(node.url + "/functions", timeout=5).json()["functions"]
    except httpx.HTTPError:
        return None
    found: dict[str, Any] | None = listed[0]["schedules"][0]["last"]
    return found


def test_two_nodes_list_the_same_last_run(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Two nodes of one group; a per-second schedule whose handler fails naming its invocation id.
    2. Poll `GET /functions` on both.
    Result: both list a `last` (only one of them is the leader that ran it), failed with the handler's
    message, whose tick is the `at`; the follower's moves on as the schedule keeps running."""
    root = write_project(tmp_path / "proj", MANIFEST, MODULES)
    a = nodes(root, broker.bootstrap).wait_ready()
    b = nodes(root, broker.bootstrap, tag=a.tag).wait_ready()
    seen: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}

    def both_listed_twice() -> bool:
        for name, node in (("a", a), ("b", b)):
            last = last_of(node)
            if last is not None and (not seen[name] or seen[name][-1] != last):
                seen[name].append(last)
        return all(len(runs) >= 2 for runs in seen.values())

    wait_for(both_listed_twice, 40, message=f"a last run on both nodes: {seen}\n{b.tail()}")
    for runs in seen.values():
        for last in runs:
            assert last["ok"] is False and last["error"]["type"] == "FunctionError", last
            tick = int(last["error"]["message"].rsplit(":", 1)[1])
            assert last["at"] == time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(tick)), last
        assert runs[-1]["at"] > runs[0]["at"]
