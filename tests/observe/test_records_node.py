"""Invocation records of a real `faas run` node on the real broker (DESIGN.md section 13): one per
invocation of every trigger, failures, the log caps under hostile handlers, lines of foreign threads."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer

from framework.kafka.embedded import EmbeddedBroker
from tests.support import Node, ce_headers, consume, new_id, produce, wait_for, write_project

ECHO = "5e5e5e5e-0000-4000-8000-000000000001"
BOOM = "5e5e5e5e-0000-4000-8000-000000000002"
SLOW = "5e5e5e5e-0000-4000-8000-000000000003"
FLOOD = "5e5e5e5e-0000-4000-8000-000000000004"
HUGE = "5e5e5e5e-0000-4000-8000-000000000005"
GARBAGE = "5e5e5e5e-0000-4000-8000-000000000006"
TICKER = "5e5e5e5e-0000-4000-8000-000000000007"
WARM = "5e5e5e5e-0000-4000-8000-000000000008"
NOISY = "5e5e5e5e-0000-4000-8000-000000000009"
SECRETIVE = "5e5e5e5e-0000-4000-8000-00000000000a"
SECRET = "s3cr3t-value-42"
FLAKY = "5e5e5e5e-0000-4000-8000-00000000000b"
DIES = "5e5e5e5e-0000-4000-8000-00000000000c"

MANIFEST = f"""
functions:
  - {{name: echo, uuid: {ECHO}, handler: functions.rec:echo, state: productive, events: [rec.ping]}}
  - {{name: boom, uuid: {BOOM}, handler: functions.rec:boom, state: productive}}
  - {{name: slow, uuid: {SLOW}, handler: functions.rec:slow, state: productive, timeout: 1}}
  - {{name: flood, uuid: {FLOOD}, handler: functions.rec:flood, state: productive, timeout: 30}}
  - {{name: dies, uuid: {DIES}, handler: functions.rec:dies, state: productive}}
  - {{name: huge, uuid: {HUGE}, handler: functions.rec:huge, state: productive}}
  - {{name: garbage, uuid: {GARBAGE}, handler: functions.rec:garbage, state: productive}}
  - name: ticker
    uuid: {TICKER}
    handler: functions.rec:ticker
    state: productive
    schedules: [{{cron: "* * * * * */1", payload: {{kind: tick}}}}]
  - name: warm
    uuid: {WARM}
    handler: functions.warm:handle
    state: productive
    keep_warm: "* * * * * */1"
  - {{name: noisy, uuid: {NOISY}, handler: functions.noisy:handle, state: productive}}
  - name: flaky
    uuid: {FLAKY}
    handler: functions.rec:flaky
    state: productive
    events: [rec.flaky]
    retry: {{attempts: 2, backoff: 0.1, on: [FunctionError]}}
  - name: secretive
    uuid: {SECRETIVE}
    handler: functions.rec:secretive
    state: productive
    secrets: [api_key]
"""
MODULES = {
    "rec": """
        import asyncio, os, sys

        async def echo(payload, ctx):
            tok = (payload or {}).get("tok")
            ctx.log.info("hello %s", tok)
            print(f"printed {tok}")
            print(f"stderr {tok}", file=sys.stderr)
            return {"tok": tok}

        async def boom(payload, ctx):
            ctx.log.warning("before %s", payload["tok"])
            raise ValueError(f"kaboom {payload['tok']}")

        async def slow(payload, ctx):
            print(f"started {payload['tok']}")
            await asyncio.sleep(10)

        async def dies(payload, ctx):
            ctx.log.error("out of options %s", payload["tok"])
            print(f"goodbye {payload['tok']}")
            os._exit(3)

        def flood(payload, ctx):
            sys.stdout.write("".join(f"line {i}\\n" for i in range(payload["n"])))
            return payload["n"]

        async def huge(payload, ctx):
            print("x" * 10_000_000)
            return "huge"

        async def garbage(payload, ctx):
            sys.stdout.buffer.write(bytes(range(256)) + b"\\n")
            print(b"bad \\xff\\xfe".decode("utf-8", "surrogateescape"))
            raise ValueError(b"worse \\xff".decode("utf-8", "surrogateescape"))

        async def flaky(payload, ctx):
            ctx.log.info("attempt %s of %s", ctx.attempt, payload["tok"])
            raise RuntimeError(f"flaky attempt {ctx.attempt}")

        async def secretive(payload, ctx):
            ctx.log.info("the key is %s", ctx.secrets["api_key"])
            print("printed", ctx.secrets["api_key"])
            raise RuntimeError(f"failed with {ctx.secrets['api_key']}")

        async def ticker(payload, ctx):
            ctx.log.info("tick %s", payload)
            return payload
    """,
    "warm": """
        async def handle(payload, ctx):
            return "handled"

        async def warmup(ctx):
            ctx.log.info("warming %s trace=%s", ctx.instance_id, ctx.trace_id)
    """,
    "noisy": """
        import threading, time

        def _chatter():
            while True:
                print("background chatter")
                time.sleep(0.002)

        threading.Thread(target=_chatter, daemon=True).start()

        def handle(payload, ctx):
            for i in range(3):
                print(f"mine {payload['tok']} {i}")
                time.sleep(0.01)
            return "ok"
    """,
}
RFC3339_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ENTRIES, CHARS = 6, 3000


def project(root: Path) -> Path:
    write_project(root, MANIFEST, MODULES)
    (root / "secrets").mkdir()
    (root / "secrets" / "api_key").write_text(SECRET + "\n")
    return root


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, broker: EmbeddedBroker) -> Iterator[Node]:
    root = project(tmp_path_factory.mktemp("records"))
    env = {"FAAS_LOG_ENTRIES": str(ENTRIES), "FAAS_LOG_CHARS": str(CHARS), "FAAS_NODE_NAME": "node-a"}
    n = Node(root, broker.bootstrap, env=env).wait_ready(90)
    yield n
    n.kill()


def invoke(n: Node, uuid: str, payload: Any = None) -> httpx.Response:
    return httpx.post(f"{n.url}/functions/{uuid}/invoke", json=payload, timeout=60)


def listed(n: Node, done: Callable[[list[dict[str, Any]]], object], timeout: float = 30, **q: str) -> Any:
    """GET /invocations?q until `done(records)` is truthy; returns that value."""

    def check() -> object:
        r = httpx.get(f"{n.url}/invocations", params=q, timeout=10)
        assert r.status_code == 200, r.text
        return done(r.json()["invocations"])

    return wait_for(check, timeout, 0.2, f"GET /invocations?{q}")


def one(n: Node, invocation_id: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        r = httpx.get(f"{n.url}/invocations/{invocation_id}", timeout=10)
        return r.json() if r.status_code == 200 else None

    found: dict[str, Any] = wait_for(check, 30, 0.1, f"record {invocation_id}")
    return found


def messages(rec: dict[str, Any]) -> list[str]:
    return [e["message"] for e in rec["logs"]]


async def _topic(bootstrap: str, topic: str, ids: set[str], timeout: float) -> dict[str, tuple[bytes, Any]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        metadata_max_age_ms=500,
    )
    await consumer.start()
    found: dict[str, tuple[bytes, Any]] = {}
    deadline = time.monotonic() + timeout
    try:
        while not ids <= found.keys() and time.monotonic() < deadline:
            for msgs in (await consumer.getmany(timeout_ms=300)).values():
                for m in msgs:
                    value = json.loads(m.value)
                    found[value["invocation_id"]] = (m.key, value)
    finally:
        await consumer.stop()
    return found


def on_topic(n: Node, bootstrap: str, ids: set[str], timeout: float = 30) -> dict[str, tuple[bytes, Any]]:
    return asyncio.run(_topic(bootstrap, n.invocations, ids, timeout))


def test_direct_record_in_memory_and_on_the_topic(node: Node, broker: EmbeddedBroker) -> None:
    """1. POST /functions/echo/invoke; the handler logs through ctx.log, print and print(file=stderr).
    2. GET /invocations/{id}; read the node's invocations topic from the start.
    Result: the same record in both places, keyed by the uuid on the topic, with every field of section 13
    right (trigger direct, no event, attempt 1, cold as answered, the node's name, logs with levels)."""
    tok = new_id()[:8]
    r = invoke(node, ECHO, {"tok": tok})
    assert r.status_code == 200, r.text
    inv = r.json()["invocation_id"]
    rec = one(node, inv)
    assert rec["function"] == "echo" and rec["uuid"] == ECHO and rec["trigger"] == "direct"
    assert rec["event"] is None and rec["event_id"] is None and rec["attempt"] == 1
    assert rec["ok"] is True and rec["error"] is None and rec["node"] == "node-a"
    assert re.fullmatch(r"[0-9a-f]{32}", rec["trace_id"]), rec["trace_id"]
    assert isinstance(rec["revision"], int) and rec["revision"] >= 1  # the deployed revision it ran
    assert rec["cold_start"] is r.json()["cold_start"] and rec["instance_id"].startswith("echo-")
    assert rec["duration_ms"] == pytest.approx(r.json()["duration_ms"], abs=0.01)
    assert RFC3339_MS.match(rec["started_at"]), rec["started_at"]
    assert [(e["level"], e["message"]) for e in rec["logs"]] == [
        ("INFO", f"hello {tok}"),
        ("INFO", f"printed {tok}"),
        ("WARNING", f"stderr {tok}"),
    ]
    key, value = on_topic(node, broker.bootstrap, {inv})[inv]
    assert key == ECHO.encode() and value == rec


def test_event_record(node: Node, broker: EmbeddedBroker) -> None:
    """1. Produce a `rec.ping` CloudEvent with a fresh ce_id to the node's events topic.
    Result: once replied, a record with trigger event, event rec.ping, the event's ce_id as `event_id`, a
    trace id, and the handler's logs."""
    eid, tok = new_id(), new_id()[:8]
    produce(
        broker.bootstrap,
        node.events,
        [(None, json.dumps({"tok": tok}).encode(), ce_headers("rec.ping", eid))],
    )
    assert consume(broker.bootstrap, node.replies, 1, 60, ids={eid}), node.tail()
    rec = listed(
        node,
        lambda rs: next((r for r in rs if f"hello {tok}" in messages(r)), None),
        function="echo",
        trigger="event",
    )
    assert rec["trigger"] == "event" and rec["event"] == "rec.ping" and rec["ok"] is True
    assert rec["event_id"] == eid and re.fullmatch(r"[0-9a-f]{32}", rec["trace_id"])


def test_schedule_and_warmup_records(node: Node) -> None:
    """1. `ticker` has a per-second schedule, `warm` a per-second keep-warm.
    Result: records with trigger schedule (the handler's log of the payload) and trigger warmup (the
    warmup hook's log), each ok, each with the 32-hex trace id its handler saw as `ctx.trace_id`."""
    tick = listed(node, lambda rs: rs[0] if rs else None, 60, function="ticker", trigger="schedule")
    assert tick["ok"] is True and tick["event"] is None and "tick {'kind': 'tick'}" in messages(tick)
    assert re.fullmatch(r"[0-9a-f]{32}", tick["trace_id"] or ""), tick
    warm = listed(node, lambda rs: rs[0] if rs else None, 60, function=WARM, trigger="warmup")
    assert warm["ok"] is True and any(m.startswith("warming warm-") for m in messages(warm))
    assert re.fullmatch(r"[0-9a-f]{32}", warm["trace_id"] or ""), warm
    assert any(m.endswith(f"trace={warm['trace_id']}") for m in messages(warm)), warm


def test_failure_records(node: Node) -> None:
    """1. boom logs, then raises. 2. slow prints, then runs past its 1 s limit.
    Result: records ok false with error FunctionError (naming the exception) and Timeout; the lines logged
    before the failure are kept; `ok=false` lists both; the failed answer's `faas-invocation-id` header
    finds its record."""
    tok = new_id()[:8]
    failed = invoke(node, BOOM, {"tok": tok})
    assert failed.status_code == 500
    assert invoke(node, SLOW, {"tok": tok}).status_code == 504
    boom = listed(node, lambda rs: rs[0] if rs else None, function="boom", ok="false")
    # The failed answer names its invocation (the error body has no room for it): its record is found by it.
    assert one(node, failed.headers["faas-invocation-id"])["invocation_id"] == boom["invocation_id"]
    assert boom["error"]["type"] == "FunctionError" and f"kaboom {tok}" in boom["error"]["message"]
    assert messages(boom)[0] == f"before {tok}" and boom["logs"][0]["level"] == "WARNING"
    slow = listed(node, lambda rs: rs[0] if rs else None, function="slow", ok="false")
    assert slow["error"]["type"] == "Timeout" and messages(slow) == [f"started {tok}"]
    assert slow["duration_ms"] >= 1000


def test_a_crash_record_keeps_what_the_instance_logged_before_it_died(
    node: Node, broker: EmbeddedBroker
) -> None:
    """1. dies logs an error, prints a line, then ends its own process.
    Result: the caller gets 502 InstanceCrashed; the record, in memory and on the topic, has that error and
    both lines (the instance that would have rendered it is gone: the node made it from the lines it had
    received); the next call is served by a fresh instance."""
    tok = new_id()[:8]
    r = invoke(node, DIES, {"tok": tok})
    assert r.status_code == 502 and r.json()["error"]["type"] == "InstanceCrashed", r.text
    rec = listed(node, lambda rs: rs[0] if rs else None, function="dies")
    assert rec["ok"] is False and rec["error"]["type"] == "InstanceCrashed"
    assert [(e["level"], e["message"]) for e in rec["logs"]] == [
        ("ERROR", f"out of options {tok}"),
        ("INFO", f"goodbye {tok}"),
    ]
    _, published = on_topic(node, broker.bootstrap, {rec["invocation_id"]})[rec["invocation_id"]]
    assert published == rec
    assert invoke(node, DIES, {"tok": tok}).status_code == 502


def test_caps_hold_under_hostile_handlers(node: Node) -> None:
    """1. flood writes 100,000 lines to stdout; 2. huge prints one 10 MB line; 3. garbage writes raw bytes
    and undecodable text to stdout and raises with undecodable text; 4. echo afterwards.
    Result: flood's record keeps FAAS_LOG_ENTRIES lines and "99994 more log entries dropped" (on a machine
    too loaded to forward 100,000 lines within the 30 s limit: the same first lines, a Timeout, and the
    count of those written by then); huge's keeps FAAS_LOG_CHARS characters of text (its line cut,
    flagged truncated); garbage's record holds its lines with the bad bytes replaced and its error; echo
    still answers; the node's log got the last flood line (nothing else lost)."""
    r = invoke(node, FLOOD, {"n": 100_000})
    assert r.status_code in (200, 504), r.text
    flood = listed(node, lambda rs: rs[0] if rs else None, function="flood")
    assert messages(flood)[:-1] == [f"line {i}" for i in range(ENTRIES)]
    note = re.fullmatch(r"(\d+) more log entries dropped", messages(flood)[-1])
    assert note is not None, messages(flood)
    if r.status_code == 200:
        assert r.json()["result"] == 100_000 and int(note.group(1)) == 100_000 - ENTRIES
    else:
        assert flood["error"]["type"] == "Timeout" and 0 < int(note.group(1)) <= 100_000 - ENTRIES
    r = invoke(node, HUGE)
    assert r.status_code == 200, r.text
    huge = one(node, r.json()["invocation_id"])
    assert sum(len(m) for m in messages(huge)[:-1]) <= CHARS
    assert sum(len(e["message"]) for e in huge["logs"] if e.get("truncated")) > 0
    assert any(e.get("truncated") and set(e["message"]) == {"x"} for e in huge["logs"])
    r = invoke(node, GARBAGE)
    assert r.status_code == 500 and r.json()["error"]["type"] == "FunctionError", r.text
    bad = listed(node, lambda rs: rs[0] if rs else None, function="garbage")
    assert "bad ??" in messages(bad) and "worse ?" in bad["error"]["message"]
    assert any("\ufffd" in m for m in messages(bad))
    tok = new_id()[:8]
    r = invoke(node, ECHO, {"tok": tok})
    assert r.status_code == 200 and r.json()["result"] == {"tok": tok}
    wait_for(
        lambda: "line 99999" in node.log.read_text(errors="replace"), 60, 0.5, "the last flood line logged"
    )
    assert node.proc.poll() is None


def test_lines_of_threads_the_invocation_did_not_start_are_not_its_logs(node: Node) -> None:
    """1. `noisy` starts a thread at import that prints all the time; its `def` handler prints 3 lines.
    Result: the record holds exactly the handler's 3 lines; the chatter still reaches the node's log."""
    tok = new_id()[:8]
    r = invoke(node, NOISY, {"tok": tok})
    assert r.status_code == 200, r.text
    rec = one(node, r.json()["invocation_id"])
    assert messages(rec) == [f"mine {tok} {i}" for i in range(3)]
    assert "background chatter" in node.log.read_text(errors="replace")


def test_stats_count_the_invocations(node: Node) -> None:
    """1. echo is invoked 5 times. Result: GET /functions/ECHO/stats counts them (at least 5) with p50/p99."""
    before = httpx.get(f"{node.url}/functions/{ECHO}/stats", timeout=10).json()["count"]
    for _ in range(5):
        assert invoke(node, ECHO, {"tok": "s"}).status_code == 200
    stats = httpx.get(f"{node.url}/functions/{ECHO}/stats", timeout=10).json()
    assert stats["count"] >= before + 5 and stats["p50_ms"] is not None and stats["p99_ms"] >= stats["p50_ms"]


def test_records_of_a_node_without_kafka_stay_in_memory(tmp_path: Path, nodes: Callable[..., Node]) -> None:
    """1. `faas run --no-kafka`; invoke echo. Result: its record is listed; /metrics made 0 for the topic."""
    root = project(tmp_path)
    n = nodes(root, None, kafka=False).wait_ready(60)
    r = invoke(n, ECHO, {"tok": "mem"})
    assert r.status_code == 200, r.text
    assert one(n, r.json()["invocation_id"])["ok"] is True
    metrics = httpx.get(f"{n.url}/metrics", timeout=10).text
    assert "faas_invocation_records_total 0.0" in metrics


def test_records_off(tmp_path: Path, nodes: Callable[..., Node]) -> None:
    """1. `faas run --no-kafka` with FAAS_RECORDS=false; invoke echo.
    Result: the invocation answers; no record is kept, aggregated or made."""
    root = project(tmp_path)
    n = nodes(root, None, kafka=False, env={"FAAS_RECORDS": "false"}).wait_ready(60)
    r = invoke(n, ECHO, {"tok": "off"})
    assert r.status_code == 200, r.text
    assert httpx.get(f"{n.url}/invocations", timeout=10).json() == {"invocations": []}
    assert httpx.get(f"{n.url}/functions/{ECHO}/stats", timeout=10).json()["count"] == 0
    assert httpx.get(f"{n.url}/invocations/{r.json()['invocation_id']}", timeout=10).status_code == 404


def test_secret_values_never_reach_a_record(node: Node, broker: EmbeddedBroker) -> None:
    """1. `secretive` logs its secret through ctx.log and print, then raises with it in the message.
    Result: its record (in memory and on the topic) shows `***` in the logs and the error, never the value."""
    r = invoke(node, SECRETIVE)
    assert r.status_code == 500, r.text
    rec = listed(node, lambda rs: rs[0] if rs else None, function="secretive")
    assert messages(rec)[:2] == ["the key is ***", "printed ***"], messages(rec)
    assert rec["error"]["message"] == "RuntimeError: failed with ***"
    _, sent = on_topic(node, broker.bootstrap, {rec["invocation_id"]})[rec["invocation_id"]]
    assert SECRET not in json.dumps(sent) and SECRET not in json.dumps(rec)


def test_every_retry_attempt_is_a_record(node: Node) -> None:
    """1. POST /events/rec.flaky: its one listener fails every time and is retried twice.
    Result: three records, attempts 1, 2, 3, each its own invocation id, the same event id, trigger event,
    its own log line and error."""
    tok = new_id()[:8]
    r = httpx.post(f"{node.url}/events/rec.flaky", json={"tok": tok}, timeout=60)
    assert r.status_code == 500 and r.json()["ok"] is False, r.text

    def attempts(rs: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
        mine = [x for x in rs if any(tok in m for m in messages(x))]
        return mine if len(mine) == 3 else None

    recs = listed(node, attempts, function="flaky", trigger="event")
    assert [x["attempt"] for x in recs] == [3, 2, 1]  # newest first
    assert len({x["invocation_id"] for x in recs}) == 3
    assert len({x["event_id"] for x in recs}) == 1 and recs[0]["event_id"] is not None  # one event
    for x in recs:
        assert messages(x)[0] == f"attempt {x['attempt']} of {tok}"
        assert (
            x["error"]["message"] == f"RuntimeError: flaky attempt {x['attempt']}"
            and x["event"] == "rec.flaky"
        )
