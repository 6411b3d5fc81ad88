"""OpenTelemetry export (DESIGN.md section 11) to a real OTLP/HTTP receiver started here (a small HTTP server
decoding `ExportTraceServiceRequest` with opentelemetry-proto), from a real `faas run` node and its
instances, over HTTP and Kafka."""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from benchmarks.otlp import decode
from framework.kafka.embedded import EmbeddedBroker
from framework.observe import otel, tracing
from tests.support import Node, ce_headers, consume, new_id, produce, silent_listener, wait_for, write_project

TRACED = "adadadad-0000-4000-8000-000000000001"
TRACED_SYNC = "adadadad-0000-4000-8000-000000000002"
FAILING = "adadadad-0000-4000-8000-000000000003"
FLAKY = "adadadad-0000-4000-8000-000000000004"
WARM = "adadadad-0000-4000-8000-000000000005"
TICKING = "adadadad-0000-4000-8000-000000000006"
KEYED = "adadadad-0000-4000-8000-000000000007"
CARD_KEY = "sk_live_5f3e2d1c0b"
"""The value of the secret `card_key`, which `keyed` reads."""
MANIFEST = f"""
functions:
  - name: traced
    uuid: {TRACED}
    handler: functions.otelfn:traced
    state: productive
    events: [otel.seen]
  - name: traced-sync
    uuid: {TRACED_SYNC}
    handler: functions.otelsync:traced
    state: productive
  - name: failing
    uuid: {FAILING}
    handler: functions.otelfail:fail
    state: productive
  - name: flaky
    uuid: {FLAKY}
    handler: functions.otelfail:fail
    state: productive
    events: [otel.retried]
    retry: {{attempts: 2, backoff: 0.05, on: [FunctionError]}}
  - name: warm
    uuid: {WARM}
    handler: functions.otelwarm:handle
    state: productive
    keep_warm: "* * * * * */1"
"""
SECRET_USER = f"""
  - name: keyed
    uuid: {KEYED}
    handler: functions.otelkeyed:charge
    state: productive
    secrets: [card_key]
    env: {{OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT: "40"}}
"""
KEYED_MODULE = """
from opentelemetry import trace

tracer = trace.get_tracer("handler")

async def charge(payload, ctx):
    key = ctx.secrets["card_key"]
    with tracer.start_as_current_span("charge " + key) as span:
        span.set_attribute("card", key)
        span.set_attribute("raw", b"card=" + key.encode())
        span.set_attribute("by-" + key, "x")
        span.set_attribute("long", "p" * 30 + key)
        span.add_event("looked up", {"of-" + key: 1})
        raise RuntimeError("declined for " + key)
"""
SCHEDULED = f"""
  - name: ticking
    uuid: {TICKING}
    handler: functions.otelfail:fail
    state: productive
    schedules:
      - cron: "* * * * * */1"
    retry: {{attempts: 1, backoff: 0.05, on: [FunctionError]}}
"""
"""A failing schedule, retried: the module's node serves it; the node whose collector is in trouble does not
(its instance would log its own failed exports)."""
WARM_MODULE = """
async def handle(payload, ctx):
    return None

async def warmup(ctx):
    pass
"""
FAILING_MODULE = """
async def fail(payload, ctx):
    raise ValueError("no")
"""
ASYNC_MODULE = """
from opentelemetry import trace

tracer = trace.get_tracer("handler")

async def traced(payload, ctx):
    with tracer.start_as_current_span("handler-work") as span:
        span.set_attribute("inside", ctx.function)
    return {"trace_id": ctx.trace_id, "span_id": ctx.span_id, "invocation_id": ctx.invocation_id}
"""
SYNC_MODULE = ASYNC_MODULE.replace("async def", "def")


@dataclass
class Received:
    name: str
    trace_id: str
    span_id: str
    parent: str
    kind: int
    attributes: dict[str, Any]
    resource: dict[str, Any]
    trace_state: str = ""
    status: str = ""
    """The status message."""
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    """Each event's name and attributes."""


@dataclass
class Receiver:
    """An OTLP/HTTP traces endpoint: every span posted to `/v1/traces`, decoded; a request to a path under
    `/fail` is answered 500 and counted in `failed` (a collector in trouble)."""

    spans: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    failed: int = 0

    def named(self, name: str, trace_id: str) -> list[Received]:
        with self.lock:
            return [s for s in self.spans if s.name == name and s.trace_id == trace_id]


def _value(v: Any) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def _handler(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            if self.path.startswith("/fail"):
                with receiver.lock:
                    receiver.failed += 1
                self.send_response(500)
                self.send_header("content-length", "0")
                self.end_headers()
                return
            request = decode(body, self.headers.get("content-encoding", ""))
            found = []
            for rs in request.resource_spans:
                resource = {a.key: _value(a.value) for a in rs.resource.attributes}
                for ss in rs.scope_spans:
                    for s in ss.spans:
                        attributes = {a.key: _value(a.value) for a in s.attributes}
                        found.append(
                            Received(
                                s.name,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                                s.kind,
                                attributes,
                                resource,
                                s.trace_state,
                                s.status.message,
                                [(e.name, {a.key: _value(a.value) for a in e.attributes}) for e in s.events],
                            )
                        )
            with receiver.lock:
                receiver.spans.extend(found)
            self.send_response(200)
            self.send_header("content-type", "application/x-protobuf")
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[Receiver, str]]:
    rec = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(rec))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield rec, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def node(
    tmp_path_factory: pytest.TempPathFactory, broker: EmbeddedBroker, receiver: tuple[Receiver, str]
) -> Iterator[Node]:
    root = write_project(
        tmp_path_factory.mktemp("otel"),
        MANIFEST + SCHEDULED + SECRET_USER,
        {
            "otelfn": ASYNC_MODULE,
            "otelsync": SYNC_MODULE,
            "otelfail": FAILING_MODULE,
            "otelwarm": WARM_MODULE,
            "otelkeyed": KEYED_MODULE,
        },
    )
    (root / "secrets").mkdir()
    (root / "secrets" / "card_key").write_text(CARD_KEY + "\n")
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver[1], "OTEL_BSP_SCHEDULE_DELAY": "100"}
    n = Node(root, broker.bootstrap, env=env).wait_ready()
    yield n
    n.kill()


@pytest.mark.parametrize(("uuid", "name"), [(TRACED, "traced"), (TRACED_SYNC, "traced-sync")])
def test_direct_invocation_spans(node: Node, receiver: tuple[Receiver, str], uuid: str, name: str) -> None:
    """1. Invoke an `async def` and a `def` handler over HTTP with a caller's traceparent (trace T, span S)
       and tracestate; each handler starts its own span with the OpenTelemetry API.
    Result: the receiver gets `invoke <fn>` (trace T, parent S, span id = ctx.span_id, the FaaS attributes)
    and the handler's `handler-work` span as its child, from the instance (resource names the function),
    with the caller's tracestate (section 11: the trace is continued with its state)."""
    rec, _ = receiver
    tid, sid = secrets.token_hex(16), secrets.token_hex(8)
    r = httpx.post(
        f"{node.url}/functions/{uuid}/invoke",
        json={},
        headers={"traceparent": f"00-{tid}-{sid}-01", "tracestate": "congo=t61rcWkgMzE"},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    invoke = wait_for(lambda: rec.named(f"invoke {name}", tid), timeout=30, message="the invoke span")[0]
    assert (invoke.span_id, invoke.parent) == (res["span_id"], sid), invoke
    attrs = invoke.attributes
    assert attrs["faas.trigger"] == "http" and attrs["faas.name"] == name, attrs
    assert attrs["faas.invocation_id"] == res["invocation_id"] and isinstance(attrs["faas.coldstart"], bool)
    assert invoke.resource["service.name"] == "faas", invoke.resource
    work = wait_for(lambda: rec.named("handler-work", tid), timeout=30, message="the handler's span")[0]
    assert work.parent == invoke.span_id, (work, invoke)
    assert work.attributes["inside"] == name and work.resource["faas.name"] == name, work
    assert work.trace_state == "congo=t61rcWkgMzE", work


def test_kafka_event_spans(node: Node, broker: EmbeddedBroker, receiver: tuple[Receiver, str]) -> None:
    """1. Produce an event with `ce_traceparent` (trace T, span S).
    Result: an event span (`otel.seen process`, consumer kind, messaging.system kafka, cloudevents
    attributes) with parent S; `invoke traced` is its child with faas.trigger pubsub; the handler's span is
    the child of that; the reply's ce_traceparent is the event span."""
    rec, _ = receiver
    eid, tid, sid = new_id(), secrets.token_hex(16), secrets.token_hex(8)
    headers = [*ce_headers("otel.seen", eid), ("ce_traceparent", f"00-{tid}-{sid}-01".encode())]
    produce(broker.bootstrap, node.events, [(b"k", b"{}", headers)])
    event = wait_for(lambda: rec.named("otel.seen process", tid), timeout=60, message="the event span")[0]
    assert event.parent == sid, event
    assert event.kind == 5, "SPAN_KIND_CONSUMER"
    a = event.attributes
    assert (a["messaging.system"], a["cloudevents.event_id"], a["cloudevents.event_type"]) == (
        "kafka",
        eid,
        "otel.seen",
    ), a
    assert a["faas.listeners"] == 1, a  # the productive listeners of otel.seen
    invoke = wait_for(lambda: rec.named("invoke traced", tid), timeout=30, message="the invoke span")[0]
    assert invoke.parent == event.span_id, (invoke, event)
    assert invoke.attributes["faas.trigger"] == "pubsub" and invoke.attributes["cloudevents.event_id"] == eid
    work = wait_for(lambda: rec.named("handler-work", tid), timeout=30, message="the handler's span")[0]
    assert work.parent == invoke.span_id
    replies = consume(broker.bootstrap, node.replies, 10_000, timeout=30, ids={eid})
    mine = [x for x in replies if isinstance(x["value"], dict) and x["value"].get("id") == eid]
    assert mine and mine[0]["headers"]["ce_traceparent"] == f"00-{tid}-{event.span_id}-01", mine


def test_refused_events_have_the_span_their_answer_names(
    node: Node, broker: EmbeddedBroker, receiver: tuple[Receiver, str]
) -> None:
    """1. Produce a record of type otel.seen whose value is no JSON, with `ce_traceparent` (trace T1).
    2. `POST /events` of a body that is no JSON, with `traceparent` (trace T2).
    Result: each is refused (a BadEvent reply; a 400) naming as its trace parent a span that reached the
    collector (`otel.seen process` / `event process`, a child of the caller's span): it was never exported,
    so a trace continued from the answer had a parent that did not exist."""
    rec, _ = receiver
    eid, tid, sid = new_id(), secrets.token_hex(16), secrets.token_hex(8)
    headers = [*ce_headers("otel.seen", eid), ("ce_traceparent", f"00-{tid}-{sid}-01".encode())]
    produce(broker.bootstrap, node.events, [(b"k", b"nope", headers)])
    span = wait_for(lambda: rec.named("otel.seen process", tid), timeout=60, message="its span")[0]
    assert span.parent == sid and span.attributes["cloudevents.event_id"] == eid, span
    replies = consume(broker.bootstrap, node.replies, 10_000, timeout=30, ids={eid})
    mine = [x for x in replies if isinstance(x["value"], dict) and x["value"].get("id") == eid]
    assert mine and mine[0]["value"]["error"]["type"] == "BadEvent", mine
    assert mine[0]["headers"]["ce_traceparent"] == f"00-{tid}-{span.span_id}-01", mine
    tid2, sid2 = secrets.token_hex(16), secrets.token_hex(8)
    r = httpx.post(
        f"{node.url}/events",
        content=b"nope",
        headers={"content-type": "application/json", "traceparent": f"00-{tid2}-{sid2}-01"},
        timeout=30,
    )
    assert r.status_code == 400, r.text
    refused = wait_for(lambda: rec.named("event process", tid2), timeout=30, message="the refused one's span")
    assert refused[0].parent == sid2 and r.headers["traceparent"] == f"00-{tid2}-{refused[0].span_id}-01"


def test_failed_invocation_span_says_where_it_ran(node: Node, receiver: tuple[Receiver, str]) -> None:
    """1. Invoke a handler that raises, twice, each with a traceparent of its own trace: the first call
       starts its instance, the second finds it warm.
    Result: each `invoke failing` span carries the same `faas.coldstart` and `faas.instance`
    as the invocation's record (true, then false; the one instance): a failure reports where it ran as a
    success does."""
    rec, _ = receiver
    seen = []
    for _ in range(2):
        tid = secrets.token_hex(16)
        r = httpx.post(
            f"{node.url}/functions/{FAILING}/invoke",
            json={},
            headers={"traceparent": f"00-{tid}-{secrets.token_hex(8)}-01"},
            timeout=30,
        )
        assert r.status_code == 500 and r.json()["error"]["type"] == "FunctionError", r.text
        record = httpx.get(f"{node.url}/invocations/{r.headers['faas-invocation-id']}", timeout=30).json()
        span = wait_for(partial(rec.named, "invoke failing", tid), timeout=30, message="the span")[0]
        seen.append((span.attributes["faas.coldstart"], span.attributes["faas.instance"]))
        assert (span.attributes["faas.coldstart"], span.attributes["faas.instance"]) == (
            record["cold_start"],
            record["instance_id"],
        ), (span.attributes, record)
    assert [cold for cold, _ in seen] == [True, False] and seen[0][1] == seen[1][1], seen


def test_each_retry_attempt_is_a_span_of_its_own(
    node: Node, broker: EmbeddedBroker, receiver: tuple[Receiver, str]
) -> None:
    """1. Produce an event with `ce_traceparent` (trace T) for a listener that always fails and is retried
    twice (`retry: {attempts: 2, on: [FunctionError]}`).
    Result: three `invoke flaky` spans in trace T, each a child of the event's span, each with a span id and
    `faas.invocation_id` of its own, each ended in error: every attempt is an invocation (section 15), and
    every invocation a span (section 11); each attempt's record carries T."""
    rec, _ = receiver
    eid, tid = new_id(), secrets.token_hex(16)
    headers = [
        *ce_headers("otel.retried", eid),
        ("ce_traceparent", f"00-{tid}-{secrets.token_hex(8)}-01".encode()),
    ]
    produce(broker.bootstrap, node.events, [(b"k", b"{}", headers)])
    event = wait_for(lambda: rec.named("otel.retried process", tid), timeout=60, message="the event span")[0]
    spans = wait_for(
        lambda: (found := rec.named("invoke flaky", tid)) and len(found) >= 3 and found,
        timeout=30,
        message="three attempt spans",
    )
    assert len(spans) == 3, spans
    assert {s.parent for s in spans} == {event.span_id}, (spans, event)
    assert len({s.span_id for s in spans}) == 3, spans
    ids = {s.attributes["faas.invocation_id"] for s in spans}
    assert len(ids) == 3, spans
    for invocation_id in ids:
        record = httpx.get(f"{node.url}/invocations/{invocation_id}", timeout=30).json()
        assert record["trace_id"] == tid and record["ok"] is False, record
    assert sorted(
        r["attempt"] for r in (httpx.get(f"{node.url}/invocations/{i}", timeout=30).json() for i in ids)
    ) == [
        1,
        2,
        3,
    ]


def test_a_warm_up_is_a_span_of_its_own(node: Node, receiver: tuple[Receiver, str]) -> None:
    """1. `warm` has a per-second keep-warm. Result: an `invoke warm` span with `faas.trigger` timer, at the
    root of a trace of its own (nothing triggered it), whose invocation id and trace id are those of a
    warm-up record: a warm-up is an invocation (section 13), and every invocation a span (section 11)."""
    rec, _ = receiver

    def warm_spans() -> list[Received]:
        with rec.lock:
            return [s for s in rec.spans if s.name == "invoke warm"]

    span = wait_for(warm_spans, timeout=60, message="a warm-up span")[0]
    assert span.attributes["faas.trigger"] == "timer" and span.parent == "", span
    record = wait_for(
        lambda: (
            (
                r := httpx.get(f"{node.url}/invocations/{span.attributes['faas.invocation_id']}", timeout=30)
            ).status_code
            == 200
            and r.json()
        ),
        timeout=30,
        message="the warm-up's record",
    )
    assert (record["trigger"], record["trace_id"], record["ok"]) == ("warmup", span.trace_id, True), record


def test_a_schedule_run_is_a_span_over_its_attempts(node: Node, receiver: tuple[Receiver, str]) -> None:
    """1. `ticking` runs every second, always fails, and is retried once.
    Result: a `schedule ticking` span (`faas.trigger` timer, its cron and tick time) at the root of a trace
    of its own, and its two attempts, `invoke ticking` spans with their own invocation ids, both its
    children: a retried run's attempts share a parent, as an event's do."""
    rec, _ = receiver

    def runs() -> list[Received]:
        with rec.lock:
            return [s for s in rec.spans if s.name == "schedule ticking"]

    def attempts(run: Received) -> list[Received]:
        return [s for s in rec.named("invoke ticking", run.trace_id) if s.parent == run.span_id]

    run = wait_for(runs, timeout=60, message="a schedule run's span")[0]
    assert run.parent == "" and run.attributes["faas.trigger"] == "timer", run
    assert run.attributes["faas.cron"] == "* * * * * */1" and run.attributes["faas.name"] == "ticking", run
    assert run.attributes["faas.time"].startswith("20"), run
    both = wait_for(lambda: len(found := attempts(run)) == 2 and found, timeout=30, message="two attempts")
    assert len({s.attributes["faas.invocation_id"] for s in both}) == 2, both
    assert all(s.attributes["faas.trigger"] == "timer" for s in both), both


def test_a_handlers_own_span_carries_no_secret_value(node: Node, receiver: tuple[Receiver, str]) -> None:
    """1. `keyed` reads the secret `card_key`, names a span of its own after it, sets it as an attribute
    (as text, inside bytes, in a key, after 30 characters with the SDK's value length limit at 40), adds an
    event with it in a key, and raises an error holding it inside that span (the SDK records the exception
    on the span). Result: the call fails with the value masked, and the handler's span reaches the collector
    with `***` in its name, attributes, keys, status and events, the long value cut after its redaction,
    the value nowhere (it went out in clear; in bytes, in keys and, cut to its first 10 characters, in the
    long value, until they were redacted too)."""
    rec, _ = receiver
    r = httpx.post(f"{node.url}/functions/{KEYED}/invoke", json={}, timeout=30)
    assert r.status_code == 500 and "declined for ***" in r.text and CARD_KEY not in r.text, r.text
    tid = r.headers["traceparent"].split("-")[1]
    [span] = wait_for(lambda: rec.named("charge ***", tid), timeout=30, message="the handler's span")
    assert span.attributes["card"] == "***" and span.status == "RuntimeError: declined for ***", span
    assert span.attributes["raw"] == b"card=***" and span.attributes["by-***"] == "x", span
    assert span.attributes["long"] == "p" * 30 + "***", span
    [(looked, keyed), (name, attributes)] = span.events
    assert looked == "looked up" and keyed == {"of-***": 1}, span
    assert name == "exception" and attributes["exception.message"] == "declined for ***", span
    with rec.lock:
        everything = repr([s for s in rec.spans if s.trace_id == tid])
    assert CARD_KEY not in everything and "declined for ***" in everything, everything


def test_unsampled_trace_is_not_exported(node: Node, receiver: tuple[Receiver, str]) -> None:
    """1. Invoke with a caller's traceparent whose sampled flag is off, then with a sampled one.
    Result: the sampled invocation's span arrives; none of the unsampled trace ever does (checked after the
    sampled one arrived, as export is in order)."""
    rec, _ = receiver
    off, on = secrets.token_hex(16), secrets.token_hex(16)
    for tid, flags in ((off, "00"), (on, "01")):
        tp = f"00-{tid}-{secrets.token_hex(8)}-{flags}"
        r = httpx.post(
            f"{node.url}/functions/{TRACED}/invoke", json={}, headers={"traceparent": tp}, timeout=30
        )
        assert r.status_code == 200 and r.headers["traceparent"].endswith(f"-{flags}"), r.headers
    wait_for(lambda: rec.named("invoke traced", on), timeout=30, message="the sampled span")
    wait_for(lambda: rec.named("handler-work", on), timeout=30, message="the sampled handler span")
    with rec.lock:
        assert not [s for s in rec.spans if s.trace_id == off], "an unsampled trace was exported"


def test_without_an_endpoint_nothing_of_opentelemetry_is_imported() -> None:
    """A node's and an instance's modules imported, and a span started and ended, with no OTLP endpoint.
    Result: export is off and no `opentelemetry` module was imported (the no-export path costs nothing)."""
    code = (
        "import sys, os\n"
        "for k in [k for k in os.environ if k.startswith('OTEL_')]: del os.environ[k]\n"
        "import framework.node, framework.runtime.worker.server\n"
        "from framework.observe import otel, tracing\n"
        "assert not otel.enabled()\n"
        "tracing.start('00-' + 'a' * 32 + '-' + 'b' * 16 + '-01').child()\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_a_collector_in_trouble_and_bad_batch_settings_neither_stop_nor_flood_the_node(
    tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    """1. Start a node whose collector answers every export 500, with `OTEL_BSP_MAX_QUEUE_SIZE=0` (the SDK
       refuses it) and a 20 ms batch delay.
    2. Invoke a function whose handler makes a span of its own, six times, each once the collector has
       refused one more batch.
    Result: the node starts (the SDK alone raises at start) and warns once, naming the variable; every
    invocation answers 200; the node and the instance each log the failed exports once, not per batch."""
    rec, url = receiver
    modules = {
        "otelfn": ASYNC_MODULE,
        "otelsync": SYNC_MODULE,
        "otelfail": FAILING_MODULE,
        "otelwarm": WARM_MODULE,
    }
    root = write_project(tmp_path, MANIFEST, modules)
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"{url}/fail",
        "OTEL_BSP_SCHEDULE_DELAY": "20",
        "OTEL_BSP_MAX_QUEUE_SIZE": "0",
    }
    n = Node(root, None, env=env, kafka=False).wait_ready()  # export alone is the subject: no Kafka
    try:
        for _ in range(6):
            with rec.lock:
                before = rec.failed
            r = httpx.post(f"{n.url}/functions/{TRACED}/invoke", json={}, timeout=30)
            assert r.status_code == 200, r.text
            wait_for(lambda b=before: rec.failed > b, timeout=10, message="a refused export")  # type: ignore[misc]
        with rec.lock:
            refused = rec.failed
        lines = n.log.read_text(errors="replace").splitlines()
    finally:
        n.kill()
    assert refused >= 6, refused
    warned = [line for line in lines if "OTEL_BSP_MAX_QUEUE_SIZE='0' is not a positive integer" in line]
    assert warned and not [line for line in lines if "Traceback" in line], "\n".join(lines)
    failures = [line for line in lines if "Failed to export" in line]
    assert 1 <= len(failures) <= 2, "\n".join(failures)


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({}, None),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, None),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL='grpc'"),
        (
            {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL='http/json'",
        ),
        (  # the traces variable wins, as in the SDK
            {"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "HTTP/protobuf", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
            None,
        ),
    ],
)
def test_a_protocol_other_than_http_protobuf_is_named(environ: dict[str, str], named: str | None) -> None:
    """Result: a protocol the exporter does not speak (`grpc`, `http/json`) is named with the port to use
    instead; `http/protobuf` (any case) or none is no problem."""
    problem = otel.protocol_problem(environ)
    if named is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(named) and "4318" in problem, problem


def test_batch_settings_fall_back_to_the_sdk_defaults() -> None:
    values, problems = otel.batch_settings(
        {
            "OTEL_BSP_SCHEDULE_DELAY": "-5",
            "OTEL_BSP_MAX_QUEUE_SIZE": "abc",
            "OTEL_BSP_EXPORT_TIMEOUT": " 100 ",
        }
    )
    assert values == {
        "max_queue_size": 2048,
        "schedule_delay_millis": 5000,
        "max_export_batch_size": 512,
        "export_timeout_millis": 100,
    }
    assert [p.split("=")[0] for p in problems] == ["OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_SCHEDULE_DELAY"]
    values, problems = otel.batch_settings({"OTEL_BSP_MAX_QUEUE_SIZE": "100"})
    assert values["max_export_batch_size"] == 100 and "OTEL_BSP_MAX_EXPORT_BATCH_SIZE=512" in problems[0]


@pytest.mark.parametrize(
    ("variables", "name"),
    [
        ({}, "faas"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=shop,deployment.environment=test"}, "shop"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=shop", "OTEL_SERVICE_NAME": "checkout"}, "checkout"),
    ],
)
def test_service_name_is_the_users_before_ours(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], name: str
) -> None:
    """The SDK's order: `OTEL_SERVICE_NAME`, then `service.name` of `OTEL_RESOURCE_ATTRIBUTES`; `faas`
    only when neither names the service (a user's `OTEL_RESOURCE_ATTRIBUTES` name was overridden)."""
    for variable in ("OTEL_SERVICE_NAME", "OTEL_RESOURCE_ATTRIBUTES"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in variables.items():
        monkeypatch.setenv(variable, value)
    resource = otel._resource("faas", **{"faas.name": "greet"})
    assert resource.attributes["service.name"] == name and resource.attributes["faas.name"] == "greet"


@pytest.mark.parametrize("hurried", [False, True], ids=["bounded", "hurried"])
def test_stopping_with_a_silent_collector_is_bounded(monkeypatch: pytest.MonkeyPatch, hurried: bool) -> None:
    """1. Point a node's exporter at a collector that accepts connections and never answers; end a span.
    2. Shut the exporter down; `hurried`: set its `hurry` (a second signal) 0.2 s later.
    Result: it returns within `SHUTDOWN_TIMEOUT` (2 s) and a margin, not after the exporter's request
    timeout (20 s here, 10 s by default): a stopping node is not held by its collector; hurried, at once."""
    hurry = threading.Event()
    with silent_listener() as port:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "20")
        exporter = otel.NodeExporter("test")
        exporter.end("invoke x", tracing.start(), "internal", {"faas.name": "x"})
        if hurried:
            threading.Timer(0.2, hurry.set).start()
        started = time.monotonic()
        exporter.shutdown(otel.SHUTDOWN_TIMEOUT, hurry)
        took = time.monotonic() - started
    assert (0.15 < took < 1.5) if hurried else took < 4, took


def test_a_second_signal_does_not_wait_for_a_silent_collector(tmp_path: Path) -> None:
    """1. A node (no Kafka) whose collector accepts connections and never answers; one invocation of a
       function that makes a span of its own, so the node and its instance both hold unsent spans.
    2. SIGTERM; once the node drains, SIGTERM again.
    Result: the node exits 0 soon after the second signal and says the last spans were not waited for.
    Its two waits for them (the instances' exit, 2 s, then the node's own export, 2 s) used to run whole
    after a second signal."""
    modules = {
        "otelfn": ASYNC_MODULE,
        "otelsync": SYNC_MODULE,
        "otelfail": FAILING_MODULE,
        "otelwarm": WARM_MODULE,
    }
    root = write_project(tmp_path, MANIFEST, modules)
    with silent_listener() as port:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_TIMEOUT": "20"}
        n = Node(root, None, env=env, kafka=False).wait_ready()
        try:
            r = httpx.post(f"{n.url}/functions/{TRACED}/invoke", json={}, timeout=30)
            assert r.status_code == 200, r.text
            n.proc.send_signal(signal.SIGTERM)
            wait_for(lambda: "received: draining" in n.log.read_text(), 10, message="the node draining")
            second = time.monotonic()
            n.proc.send_signal(signal.SIGTERM)
            assert n.proc.wait(30) == 0, n.tail()
            took = time.monotonic() - second
        finally:
            n.kill()
    log = n.log.read_text(errors="replace")
    assert "stopping at once: the last spans not exported yet are lost" in log, n.tail()
    assert "were not exported within" not in log and took < 3, (took, n.tail())


@pytest.mark.parametrize(
    ("variables", "on"),
    [
        ({}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": " None "}, False),
        ({"OTEL_SDK_DISABLED": "true"}, False),
    ],
)
def test_export_follows_the_standard_switches(variables: dict[str, str], on: bool) -> None:
    """An endpoint set, with `OTEL_TRACES_EXPORTER` or `OTEL_SDK_DISABLED` as the OpenTelemetry spec reads
    them: `none` (any case) and `true` turn export off."""
    environ = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", **variables}
    assert otel.enabled(environ) is on


def test_bad_span_limits_neither_stop_the_node_nor_its_instances(
    tmp_path: Path, receiver: tuple[Receiver, str]
) -> None:
    """1. Start a node with `OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT=abc` (the SDK raises on it as it is imported),
       serving a function whose own `env` sets `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT=-5` (the SDK raises on it
       as an instance makes its provider) and whose handler makes a span of its own.
    2. Invoke it with a traceparent.
    Result: the node starts, warning once with the variable named; the invocation answers 200; the instance
    logs an error naming its variable, and its export stays on: the handler's span reaches the collector as
    the child of the invocation's (the node stopped with a traceback; every call was InstanceCrashed)."""
    rec, url = receiver
    manifest = f"""
functions:
  - name: limited
    uuid: {TRACED}
    handler: functions.otelfn:traced
    state: productive
    env: {{OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT: "-5"}}
"""
    root = write_project(tmp_path, manifest, {"otelfn": ASYNC_MODULE})
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": url,
        "OTEL_BSP_SCHEDULE_DELAY": "50",
        "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "abc",
    }
    n = Node(root, None, env=env, kafka=False).wait_ready()
    try:
        tid, sid = secrets.token_hex(16), secrets.token_hex(8)
        r = httpx.post(
            f"{n.url}/functions/{TRACED}/invoke",
            json={},
            headers={"traceparent": f"00-{tid}-{sid}-01"},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        invoke = wait_for(lambda: rec.named("invoke limited", tid), timeout=30, message="the invoke span")[0]
        work = wait_for(lambda: rec.named("handler-work", tid), timeout=30, message="the handler's span")[0]
        assert work.parent == invoke.span_id, (work, invoke)
        lines = n.log.read_text(errors="replace")
    finally:
        n.kill()
    assert "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT='abc' is not a non-negative integer" in lines, lines
    assert "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT='-5' is not a non-negative integer" in lines, lines
    assert "Traceback" not in lines and "export is off" not in lines, lines


def test_drop_bad_limits_removes_only_what_the_sdk_would_refuse() -> None:
    """Result: values that are not non-negative integers (`abc`, `-5`, `1.5`) are removed and named, each
    once; a good value, an empty one (the SDK's "unset") and other variables stay."""
    environ = {
        "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT": "abc",
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT": "-5",
        "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT": "1.5",
        "OTEL_SPAN_EVENT_COUNT_LIMIT": " 10 ",
        "OTEL_SPAN_LINK_COUNT_LIMIT": "",
        "OTEL_BSP_MAX_QUEUE_SIZE": "abc",
    }
    problems = otel.drop_bad_limits(environ)
    assert environ == {
        "OTEL_SPAN_EVENT_COUNT_LIMIT": " 10 ",
        "OTEL_SPAN_LINK_COUNT_LIMIT": "",
        "OTEL_BSP_MAX_QUEUE_SIZE": "abc",
    }
    assert [p.split("=")[0] for p in problems] == [
        "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
        "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
        "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
    ], problems


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "HTTPS://collector"}, None),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "127.0.0.1:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT='127.0.0.1:4318'"),
        (  # the traces variable wins, as in the SDK
            {
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "collector:4318/v1/traces",
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x",
            },
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT='collector:4318/v1/traces'",
        ),
    ],
)
def test_an_endpoint_without_a_scheme_is_named(environ: dict[str, str], named: str | None) -> None:
    """Result: an endpoint the exporter cannot send to (no `http://` or `https://`) is named, with the
    form to write; one with a scheme (any case) is no problem."""
    problem = otel.endpoint_problem(environ)
    if named is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith(named) and "http://" in problem, problem
