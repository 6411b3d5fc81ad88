"""The Kafka source end to end: `faas run` nodes as a user starts them, plain aiokafka as the other system."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest

from framework.kafka.client import EventClient
from framework.kafka.embedded import EmbeddedBroker, free_port
from framework.observe.metrics import Metrics
from framework.settings import Settings
from framework.sources.kafka.source import KafkaSource
from tests.support import (
    Header,
    Node,
    Record,
    ce_headers,
    consume,
    consume_raw,
    metric,
    new_id,
    produce,
    run_cli,
    settled,
    topic_now,
    wait_for,
    write_project,
)

MANIFEST = """
functions:
  - name: a
    uuid: cccccccc-0000-4000-8000-000000000001
    handler: functions.ev:a
    state: productive
    events: [order.created, order.slow]
  - name: b
    uuid: cccccccc-0000-4000-8000-000000000002
    handler: functions.ev:b
    state: productive
    events: [order.created]
  - name: c
    uuid: cccccccc-0000-4000-8000-000000000003
    handler: functions.ev:b
    state: draft
    events: [order.created]
  - name: failer
    uuid: cccccccc-0000-4000-8000-000000000004
    handler: functions.ev:failer
    state: productive
    events: [order.failed]
  - name: waiter
    uuid: cccccccc-0000-4000-8000-000000000005
    handler: functions.ev:waiter
    state: productive
    events: [order.failed, order.slow]
  - name: slowpoke
    uuid: cccccccc-0000-4000-8000-000000000006
    handler: functions.ev:slowpoke
    state: productive
    timeout: 1
    events: [order.slow]
  - name: seq
    uuid: cccccccc-0000-4000-8000-000000000007
    handler: functions.ev:seq
    state: productive
    events: [seq]
  - name: huge
    uuid: cccccccc-0000-4000-8000-000000000008
    handler: functions.ev:huge
    state: productive
    events: [order.huge]
"""
MODULES = {
    "ev": """
import asyncio, os, random

async def a(payload, ctx):
    return {"by": "a", "event": ctx.event, "trigger": ctx.trigger, "got": payload}

def b(payload, ctx):
    return {"by": "b"}

async def failer(payload, ctx):
    raise RuntimeError("no stock")

async def waiter(payload, ctx):
    await asyncio.sleep(3)
    return "done"

async def slowpoke(payload, ctx):
    await asyncio.sleep(10)

async def huge(payload, ctx):
    if payload.get("raise"):
        raise ValueError("E" * (17 * 1024 * 1024))
    return "x" * (17 * 1024 * 1024)  # over the producer's 16 MiB request limit

async def seq(payload, ctx):
    await asyncio.sleep(random.random() / 200)
    return {**payload, "node": os.getppid()}
"""
}


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_project(tmp_path_factory.mktemp("kafka"), MANIFEST, MODULES)


@pytest.fixture(scope="module")
def node(project: Path, broker: EmbeddedBroker) -> Iterator[Node]:
    n = Node(project, broker.bootstrap).wait_ready()
    yield n
    n.kill()


def by_id(replies: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["value"]["id"]: r for r in replies if isinstance(r["value"], dict) and r["value"].get("id")}


def reply_to(broker: EmbeddedBroker, topic: str, eid: str, timeout: float = 20) -> dict[str, Any]:
    replies = by_id(consume(broker.bootstrap, topic, 100_000, timeout=timeout, ids={eid}))
    assert eid in replies, f"no reply to {eid} on {topic}"
    return replies[eid]


def test_not_ready_until_the_group_is_joined() -> None:
    source = KafkaSource(Settings(), cast(Any, None), Metrics(), "127.0.0.1:1")
    assert source.not_ready() == ["kafka: joining consumer group"]
    source.joined = True
    assert source.not_ready() == []


def test_fan_out_combines_productive_listeners_in_manifest_order(node: Node, broker: EmbeddedBroker) -> None:
    eid = new_id()
    produce(broker.bootstrap, node.events, [(b"k1", b'{"item": 7}', ce_headers("order.created", eid))])
    r = reply_to(broker, node.replies, eid)
    assert r["key"] == b"k1"
    h = r["headers"]
    assert h["ce_specversion"] == "1.0" and h["ce_type"] == "faas.reply" and h["ce_source"] == "faas"
    assert h["ce_correlationid"] == eid and h["ce_id"] not in ("", eid)
    assert h["content-type"] == "application/json"
    v = r["value"]
    assert v["ok"] is True and v["id"] == eid and v["event"] == "order.created" and v["error"] is None
    assert [x["function"] for x in v["results"]] == ["a", "b"], "the draft listener c must not run"
    assert v["results"][0]["result"] == {
        "by": "a",
        "event": "order.created",
        "trigger": "event",
        "got": {"item": 7},
    }
    assert v["results"][0]["uuid"] == "cccccccc-0000-4000-8000-000000000001"


def test_structured_mode_with_own_reply_topic(node: Node, broker: EmbeddedBroker) -> None:
    eid, mine = new_id(), f"t.mine.{new_id()[:8]}"
    doc = {
        "specversion": "1.0",
        "type": "order.created",
        "id": eid,
        "source": "t",
        "data": [1],
        "replyto": mine,
    }
    produce(
        broker.bootstrap,
        node.events,
        [(b"s", orjson.dumps(doc), [("content-type", b"application/cloudevents+json")])],
    )
    v = reply_to(broker, mine, eid)["value"]
    assert v["ok"] is True and v["results"][0]["result"]["got"] == [1]


def test_a_structured_event_nested_deeper_than_orjson_writes_is_served(
    node: Node, broker: EmbeddedBroker
) -> None:
    """1. Produce a structured event whose data nests 600 levels (orjson writes 254, reads 1,024).
    Result: its listeners get it and reply, `a` with the data as it was sent; the record was skipped,
    with no reply and no dead-letter copy, when re-encoding the data raised."""
    eid, data = new_id(), b"[" * 600 + b"7" + b"]" * 600
    value = b'{"specversion":"1.0","type":"order.created","id":"%s","source":"t","data":%s}' % (
        eid.encode(),
        data,
    )
    structured = [("content-type", b"application/cloudevents+json")]
    produce(broker.bootstrap, node.events, [(b"d", value, structured)])
    v = reply_to(broker, node.replies, eid)["value"]
    assert v["ok"] is True, v
    got = v["results"][0]["result"]["got"]
    depth = 0
    while isinstance(got, list):
        got, depth = got[0], depth + 1
    assert (depth, got) == (600, 7)


@pytest.mark.parametrize(
    ("event", "function", "error"),
    [("order.failed", "failer", "FunctionError"), ("order.slow", "slowpoke", "Timeout")],
)
def test_failing_listener_aborts_the_chain(
    node: Node, broker: EmbeddedBroker, event: str, function: str, error: str
) -> None:
    eid = new_id()
    started = time.monotonic()
    produce(broker.bootstrap, node.events, [(None, b"{}", ce_headers(event, eid))])
    v = reply_to(broker, node.replies, eid)["value"]
    assert v["ok"] is False
    assert v["error"]["function"] == function and v["error"]["type"] == error and v["error"]["message"]
    assert "waiter" not in [x["function"] for x in v["results"]], "the 3 s sibling must be cancelled"
    assert time.monotonic() - started < 3 + 2.5


def test_no_listener_is_ok_with_empty_results(node: Node, broker: EmbeddedBroker) -> None:
    eid = new_id()
    produce(broker.bootstrap, node.events, [(None, b"null", ce_headers("nobody.listens", eid))])
    v = reply_to(broker, node.replies, eid)["value"]
    assert v == {"id": eid, "event": "nobody.listens", "ok": True, "results": [], "error": None}


def bad_records(own_topic: str) -> list[tuple[str | None, Record]]:
    """Thirteen kinds of bad record, each marked with a `t_mark` header; with the id a reply must carry.
    `own_topic` is one of the node's own topics (not its replies topic), named as a reply topic."""
    structured = [("content-type", b"application/cloudevents+json")]

    def h(eid: str, **changes: bytes | None) -> list[Header]:
        base = dict(ce_headers("order.created", eid))
        base.update(changes)  # type: ignore[arg-type]
        return [(k, v) for k, v in base.items() if v is not None]

    ids = [new_id() for _ in range(11)]
    return [
        (ids[0], (b"k", b"{not json", h(ids[0]))),
        (ids[1], (b"k", b"\xff\xfe\x00", h(ids[1]))),
        (None, (None, b"{}", h("x", ce_type=None, ce_id=None))),
        (ids[2], (None, b"{}", h(ids[2], ce_type=None))),
        (ids[3], (b"e", b"", h(ids[3]))),
        (ids[4], (b"e", None, h(ids[4]))),
        (ids[5], (None, b"{}", h(ids[5], ce_specversion=b"0.3"))),
        (ids[6], (None, b'{"x": "' + b"y" * (2 * 1024 * 1024) + b'"}', h(ids[6]))),
        (None, (b"s", b"{bad", structured)),
        (ids[7], (b"s", orjson.dumps({"specversion": "1.0", "id": ids[7], "source": "t"}), structured)),
        (ids[8], (None, b"{}", h(ids[8], ce_type=b"\xff\xfe"))),
        (ids[9], (None, b"{}", h(ids[9], ce_replyto=b"not a topic!"))),
        (ids[10], (f"rev:{ids[10]}:1".encode(), b"{}", h(ids[10], ce_replyto=own_topic.encode()))),
    ]


def test_bad_records_get_badevent_replies_and_exact_dead_letter_copies(
    node: Node, broker: EmbeddedBroker
) -> None:
    cases = bad_records(node.deployments)
    marked = [(k, v, [*hs, ("t_mark", str(i).encode())]) for i, (_, (k, v, hs)) in enumerate(cases)]
    produce(broker.bootstrap, node.events, marked)
    good = new_id()
    produce(broker.bootstrap, node.events, [(None, b"{}", ce_headers("order.created", good))])
    # Failed events of other tests share the topic: keep the copies of these records (`t_mark`).
    dead: list[Any] = []
    want, deadline = len(cases), time.monotonic() + 30
    while len(dead) < len(cases) and time.monotonic() < deadline:
        every = asyncio.run(
            consume_raw(broker.bootstrap, node.deadletter, want, wait=deadline - time.monotonic())
        )
        dead = [d for d in every if "t_mark" in dict(d.headers)]
        want = len(every) + len(cases) - len(dead)
    assert len(dead) == len(cases), f"{len(dead)} dead letters; log:\n{node.tail()}"
    for d in dead:
        headers = list(d.headers)
        assert headers[-1][0] == "faas_error" and headers[-1][1]
        i = int(dict(headers)["t_mark"])
        key, value, original = marked[i]
        assert (d.key, d.value, headers[:-1]) == (key, value, original), f"copy of case {i} differs"
    known = {eid for eid, _ in cases if eid}
    replies = by_id(consume(broker.bootstrap, node.replies, 100_000, timeout=20, ids={good, *known}))
    assert replies[good]["value"]["ok"] is True, "a good event after bad ones is answered"
    for eid in known:
        v = replies[eid]["value"]
        assert v["ok"] is False and v["results"] == []
        assert v["error"]["type"] == "BadEvent" and v["error"]["function"] is None and v["error"]["message"]
    assert replies[cases[0][0]]["key"] == b"k"  # type: ignore[index]
    # The event naming the node's deployment log as its reply topic is answered on the replies topic, and
    # nothing is written to the log under the key it chose.
    own = cast(str, cases[-1][0])
    assert "platform's own topics" in replies[own]["value"]["error"]["message"]
    assert f"rev:{own}:1".encode() not in {r["key"] for r in topic_now(broker.bootstrap, node.deployments)}


def test_replies_of_one_key_land_in_the_order_of_its_records(node: Node, broker: EmbeddedBroker) -> None:
    """1. Produce 30 records under one new key: every third one not JSON (a BadEvent), every seventh one
       an event whose listener fails (dead-lettered, then answered), the others good events.
    Result: the replies of that key sit on their partition in the order of the records, bad and failed
    ones included (a bad record's reply once overtook the replies of good events still being batched)."""
    key = new_id().encode()
    ids = [new_id() for _ in range(30)]
    records: list[Record] = []
    for i, eid in enumerate(ids):
        if i % 3 == 1:
            records.append((key, b"{bad", ce_headers("order.created", eid)))
        elif i % 7 == 0:
            records.append((key, b"{}", ce_headers("order.failed", eid)))
        else:
            records.append((key, b"{}", ce_headers("order.created", eid)))
    produce(broker.bootstrap, node.events, records)
    replies = [r for r in consume(broker.bootstrap, node.replies, 100_000, timeout=30, ids=set(ids))]
    mine = sorted((r for r in replies if r["key"] == key), key=lambda r: (r["partition"], r["offset"]))
    assert len({r["partition"] for r in mine}) == 1, "one key, one partition"
    got = [r["value"]["id"] for r in mine]
    assert got == ids, [(ids.index(g), r["value"]["ok"]) for g, r in zip(got, mine, strict=True)]
    assert [r["value"]["ok"] for r in mine] == [i % 3 != 1 and i % 7 != 0 for i in range(30)]


def marked_copies(broker: EmbeddedBroker, node: Node, header: str, value: str) -> list[Any]:
    """The dead-letter copies whose `header` is `value`, once there are any (within 20 s): other tests'
    copies share the topic."""
    copies: list[Any] = []
    want, deadline = 1, time.monotonic() + 20
    while not copies and time.monotonic() < deadline:
        every = asyncio.run(consume_raw(broker.bootstrap, node.deadletter, want, deadline - time.monotonic()))
        copies = [d for d in every if dict(d.headers).get(header) == value.encode()]
        want = len(every) + 1
    return copies


def test_a_reply_too_large_to_produce_fails_the_event(node: Node, broker: EmbeddedBroker) -> None:
    """1. An event whose listener returns 17 MiB, more than a reply may have (16 MiB), then a good event,
    then one whose listener raises an error of 17 MiB. 2. Read the reply topic and the dead-letter topic.
    Result: the event is answered `ok: false` with a FunctionError blaming that listener and saying why,
    an exact copy of it is dead-lettered with `faas_error` and `faas_function`, and the next event is
    answered: the event is not dropped without a trace. The third's reply names the listener that failed
    too (it named none: only a result was looked at), its error cut at 65,536 characters by the instance
    (before, it was whole, and its reply too large to produce as well). A fourth, the first again with a
    `ce_replyto` topic of its own: its `ok: false` reply is on that topic, where its caller waits (it went
    to the default topic, which refused the large reply as well)."""
    eid, good, raised, asked = new_id(), new_id(), new_id(), new_id()
    own = f"t.own.replies.{new_id()[:8]}"
    headers = [*ce_headers("order.huge", eid), ("t_huge", eid.encode())]
    produce(broker.bootstrap, node.events, [(b"big", b'{"n": 1}', headers)])
    produce(broker.bootstrap, node.events, [(b"big", b"{}", ce_headers("order.created", good))])
    produce(broker.bootstrap, node.events, [(b"big", b'{"raise": 1}', ce_headers("order.huge", raised))])
    to_own = [*ce_headers("order.huge", asked), ("ce_replyto", own.encode())]
    produce(broker.bootstrap, node.events, [(b"big", b'{"n": 1}', to_own)])
    replies = by_id(consume(broker.bootstrap, node.replies, 100_000, timeout=30, ids={eid, good, raised}))
    theirs = by_id(consume(broker.bootstrap, own, 1, timeout=30, ids={asked}))[asked]["value"]
    assert theirs["ok"] is False and theirs["error"]["function"] == "huge", theirs
    assert f"could not be produced to {own} nor to {node.replies}" in theirs["error"]["message"], theirs
    failed = replies[raised]["value"]
    assert failed["ok"] is False and failed["error"]["message"].endswith(" more characters cut)"), failed
    assert len(failed["error"]["message"]) < 70_000
    assert (failed["error"]["function"], failed["error"]["uuid"]) == (
        "huge",
        "cccccccc-0000-4000-8000-000000000008",
    ), failed["error"]
    assert eid in replies, f"no reply to the event with the huge result; log:\n{node.tail()}"
    v = replies[eid]["value"]
    assert v["ok"] is False and v["results"] == [] and replies[eid]["key"] == b"big"
    assert v["error"]["type"] == "FunctionError" and v["error"]["function"] == "huge"
    assert "could not be produced" in v["error"]["message"], v["error"]
    assert v["error"]["message"].count("MessageSizeTooLargeError") == 1, v["error"]  # not restated
    assert replies[good]["value"]["ok"] is True
    copies = marked_copies(broker, node, "t_huge", eid)
    assert len(copies) == 1, "one dead-letter copy of the event"
    copy = copies[0]
    marks = dict(copy.headers)
    assert (copy.key, copy.value, list(copy.headers)[: len(headers)]) == (b"big", b'{"n": 1}', headers)
    assert marks["faas_function"] == b"huge" and marks["faas_error"].startswith(b"FunctionError: ")


def test_a_bad_record_whose_headers_alone_are_too_large_to_copy_is_answered_and_copied_without_them(
    node: Node, broker: EmbeddedBroker
) -> None:
    """1. A record that is no event (its value is not JSON) with a 17 MiB header `x-big`: more than a
    dead-letter copy may have (16 MiB), with or without its value. Then a good event of the same key.
    Result: both are answered (BadEvent, then ok), in order; the dead-letter copy keeps the key and every
    other header, `faas_error` included, with neither the value nor `x-big`, and `faas_deadletter_error`
    naming `x-big` and its size. (The copy raised and the record was skipped: no reply, no copy, its offset
    passed: answered zero times.)"""
    bad, good, key = new_id(), new_id(), new_id().encode()
    headers = [*ce_headers("order.created", bad), ("x-big", b"b" * (17 << 20)), ("t_mark", bad.encode())]
    produce(broker.bootstrap, node.events, [(key, b"{bad", headers)])
    produce(broker.bootstrap, node.events, [(key, b"{}", ce_headers("order.created", good))])
    replies = by_id(consume(broker.bootstrap, node.replies, 100_000, timeout=30, ids={bad, good}))
    assert replies[bad]["value"]["error"]["type"] == "BadEvent", replies[bad]
    assert replies[good]["value"]["ok"] is True and replies[bad]["offset"] < replies[good]["offset"]
    copies = marked_copies(broker, node, "t_mark", bad)
    [copy] = copies
    names = [name for name, _ in copy.headers]
    assert copy.key == key and copy.value is None and "x-big" not in names, names
    assert names[:-2] == [name for name, _ in headers if name != "x-big"] and names[-2] == "faas_error"
    why = dict(copy.headers)["faas_deadletter_error"]
    assert f"'x-big' ({5 + (17 << 20)} bytes)".encode() in why, why


def test_event_client_round_trip(node: Node, broker: EmbeddedBroker) -> None:
    async def go() -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, Any]]:
        async with EventClient(broker.bootstrap, events_topic=node.events) as client:
            one = await client.emit("order.created", {"n": 1}, key=b"c1", id="client-fixed-id")
            many = await asyncio.gather(*(client.emit("order.created", {"n": i}) for i in range(20)))
        oneshot = await EventClient(broker.bootstrap, events_topic=node.events).emit("order.failed", {})
        return one, list(many), oneshot

    one, many, oneshot = asyncio.run(go())
    assert one["id"] == "client-fixed-id" and one["results"][0]["result"]["got"] == {"n": 1}
    assert sorted(r["results"][0]["result"]["got"]["n"] for r in many) == list(range(20))
    assert oneshot["ok"] is False and oneshot["error"]["function"] == "failer"


def test_event_client_times_out(broker: EmbeddedBroker) -> None:
    async def go() -> None:
        await EventClient(broker.bootstrap, events_topic=f"t.nobody.{new_id()[:8]}").emit("x", 1, timeout=1.5)

    with pytest.raises(TimeoutError):
        asyncio.run(go())


def test_cli_emit(node: Node, broker: EmbeddedBroker, project: Path) -> None:
    env = {"FAAS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "FAAS_EVENTS_TOPIC": node.events}
    ok = run_cli(project, "emit", "order.created", "--data", '{"who": "cli"}', "--timeout", "20", env=env)
    assert ok.returncode == 0, ok.stderr
    reply = json.loads(ok.stdout)
    assert reply["ok"] is True and reply["results"][0]["result"]["got"] == {"who": "cli"}
    failed = run_cli(project, "emit", "order.failed", "--timeout", "20", env=env)
    assert failed.returncode == 1 and json.loads(failed.stdout)["error"]["type"] == "FunctionError"
    env["FAAS_EVENTS_TOPIC"] = f"t.nobody.{new_id()[:8]}"
    silent = run_cli(project, "emit", "order.created", "--timeout", "2", env=env)
    assert silent.returncode == 1 and "no reply" in silent.stderr


def seq_records(start: int, count: int, keys: int) -> tuple[list[str], list[Record]]:
    ids: list[str] = []
    recs: list[Record] = []
    for n in range(start, start + count):
        eid = new_id()
        key = f"key-{n % keys}"
        ids.append(eid)
        recs.append((key.encode(), orjson.dumps({"seq": n, "key": key}), ce_headers("seq", eid)))
    return ids, recs


def seq_replies(broker: EmbeddedBroker, topic: str, ids: list[str], timeout: float) -> list[dict[str, Any]]:
    got = consume(broker.bootstrap, topic, 1_000_000, timeout=timeout, ids=set(ids))
    return [r for r in got if isinstance(r["value"], dict) and r["value"].get("event") == "seq"]


def assert_per_key_order(replies: list[dict[str, Any]]) -> None:
    seen: dict[str, list[int]] = {}
    firsts: dict[str, dict[str, Any]] = {}
    for r in sorted(replies, key=lambda r: (r["partition"], r["offset"])):
        firsts.setdefault(r["value"]["id"], r)
    for r in sorted(firsts.values(), key=lambda r: (r["partition"], r["offset"])):
        res = r["value"]["results"][0]["result"]
        seen.setdefault(res["key"], []).append(res["seq"])
    for key, seqs in seen.items():
        assert seqs == sorted(seqs), f"{key} out of order: {seqs[:20]}"


def test_5000_events_in_order_then_sigterm_hands_over_without_duplicates(
    project: Path, broker: EmbeddedBroker, nodes: Any
) -> None:
    tag = "load" + new_id()[:6]
    a = nodes(project, broker.bootstrap, tag=tag).wait_ready()
    ids, recs = seq_records(0, 5000, 50)
    started = time.monotonic()
    produce(broker.bootstrap, a.events, recs)
    got = seq_replies(broker, a.replies, ids, timeout=60)
    elapsed = time.monotonic() - started
    answered = {r["value"]["id"] for r in got}
    assert answered >= set(ids), f"{len(set(ids) - answered)} unanswered; log:\n{a.tail()}"
    print(f"\n5000 events, 50 keys, 6 partitions: {5000 / elapsed:.0f} events/s (produce to last reply)")
    assert_per_key_order(got)

    more_ids, more = seq_records(5000, 3000, 50)
    produce(broker.bootstrap, a.events, more)
    wait_for(
        lambda: metric(a, "faas_events_consumed_total") > 5000,
        timeout=30,
        interval=0.02,
        message=f"a taking the second batch\n{a.tail()}",
    )
    a.proc.send_signal(signal.SIGTERM)  # with the second batch taken and (part of it) in flight
    assert a.proc.wait(40) == 0, a.tail()
    b = nodes(project, broker.bootstrap, tag=tag).wait_ready()
    got = seq_replies(broker, a.replies, ids + more_ids, timeout=60)
    counts = Counter(r["value"]["id"] for r in got)
    missing = set(ids + more_ids) - set(counts)
    duplicates = sum(n - 1 for n in counts.values())
    by_node = Counter(
        r["value"]["results"][0]["result"]["node"] for r in got if r["value"]["id"] in set(more_ids)
    )
    print(
        f"after SIGTERM: {len(missing)} unanswered, {duplicates} duplicates, replies per node {dict(by_node)}"
    )
    assert not missing, f"{len(missing)} never answered; log:\n{b.tail()}"
    assert duplicates == 0, "a drained, committed node's work was redone"
    assert_per_key_order(got)


def test_two_nodes_share_the_partitions(project: Path, broker: EmbeddedBroker, nodes: Any) -> None:
    tag = "pair" + new_id()[:6]
    a = nodes(project, broker.bootstrap, tag=tag)
    b = nodes(project, broker.bootstrap, tag=tag)  # started side by side, each joining the same group
    a.wait_ready()
    b.wait_ready()
    settled(a, b, 6)  # both sides of the last rebalance are done
    ids, recs = seq_records(0, 600, 60)
    produce(broker.bootstrap, a.events, recs)
    got = seq_replies(broker, a.replies, ids, timeout=60)
    assert {r["value"]["id"] for r in got} >= set(ids), f"a:\n{a.tail()}\nb:\n{b.tail()}"
    per_node = Counter(r["value"]["results"][0]["result"]["node"] for r in got)
    assert len(per_node) == 2, f"one node answered everything: {per_node}"


@pytest.mark.usefixtures("broker_kills")
def test_broker_outage_turns_readyz_503_and_recovers(project: Path, nodes: Any) -> None:
    port = free_port()
    own = EmbeddedBroker(port=port).start()
    try:
        n = nodes(project, own.bootstrap).wait_ready()
        eid = new_id()
        produce(own.bootstrap, n.events, [(None, b"{}", ce_headers("order.created", eid))])
        reply_to(own, n.replies, eid)
        own.kill()
        went_down = time.monotonic()
        while httpx.get(n.url + "/readyz", timeout=2).status_code == 200:
            assert time.monotonic() - went_down < 10, "readyz still 200 10 s after the broker died"
            time.sleep(0.2)
        invoke = httpx.post(
            f"{n.url}/functions/cccccccc-0000-4000-8000-000000000001/invoke", json=1, timeout=10
        )
        assert invoke.status_code == 200, "HTTP keeps serving without Kafka"
        own = EmbeddedBroker(port=port).start()
        n.wait_ready(timeout=40)
        eid = new_id()
        produce(own.bootstrap, n.events, [(None, b"{}", ce_headers("order.created", eid))])
        assert reply_to(own, n.replies, eid, timeout=45)["value"]["ok"] is True, n.tail()
    finally:
        own.stop()
