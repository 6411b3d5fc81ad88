"""`faas invoke` and `faas emit` on option values they cannot send (framework/cli/calls.py; DESIGN.md 6):
each is a usage error (exit 2) naming the option, never a traceback, a hang or a malformed event."""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from framework.cli import main
from framework.sources.http.auth import BearerAuth
from tests.support import http_server, write_project

ALPHA = "1c7a4d2f-4e2a-4d2b-8b8f-6e3a9f5c7b01"
MANIFEST = f"""
functions:
  - {{name: alpha, uuid: {ALPHA}, handler: functions.m:handle}}
"""
MODULE = "async def handle(payload, ctx):\n    return payload\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return write_project(tmp_path, MANIFEST, {"m": MODULE})


def faas(root: Path, *args: str, **env: str) -> Result:
    environment = {"FAAS_MANIFEST": str(root / "functions.yaml"), "FAAS_KAFKA_BOOTSTRAP_SERVERS": "", **env}
    return CliRunner().invoke(main, list(args), env=environment)


def usage_error(r: Result, option: str) -> str:
    """The one error line of a usage error naming `option`."""
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    error = r.stderr.splitlines()[-1]
    assert error.startswith(f"Error: Invalid value for '{option}'"), error
    return error


class _Node(http.server.BaseHTTPRequestHandler):
    """Answers `GET /functions` and every POST as a node would and keeps the Authorization header's bytes."""

    seen: list[bytes] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization", "").encode("latin-1"))
        body = json.dumps({"functions": [{"name": "alpha", "uuid": ALPHA, "state": "productive"}]})
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        # http.server decodes header bytes as Latin-1: encoding back gives the bytes that were sent.
        self.seen.append(self.headers.get("Authorization", "").encode("latin-1"))
        body = json.dumps({"invocation_id": "i", "result": "done", "duration_ms": 1, "cold_start": False})
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def node() -> Iterator[str]:
    _Node.seen.clear()
    with http_server(_Node) as port:
        yield f"http://127.0.0.1:{port}"


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("notaurl", "give an http or https URL with a host"),
        ("http://[::1", "is not a URL: Invalid IPv6 URL"),
        ("ftp://127.0.0.1:21", "give an http or https URL with a host"),
        ("http://", "give an http or https URL with a host"),
        ("http://127.0.0.1:99999", "is not a URL: Port out of range"),
        ("http://127.0.0.1:80a", "is not a URL: Port could not be cast"),
        ("http://127.0.0.1/a b", "only printable ASCII without spaces"),
        ("http://bücher.example/", "only printable ASCII without spaces"),
    ],
)
def test_a_url_that_is_no_node_is_a_usage_error(
    root: Path, monkeypatch: pytest.MonkeyPatch, url: str, problem: str
) -> None:
    """`faas invoke alpha --url URL` (also by uuid) with a URL urllib cannot call as a node: exit 2 with one
    line naming --url and what is wrong, at once (an ftp:// URL used to wait out the whole HTTP timeout,
    here shortened so that a wait fails the test instead of stalling it)."""
    monkeypatch.setattr("framework.cli.calls.LIST_TIMEOUT", 1.0)
    for target in ("alpha", ALPHA):
        error = usage_error(faas(root, "invoke", target, "--url", url, "--timeout", "1"), "--url")
        assert problem in error, error


@pytest.mark.parametrize("key", ["k1\nX: 1", "k1\r", "tab\there", "\udcff-not-utf8", "", "   "], ids=repr)
def test_an_api_key_that_cannot_go_in_a_header_is_a_usage_error(root: Path, node: str, key: str) -> None:
    """`faas invoke alpha --url URL --api-key KEY` with a line break, a control character, bytes that are
    not UTF-8, or nothing: exit 2 naming --api-key; the node is never called."""
    error = usage_error(faas(root, "invoke", "alpha", "--url", node, "--api-key", key), "--api-key")
    assert "not a usable key" in error, error
    assert _Node.seen == []


def test_the_default_key_from_faas_api_keys_is_checked_without_showing_it(root: Path, node: str) -> None:
    r = faas(root, "invoke", "alpha", "--url", node, FAAS_API_KEYS="tab\tin-key,k2")
    assert r.exit_code == 2 and "invalid setting: FAAS_API_KEYS: the first key is not usable" in r.stderr
    assert "in-key" not in r.output and _Node.seen == []


def test_a_utf8_api_key_goes_as_the_node_reads_it(root: Path, node: str) -> None:
    """`--api-key 你好`: sent as its UTF-8 bytes, which is how a node with FAAS_API_KEYS=你好 compares
    keys (framework/sources/http/auth.py), so the node lets the call in."""
    r = faas(root, "invoke", "alpha", "--url", node, "--api-key", "你好")
    assert r.exit_code == 0 and r.stdout == '"done"\n', (r.output, r.exception)
    assert _Node.seen == ["Bearer 你好".encode()] * 2  # the name looked up, then the call

    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    assert BearerAuth(app, ["你好"]).allowed({"headers": [(b"authorization", _Node.seen[0])]})


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"


@contextlib.contextmanager
def stalling_node(how: str) -> Iterator[str]:
    """A real socket server that accepts each connection, reads the request and then, by `how`: says
    nothing (`silent`), or sends a status line and a header line every 0.2 s without ever ending the head
    (`trickle`), or a whole head promising 100 bytes of body and a byte of it every 0.2 s
    (`trickle-body`); yields its URL. Each keeps the connection open until the test ends."""
    stop = threading.Event()
    listener = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):  # the client cut it
            conn.recv(65536)
            if how == "trickle":
                conn.sendall(HEAD)
            elif how == "trickle-body":
                conn.sendall(HEAD + b"Content-Length: 100\r\n\r\n")
            while not stop.wait(0.2):
                if how == "trickle":
                    conn.sendall(b"X-Wait: 1\r\n")
                elif how == "trickle-body":
                    conn.sendall(b" ")

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener closed: the test ended
            while True:
                threading.Thread(target=serve, args=(listener.accept()[0],), daemon=True).start()

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        listener.close()


@pytest.mark.timeout(60)  # a call bounded per read only would wait 120 s, or for ever on a trickle
@pytest.mark.parametrize("how", ["silent", "trickle", "trickle-body"])
def test_invoke_gives_a_node_that_does_not_answer_up_at_the_timeout(root: Path, how: str) -> None:
    """1. A node accepts the call and stays silent, or trickles its header (a line every 0.2 s, never
    done), or trickles its body. 2. `faas invoke UUID --url URL --timeout 1`.
    Result: exit 1 after about 1 s with one line naming the node and the timeout (a socket timeout bounds
    each read alone: a trickling node held the call for ever)."""
    with stalling_node(how) as url:
        started = time.monotonic()
        r = faas(root, "invoke", ALPHA, "--url", url, "--timeout", "1")
        took = time.monotonic() - started
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    assert r.stderr == (
        f"no answer from {url} within 1 s (--timeout): the invocation may still run there "
        "(`faas logs` shows its record)\n"
    )
    assert took < 5, took


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["silent", "trickle"])
def test_invoke_by_name_gives_a_node_that_does_not_list_up_at_once(
    root: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """1. A node accepts `GET /functions` and stays silent, or trickles its header. 2. `faas invoke NAME
    --url URL` with the listing's bound (LIST_TIMEOUT, 10 s) set to 0.5 s, the call's (`--timeout`) left at
    120 s. Result: exit 1 within a few seconds, one line saying the node did not list its functions in
    time (the listing waited as long as an invocation may, 120 s, or for ever)."""
    monkeypatch.setattr("framework.cli.calls.LIST_TIMEOUT", 0.5)
    with stalling_node(how) as url:
        started = time.monotonic()
        r = faas(root, "invoke", "alpha", "--url", url)
        took = time.monotonic() - started
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    assert r.stderr == f"{url} did not list its functions within 0.5 s (GET /functions): is it a faas node?\n"
    assert took < 5, took


@pytest.mark.parametrize("value", ["nan", "0", "-1"])
def test_invoke_timeout_must_be_seconds_over_0(root: Path, node: str, value: str) -> None:
    error = usage_error(faas(root, "invoke", ALPHA, "--url", node, "--timeout", value), "--timeout")
    assert "is not a number of seconds over 0" in error, error
    assert _Node.seen == []


def test_invoke_answered_in_time_prints_the_result(root: Path, node: str) -> None:
    """The deadline does not cut a call answered before it: `--timeout 5` on a node that answers."""
    r = faas(root, "invoke", "alpha", "--url", node, "--timeout", "5")
    assert r.exit_code == 0 and r.stdout == '"done"\n', (r.output, r.exception)


@pytest.mark.parametrize("verb", [["invoke", "alpha"], ["emit", "ping", "--bootstrap", "k:1"]])
def test_data_at_with_no_path_says_the_path_is_empty(root: Path, verb: list[str]) -> None:
    """`--data @` (`--data @$FILE` with FILE unset): a usage error saying no file was named (it said
    "cannot read : Is a directory")."""
    error = usage_error(faas(root, *verb, "--data", "@"), "--data")
    assert "@ names no file (the path after it is empty)" in error, error


@pytest.fixture
def client(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """A fake framework.kafka.client whose EventClient records each emit and answers ok."""
    calls: list[dict[str, Any]] = []

    class EventClient:
        def __init__(self, bootstrap: str, settings: Any, source: str = "faas-client") -> None:
            self.bootstrap, self.source = bootstrap, source

        async def emit(self, type_: str, payload: Any, **kw: Any) -> dict[str, Any]:
            calls.append({"bootstrap": self.bootstrap, "source": self.source, "type": type_, **kw})
            return {"id": "e1", "event": type_, "ok": True, "results": [], "error": None}

    monkeypatch.setitem(sys.modules, "framework.kafka.client", types.SimpleNamespace(EventClient=EventClient))
    return calls


@pytest.mark.parametrize(
    ("args", "option", "problem"),
    [
        (["", "--bootstrap", "k:1"], "EVENT_TYPE", "an event type must not be empty"),
        (["  ", "--bootstrap", "k:1"], "EVENT_TYPE", "an event type must not be only whitespace"),
        (["\udcff", "--bootstrap", "k:1"], "EVENT_TYPE", "is not valid UTF-8"),
        (["ping", "--key", "\udcff"], "--key", "is not valid UTF-8"),
        (["ping", "--id", "id-\udcff"], "--id", "is not valid UTF-8"),
        (["ping", "--source", "\udcff"], "--source", "is not valid UTF-8"),
        (["ping", "--id", ""], "--id", "is empty"),  # an unset shell variable: not a new UUID unsaid
        (["ping", "--source", ""], "--source", "is empty"),
        (["ping", "--data", '"\udcff"'], "--data", "not valid UTF-8"),
        (["ping", "--data", '"\\udcff"'], "--data", "invalid high surrogate"),
        (["ping", "--timeout", "nan"], "--timeout", "nan is not a number of seconds over 0"),
        (["ping", "--timeout", "inf"], "--timeout", "inf is not a number of seconds over 0"),
        (["ping", "--timeout", "0"], "--timeout", "0 is not a number of seconds over 0"),
        (["ping", "--timeout", "-1"], "--timeout", "-1 is not a number of seconds over 0"),
    ],
)
def test_emit_refuses_what_it_cannot_send(
    root: Path, client: list[dict[str, Any]], args: list[str], option: str, problem: str
) -> None:
    """`faas emit` with an empty event type (a record without ce_type, answered BadEvent), an empty id or
    source (which became the default without a word), command-line
    bytes that are not UTF-8 in a value that goes on the wire, or a timeout that is not finite and over 0
    (nan waited for ever): exit 2 naming the option or argument; nothing is produced."""
    error = usage_error(faas(root, "emit", *args, FAAS_KAFKA_BOOTSTRAP_SERVERS="k:1"), option)
    assert problem in error, error
    assert client == []


def test_emit_hands_the_client_the_bootstrap_list_and_values_it_was_given(
    root: Path, client: list[dict[str, Any]]
) -> None:
    r = faas(
        root,
        "emit",
        "ping.é",
        "--bootstrap",
        " [::1]:9092, k2:9093 ",
        "--key",
        "kéy",
        "--id",
        "i-1",
        "--source",
        "s/1",
        "--timeout",
        "2.5",
    )
    assert r.exit_code == 0 and json.loads(r.stdout)["ok"] is True, (r.output, r.exception)
    assert client == [
        {
            "bootstrap": "[::1]:9092,k2:9093",
            "source": "s/1",
            "type": "ping.é",
            "key": "kéy".encode(),
            "timeout": 2.5,
            "id": "i-1",
        }
    ]


def test_emit_with_no_room_for_this_hosts_reply_topic_says_so(root: Path) -> None:
    """A FAAS_REPLIES_TOPIC of 245 characters (valid) leaves no room for `.client-<host>` under Kafka's 249:
    exit 1 with one line naming it, before any connection (no traceback)."""
    r = faas(root, "emit", "ping", FAAS_REPLIES_TOPIC="r" * 245, FAAS_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    assert "leaves no room under 249 characters" in r.stderr and "Traceback" not in r.output, r.output


def test_emit_to_an_unreachable_broker_names_it_once(root: Path) -> None:
    """`faas emit` with nothing listening at FAAS_KAFKA_BOOTSTRAP_SERVERS: exit 1, one line naming the broker
    once (it read "cannot reach the Kafka broker at X: cannot reach Kafka at X: ...")."""
    r = faas(root, "emit", "ping", "--timeout", "5", FAAS_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1")
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].count("127.0.0.1:1") == 1, r.stderr
    assert lines[0].startswith("cannot reach the Kafka broker at 127.0.0.1:1: "), r.stderr
