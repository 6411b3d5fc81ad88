"""Event identity and trace context over Kafka (DESIGN.md sections 3, 4, 10, 11), against a real broker and a
real `faas run` node: what a handler sees of the event, what the reply carries, what the log lines say."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import Iterator
from typing import Any

import pytest

from framework.kafka.embedded import EmbeddedBroker
from tests.support import (
    Header,
    Node,
    RawHeaderName,
    Record,
    ce_headers,
    consume,
    new_id,
    produce,
    produce_one_batch,
    wait_for,
    write_project,
)

IDENT = "abababab-0000-4000-8000-000000000001"
MANIFEST = f"""
functions:
  - name: ident
    uuid: {IDENT}
    handler: functions.idm:ident
    state: productive
    events: [ident.seen]
"""
MODULE = """
FIELDS = ("invocation_id", "event_id", "source", "subject", "time", "key", "trace_id", "span_id",
          "traceparent", "attempt", "revision")

def ident(payload, ctx):
    ctx.log.info("serving %s", ctx.event_id, extra={"order_ref": "o-17"})
    out = {name: getattr(ctx, name) for name in FIELDS}
    out["extensions"] = dict(ctx.extensions)
    out["payload"] = payload
    return out
"""
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, broker: EmbeddedBroker) -> Iterator[Node]:
    root = write_project(tmp_path_factory.mktemp("identity"), MANIFEST, {"idm": MODULE})
    n = Node(root, broker.bootstrap, env={"FAAS_LOG_FORMAT": "json"}).wait_ready()
    yield n
    n.kill()


def _replies(node: Node, broker: EmbeddedBroker, eid: str, want: int = 1) -> list[dict[str, Any]]:
    def got() -> list[dict[str, Any]]:
        recs = consume(broker.bootstrap, node.replies, 10_000, timeout=5, ids={eid})
        mine = [r for r in recs if isinstance(r["value"], dict) and r["value"].get("id") == eid]
        return mine if len(mine) >= want else []

    found: list[dict[str, Any]] = wait_for(got, timeout=60, message=f"{want} replies to {eid}")
    return found


def _result(reply: dict[str, Any]) -> dict[str, Any]:
    value = reply["value"]
    assert value["ok"] is True, value
    return dict(value["results"][0]["result"])


def test_redelivered_event_keeps_its_id_and_gets_new_invocation_ids(
    node: Node, broker: EmbeddedBroker
) -> None:
    """1. Produce the same event (same ce_id, key and headers) twice, as a redelivery would.
    2. Read both replies.
    Result: both handlers saw the same ctx.event_id, key, source, subject and time; their invocation ids
    differ and are random UUIDs (not consecutive)."""
    eid, key = new_id(), f"k-{new_id()[:8]}"
    headers = [
        *ce_headers("ident.seen", eid),
        ("ce_subject", b"order-1"),
        ("ce_time", b"2024-05-01T12:00:00Z"),
    ]
    record = (key.encode(), b'{"n": 1}', headers)
    produce(broker.bootstrap, node.events, [record, record])
    first, second = (_result(r) for r in _replies(node, broker, eid, want=2)[:2])
    for res in (first, second):
        assert (res["event_id"], res["key"], res["source"]) == (eid, key, "tests"), res
        assert (res["subject"], res["time"], res["attempt"]) == ("order-1", "2024-05-01T12:00:00Z", 1), res
    a, b = first["invocation_id"], second["invocation_id"]
    assert a != b
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", a), a
    assert abs(int(a[-12:], 16) - int(b[-12:], 16)) > 1000, "ids look sequential"


def test_caller_trace_reaches_ctx_reply_and_json_logs(node: Node, broker: EmbeddedBroker) -> None:
    """1. Produce an event with `ce_traceparent: 00-T-S-01`, a `ce_tracestate` and an extension.
    2. Read its reply; read the node's JSON log.
    Result: ctx.trace_id is T, ctx.span_id is a new span (not S); the reply has `ce_traceparent` of trace T
    and the caller's `ce_tracestate`; ctx.extensions holds traceparent, tracestate and the extension; the
    instance's log line of that invocation carries trace_id T, the invocation's span_id and the handler's own
    `extra` field."""
    eid, tid, sid = new_id(), secrets.token_hex(16), secrets.token_hex(8)
    tp = f"00-{tid}-{sid}-01"
    headers = [
        *ce_headers("ident.seen", eid),
        ("ce_traceparent", tp.encode()),
        ("ce_tracestate", b"vendor=abc"),
        ("ce_partitionkey", b"pk-1"),
    ]
    produce(broker.bootstrap, node.events, [(None, b"{}", headers)])
    reply = _replies(node, broker, eid)[0]
    res = _result(reply)
    assert res["trace_id"] == tid and res["span_id"] != sid, res
    m = TRACEPARENT.match(res["traceparent"])
    assert m is not None and m.groups() == (res["trace_id"], res["span_id"]), res
    assert res["extensions"] == {"traceparent": tp, "tracestate": "vendor=abc", "partitionkey": "pk-1"}, res
    assert res["key"] is None, res
    out = TRACEPARENT.match(reply["headers"].get("ce_traceparent", ""))
    assert out is not None and out.group(1) == tid, reply["headers"]
    assert out.group(2) != res["span_id"], "the reply carries the event's span, the invocation's parent"
    assert reply["headers"].get("ce_tracestate") == "vendor=abc", reply["headers"]

    def log_line() -> dict[str, Any] | None:
        for line in node.log.read_text(errors="replace").splitlines():
            if line.startswith("{") and eid in line:
                entry: dict[str, Any] = json.loads(line)
                if entry.get("message") == f"serving {eid}":
                    return entry
        return None

    entry = wait_for(log_line, timeout=30, message="the handler's log line")
    assert (entry["trace_id"], entry["span_id"]) == (tid, res["span_id"]), entry
    assert entry["invocation_id"] == res["invocation_id"] and entry["function"] == "ident", entry
    assert entry["order_ref"] == "o-17", entry


def test_plain_traceparent_header_and_malformed_ones(node: Node, broker: EmbeddedBroker) -> None:
    """1. Produce an event with a plain `traceparent` header (no ce_ prefix).
    2. Produce events with malformed trace contexts (upper case, all-zero trace id, short) and a malformed
       ce_time.
    Result: 1 continues that trace (and it is not an extension), its reply without `ce_tracestate` (it came
    with none); 2 are all answered ok, each in a new trace, with ce_time passed on as it came."""
    eid, tid = new_id(), secrets.token_hex(16)
    plain = ("traceparent", f"00-{tid}-{secrets.token_hex(8)}-01".encode())
    headers = [*ce_headers("ident.seen", eid), plain]
    produce(broker.bootstrap, node.events, [(None, b"1", headers)])
    reply = _replies(node, broker, eid)[0]
    res = _result(reply)
    assert res["trace_id"] == tid and "traceparent" not in res["extensions"], res
    assert "ce_tracestate" not in reply["headers"], reply["headers"]
    bad = [
        f"00-{tid.upper()}-{'a' * 16}-01",
        f"00-{'0' * 32}-{'a' * 16}-01",
        "00-abc-def-01",
    ]
    ids = [new_id() for _ in bad]
    records: list[Record] = [
        (None, b"2", [*ce_headers("ident.seen", i), ("ce_traceparent", t.encode()), ("ce_time", b"yes")])
        for i, t in zip(ids, bad, strict=True)
    ]
    produce(broker.bootstrap, node.events, records)
    for i in ids:
        res = _result(_replies(node, broker, i)[0])
        assert re.fullmatch(r"[0-9a-f]{32}", res["trace_id"]) and res["trace_id"] != tid, res
        assert res["trace_id"] != "0" * 32 and res["time"] == "yes", res


def test_bad_extension_headers_are_dropped_with_a_warning(node: Node, broker: EmbeddedBroker) -> None:
    """1. Produce an event with a non-UTF-8 extension header, an oversized one and a good one.
    Result: the event is answered ok; the handler sees only the good extension; the node's log warns once,
    naming the event and each dropped header."""
    eid = new_id()
    headers = [
        *ce_headers("ident.seen", eid),
        ("ce_badbytes", b"\xff\xfe"),
        ("ce_huge", b"x" * 5000),
        ("ce_good", b"yes"),
    ]
    produce(broker.bootstrap, node.events, [(None, b"{}", headers)])
    res = _result(_replies(node, broker, eid)[0])
    assert res["extensions"] == {"good": "yes"}, res

    def warned() -> bool:
        text = node.log.read_text(errors="replace")
        lines = [x for x in text.splitlines() if eid in x and "dropped" in x]
        return len(lines) == 1 and "ce_badbytes" in lines[0] and "ce_huge" in lines[0]

    wait_for(warned, timeout=30, message="warnings about the dropped headers")


def test_structured_event_from_a_plain_producer(node: Node, broker: EmbeddedBroker) -> None:
    """A KafkaJS-style client: a plain aiokafka producer sending a structured-mode CloudEvent (the whole
    event as the value, `content-type: application/cloudevents+json`) and a binary one with only the
    required headers (no ce_specversion, mixed-case names).
    Result: both are answered ok with the event's identity in ctx (structured: subject, an extension, the
    data as payload)."""
    s_id, b_id = new_id(), new_id()
    event = {
        "specversion": "1.0",
        "type": "ident.seen",
        "id": s_id,
        "source": "kafkajs/app",
        "subject": "cart-9",
        "comexample": 7,
        "datacontenttype": "application/json",
        "data": {"items": [1, 2]},
    }
    structured = (b"cart-9", json.dumps(event).encode(), [("content-type", b"application/cloudevents+json")])
    binary = (None, b'"plain"', [("CE_Type", b"ident.seen"), ("ce_id", b_id.encode())])
    produce(broker.bootstrap, node.events, [structured, binary])
    res = _result(_replies(node, broker, s_id)[0])
    assert res["payload"] == {"items": [1, 2]}, res
    assert (res["event_id"], res["source"], res["subject"], res["key"]) == (
        s_id,
        "kafkajs/app",
        "cart-9",
        "cart-9",
    ), res
    assert res["extensions"] == {"comexample": "7"}, res
    res = _result(_replies(node, broker, b_id)[0])
    assert (res["payload"], res["event_id"], res["source"]) == ("plain", b_id, None), res


def _replies_by_key(node: Node, broker: EmbeddedBroker, keys: set[bytes]) -> dict[bytes, dict[str, Any]]:
    """The first reply to each Kafka key in `keys` (bad records may have no id to find their reply by)."""

    def got() -> dict[bytes, dict[str, Any]] | None:
        found: dict[bytes, dict[str, Any]] = {}
        for r in consume(broker.bootstrap, node.replies, 100_000, timeout=5):
            if r["key"] in keys:
                found.setdefault(r["key"], r)
        return found if len(found) == len(keys) else None

    replies: dict[bytes, dict[str, Any]] = wait_for(got, timeout=60, message=f"replies to keys {keys}")
    return replies


def test_bad_records_are_answered_in_their_trace(node: Node, broker: EmbeddedBroker) -> None:
    """1. Produce records that are not valid events, each under a key of its own: a value that is not JSON
       with `ce_traceparent` of trace T1; a bad ce_specversion with a plain `traceparent` of T2; a value over
       FAAS_MAX_PAYLOAD_BYTES with `ce_traceparent` of T3; a structured envelope without `id` whose
       `traceparent` attribute is of T4 (the first with a `ce_tracestate`); one with no trace context; one
       with a malformed `ce_traceparent`; one with no headers at all.
    2. Read their replies.
    Result: every reply is a BadEvent reply carrying `ce_traceparent`: the first four continue T1-T4 in a span
    of their own (not the caller's), the first passing its `ce_tracestate` on, the last three each start a new
    trace, as a valid event's reply would."""
    tids = [secrets.token_hex(16) for _ in range(4)]
    caller = secrets.token_hex(8)
    tps = [f"00-{t}-{caller}-01" for t in tids]
    envelope = {"specversion": "1.0", "type": "ident.seen", "traceparent": tps[3]}
    structured = [("content-type", b"application/cloudevents+json")]
    big = b'{"x": "' + b"y" * (2 * 1024 * 1024) + b'"}'
    keys = [f"bad-{new_id()}".encode() for _ in range(7)]

    def h(*extra: Header, specversion: bytes = b"1.0") -> list[Header]:
        return [("ce_specversion", specversion), *ce_headers("ident.seen", new_id())[1:], *extra]

    records: list[Record] = [
        (keys[0], b"not json", h(("ce_traceparent", tps[0].encode()), ("ce_tracestate", b"v=bad"))),
        (keys[1], b"{}", h(("traceparent", tps[1].encode()), specversion=b"0.3")),
        (keys[2], big, h(("ce_traceparent", tps[2].encode()))),
        (keys[3], json.dumps(envelope).encode(), structured),
        (keys[4], b"not json", h()),
        (keys[5], b"{}", h(("ce_traceparent", tps[0].upper().encode()), specversion=b"0.3")),
        (keys[6], b"not json", []),
    ]
    produce(broker.bootstrap, node.events, records)
    replies = _replies_by_key(node, broker, set(keys))
    seen: set[str] = set()
    for i, key in enumerate(keys):
        reply = replies[key]
        assert reply["value"]["error"]["type"] == "BadEvent", (i, reply)
        m = TRACEPARENT.match(reply["headers"].get("ce_traceparent", ""))
        assert m is not None, f"record {i}: no ce_traceparent in {reply['headers']}"
        trace_id, span_id = m.groups()
        if i < len(tids):
            assert (trace_id, span_id != caller) == (tids[i], True), (i, reply["headers"])
        else:
            assert trace_id not in tids and trace_id not in seen, (i, reply["headers"])
        seen.add(trace_id)
        assert reply["headers"].get("ce_tracestate") == ("v=bad" if i == 0 else None), (i, reply["headers"])


def test_events_from_producers_that_compress_are_answered(node: Node, broker: EmbeddedBroker) -> None:
    """1. Produce one event with each Kafka codec (gzip, snappy, lz4, zstd: other clients' producers often
    compress), then a plain one, all under one key (one partition, in this order).
    Result: every one is answered ok with its own payload. (Without a codec's library the node's consumer
    cannot decode that batch: it failed and restarted for ever, `/readyz` 503, and nothing after the event
    on its partition was answered.)"""
    from aiokafka import AIOKafkaProducer

    codecs = ("gzip", "snappy", "lz4", "zstd", None)
    ids = {codec: new_id() for codec in codecs}

    async def send() -> None:
        for codec, eid in ids.items():
            producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, compression_type=codec)
            await producer.start()
            try:
                value = json.dumps({"codec": codec}).encode()
                await producer.send_and_wait(
                    node.events, value, key=b"compressed", headers=ce_headers("ident.seen", eid)
                )
            finally:
                await producer.stop()

    asyncio.run(send())
    for codec, eid in ids.items():
        assert _result(_replies(node, broker, eid)[0])["payload"] == {"codec": codec}, codec


def test_header_names_that_are_not_utf8_do_not_stop_the_partition(node: Node, broker: EmbeddedBroker) -> None:
    """1. Produce, in one batch on one partition, an event with a header named by bytes that are not UTF-8
    and an extension header `ce_` + such bytes (Kafka wants UTF-8 names; Go clients and librdkafka send
    any bytes), then a plain event.
    Result: both are answered ok, the first with its good extension only (the undecodable one dropped with a
    warning). (aiokafka failed decoding the name: the node's consumer crashed, rejoined and crashed on the
    same record for ever, and every partition it owned stopped.)"""
    first, second = new_id(), new_id()
    records = [
        (
            [
                *ce_headers("ident.seen", first),
                (RawHeaderName(b"x-\xff\xfe"), b"v"),
                ("ce_good", b"yes"),
                (RawHeaderName(b"ce_\xc3"), b"w"),
            ],
            first,
        ),
        (ce_headers("ident.seen", second), second),
    ]
    produce_one_batch(
        broker.bootstrap,
        node.events,
        [(b"raw-names", json.dumps({"eid": eid}).encode(), headers) for headers, eid in records],
    )
    one, two = _result(_replies(node, broker, first)[0]), _result(_replies(node, broker, second)[0])
    assert one["extensions"] == {"good": "yes"} and one["payload"] == {"eid": first}, one
    assert two["payload"] == {"eid": second}, two
    wait_for(
        lambda: any(
            first in x and "'ce_" in x and "xc3'" in x
            for x in node.log.read_text(errors="replace").splitlines()
        ),
        timeout=30,
        message="a warning naming the dropped extension",
    )
