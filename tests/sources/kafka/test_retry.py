"""Retries of Kafka events and dead letters of failed ones, end to end (DESIGN.md sections 4 and 15).

One `faas run` node on the test broker; the handlers append one JSON line per attempt to `attempts.jsonl`
(start and end times, attempt, invocation id, trigger), so the tests see every attempt as it happened.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from framework.kafka.embedded import EmbeddedBroker
from tests.support import (
    Node,
    ce_headers,
    consume,
    consume_raw,
    new_id,
    produce,
    run_cli,
    wait_for,
    write_project,
)

FLAKY = "2e721e00-0000-4000-8000-000000000011"
NOPE = "2e721e00-0000-4000-8000-000000000012"
ORDERED = "2e721e00-0000-4000-8000-000000000013"
FIXABLE = "2e721e00-0000-4000-8000-000000000014"
ONCE = "2e721e00-0000-4000-8000-000000000015"
STEADY = "2e721e00-0000-4000-8000-000000000016"


def manifest(out: Path) -> str:
    return f"""
functions:
  - name: flaky
    uuid: {FLAKY}
    handler: functions.rt:flaky
    state: productive
    events: [rt.flaky]
    timeout: 1
    env: {{OUT: "{out}"}}
    retry: {{attempts: 3, backoff: 0.1, on: [Timeout]}}
  - name: nope
    uuid: {NOPE}
    handler: functions.rt:nope
    state: productive
    events: [rt.nope]
    env: {{OUT: "{out}"}}
    retry: {{attempts: 3, backoff: 0.1, on: [Timeout, InstanceCrashed]}}
  - name: ordered
    uuid: {ORDERED}
    handler: functions.rt:ordered
    state: productive
    events: [rt.order]
    env: {{OUT: "{out}"}}
    retry: {{attempts: 2, backoff: 2, on: [FunctionError]}}
  - name: fixable
    uuid: {FIXABLE}
    handler: functions.rt:fixable
    state: productive
    events: [rt.fix]
    env: {{OUT: "{out}"}}
    retry: {{attempts: 1, backoff: 0.1, on: [FunctionError]}}
  - name: once
    uuid: {ONCE}
    handler: functions.rt:once
    state: productive
    events: [rt.pair]
    env: {{OUT: "{out}"}}
    retry: {{attempts: 1, backoff: 0.2, on: [FunctionError]}}
  - name: steady
    uuid: {STEADY}
    handler: functions.rt:steady
    state: productive
    events: [rt.pair]
    env: {{OUT: "{out}"}}
"""


MODULES = {
    "rt": """
import asyncio, json, os, time

def _seen(ctx, payload, phase):
    with open(os.path.join(os.environ["OUT"], "attempts.jsonl"), "a") as f:
        f.write(json.dumps({"fn": ctx.function, "id": (payload or {}).get("id"), "attempt": ctx.attempt,
                            "invocation": ctx.invocation_id, "trigger": ctx.trigger, "phase": phase,
                            "t": time.time()}) + "\\n")

async def flaky(payload, ctx):
    _seen(ctx, payload, "start")
    if ctx.attempt < 3:
        await asyncio.sleep(5)
    return {"attempt": ctx.attempt}

async def nope(payload, ctx):
    _seen(ctx, payload, "start")
    raise RuntimeError(f"nope on attempt {ctx.attempt}")

async def ordered(payload, ctx):
    _seen(ctx, payload, "start")
    if payload.get("fail_first") and ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    _seen(ctx, payload, "end")
    return {"attempt": ctx.attempt}

async def fixable(payload, ctx):
    _seen(ctx, payload, "start")
    if os.path.exists(os.path.join(os.environ["OUT"], "broken")):
        raise ValueError("broken until fixed")
    return {"fixed": True, "attempt": ctx.attempt}

async def once(payload, ctx):
    _seen(ctx, payload, "start")
    if ctx.attempt == 1:
        raise RuntimeError("only the first attempt fails")
    return {"attempt": ctx.attempt}

async def steady(payload, ctx):
    _seen(ctx, payload, "start")
    await asyncio.sleep(1)
    _seen(ctx, payload, "end")
    return "steady"
"""
}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory, broker: EmbeddedBroker) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("retry")
    out = base / "out"
    out.mkdir()
    root = write_project(base / "proj", manifest(out), MODULES)
    node = Node(root, broker.bootstrap).wait_ready()
    yield {"node": node, "out": out, "root": root}
    node.kill()


def seen(out: Path, id_: str) -> list[dict[str, Any]]:
    path = out / "attempts.jsonl"
    rows = (
        [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []
    )
    return [r for r in rows if r["id"] == id_]


def replies_of(broker: EmbeddedBroker, node: Node, ids: set[str], timeout: float = 60) -> dict[str, Any]:
    """The replies to `ids` (each id -> its records, in topic order); fails unless every id has one."""
    got: dict[str, Any] = {}
    for r in consume(broker.bootstrap, node.replies, 100_000, timeout=timeout, ids=ids):
        if isinstance(r["value"], dict) and r["value"].get("id") in ids:
            got.setdefault(r["value"]["id"], []).append(r)
    assert set(got) == ids, f"no reply to {ids - set(got)}; log:\n{node.tail()}"
    return got


def dead_letters(broker: EmbeddedBroker, node: Node, eid: str, timeout: float = 30) -> list[Any]:
    def copies() -> list[Any]:
        every = asyncio.run(consume_raw(broker.bootstrap, node.deadletter, 100_000, wait=3))
        return [d for d in every if dict(d.headers or ()).get("ce_id") == eid.encode()]

    return list(wait_for(copies, timeout=timeout, interval=0.5, message=f"a dead-letter copy of {eid}"))


def metric(node: Node, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{node.url}/metrics", timeout=5).text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_timeouts_retried_until_the_third_attempt_succeeds(
    rig: dict[str, Any], broker: EmbeddedBroker
) -> None:
    """1. `flaky` (timeout 1 s, retry {attempts: 3, backoff: 0.1, on: [Timeout]}) sleeps 5 s on attempts 1
       and 2 and answers on attempt 3.
    2. Produce one event to it.
    Result: one reply, ok true with attempt 3's result; three attempts with three invocation ids, the
    second at least 0.1 s and the third at least 0.2 s after the one before timed out; two retries counted
    under Timeout; nothing dead-lettered."""
    node, out = rig["node"], rig["out"]
    eid = new_id()
    produce(
        broker.bootstrap, node.events, [(b"k", json.dumps({"id": eid}).encode(), ce_headers("rt.flaky", eid))]
    )
    (reply,) = replies_of(broker, node, {eid})[eid]
    v = reply["value"]
    assert v["ok"] is True and v["results"][0]["result"] == {"attempt": 3}, v
    rows = seen(out, eid)
    assert [r["attempt"] for r in rows] == [1, 2, 3], rows
    assert len({r["invocation"] for r in rows}) == 3 and {r["trigger"] for r in rows} == {"event"}
    # Each of attempts 1 and 2 ran into its own 1 s limit, then waited its backoff (0.1 s, then 0.2 s).
    # The limit counts from the instance's receipt, a little before the handler notes its start: 50 ms slack.
    assert rows[1]["t"] - rows[0]["t"] >= 1 + 0.1 - 0.05, rows
    assert rows[2]["t"] - rows[1]["t"] >= 1 + 0.2 - 0.05, rows
    assert metric(node, "faas_retries_total", function="flaky", error="Timeout") >= 2


def test_error_type_not_in_on_is_not_retried(rig: dict[str, Any], broker: EmbeddedBroker) -> None:
    """1. `nope` retries Timeout and InstanceCrashed only; it raises (a FunctionError).
    2. Produce one event to it; then one more event to `flaky` as a marker, answered after >2 s.
    Result: the reply is ok false with nope's FunctionError; by the time the marker is answered, `nope`
    ran attempt 1 only (a retry after 0.1 s would have shown)."""
    node, out = rig["node"], rig["out"]
    eid, marker = new_id(), new_id()
    produce(
        broker.bootstrap, node.events, [(None, json.dumps({"id": eid}).encode(), ce_headers("rt.nope", eid))]
    )
    v = replies_of(broker, node, {eid})[eid][0]["value"]
    assert v["ok"] is False and v["error"]["type"] == "FunctionError" and v["error"]["function"] == "nope", v
    produce(
        broker.bootstrap,
        node.events,
        [(None, json.dumps({"id": marker}).encode(), ce_headers("rt.flaky", marker))],
    )
    replies_of(broker, node, {marker})
    assert [r["attempt"] for r in seen(out, eid)] == [1]
    assert metric(node, "faas_retries_total", function="nope") == 0


def test_per_key_order_kept_while_another_key_completes(rig: dict[str, Any], broker: EmbeddedBroker) -> None:
    """1. `ordered` retries FunctionError after 2 s. Produce, in this order: e1 (key K, fails its first
       attempt), e2 (key K), e3 (key L).
    Result: all three answered ok; e2 starts only after e1's second attempt ended, e3 ends before e1's
    second attempt starts (it did not wait for K); e1's reply comes before e2's on the reply topic."""
    node, out = rig["node"], rig["out"]
    e1, e2, e3 = new_id(), new_id(), new_id()
    produce(
        broker.bootstrap,
        node.events,
        [
            (b"K", json.dumps({"id": e1, "fail_first": True}).encode(), ce_headers("rt.order", e1)),
            (b"K", json.dumps({"id": e2}).encode(), ce_headers("rt.order", e2)),
            (b"L", json.dumps({"id": e3}).encode(), ce_headers("rt.order", e3)),
        ],
    )
    got = replies_of(broker, node, {e1, e2, e3})
    assert all(got[e][0]["value"]["ok"] for e in (e1, e2, e3)), got
    assert got[e1][0]["value"]["results"][0]["result"] == {"attempt": 2}
    r1, r2, r3 = seen(out, e1), seen(out, e2), seen(out, e3)
    e1_second = [r for r in r1 if r["attempt"] == 2]
    assert [r["phase"] for r in e1_second] == ["start", "end"], r1
    assert min(r["t"] for r in r2) >= e1_second[-1]["t"], "e2 ran before e1 was done"
    assert max(r["t"] for r in r3) < e1_second[0]["t"], "key L waited for key K's retry"
    assert got[e1][0]["partition"] == got[e2][0]["partition"]
    assert got[e1][0]["offset"] < got[e2][0]["offset"], "replies of one key out of order"


def test_chain_aborts_only_after_the_last_attempt(rig: dict[str, Any], broker: EmbeddedBroker) -> None:
    """1. `rt.pair` has two listeners: `once` fails its first attempt (retried after 0.2 s) and `steady`
       takes 1 s.
    Result: the reply is ok with both results in manifest order: the first failure did not cancel
    `steady`."""
    node = rig["node"]
    eid = new_id()
    produce(
        broker.bootstrap, node.events, [(None, json.dumps({"id": eid}).encode(), ce_headers("rt.pair", eid))]
    )
    v = replies_of(broker, node, {eid})[eid][0]["value"]
    assert v["ok"] is True, v
    assert [(r["function"], r["result"]) for r in v["results"]] == [
        ("once", {"attempt": 2}),
        ("steady", "steady"),
    ]


def test_failed_event_dead_lettered_exactly_then_replayed_after_a_fix(
    rig: dict[str, Any], broker: EmbeddedBroker
) -> None:
    """1. `fixable` fails while OUT/broken exists (retry {attempts: 1, on: [FunctionError]}).
    2. Produce an event with a key, an oddly spaced value and extra headers (ce_subject, a non-ce one).
    3. Remove `broken` (the fix) and run `faas replay --id ID`.
    Result: the first reply is ok false after attempts 1 and 2; the dead-letter copy has the same key and
    value bytes, the original headers in order, then faas_error `FunctionError: <message>`, faas_function
    `fixable`, faas_attempts `2`; the failed counter moved. After the replay the event gets a second
    reply, ok true, and the events topic holds the replayed record with `faas_replayed: 1`."""
    node, out, root = rig["node"], rig["out"], rig["root"]
    (out / "broken").write_text("")
    eid = new_id()
    key, value = b"\x00key-\xff", json.dumps({"id": eid, "note": "spacing  kept"}, indent=3).encode()
    headers = [*ce_headers("rt.fix", eid), ("ce_subject", b"subj-1"), ("x-trace", b"\x01\x02")]
    produce(broker.bootstrap, node.events, [(key, value, headers)])
    first = replies_of(broker, node, {eid})[eid][0]["value"]
    assert first["ok"] is False and first["error"]["function"] == "fixable", first
    assert [r["attempt"] for r in seen(out, eid)] == [1, 2]

    (copy,) = dead_letters(broker, node, eid)
    assert copy.key == key and copy.value == value, "the dead-letter copy is not byte-identical"
    assert list(copy.headers[: len(headers)]) == headers
    extra = dict(copy.headers[len(headers) :])
    assert extra == {
        "faas_error": f"FunctionError: {first['error']['message']}".encode(),
        "faas_function": b"fixable",
        "faas_attempts": b"2",
    }
    assert metric(node, "faas_events_deadlettered_total", reason="failed") >= 1

    (out / "broken").unlink()  # the fix
    env = {
        "FAAS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "FAAS_EVENTS_TOPIC": node.events,
        "FAAS_DEADLETTER_TOPIC": node.deadletter,
    }
    r = run_cli(root, "replay", "--id", eid, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[0] == eid and "replayed 1, skipped" in r.stdout, r.stdout

    def answered_twice() -> list[Any] | None:
        got = replies_of(broker, node, {eid}, timeout=5)[eid]
        return got if len(got) >= 2 else None

    second = wait_for(answered_twice, timeout=60, interval=0.5, message="a reply to the replayed event")[1]
    assert second["value"]["ok"] is True and second["value"]["results"][0]["result"]["fixed"] is True
    assert second["key"] == key
    events = [
        e
        for e in asyncio.run(consume_raw(broker.bootstrap, node.events, 100_000, wait=3))
        if dict(e.headers).get("ce_id") == eid.encode()
    ]
    assert len(events) == 2 and dict(events[1].headers)["faas_replayed"] == b"1"
    assert (events[1].key, events[1].value) == (key, value)


def test_dead_letters_counted_by_reason(rig: dict[str, Any], broker: EmbeddedBroker) -> None:
    """1. Produce a record that is no event (value not JSON) and an event whose `nope` listener fails.
    Result: both reach the dead-letter topic, the bad record with `faas_error` only (no faas_function, no
    faas_attempts: replay counts it apart), the failed event with all three; the counter moved once under
    each reason."""
    node = rig["node"]
    bad_before = metric(node, "faas_events_deadlettered_total", reason="bad_event")
    failed_before = metric(node, "faas_events_deadlettered_total", reason="failed")
    bad, failed = new_id(), new_id()
    produce(
        broker.bootstrap,
        node.events,
        [
            (None, b"{not json", ce_headers("rt.nope", bad)),
            (None, json.dumps({"id": failed}).encode(), ce_headers("rt.nope", failed)),
        ],
    )
    (bad_copy,) = dead_letters(broker, node, bad)
    (failed_copy,) = dead_letters(broker, node, failed)
    assert {k for k, _ in bad_copy.headers if k.startswith("faas_")} == {"faas_error"}
    assert {k for k, _ in failed_copy.headers if k.startswith("faas_")} == {
        "faas_error",
        "faas_function",
        "faas_attempts",
    }
    assert dict(failed_copy.headers)["faas_attempts"] == b"1"  # FunctionError is not in nope's `on`
    assert metric(node, "faas_events_deadlettered_total", reason="bad_event") == bad_before + 1
    assert metric(node, "faas_events_deadlettered_total", reason="failed") == failed_before + 1


STORM = """
functions:
  - name: storm
    uuid: 2e721e00-0000-4000-8000-000000000021
    handler: functions.st:storm
    state: productive
    events: [st.storm]
    retry: {attempts: 1, backoff: 30, on: [FunctionError]}
  - name: ping
    uuid: 2e721e00-0000-4000-8000-000000000022
    handler: functions.st:ping
    state: productive
    events: [st.ping]
"""
STORM_MODULE = """
async def storm(payload, ctx):
    raise RuntimeError(f"down on attempt {ctx.attempt}")

async def ping(payload, ctx):
    return "pong"
"""


def test_events_waiting_between_attempts_leave_room_for_other_keys(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Any
) -> None:
    """1. A node with FAAS_MAX_INFLIGHT_EVENTS=8; `storm` always fails and is retried once, after 30 s.
    2. Produce 8 storm events on 8 keys; once each has failed its first attempt (8 retries counted),
       produce a `ping` event on another key.
    Result: ping is answered within a few seconds, while the storm events wait out their backoffs; they
    held every slot before, and the ping waited for the first of them to end (30 s with backoffs of 10 s
    and 20 s)."""
    root = write_project(tmp_path, STORM, {"st": STORM_MODULE})
    node = nodes(root, broker.bootstrap, env={"FAAS_MAX_INFLIGHT_EVENTS": "8"}).wait_ready()
    produce(
        broker.bootstrap,
        node.events,
        [(f"k{i}".encode(), b"{}", ce_headers("st.storm", new_id())) for i in range(8)],
    )
    wait_for(
        lambda: metric(node, "faas_retries_total", function="storm") >= 8,
        timeout=60,
        message="8 storm events waiting between attempts",
    )
    eid = new_id()
    produced = time.monotonic()
    produce(broker.bootstrap, node.events, [(b"other", b"{}", ce_headers("st.ping", eid))])
    replies_of(broker, node, {eid}, timeout=60)
    took = time.monotonic() - produced
    assert took < 8, f"ping answered {took:.1f} s after it was produced"
    assert metric(node, "faas_retries_total", function="storm") == 8, "still in their first backoff"
