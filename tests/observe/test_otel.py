"""OpenTelemetry export (DESIGN.md section 11) to a real OTLP/HTTP receiver started here (a small HTTP server
decoding `ExportTraceServiceRequest` with opentelemetry-proto), from a real `faas run` node and its
instances, over HTTP and Kafka."""

from __future__ import annotations

import secrets
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from benchmarks.otlp import decode
from framework.kafka.embedded import EmbeddedBroker
from tests.support import Node, ce_headers, consume, new_id, produce, wait_for, write_project

TRACED = "adadadad-0000-4000-8000-000000000001"
TRACED_SYNC = "adadadad-0000-4000-8000-000000000002"
FAILING = "adadadad-0000-4000-8000-000000000003"
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


@dataclass
class Receiver:
    """An OTLP/HTTP traces endpoint: every span posted to `/v1/traces`, decoded."""

    spans: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

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
        MANIFEST,
        {"otelfn": ASYNC_MODULE, "otelsync": SYNC_MODULE, "otelfail": FAILING_MODULE},
    )
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
    invoke = wait_for(lambda: rec.named("invoke traced", tid), timeout=30, message="the invoke span")[0]
    assert invoke.parent == event.span_id, (invoke, event)
    assert invoke.attributes["faas.trigger"] == "pubsub" and invoke.attributes["cloudevents.event_id"] == eid
    work = wait_for(lambda: rec.named("handler-work", tid), timeout=30, message="the handler's span")[0]
    assert work.parent == invoke.span_id
    replies = consume(broker.bootstrap, node.replies, 10_000, timeout=30, ids={eid})
    mine = [x for x in replies if isinstance(x["value"], dict) and x["value"].get("id") == eid]
    assert mine and mine[0]["headers"]["ce_traceparent"] == f"00-{tid}-{event.span_id}-01", mine


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
