"""CloudEvents over HTTP (`POST /events`) and trace context on the HTTP routes (DESIGN.md sections 5, 10, 11),
against a real `faas run` node: the way Knative, Dapr or Argo Events deliver."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.support import Node, new_id, write_project

IDENT = "acacacac-0000-4000-8000-000000000001"
FAILER = "acacacac-0000-4000-8000-000000000002"
MANIFEST = f"""
functions:
  - name: ident
    uuid: {IDENT}
    handler: functions.idm:ident
    state: productive
    events: [ce.seen, "acme.com/order.created"]
  - name: failer
    uuid: {FAILER}
    handler: functions.idm:failer
    state: productive
    events: [ce.fail]
"""
MODULE = """
def ident(payload, ctx):
    fields = ("invocation_id", "trigger", "event", "event_id", "source", "subject", "time", "key",
              "trace_id", "span_id", "traceparent")
    out = {name: getattr(ctx, name) for name in fields}
    out["extensions"] = dict(ctx.extensions)
    out["payload"] = payload
    return out

async def failer(payload, ctx):
    raise RuntimeError("no")
"""
TP = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = write_project(tmp_path_factory.mktemp("cehttp"), MANIFEST, {"idm": MODULE})
    n = Node(root, None, kafka=False, env={"FAAS_MAX_PAYLOAD_BYTES": "2048"}).wait_ready()
    yield n
    n.kill()


def _binary(eid: str, type_: str = "ce.seen", **extra: str) -> dict[str, str]:
    return {
        "ce-specversion": "1.0",
        "ce-type": type_,
        "ce-id": eid,
        "ce-source": "knative/test",
        "content-type": "application/json",
        **extra,
    }


def _result(body: dict[str, Any]) -> dict[str, Any]:
    assert body["ok"] is True and body["results"][0]["function"] == "ident", body
    return dict(body["results"][0]["result"])


def test_binary_mode_with_trace_and_percent_encoded_extension(node: Node) -> None:
    """1. POST /events in binary mode with subject, time, a percent-encoded extension and a caller's
       `traceparent` + `tracestate`.
    Result: 200; reply headers ce-specversion/ce-type/ce-id/ce-source/ce-correlationid and a `traceparent`
    of the caller's trace; the handler saw the identity, the decoded extension and the caller's trace id."""
    eid, tid = new_id(), secrets.token_hex(16)
    headers = _binary(
        eid,
        **{
            "ce-subject": "s-1",
            "ce-time": "2024-06-01T08:30:00Z",
            "ce-comexampleext": "caf%C3%A9 %25",
            "traceparent": f"00-{tid}-{secrets.token_hex(8)}-01",
            "tracestate": "k=v",
        },
    )
    r = httpx.post(f"{node.url}/events", content=b'{"n": 2}', headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    h = r.headers
    assert (h["ce-specversion"], h["ce-type"], h["ce-source"]) == ("1.0", "faas.reply", "faas"), h
    assert h["ce-correlationid"] == eid and h["ce-id"] and h["ce-id"] != eid, h
    m = TP.match(h["traceparent"])
    assert m is not None and m.group(1) == tid, h
    res = _result(r.json())
    assert (res["trigger"], res["event"], res["payload"]) == ("event", "ce.seen", {"n": 2}), res
    assert (res["event_id"], res["source"], res["subject"], res["time"]) == (
        eid,
        "knative/test",
        "s-1",
        "2024-06-01T08:30:00Z",
    ), res
    assert res["extensions"] == {"comexampleext": "café %"}, res
    assert res["trace_id"] == tid and res["key"] is None, res


def test_structured_mode_with_base64_data(node: Node) -> None:
    """1. POST /events in structured mode with `data_base64` and an extension.
    Result: 200, the decoded data is the payload; ce-correlationid is the event id; a new trace (no caller
    trace) is reported in the `traceparent` response header and matches ctx.trace_id."""
    eid = new_id()
    event = {
        "specversion": "1.0",
        "type": "ce.seen",
        "id": eid,
        "source": "dapr",
        "partitionkey": "p-1",
        "data_base64": "eyJiIjogMX0=",  # {"b": 1}
    }
    r = httpx.post(
        f"{node.url}/events",
        content=json.dumps(event),
        headers={"content-type": "application/cloudevents+json; charset=utf-8"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    res = _result(r.json())
    assert res["payload"] == {"b": 1} and res["extensions"] == {"partitionkey": "p-1"}, res
    assert r.headers["ce-correlationid"] == eid
    m = TP.match(r.headers["traceparent"])
    assert m is not None and m.group(1) == res["trace_id"], (r.headers, res)


def test_failing_listener_and_bad_deliveries(node: Node) -> None:
    """1. A binary event whose listener raises. 2. Broken deliveries: no ce-id, no ce-type, structured
       without id, structured with both data and data_base64, a body that is not JSON, a body over
       FAAS_MAX_PAYLOAD_BYTES, a wrong ce-specversion.
    Result: 1 is 500 with the combined reply (ok false, FunctionError) still as a binary-mode CloudEvent;
    2 are 400 BadRequest (413 PayloadTooLarge for the big one) naming what is wrong, each in the trace
    its `traceparent` header named (section 11: a response to an event carries its trace); the node
    still serves."""
    eid = new_id()
    r = httpx.post(f"{node.url}/events", content=b"{}", headers=_binary(eid, "ce.fail"), timeout=30)
    assert r.status_code == 500, r.text
    assert r.json()["error"]["type"] == "FunctionError" and r.headers["ce-correlationid"] == eid
    cases: list[tuple[dict[str, str], bytes, int, str]] = [
        ({k: v for k, v in _binary(new_id()).items() if k != "ce-id"}, b"{}", 400, "ce-id"),
        ({k: v for k, v in _binary(new_id()).items() if k != "ce-type"}, b"{}", 400, "ce-type"),
        (
            {"content-type": "application/cloudevents+json"},
            json.dumps({"specversion": "1.0", "type": "ce.seen", "data": {}}).encode(),
            400,
            "id",
        ),
        (
            {"content-type": "application/cloudevents+json"},
            json.dumps(
                {"specversion": "1.0", "type": "ce.seen", "id": new_id(), "data": {}, "data_base64": "MQ=="}
            ).encode(),
            400,
            "both 'data' and 'data_base64'",
        ),
        (_binary(new_id()), b"{not json", 400, "JSON"),
        (_binary(new_id()), b'"' + b"x" * 3000 + b'"', 413, "limit"),
        ({**_binary(new_id()), "ce-specversion": "0.3"}, b"{}", 400, "specversion"),
    ]
    for headers, body, status, word in cases:
        tid = secrets.token_hex(16)
        traced = {**headers, "traceparent": f"00-{tid}-{secrets.token_hex(8)}-01"}
        r = httpx.post(f"{node.url}/events", content=body, headers=traced, timeout=30)
        assert r.status_code == status, (headers, r.text)
        err = r.json()["error"]
        assert err["type"] == ("PayloadTooLarge" if status == 413 else "BadRequest"), r.text
        assert word in err["message"], err
        m = TP.match(r.headers.get("traceparent", ""))
        assert m is not None and m.group(1) == tid, (headers, r.headers)
    ok = httpx.post(f"{node.url}/events", content=b"null", headers=_binary(new_id()), timeout=30)
    assert ok.status_code == 200, ok.text


def test_direct_invocation_and_typed_events_carry_traceparent(node: Node) -> None:
    """1. Invoke directly with a caller's traceparent; 2. with a malformed one, and with two; 3. POST
       /events/{type} with a traceparent and ce-source; 4. with a body that is not JSON.
    Result: 1 the response `traceparent` has the caller's trace id and the invocation's own span (=
    ctx.span_id); 2 a new trace, answered 200 (two traceparents are malformed, W3C); 3 the reply's trace
    id is the caller's and the handler saw the ce-source and the caller's trace; 4 the 400 (in the error
    shape) is in the caller's trace."""
    tid = secrets.token_hex(16)
    tp = f"00-{tid}-{secrets.token_hex(8)}-01"
    r = httpx.post(f"{node.url}/functions/{IDENT}/invoke", json=1, headers={"traceparent": tp}, timeout=30)
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    m = TP.match(r.headers["traceparent"])
    assert m is not None and m.groups()[:2] == (tid, res["span_id"]) and res["trace_id"] == tid, res
    assert res["event_id"] is None and res["extensions"] == {}, res
    r = httpx.post(
        f"{node.url}/functions/{IDENT}/invoke", json=1, headers={"traceparent": "00-zz-01"}, timeout=30
    )
    assert r.status_code == 200 and r.json()["result"]["trace_id"] != tid, r.text
    assert TP.match(r.headers["traceparent"]), r.headers
    other = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
    r = httpx.post(
        f"{node.url}/functions/{IDENT}/invoke",
        json=1,
        headers=[("traceparent", tp), ("traceparent", other)],
        timeout=30,
    )
    assert r.status_code == 200 and r.json()["result"]["trace_id"] not in (tid, other[3:35]), r.text
    r = httpx.post(
        f"{node.url}/events/ce.seen",
        json={"x": 1},
        headers={"traceparent": tp, "ce-source": "curl", "ce-id": "given-id"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    res = _result(r.json())
    assert (res["event_id"], res["source"], res["trace_id"]) == ("given-id", "curl", tid), res
    m = TP.match(r.headers["traceparent"])
    assert m is not None and m.group(1) == tid, r.headers
    r = httpx.post(f"{node.url}/events/ce.seen", content=b"{nope", headers={"traceparent": tp}, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["type"] == "BadRequest", r.text
    m = TP.match(r.headers.get("traceparent", ""))
    assert m is not None and m.group(1) == tid, r.headers


def test_both_event_routes_read_one_ce_id_and_the_http_hop_trace_first(node: Node) -> None:
    """1. The same percent-encoded UTF-8 `ce-id` (and one raw UTF-8) to `POST /events` and to
       `POST /events/{type}`; 2. a `ce-id` that is not UTF-8 to `/events/{type}`; 3. both routes with an
       HTTP `traceparent` and a different `ce-traceparent`; 4. a malformed HTTP `traceparent` beside a
       valid `ce-traceparent`; 5. trace flags `ff`.
    Result: 1 the handler sees one id from both routes (section 10: the same identity for every
    binding); 2 400 as `/events` answers it; 3 the HTTP hop's trace is continued (section 11); 4 the
    valid one is; 5 only the sampled bit is passed on (`01`)."""
    for raw, want in ((b"caf%C3%A9-1", "caf\u00e9-1"), ("caf\u00e9-2".encode(), "caf\u00e9-2")):
        seen = []
        for url, extra in ((f"{node.url}/events", _binary("x")), (f"{node.url}/events/ce.seen", {})):
            headers = [(k.encode(), v.encode()) for k, v in extra.items() if k != "ce-id"]
            r = httpx.post(url, content=b"1", headers=[*headers, (b"ce-id", raw)], timeout=30)
            assert r.status_code == 200, r.text
            seen.append(_result(r.json())["event_id"])
        assert seen == [want, want], seen
    r = httpx.post(f"{node.url}/events/ce.seen", content=b"1", headers=[(b"ce-id", b"\xff")], timeout=30)
    assert r.status_code == 400 and "ce-id is not UTF-8" in r.json()["error"]["message"], r.text
    twice = [(b"ce-id", b"a-1"), (b"ce-id", b"a-2")]  # which is the event's? neither: 400 on both routes
    for url, extra in ((f"{node.url}/events", _binary("x")), (f"{node.url}/events/ce.seen", {})):
        headers = [(k.encode(), v.encode()) for k, v in extra.items() if k != "ce-id"]
        r = httpx.post(url, content=b"1", headers=[*headers, *twice], timeout=30)
        assert r.status_code == 400 and "given twice" in r.json()["error"]["message"], r.text
    hop, event = secrets.token_hex(16), secrets.token_hex(16)
    both = {
        "traceparent": f"00-{hop}-{secrets.token_hex(8)}-01",
        "ce-traceparent": f"00-{event}-{'1' * 16}-01",
    }
    for url, extra in ((f"{node.url}/events", _binary(new_id())), (f"{node.url}/events/ce.seen", {})):
        r = httpx.post(url, content=b"1", headers={**extra, **both}, timeout=30)
        assert r.status_code == 200 and _result(r.json())["trace_id"] == hop, r.text
        bad_hop = {**both, "traceparent": "00-zz-01"}
        r = httpx.post(url, content=b"1", headers={**extra, **bad_hop}, timeout=30)
        assert r.status_code == 200 and _result(r.json())["trace_id"] == event, r.text
    flags = f"00-{hop}-{secrets.token_hex(8)}-ff"
    r = httpx.post(f"{node.url}/functions/{IDENT}/invoke", json=1, headers={"traceparent": flags}, timeout=30)
    assert r.status_code == 200 and r.headers["traceparent"].endswith("-01"), r.headers
    assert r.json()["result"]["traceparent"].endswith("-01"), r.text


def test_replyto_is_ignored_over_http(node: Node) -> None:
    """1. `POST /events` binary mode with `ce-replyto` a URL; 2. structured mode with a `replyto` URL;
    3. `POST /events/{type}` with `ce-replyto` a URL beside `ce-source` and `ce-subject`.
    Result: each is served (the reply is the response: a replyto names no Kafka topic there, and is
    usually a URL), and 3 keeps the caller's source and subject. They used to be a 400 "invalid reply
    topic", and 3 lost its identity."""
    url = "https://example.com/replies"
    r = httpx.post(f"{node.url}/events", content=b"1", headers=_binary(new_id(), **{"ce-replyto": url}))
    assert r.status_code == 200 and _result(r.json())["payload"] == 1, r.text
    doc = {"specversion": "1.0", "type": "ce.seen", "id": new_id(), "source": "s", "replyto": url, "data": 2}
    structured = {"content-type": "application/cloudevents+json"}
    r = httpx.post(f"{node.url}/events", content=json.dumps(doc), headers=structured, timeout=30)
    assert r.status_code == 200 and _result(r.json())["payload"] == 2, r.text
    typed = {"ce-replyto": url, "ce-source": "mysrc", "ce-subject": "mysub"}
    r = httpx.post(f"{node.url}/events/ce.seen", content=b"3", headers=typed, timeout=30)
    assert r.status_code == 200, r.text
    result = _result(r.json())
    assert (result["source"], result["subject"], result["payload"]) == ("mysrc", "mysub", 3), result


def test_an_event_type_with_a_slash_has_its_routes(node: Node) -> None:
    """`acme.com/order.created` is a valid event type: `GET /events/{type}/listeners` and
    `POST /events/{type}` serve it, written with the `/` as is or percent-encoded (they answered 404)."""
    for written in ("acme.com/order.created", "acme.com%2Forder.created"):
        r = httpx.get(f"{node.url}/events/{written}/listeners", timeout=30)
        assert r.status_code == 200 and [f["name"] for f in r.json()["functions"]] == ["ident"], r.text
        assert r.json()["event"] == "acme.com/order.created", r.text
        r = httpx.post(f"{node.url}/events/{written}", json={"n": 1}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["event"] == "acme.com/order.created" and _result(r.json())["payload"] == {"n": 1}


def test_openapi_describes_the_sink(node: Node) -> None:
    """`GET /openapi.json` documents `POST /events`: the structured event's schema, the binary-mode headers
    and the statuses."""
    doc = httpx.get(f"{node.url}/openapi.json", timeout=30).json()
    op = doc["paths"]["/events"]["post"]
    for header in ("ce-type", "ce-id", "ce-source", "traceparent", "ce-correlationid"):
        assert header in op["description"], header
    schema = op["requestBody"]["content"]["application/cloudevents+json"]["schema"]
    assert set(schema["required"]) == {"specversion", "type", "id"}, schema
    assert {"200", "400", "413"} <= set(op["responses"]), op


@pytest.mark.parametrize("route", ["/events", "/events/ce.seen"])
def test_thousands_of_bad_extension_headers_make_one_short_warning(node: Node, route: str) -> None:
    """1. POST an event with a 20,000-character id and 1,500 extension headers whose names CloudEvents
    does not allow (`ce-e_N`), to `POST /events` and to `POST /events/{type}`.
    Result: it is served with none of them; the node logs one warning for it, a few hundred characters long,
    naming the count and the first reasons (it logged a line per header, each with the whole id: 72 MB of
    log for one 64 KB request)."""
    eid = new_id() + "x" * 20_000
    bad = {f"ce-e_{i}": "v" for i in range(1500)}
    headers = {**_binary(eid), **bad} if route == "/events" else {"ce-id": eid, **bad}
    before = node.log.stat().st_size
    r = httpx.post(f"{node.url}{route}", content=b"{}", headers=headers, timeout=30)
    assert r.status_code == 200 and _result(r.json())["extensions"] == {}, r.text[:500]
    grown = node.log.read_bytes()[before:].decode(errors="replace")
    [line] = [x for x in grown.splitlines() if "dropped" in x]
    assert "1,500 attribute(s) dropped" in line and "'ce_e_0'" in line and "(and 1,497 more)" in line, line
    assert eid[:36] in line and len(line) < 2000, len(line)
