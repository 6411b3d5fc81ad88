"""The Kafka record ↔ CloudEvent mapping, without a broker."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from framework.kafka import cloudevents
from framework.kafka.cloudevents import (
    BadRecord,
    Event,
    event_headers,
    parse,
    reply_headers,
)
from tests.support import Header, ce_headers

MAX = 1024


def binary(
    type_: str | None = "order.created", id_: str | None = "e1", **extra: bytes
) -> list[tuple[str, bytes]]:
    h = [("ce_specversion", b"1.0"), ("ce_source", b"tests"), ("content-type", b"application/json")]
    if type_ is not None:
        h.append(("ce_type", type_.encode()))
    if id_ is not None:
        h.append(("ce_id", id_.encode()))
    return h + [(k, v) for k, v in extra.items()]


STRUCTURED = [("content-type", b"application/cloudevents+json; charset=utf-8")]


def envelope(**fields: object) -> bytes:
    doc: dict[str, object] = {"specversion": "1.0", "type": "order.created", "id": "e1", "source": "s"}
    doc.update(fields)
    return orjson.dumps({k: v for k, v in doc.items() if v is not ...})


def test_binary_event_passes_the_value_through_untouched() -> None:
    value = b'{"item": 7,  "note": "spaces kept"}'
    event = parse(value, binary(ce_replyto=b"my.replies"), MAX)
    assert event == Event("order.created", "e1", value, "tests", "my.replies")
    assert isinstance(event, Event) and event.payload is value


def test_header_names_are_case_insensitive_and_specversion_may_be_absent() -> None:
    headers = [("CE_TYPE", b"t"), ("Ce_Id", b"i")]
    assert parse(b"null", headers, MAX) == Event("t", "i", b"null")


def test_structured_event() -> None:
    event = parse(envelope(data={"item": 1}, replyto="r.t"), STRUCTURED, MAX)
    assert event == Event("order.created", "e1", b'{"item":1}', "s", "r.t")


def test_the_content_type_is_matched_as_a_media_type() -> None:
    """`application/cloudevents+json` in any case and with parameters is structured mode; a type that only
    begins so (`+jsonx`) is a format not read here, refused naming it (it was read as JSON)."""
    for given in (b"Application/CloudEvents+JSON ; charset=utf-8", b"application/cloudevents+json"):
        event = parse(envelope(data=[1]), [("content-type", given)], MAX)
        assert isinstance(event, Event) and event.payload == b"[1]", given
    longer = parse(
        envelope(), [*binary()[:2], *binary()[3:], ("content-type", b"application/cloudevents+jsonx")], MAX
    )
    assert isinstance(longer, BadRecord), longer
    assert longer.message.startswith("structured mode in 'application/cloudevents+jsonx' is not supported")


def test_structured_without_data_is_null_and_data_base64_is_decoded() -> None:
    assert parse(envelope(), STRUCTURED, MAX) == Event("order.created", "e1", b"null", "s")
    raw = base64.b64encode(b'{"a": [1]}').decode()
    event = parse(envelope(data_base64=raw), STRUCTURED, MAX)
    assert isinstance(event, Event) and event.payload == b'{"a": [1]}'
    beside_null = parse(envelope(data=None, data_base64=raw), STRUCTURED, MAX)  # some serializers write it
    assert isinstance(beside_null, Event) and beside_null.payload == b'{"a": [1]}'


def test_structured_data_keeps_integers_beyond_64_bits() -> None:
    """1. A structured event whose data holds integers orjson would read as floats (30 digits, 2**64,
    -2**63 - 1) beside a float of 20 digits. Result: the payload carries each number as sent."""
    value = (
        b'{"specversion":"1.0","type":"t","id":"e1","data":{"a":123456789012345678901234567890,'
        b'"b":[18446744073709551616,-9223372036854775809],"f":0.12345678901234567890}}'
    )
    event = parse(value, STRUCTURED, MAX)
    assert isinstance(event, Event)
    assert event.payload == (
        b'{"a":123456789012345678901234567890,"b":[18446744073709551616,-9223372036854775809],'
        b'"f":0.12345678901234568}'
    )


@pytest.mark.parametrize("depth", [255, 1022])
def test_structured_data_nested_deeper_than_orjson_writes_is_the_payload(depth: int) -> None:
    """1. A structured event whose data nests 255 or 1,022 levels (orjson writes 254; the envelope adds a
    level, and orjson reads 1,024). Result: an event whose payload is that data, as binary mode would
    carry it; it was an error the parse did not catch (a 500 over HTTP, a record skipped over Kafka)."""
    data = b"[" * depth + b"0" + b"]" * depth
    value = b'{"specversion":"1.0","type":"t","id":"e1","data":' + data + b"}"
    event = parse(value, STRUCTURED, 1 << 20)
    assert isinstance(event, Event) and event.payload == data


BAD = [
    # (value, headers, expected id, expected type, words in the message)
    (b"{not json", binary(), "e1", "order.created", "not JSON"),
    (b"\xff\xfe\x00", binary(), "e1", "order.created", "not UTF-8"),
    (b"", binary(), "e1", "order.created", "empty"),
    (None, binary(), "e1", "order.created", "empty"),
    (b"x" * (MAX + 1), binary(), "e1", "order.created", "over FAAS_MAX_PAYLOAD_BYTES"),
    (b"{}", binary(type_=None), "e1", None, "missing ce_type"),
    (b"{}", binary(id_=None), None, "order.created", "missing ce_id"),
    (b"{}", binary(id_=""), None, "order.created", "empty ce_id header"),
    (b"{}", binary(type_=""), "e1", None, "empty ce_type header"),
    (
        b"{}",
        [*binary(), ("ce_id", b"e2")],
        "e1",
        "order.created",
        "ce_id is given twice, with different values",
    ),
    (b"{}", [*binary(), ("CE_TYPE", b"other")], "e1", "order.created", "CE_TYPE is given twice"),
    (
        b"[{}]",
        [*binary()[:2], *binary()[3:], ("content-type", b"application/cloudevents-batch+json")],
        "e1",
        "order.created",
        "batch mode",
    ),
    (
        envelope(),
        [*binary()[:2], *binary()[3:], ("content-type", b"application/cloudevents+xml")],
        "e1",
        "order.created",
        "structured mode in 'application/cloudevents+xml' is not supported",
    ),
    (
        envelope(data_base64=base64.b64encode(b"{no").decode()),
        STRUCTURED,
        "e1",
        "order.created",
        "decoded data is not JSON",
    ),
    (b"{}", [*binary()[1:], ("ce_specversion", b"0.3")], "e1", "order.created", "ce_specversion"),
    (b"{}", [*binary(type_=None), ("ce_type", b"\xffbad")], "e1", None, "not UTF-8"),
    (b"{}", binary(ce_replyto=b"no spaces allowed"), "e1", "order.created", "invalid reply topic"),
    (b"{bad", STRUCTURED, None, None, "structured mode: record value is not JSON"),
    (b"[1, 2]", STRUCTURED, None, None, "not a JSON object"),
    (envelope(type=...), STRUCTURED, "e1", None, "missing 'type'"),
    (envelope(id=...), STRUCTURED, None, "order.created", "missing 'id'"),
    (envelope(type=123), STRUCTURED, "e1", None, "'type' must be a string, got int"),
    (envelope(id=["x"]), STRUCTURED, None, "order.created", "'id' must be a string, got list"),
    (envelope(type=""), STRUCTURED, "e1", None, "'type' is empty"),
    (envelope(specversion="0.3"), STRUCTURED, "e1", "order.created", "specversion"),
    (envelope(data_base64="!!"), STRUCTURED, "e1", "order.created", "data_base64"),
    (
        envelope(data={"y": 2}, data_base64="MQ=="),
        STRUCTURED,
        "e1",
        "order.created",
        "both 'data' and 'data_base64'",
    ),
    (envelope(replyto=5), STRUCTURED, "e1", "order.created", "invalid reply topic"),
]


@pytest.mark.parametrize(("value", "headers", "id_", "type_", "words"), BAD)
def test_bad_records(
    value: bytes | None, headers: list[tuple[str, bytes]], id_: str | None, type_: str | None, words: str
) -> None:
    bad = parse(value, headers, MAX)
    assert isinstance(bad, BadRecord)
    assert words in bad.message
    assert (bad.id, bad.type) == (id_, type_)
    assert len(bad.message) <= 500


def test_bad_record_keeps_a_valid_reply_topic() -> None:
    bad = parse(b"{nope", binary(ce_replyto=b"caller.replies"), MAX)
    assert isinstance(bad, BadRecord) and bad.replyto == "caller.replies"


@pytest.mark.parametrize("structured", [False, True])
def test_a_reply_topic_of_the_platforms_own_is_refused(structured: bool) -> None:
    """An event naming one of the node's own topics as its reply topic is bad, and its BadEvent reply
    goes to the default topic: the event's producer cannot write into the deployment log that way."""
    own = frozenset({"faas.deployments", "faas.events"})
    for topic in own:
        if structured:
            bad = parse(envelope(replyto=topic), STRUCTURED, MAX, own_topics=own)
        else:
            bad = parse(b"{}", binary(ce_replyto=topic.encode()), MAX, own_topics=own)
        assert isinstance(bad, BadRecord), topic
        assert bad.replyto is None and (bad.id, bad.type) == ("e1", "order.created")
        assert f"reply topic {topic!r} is one of the platform's own topics" in bad.message
    event = parse(b"{}", binary(ce_replyto=b"faas.replies"), MAX, own_topics=own)
    assert isinstance(event, Event) and event.replyto == "faas.replies"


def test_null_header_values_are_ignored() -> None:
    headers: list[tuple[str, bytes | None]] = [*binary(), ("ce_extra", None)]
    assert isinstance(parse(b"1", headers, MAX), Event)


def test_reply_headers() -> None:
    h = dict(reply_headers("e1"))
    assert h["ce_specversion"] == b"1.0" and h["ce_type"] == b"faas.reply" and h["ce_source"] == b"faas"
    assert h["ce_correlationid"] == b"e1" and h["content-type"] == b"application/json"
    assert h["ce_id"] != dict(reply_headers("e1"))["ce_id"]
    assert "ce_correlationid" not in dict(reply_headers(None))
    assert "ce_traceparent" not in h and "ce_tracestate" not in h
    tp = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    traced = dict(reply_headers("e1", tp, "v=1,w=2"))
    assert traced["ce_traceparent"] == tp.encode() and traced["ce_tracestate"] == b"v=1,w=2"
    assert "ce_tracestate" not in dict(reply_headers("e1", tp))


def test_event_headers_round_trip() -> None:
    headers = event_headers("t.x", "id-1", replyto="r")
    assert parse(b"{}", headers, MAX) == Event("t.x", "id-1", b"{}", "faas-client", "r")


# ---- identity, extensions and trace context (DESIGN.md sections 3, 10, 11) ----


def test_binary_identity_extensions_and_trace() -> None:
    """Subject, time (any string: never parsed), extensions (other ce_ headers, case-insensitive names) and
    the trace context from ce_traceparent; the key decoded as UTF-8 (replacement characters if it is not)."""
    tp = "00-" + "a" * 32 + "-" + "b" * 16 + "-01"
    headers = [
        *binary(),
        ("ce_subject", b"order-1"),
        ("ce_time", b"not a time"),
        ("CE_PartitionKey", b"p-1"),
        ("ce_traceparent", tp.encode()),
        ("ce_tracestate", b"v=1"),
        ("other", b"ignored"),
    ]
    ev = cloudevents.parse(b"{}", headers, 1000)
    assert isinstance(ev, cloudevents.Event)
    assert (ev.subject, ev.time, ev.traceparent, ev.tracestate) == ("order-1", "not a time", tp, "v=1")
    assert ev.extensions == {"partitionkey": "p-1", "traceparent": tp, "tracestate": "v=1"}
    ident = ev.identity(b"k\xff")
    assert (ident.event_id, ident.source, ident.key) == ("e1", ev.source, "k\ufffd")
    assert ev.identity().key is None and not ev.dropped


TP_A, TP_B = f"00-{'a' * 32}-{'1' * 16}-01", f"00-{'b' * 32}-{'2' * 16}-01"


def test_plain_trace_headers_count_when_no_ce_traceparent() -> None:
    headers = [*binary(), ("traceparent", b"00-x"), ("tracestate", b"s=1")]
    ev = cloudevents.parse(b"{}", headers, 1000)
    assert isinstance(ev, cloudevents.Event)
    assert (ev.traceparent, ev.tracestate) == ("00-x", "s=1") and ev.extensions == {}
    ev = cloudevents.parse(b"{}", [*headers, ("ce_traceparent", b"00-y")], 1000)
    assert isinstance(ev, cloudevents.Event) and ev.traceparent == "00-y"


@pytest.mark.parametrize(
    ("trace", "transport_first", "want"),
    [
        # Kafka: the extension first, each traceparent with its own tracestate.
        ([("ce_traceparent", TP_A), ("ce_tracestate", "a=1"), ("traceparent", TP_B)], False, (TP_A, "a=1")),
        # A malformed extension beside a valid plain header: the valid one's trace is continued.
        ([("ce_traceparent", "00-bad"), ("traceparent", TP_B), ("tracestate", "b=1")], False, (TP_B, "b=1")),
        # HTTP: the hop's own header first (section 11), the event's extension when that one is malformed.
        ([("ce_traceparent", TP_A), ("traceparent", TP_B), ("tracestate", "b=1")], True, (TP_B, "b=1")),
        ([("ce_traceparent", TP_A), ("ce_tracestate", "a=1"), ("traceparent", "zz")], True, (TP_A, "a=1")),
        # Only one, malformed: passed on as it is (the span starts a new trace); no tracestate of another.
        ([("ce_traceparent", "00-bad"), ("tracestate", "b=1")], False, ("00-bad", None)),
        # A header given twice, as HTTP reads a repeated field: tracestate lists joined, two traceparents
        # malformed (the other one, when valid, is taken; else none is).
        ([("traceparent", TP_B), ("tracestate", "b=1"), ("tracestate", "c=2")], False, (TP_B, "b=1,c=2")),
        (
            [("ce_traceparent", TP_A), ("ce_tracestate", "a=1"), ("ce_tracestate", "z=9")],
            True,
            (TP_A, "a=1,z=9"),
        ),
        ([("traceparent", TP_A), ("traceparent", TP_B), ("tracestate", "b=1")], True, None),
        ([("traceparent", TP_B), ("ce_traceparent", TP_A), ("ce_traceparent", TP_A)], False, (TP_B, None)),
    ],
)
def test_the_first_valid_traceparent_wins(
    trace: list[tuple[str, str]], transport_first: bool, want: Any
) -> None:
    headers = [*binary(), *((n, v.encode()) for n, v in trace)]
    ev = cloudevents.parse(b"{}", headers, 1000, transport_first=transport_first)
    assert isinstance(ev, cloudevents.Event)
    assert (ev.traceparent, ev.tracestate) == (want or (None, None))


def test_a_traceparent_extension_given_twice_is_dropped_not_seen_empty() -> None:
    """`ce_traceparent` twice: the event starts a new trace (as before), and its extensions no longer hold
    an empty `traceparent` for the handler to see: it is dropped, with a reason."""
    headers = [*binary(), ("ce_traceparent", TP_A.encode()), ("ce_traceparent", TP_A.encode())]
    ev = cloudevents.parse(b"{}", headers, 1000)
    assert isinstance(ev, cloudevents.Event)
    assert ev.traceparent is None and "traceparent" not in ev.extensions
    assert ev.dropped == ["extension header ce_traceparent is given twice (a new trace is started)"]


def test_bad_extensions_are_dropped_not_fatal() -> None:
    """Non-UTF-8, oversized, or badly named extension headers (not lower-case letters and digits, or over
    128 of them) are dropped with a reason each; the event stays valid, with a name over CloudEvents'
    advised 20 kept. A core attribute that is not UTF-8 still makes the record bad."""
    headers = [
        *binary(),
        ("ce_bin", b"\xff"),
        ("ce_big", b"x" * (cloudevents.MAX_EXTENSION_BYTES + 1)),
        ("ce_bad-name", b"v"),
        ("ce_" + "n" * 129, b"v"),
        ("ce_averyveryverylongextensionname", b"long"),
        ("ce_ok", b"fine"),
    ]
    ev = cloudevents.parse(b"{}", headers, 1000)
    assert isinstance(ev, cloudevents.Event)
    assert ev.extensions == {"averyveryverylongextensionname": "long", "ok": "fine"}
    assert len(ev.dropped) == 4
    assert any("ce_bin" in d and "UTF-8" in d for d in ev.dropped)
    assert any("ce_big" in d for d in ev.dropped) and any("ce_bad-name" in d for d in ev.dropped)
    bad = cloudevents.parse(b"{}", [*binary(), ("ce_subject", b"\xff")], 1000)
    assert isinstance(bad, cloudevents.BadRecord) and "ce_subject" in bad.message


def test_structured_identity_and_extensions() -> None:
    doc = {
        "specversion": "1.0",
        "type": "t",
        "id": "i",
        "source": "s",
        "subject": "sub",
        "time": "2024-01-01T00:00:00Z",
        "datacontenttype": "application/json",
        "flag": True,
        "count": 3,
        "traceparent": "00-z",
        "nested": {"a": 1},
        "Upper": "x",
        "data": [1],
    }
    ev = cloudevents.parse(orjson.dumps(doc), STRUCTURED, 1000)
    assert isinstance(ev, cloudevents.Event)
    assert (ev.subject, ev.time, ev.traceparent, ev.payload) == (
        "sub",
        "2024-01-01T00:00:00Z",
        "00-z",
        b"[1]",
    )
    assert ev.extensions == {"flag": "true", "count": "3", "traceparent": "00-z"}
    assert len(ev.dropped) == 2


def test_reply_headers_carry_the_traceparent() -> None:
    names = dict(cloudevents.reply_headers("e1", "00-t"))
    assert names["ce_traceparent"] == b"00-t" and names["ce_correlationid"] == b"e1"
    assert "ce_traceparent" not in dict(cloudevents.reply_headers("e1"))
    assert dict(cloudevents.event_headers("t", "i", traceparent="00-u"))["ce_traceparent"] == b"00-u"


@pytest.mark.parametrize(
    "trace",
    [
        [],
        [("ce_traceparent", TP_A.encode()), ("ce_tracestate", b"v=1")],
        [("traceparent", TP_B.encode()), ("TraceState", b"v=2")],
        [("traceparent", TP_B.encode()), ("CE_TRACEPARENT", TP_A.encode())],
        [("traceparent", TP_B.encode()), ("ce_traceparent", b"\xff" + TP_A.encode())],
        [("traceparent", TP_B.encode()), ("ce_traceparent", TP_A.encode() + b" " * 5000)],
        [("traceparent", TP_B.encode()), ("ce_traceparent", b"")],
        [("ce_traceparent", b"00-bad"), ("traceparent", TP_B.encode())],
    ],
)
@pytest.mark.parametrize("mode", ["binary", "structured", "structured+attribute"])
def test_trace_context_of_a_bad_record_is_chosen_as_for_a_valid_event(trace: list[Header], mode: str) -> None:
    """1. Give a valid event these trace headers (binary mode; structured mode, without and with
    `traceparent`/`tracestate` attributes in the envelope). 2. Break it: no ce_id / no id.
    Result: the trace context `cloudevents.parse` gives the broken record (for its BadEvent reply) is what
    it takes for the valid one."""
    if mode == "binary":
        headers: list[Header] = [*ce_headers("t", "i"), *trace]
        value = broken = b"{}"
    else:
        doc: dict[str, Any] = {"specversion": "1.0", "type": "t", "id": "i"}
        if mode == "structured+attribute":
            doc |= {"traceparent": f"00-{'c' * 32}-{'3' * 16}-00", "tracestate": "v=3"}
        headers = [("content-type", b"application/cloudevents+json"), *trace]
        value, broken = orjson.dumps(doc), orjson.dumps({k: v for k, v in doc.items() if k != "id"})
    event = cloudevents.parse(value, headers, 1000)
    assert isinstance(event, cloudevents.Event)
    headers = [h for h in headers if h[0] != "ce_id"]
    bad = cloudevents.parse(broken, headers, 1000)
    assert isinstance(bad, cloudevents.BadRecord)
    assert (bad.traceparent, bad.tracestate) == (event.traceparent, event.tracestate)
