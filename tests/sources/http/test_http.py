"""The HTTP contract (DESIGN.md section 5) end to end: a real `faas run` process on a real socket.

Every status code comes from a real request; one module-scoped node serves most checks.
"""

from __future__ import annotations

import gzip
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from openapi_spec_validator import validate
from prometheus_client.parser import text_string_to_metric_families

from framework.kafka.embedded import EmbeddedBroker
from tests.support import Node, wait_for, write_project

ECHO = "aaaaaaaa-0000-4000-8000-000000000001"
BOOM = "aaaaaaaa-0000-4000-8000-000000000002"
SLOW = "aaaaaaaa-0000-4000-8000-000000000003"
DRAFT = "aaaaaaaa-0000-4000-8000-000000000004"
NOJSON = "aaaaaaaa-0000-4000-8000-000000000005"
CRASH = "aaaaaaaa-0000-4000-8000-000000000006"
BUSY = "aaaaaaaa-0000-4000-8000-000000000007"
UNKNOWN = "aaaaaaaa-0000-4000-8000-0000000000ff"
BODY_TIMEOUT = 3.0
"""FAAS_HTTP_BODY_TIMEOUT of the module's node, in seconds."""

MANIFEST = f"""
functions:
  - name: echo
    uuid: {ECHO}
    handler: functions.h:echo
    state: productive
    events: [ping]
    schedules:
      - cron: "0 0 1 1 *"
        payload: {{kind: yearly}}
  - name: boom
    uuid: {BOOM}
    handler: functions.h:boom
    state: productive
  - name: slow
    uuid: {SLOW}
    handler: functions.h:slow
    state: productive
    timeout: 1
  - name: drafty
    uuid: {DRAFT}
    handler: functions.h:echo
    state: draft
    events: [ping]
  - name: nojson
    uuid: {NOJSON}
    handler: functions.h:nojson
    state: productive
  - name: crash
    uuid: {CRASH}
    handler: functions.h:crash
    state: productive
  - name: busy
    uuid: {BUSY}
    handler: functions.h:hold
    state: productive
    instances: {{max: 1, concurrency: 1, queue: 0}}
"""
MODULES = {
    "h": """
import asyncio
import http.client
import os
import re
import socket

async def echo(payload, ctx):
    return {"echo": payload, "trigger": ctx.trigger, "fn": ctx.function}

async def boom(payload, ctx):
    raise ValueError("kaboom")

def nojson(payload, ctx):
    return object()

async def crash(payload, ctx):
    os._exit(3)

async def slow(payload, ctx):
    await asyncio.sleep(10)

async def hold(payload, ctx):
    await asyncio.sleep((payload or {}).get("sleep", 0))
    return "held"
"""
}


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, broker: EmbeddedBroker) -> Iterator[Node]:
    root = write_project(tmp_path_factory.mktemp("http"), MANIFEST, MODULES)
    n = Node(root, broker.bootstrap, env={"FAAS_HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT)}).wait_ready()
    yield n
    n.kill()


def invoke(node: Node, uuid: str, **kw: Any) -> httpx.Response:
    return httpx.post(f"{node.url}/functions/{uuid}/invoke", timeout=30, **kw)


def err(r: httpx.Response) -> str:
    return str(r.json()["error"]["type"])


def test_invoke_200(node: Node) -> None:
    r = invoke(node, ECHO, json={"name": "Ann"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["result"] == {"echo": {"name": "Ann"}, "trigger": "direct", "fn": "echo"}
    assert set(body) == {"invocation_id", "result", "duration_ms", "cold_start"}
    assert isinstance(body["cold_start"], bool) and isinstance(body["duration_ms"], float)
    assert invoke(node, ECHO).json()["result"]["echo"] is None  # empty body = null


def test_400_bad_json(node: Node) -> None:
    r = invoke(node, ECHO, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and err(r) == "BadRequest"


@pytest.mark.parametrize("uuid", [UNKNOWN, DRAFT])
def test_404_unknown_and_draft(node: Node, uuid: str) -> None:
    r = invoke(node, uuid, json={})
    assert r.status_code == 404 and err(r) == "NotFound"


def test_404_before_413_before_400(node: Node) -> None:
    too_big_and_bad = b"{" * (1024 * 1024 + 1)
    assert invoke(node, DRAFT, content=too_big_and_bad).status_code == 404
    assert invoke(node, ECHO, content=too_big_and_bad).status_code == 413


def test_413_by_content_length(node: Node) -> None:
    big = b'"' + b"x" * (2 * 1024 * 1024) + b'"'
    r = invoke(node, ECHO, content=big)
    assert r.status_code == 413 and err(r) == "PayloadTooLarge"
    assert invoke(node, ECHO, json=1).status_code == 200  # the connection pool and node are fine after it


def test_413_chunked_without_content_length(node: Node) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'"'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"'

    r = invoke(node, ECHO, content=chunks())
    assert "content-length" not in r.request.headers
    assert r.status_code == 413 and err(r) == "PayloadTooLarge"


def send_whole_body(
    node: Node, path: str, body: bytes, chunked: bool, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """POST `body` through `http.client` with `Connection: close`, as urllib and so `faas invoke --url`
    send it: the whole body before reading, never waiting for `100 Continue`. Returns the answer's status
    and error type; a node that answered, then closed under the unread body, makes this raise
    "connection reset by peer" or "broken pipe" instead."""
    conn = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)
    sent = {"Connection": "close", **(headers or {})}
    try:
        if chunked:
            parts = (body[i : i + 65536] for i in range(0, len(body), 65536))
            conn.request("POST", path, body=parts, headers=sent, encode_chunked=True)
        else:
            conn.request("POST", path, body=body, headers=sent)
        r = conn.getresponse()
        return r.status, orjson.loads(r.read())["error"]["type"]
    finally:
        conn.close()


BIG = b'"' + b"x" * (10 * 1024 * 1024) + b'"'
"""A 10 MB JSON body: ten times the module node's limit, far beyond a socket's buffers."""


@pytest.mark.parametrize("chunked", [False, True])
def test_a_413_reaches_a_client_still_sending_its_body(node: Node, chunked: bool) -> None:
    """1. POST a 10 MB body (ten times the limit), with its Content-Length or chunked (`send_whole_body`).
    Result: the client reads the 413 PayloadTooLarge, and the node goes on answering."""
    assert send_whole_body(node, f"/functions/{ECHO}/invoke", BIG, chunked) == (413, "PayloadTooLarge")
    assert invoke(node, ECHO, json=1).status_code == 200


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize(
    ("path", "headers", "answer"),
    [
        (f"/functions/{UNKNOWN}/invoke", {}, (404, "NotFound")),
        ("/no/such/route", {}, (404, "NotFound")),
        ("/healthz", {}, (405, "MethodNotAllowed")),
        (f"/functions/{ECHO}/invoke", {"Origin": "http://elsewhere.example"}, (403, "Forbidden")),
    ],
)
def test_an_early_answer_reaches_a_client_still_sending_its_body(
    node: Node, path: str, headers: dict[str, str], answer: tuple[int, str], chunked: bool
) -> None:
    """1. POST a 10 MB body to an unknown function, an unknown route, a GET-only route, and from another
    site's page (`send_whole_body`). Result: the client reads the 404, 405 or 403 the node answers before
    reading a byte of the body, not a reset, and the node goes on answering."""
    assert send_whole_body(node, path, BIG, chunked, headers) == answer
    assert invoke(node, ECHO, json=1).status_code == 200


def test_limit_is_exact(node: Node) -> None:
    at_limit = b'"' + b"x" * (1024 * 1024 - 2) + b'"'
    assert invoke(node, ECHO, content=at_limit).status_code == 200
    assert invoke(node, ECHO, content=at_limit + b" ").status_code == 413


def metric(node: Node, name: str, **labels: str) -> float:
    """The value of one sample of the node's /metrics (0 when absent)."""
    text = httpx.get(f"{node.url}/metrics").text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_429_overloaded(node: Node) -> None:
    assert invoke(node, BUSY, json={"sleep": 0}).status_code == 200  # warm: the holder below is not cold
    held: list[httpx.Response] = []
    holder = threading.Thread(target=lambda: held.append(invoke(node, BUSY, json={"sleep": 3})))
    holder.start()
    try:
        wait_for(
            lambda: metric(node, "faas_inflight_requests", function="busy") >= 1,
            timeout=2,
            message="the holder in flight",
        )
        # The single instance holds one request and nothing may queue: the next one is Overloaded.
        r = invoke(node, BUSY, json={"sleep": 0})
        assert r.status_code == 429 and err(r) == "Overloaded", r.text
        # It has a record, and the answer names it, as a failed invocation's does.
        record = httpx.get(f"{node.url}/invocations/{r.headers['faas-invocation-id']}", timeout=10).json()
        assert record["ok"] is False and record["error"]["type"] == "Overloaded", record
        assert record["trigger"] == "direct" and record["function"] == "busy"
    finally:
        holder.join(10)
    assert held and held[0].status_code == 200


def test_500_function_error(node: Node) -> None:
    r = invoke(node, BOOM, json={})
    assert r.status_code == 500 and err(r) == "FunctionError" and "kaboom" in r.json()["error"]["message"]
    r = invoke(node, NOJSON, json={})
    assert r.status_code == 500 and err(r) == "FunctionError"


def test_502_instance_crashed(node: Node) -> None:
    r = invoke(node, CRASH, json={})
    assert r.status_code == 502 and err(r) == "InstanceCrashed"
    assert invoke(node, CRASH, json={}).status_code == 502  # a fresh instance, crashing again
    assert invoke(node, ECHO, json={}).status_code == 200


def test_504_timeout(node: Node) -> None:
    started = time.monotonic()
    r = invoke(node, SLOW, json={})
    assert r.status_code == 504 and err(r) == "Timeout"
    assert time.monotonic() - started < 4


def test_productive_check(node: Node) -> None:
    r = httpx.get(f"{node.url}/functions/{ECHO}")
    assert r.status_code == 200 and r.json()["name"] == "echo"
    for uuid in (DRAFT, UNKNOWN):
        r = httpx.get(f"{node.url}/functions/{uuid}")
        assert r.status_code == 404 and err(r) == "NotFound"


def test_list_functions(node: Node) -> None:
    invoke(node, ECHO, json={})
    listed = {f["name"]: f for f in httpx.get(f"{node.url}/functions").json()["functions"]}
    assert set(listed) == {"echo", "boom", "slow", "drafty", "nojson", "crash", "busy"}
    assert listed["drafty"]["state"] == "draft" and listed["echo"]["state"] == "productive"
    echo = listed["echo"]
    assert echo["uuid"] == ECHO and echo["events"] == ["ping"] and echo["instances"] >= 1
    (schedule,) = echo["schedules"]
    assert schedule["cron"] == "0 0 1 1 *" and schedule["payload"] == {"kind": "yearly"}
    assert schedule["next_fire"] and schedule["last"] is None
    assert listed["drafty"]["instances"] == 0


def test_listeners_productive_only(node: Node) -> None:
    r = httpx.get(f"{node.url}/events/ping/listeners")
    assert r.json() == {"event": "ping", "functions": [{"name": "echo", "uuid": ECHO}]}
    assert httpx.get(f"{node.url}/events/nothing.here/listeners").json()["functions"] == []


def test_http_event(node: Node) -> None:
    r = httpx.post(f"{node.url}/events/ping", json={"n": 1}, headers={"ce-id": "ev-42"}, timeout=30)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["id"] == "ev-42" and body["ok"] is True and body["error"] is None
    assert [(x["function"], x["result"]["trigger"]) for x in body["results"]] == [("echo", "event")]


def test_ops_endpoints(node: Node) -> None:
    assert httpx.get(f"{node.url}/healthz").status_code == 200
    r = httpx.get(f"{node.url}/readyz")
    assert r.status_code == 200 and r.json()["ready"] is True


def test_metrics_families(node: Node) -> None:
    invoke(node, ECHO, json={})
    r = httpx.get(f"{node.url}/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name for f in text_string_to_metric_families(r.text)}
    assert {
        "faas_invocations",
        "faas_invocation_duration_seconds",
        "faas_cold_starts",
        "faas_instances",
        "faas_inflight_requests",
        "faas_queued_requests",
        "faas_events_consumed",
    } <= families


def test_openapi_validates(node: Node) -> None:
    spec = httpx.get(f"{node.url}/openapi.json").json()
    validate(spec)
    assert "/functions/{uuid}/invoke" in spec["paths"] and spec["openapi"].startswith("3")


HOOKS = '''
import schemathesis

FUNCTION_ERRORS = {500: "FunctionError", 502: "InstanceCrashed", 504: "Timeout"}


@schemathesis.check
def only_function_server_errors(ctx, response, case):
    """A 5xx only as a function's documented error (boom, nojson, crash, slow), never the node's own."""
    if response.status_code >= 500:
        error_type = response.json()["error"]["type"]
        assert FUNCTION_ERRORS.get(response.status_code) == error_type, (response.status_code, response.text)
'''


def test_schemathesis(node: Node, tmp_path: Path) -> None:
    """Property-based run of every operation of /openapi.json: responses conform and no unexpected 5xx."""
    exe = shutil.which("schemathesis", path=os.path.dirname(sys.executable))
    assert exe, "schemathesis is not installed next to this interpreter"
    hooks = tmp_path / "hooks.py"
    hooks.write_text(HOOKS)
    cmd = [
        exe,
        "run",
        f"{node.url}/openapi.json",
        "--checks",
        "all",
        "--exclude-checks",
        "not_a_server_error",
        "--max-examples",
        "25",
        "--max-time",
        "20",  # bounds the stateful phase, which would run on: 93 scenarios, all 8 links, in 14 s here
        "--workers",
        "1",
        "--request-timeout",
        "15",
        "--seed",
        "7",
        "--suppress-health-check",
        "all",
    ]
    proc = subprocess.run(
        cmd,
        cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": str(hooks)},
        capture_output=True,
        text=True,
        timeout=150,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    generated = re.search(r"(\d+) generated", proc.stdout)
    assert generated and int(generated.group(1)) >= 200, proc.stdout[-3000:]
    assert httpx.get(f"{node.url}/healthz").status_code == 200


# ---- a node with API keys ----


@pytest.fixture
def keyed(tmp_path: Path, nodes: Callable[..., Node]) -> Node:
    root = write_project(tmp_path, MANIFEST, MODULES)
    return nodes(root, None, kafka=False, env={"FAAS_API_KEYS": "k-one, k-two"}).wait_ready()


def test_401_before_everything(keyed: Node) -> None:
    for uuid, content in [(ECHO, b"{}"), (UNKNOWN, b"{}"), (ECHO, b"{"), (ECHO, b"1" * (2 << 20))]:
        r = invoke(keyed, uuid, content=content, headers={"Authorization": "Bearer nope"})
        assert r.status_code == 401 and err(r) == "Unauthorized"
    for path in ("/functions", f"/functions/{ECHO}", "/events/ping/listeners"):
        assert httpx.get(keyed.url + path).status_code == 401
    assert httpx.post(keyed.url + "/events/ping", json={}).status_code == 401


@pytest.mark.parametrize("chunked", [False, True])
def test_a_401_reaches_a_client_still_sending_its_body(keyed: Node, chunked: bool) -> None:
    """1. POST a 10 MB body with a wrong key to the invoke route and to `/events/ping`.
    Result: the client reads the 401, not a reset."""
    for path in (f"/functions/{ECHO}/invoke", "/events/ping"):
        wrong = {"Authorization": "Bearer nope"}
        assert send_whole_body(keyed, path, BIG, chunked, wrong) == (401, "Unauthorized"), path


def test_keys_accepted_and_open_routes(keyed: Node) -> None:
    for key in ("k-one", "k-two"):
        assert invoke(keyed, ECHO, json={}, headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert invoke(keyed, UNKNOWN, json={}, headers={"Authorization": "Bearer k-one"}).status_code == 404
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert httpx.get(keyed.url + path).status_code == 200, path


def raw_request(
    node: Node, head: str, parts: list[bytes], pause: float = 0.0
) -> tuple[int, dict[str, Any], float]:
    """Send `head` then each part (`pause` seconds apart) on a raw socket and read the whole answer;
    returns its status, JSON body and the seconds from the last part to the answer."""
    host, port = node.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n")
        for part in parts:
            time.sleep(pause)
            sock.sendall(part)
        sent = time.monotonic()
        status, body = _answer(sock)
    return status, body, time.monotonic() - sent


def _answer(sock: socket.socket) -> tuple[int, dict[str, Any]]:
    """Read one whole HTTP answer from `sock`: its status and JSON body."""
    status, _, body = _answer_with_head(sock)
    return status, body


def _answer_with_head(sock: socket.socket) -> tuple[int, bytes, dict[str, Any]]:
    """Read one whole HTTP answer from `sock`: its status, its head (lower-case) and JSON body."""
    answer = b""
    while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _length(answer):
        chunk = sock.recv(65536)
        assert chunk, f"connection closed with no full answer: {answer!r}"
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), head.lower(), orjson.loads(body)


def _length(answer: bytes) -> int:
    found = re.search(rb"(?i)content-length: *([0-9]+)", answer)
    return int(found.group(1)) if found else 1 << 30


def test_a_body_shorter_than_its_content_length_is_answered_400(node: Node) -> None:
    """1. POST /functions/ECHO/invoke declaring Content-Length: 100, then 4 bytes and nothing more.
    2. The same on POST /events/ping. 3. A chunked body that stops after one chunk.
    Result: each is answered 400 BadRequest within the body timeout plus the 1 s sweep (plus slack), not
    before the timeout, saying how many bytes came (of how many), all in the contract's error shape; the
    node goes on serving. Before, uvicorn waited for the missing bytes for ever."""
    invoke_head = f"POST /functions/{ECHO}/invoke HTTP/1.1\nHost: x\nContent-Type: application/json\n"
    status, body, took = raw_request(node, invoke_head + "Content-Length: 100\n", [b'"abc'])
    assert status == 400 and body["error"]["type"] == "BadRequest", body
    assert "body incomplete: no byte arrived for 3 s (FAAS_HTTP_BODY_TIMEOUT)" in body["error"]["message"]
    assert "after 4 bytes of the 100 its Content-Length declares" in body["error"]["message"], body
    assert BODY_TIMEOUT - 0.5 < took < BODY_TIMEOUT + 10, took
    emit_head = "POST /events/ping HTTP/1.1\nHost: x\nContent-Length: 50\n"
    status, body, _ = raw_request(node, emit_head, [b"{"])
    assert status == 400 and body["error"]["type"] == "BadRequest" and set(body) == {"error"}, body
    chunked = invoke_head + "Transfer-Encoding: chunked\n"
    status, body, _ = raw_request(node, chunked, [b"2\r\n[1\r\n"])
    assert status == 400 and "after 2 bytes" in body["error"]["message"], body
    assert invoke(node, ECHO, json={"still": "serving"}).json()["result"]["echo"] == {"still": "serving"}


@pytest.mark.parametrize(
    ("coding", "shown"),
    [
        ("gzip, chunked", "gzip, chunked"),
        ("deflate, chunked", "deflate, chunked"),
        ("x-unknown, chunked", "x-unknown, chunked"),
        ("gzip\nTransfer-Encoding: chunked", "gzip, chunked"),  # two lines are one list
    ],
)
@pytest.mark.parametrize("path", [f"/functions/{ECHO}/invoke", "/events/ping", "/events"])
def test_a_transfer_coding_other_than_chunked_is_refused_naming_it(
    node: Node, coding: str, shown: str, path: str
) -> None:
    """1. POST a body sent with `Transfer-Encoding: gzip, chunked` (or another coding before chunked),
    gzipped as it says, on each route that reads a body.
    Result: 400 BadRequest naming the coding, on the same connection's answer; the node decodes only the
    chunks, so the gzip was taken for the body ("not UTF-8"), and a plain body sent so was served as if
    the coding were not there."""
    body = gzip.compress(b'{"a": 1}')
    head = f"POST {path} HTTP/1.1\nHost: x\nContent-Type: application/json\nTransfer-Encoding: {coding}\n"
    if path == "/events":
        head += "ce-specversion: 1.0\nce-type: ping\nce-id: te-1\nce-source: t\n"
    status, answer, _ = raw_request(node, head, [b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)])
    assert status == 400 and answer["error"]["type"] == "BadRequest", answer
    assert answer["error"]["message"].startswith(f"Transfer-Encoding {shown!r} is not supported"), answer


def test_a_slow_body_that_keeps_coming_is_served(node: Node) -> None:
    """1. POST /functions/ECHO/invoke with a 6-byte body sent one byte per second: 6 s in all, twice
    the body timeout, but never a pause as long as it. Result: 200 with the payload (the timeout bounds
    the pause between bytes, not the whole upload)."""
    head = f"POST /functions/{ECHO}/invoke HTTP/1.1\nHost: x\nContent-Length: 6\n"
    status, body, _ = raw_request(node, head, [bytes([b]) for b in b'"slow"'], pause=1.0)
    assert status == 200 and body["result"]["echo"] == "slow", body


def test_a_stopping_node_answers_bodies_still_on_their_way_in_the_contract_shape(
    tmp_path: Path, nodes: Callable[..., Node]
) -> None:
    """1. A node with FAAS_SHUTDOWN_GRACE=2 and a 30 s body timeout gets POST /functions/ECHO/invoke
    declaring Content-Length: 100 and only 4 bytes. 2. A request on another connection is answered (the
    first is being read by then). 3. SIGTERM.
    Result: the stalled request is answered 429 Overloaded "the node is stopping" in JSON, saying how many
    bytes came, before the grace ends (uvicorn would have cancelled it with a plain-text 500), with no
    `faas-invocation-id` (it never became an invocation, so it has no record); the node exits 0."""
    root = write_project(tmp_path, MANIFEST, MODULES)
    grace = 2
    env = {"FAAS_SHUTDOWN_GRACE": str(grace), "FAAS_HTTP_BODY_TIMEOUT": "30"}
    node = nodes(root, None, kafka=False, env=env).wait_ready()
    host, port = node.url.removeprefix("http://").split(":")
    head = f"POST /functions/{ECHO}/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode() + b'"abc')
        assert httpx.get(node.url + "/healthz").status_code == 200
        stopped = time.monotonic()
        node.proc.send_signal(signal.SIGTERM)
        status, answer_head, body = _answer_with_head(sock)
        took = time.monotonic() - stopped
    assert status == 429 and body["error"]["type"] == "Overloaded", body
    # Never an invocation (no payload, as a 413): no record, so no id naming one (other 429s have both).
    assert b"faas-invocation-id" not in answer_head and b"traceparent" in answer_head, answer_head
    message = body["error"]["message"]
    assert message.startswith("the node is stopping") and "4 bytes of the 100" in message, message
    assert took < grace + 1, took
    assert node.proc.wait(30) == 0, node.tail()


LINGER = "aaaaaaaa-0000-4000-8000-0000000000a1"
LINGERING = f"""
functions:
  - name: linger
    uuid: {LINGER}
    handler: functions.l:handle
    state: productive
    events: [linger]
"""
LINGER_MODULE = """
import asyncio, os, pathlib

async def handle(payload, ctx):
    pathlib.Path(os.environ["MARKS"], ctx.invocation_id).touch()
    await asyncio.sleep(payload["sleep"])
    return "done"
"""


def test_a_stopping_node_answers_calls_still_running_when_the_grace_is_up(
    tmp_path: Path, nodes: Callable[..., Node]
) -> None:
    """1. A node with FAAS_SHUTDOWN_GRACE=1.5 runs a direct invocation and an event over HTTP, each of a
    function that sleeps 20 s. 2. SIGTERM once both run.
    Result: both are answered when the grace is up (not after 20 s), in the contract's shape: the invocation
    502 `InstanceCrashed` naming FAAS_SHUTDOWN_GRACE, the event 502 with a combined reply failed with it and
    its `traceparent`, as any event's answer (uvicorn's own timeout answered them a plain-text 500, and a
    grace under 1 s waited for the instances' stop); the node exits 0."""
    marks = tmp_path / "marks"
    marks.mkdir()
    root = write_project(tmp_path / "p", LINGERING, {"l": LINGER_MODULE})
    env = {"FAAS_SHUTDOWN_GRACE": "1.5", "MARKS": str(marks)}
    node = nodes(root, None, kafka=False, env=env).wait_ready()
    answers: dict[str, httpx.Response] = {}

    def call(name: str, path: str) -> None:
        answers[name] = httpx.post(node.url + path, json={"sleep": 20}, timeout=60)

    threads = [
        threading.Thread(target=call, args=("invoke", f"/functions/{LINGER}/invoke")),
        threading.Thread(target=call, args=("event", "/events/linger")),
    ]
    for t in threads:
        t.start()
    wait_for(lambda: len(list(marks.iterdir())) == 2, 30, message="both calls running")
    stopped = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(30)
    took = time.monotonic() - stopped
    invoke, event = answers["invoke"], answers["event"]
    assert invoke.status_code == 502 and invoke.json()["error"]["type"] == "InstanceCrashed", invoke.text
    assert "FAAS_SHUTDOWN_GRACE (1.5 s)" in invoke.json()["error"]["message"], invoke.text
    body = event.json()
    assert event.status_code == 502 and body["ok"] is False, event.text
    assert body["error"]["type"] == "InstanceCrashed" and body["event"] == "linger", body
    assert re.fullmatch(r"00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]", event.headers.get("traceparent", "")), (
        event.headers
    )
    assert 1.4 < took < 6, took
    assert node.proc.wait(30) == 0, node.tail()


def test_a_second_signal_cuts_what_is_in_flight_at_once(tmp_path: Path, nodes: Callable[..., Node]) -> None:
    """1. A node with FAAS_SHUTDOWN_GRACE=30 runs a direct invocation of a function that sleeps 20 s.
    2. SIGTERM; once it is draining, SIGTERM again.
    Result: the invocation is answered 502 `InstanceCrashed` saying a second signal stopped the node, and
    the node exits 0 within seconds of the second signal (it went on waiting for the whole grace)."""
    marks = tmp_path / "marks"
    marks.mkdir()
    root = write_project(tmp_path / "p", LINGERING, {"l": LINGER_MODULE})
    node = nodes(root, None, kafka=False, env={"FAAS_SHUTDOWN_GRACE": "30", "MARKS": str(marks)}).wait_ready()
    answers: list[httpx.Response] = []
    call = threading.Thread(
        target=lambda: answers.append(
            httpx.post(f"{node.url}/functions/{LINGER}/invoke", json={"sleep": 20}, timeout=60)
        )
    )
    call.start()
    wait_for(lambda: any(marks.iterdir()), 30, message="the call running")
    node.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "received: draining" in node.log.read_text(), 10, message="draining")
    second = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    call.join(30)
    assert node.proc.wait(30) == 0, node.tail()
    took = time.monotonic() - second
    (answer,) = answers
    assert answer.status_code == 502 and answer.json()["error"]["type"] == "InstanceCrashed", answer.text
    assert "a second signal said to stop at once" in answer.json()["error"]["message"], answer.text
    assert took < 10, took


@pytest.mark.parametrize(
    "head",
    [
        f"POST /functions/{ECHO}/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        f"POST /functions/{ECHO}/invoke HTTP/1.1\r\nHost: x\r\nX-Bad: a\x01b\r\nContent-Length: 0\r\n\r\n",
        "GET / HTTP/9.9 extra\r\n\r\n",
    ],
    ids=["content-length", "control-char", "request-line"],
)
def test_bytes_that_are_not_http_get_the_contract_400(node: Node, head: str) -> None:
    """A request uvicorn's parser refuses (a Content-Length that is no number, a control character in a
    header, a broken request line): 400 `BadRequest` in the contract's JSON body saying it is not valid
    HTTP/1.1 (uvicorn answered plain text), and the node serves the next request."""
    host, port = node.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(head.encode("latin-1"))
        status, body = _answer(sock)
    assert status == 400 and body["error"]["type"] == "BadRequest", body
    assert body["error"]["message"].startswith("not a valid HTTP/1.1 request"), body
    assert httpx.post(f"{node.url}/functions/{ECHO}/invoke", json={"a": 1}, timeout=30).status_code == 200


RETRIED_EVENT = """
functions:
  - name: storm
    uuid: aaaaaaaa-0000-4000-8000-0000000000a1
    handler: functions.st:storm
    state: productive
    events: [st.storm]
    retry: {attempts: 2, backoff: 10, on: [FunctionError]}
"""


@pytest.mark.parametrize("route", ["/events/st.storm", "/events"])
def test_sigterm_ends_the_retries_of_an_http_event_at_once(
    tmp_path: Path, nodes: Callable[..., Node], route: str
) -> None:
    """1. POST an event whose listener always fails and is retried after 10 s, then 20 s.
    2. Once its first attempt failed (a retry counted), SIGTERM the node.
    Result: the caller is answered at once with the first attempt's FunctionError, its attempts 1 (no
    attempt is made after the signal), and the node exits within seconds; it made attempts 2 and 3
    after the signal and exited 31.5 s later, when the caller got its answer (an HTTP event has no next
    owner to redo it, as a Kafka event's partition has)."""
    module = 'async def storm(payload, ctx):\n    raise RuntimeError(f"down on attempt {ctx.attempt}")\n'
    root = write_project(tmp_path, RETRIED_EVENT, {"st": module})
    node = nodes(root, None, kafka=False).wait_ready()
    headers = {"ce-specversion": "1.0", "ce-type": "st.storm", "ce-id": "e-1", "ce-source": "t"}
    answer: list[httpx.Response] = []
    caller = threading.Thread(
        target=lambda: answer.append(httpx.post(node.url + route, json={}, headers=headers, timeout=60))
    )
    caller.start()
    wait_for(lambda: metric(node, "faas_retries_total", function="storm") >= 1, timeout=30)
    signalled = time.monotonic()
    node.proc.send_signal(signal.SIGTERM)
    caller.join(30)
    answered = time.monotonic() - signalled
    assert node.proc.wait(30) == 0
    exited = time.monotonic() - signalled
    [r] = answer
    body = r.json()
    assert r.status_code == 500 and body["error"]["type"] == "FunctionError", body
    assert "down on attempt 1" in body["error"]["message"], body
    assert answered < 5 and exited < 8, (answered, exited)
    assert "attempt 2 not made: the node is stopping" in node.log.read_text(errors="replace")
