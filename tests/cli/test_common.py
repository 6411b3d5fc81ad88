"""How the CLI finds the broker (framework/cli/common.py `find_broker`; DESIGN.md 7, 8): a listener on the
embedded broker's port that is not Kafka is no broker. Verbs that work without one (deploy, undeploy, ls)
behave as with nothing there; verbs that need one (logs, history, rollback, replay, emit) exit 1 at once with
one line. With the real broker on that port, every verb still uses it."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
from click.testing import CliRunner, Result

from framework.cli import main
from framework.cli.common import ANSWER_TIMEOUT, cutoff_ms, duration, find_broker
from framework.kafka.embedded import EmbeddedBroker, free_port
from framework.settings import Settings
from tests.support import http_server, new_id, run_cli, silent_listener, write_project

pytestmark = pytest.mark.timeout(300)  # CLI runs on a shared, slow machine


@pytest.fixture(autouse=True)
def quick_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """In process, a silent listener is given up on after 0.5 s instead of ANSWER_TIMEOUT: the same path,
    a shorter wait (Tansu answers in milliseconds; the subprocess runs keep the real timeout)."""
    monkeypatch.setattr("framework.cli.common.ANSWER_TIMEOUT", 0.5)


MODULE = "async def handle(payload, ctx):\n    return payload\n"
PROMPT = ANSWER_TIMEOUT + 3
"""Seconds a verb may take on a port that is not Kafka (before, they waited 10-40 s for a broker)."""
NEED_A_BROKER = [
    ("logs",),
    ("history", "alpha"),
    ("rollback", "alpha"),
    ("replay", "--dry-run"),
    ("emit", "ping", "--timeout", "5"),
]
LISTENERS = pytest.mark.parametrize("listener", [http_server, silent_listener], ids=["http", "tcp"])
Listener = Callable[[], AbstractContextManager[int]]


def project(root: Path, state: str = "draft") -> Path:
    manifest = f"""
functions:
  - name: alpha
    uuid: {new_id()}
    handler: functions.m:handle
    state: {state}   # kept as written
    events: [ping]
"""
    return write_project(root, manifest, {"m": MODULE})


def on_port(port: int, **extra: str) -> dict[str, str]:
    """No FAAS_KAFKA_BOOTSTRAP_SERVERS: the broker is whatever answers on `port`."""
    return {"FAAS_KAFKA_BOOTSTRAP_SERVERS": "", "FAAS_EMBEDDED_BROKER_PORT": str(port), **extra}


def faas(root: Path, port: int, *args: str) -> tuple[Result, float]:
    """Run the command in-process (so its time is the verb's, not an interpreter's start); and its seconds."""
    env = on_port(port, FAAS_MANIFEST=str(root / "functions.yaml"))
    started = time.monotonic()
    r = CliRunner().invoke(main, list(args), env=env)
    return r, time.monotonic() - started


def settings(**values: Any) -> Settings:
    return Settings(manifest=Path("functions.yaml"), **values)


def test_find_broker(broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    """1. The real broker on the embedded port. 2. FAAS_KAFKA_BOOTSTRAP_SERVERS (or `--bootstrap`) set while a
    silent listener holds the port. 3. Nothing on the port. 4. A silent listener on it. Result: 1 is the
    broker, found with one connection (its ApiVersions round trip); 2 is taken as given, at once and without
    a connection; 3 and 4 are no broker, each saying why and naming the port."""
    connections: list[object] = []
    connect = socket.create_connection

    def counted(address: Any, *args: Any, **kw: Any) -> socket.socket:
        connections.append(address)
        return connect(address, *args, **kw)

    monkeypatch.setattr(socket, "create_connection", counted)
    found = find_broker(settings(kafka_bootstrap_servers="", embedded_broker_port=broker.port))
    assert found.bootstrap == broker.bootstrap and connections == [("127.0.0.1", broker.port)], connections

    with silent_listener() as port:
        connections.clear()
        started = time.monotonic()
        given = settings(kafka_bootstrap_servers="k1:9092,k2:9092", embedded_broker_port=port)
        assert find_broker(given).bootstrap == "k1:9092,k2:9092"
        assert find_broker(given, "b:1").bootstrap == "b:1"
        assert (
            find_broker(settings(kafka_bootstrap_servers="", embedded_broker_port=port), "b:2").bootstrap
            == "b:2"
        )
        assert connections == [] and time.monotonic() - started < 1

        found = find_broker(settings(kafka_bootstrap_servers="", embedded_broker_port=port))
        assert found.bootstrap is None
        assert f"port {port} " in found.missing and "not a Kafka broker" in found.missing, found

    port = free_port()
    found = find_broker(settings(kafka_bootstrap_servers="", embedded_broker_port=port))
    assert found.bootstrap is None
    assert found.missing.startswith("no Kafka broker reachable") and f"port {port}," in found.missing, found


@LISTENERS
def test_verbs_that_need_a_broker_exit_1_at_once_on_a_port_that_is_not_kafka(
    tmp_path: Path, listener: Listener
) -> None:
    """1. A real HTTP server, or a TCP listener that never answers, holds FAAS_EMBEDDED_BROKER_PORT; no
    FAAS_KAFKA_BOOTSTRAP_SERVERS. 2. `faas logs`, `history`, `rollback`, `replay`, `emit`. Result: each exits
    1 within PROMPT seconds with nothing on stdout and one line on stderr that names the port, says it is
    not a Kafka broker and names FAAS_KAFKA_BOOTSTRAP_SERVERS; as a process too (no traceback, no client
    library noise); the HTTP server is left serving."""
    root = project(tmp_path, "productive")
    with listener() as port:
        for args in NEED_A_BROKER:
            r, took = faas(root, port, *args)
            print(f"faas {' '.join(args)}: exit {r.exit_code} after {took:.1f} s: {r.stderr!r}")
            assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (args, r.output, r.exception)
            assert took < PROMPT, (args, took)
            assert r.stdout == "", (args, r.stdout)
            lines = r.stderr.splitlines()
            assert len(lines) == 1, (args, r.stderr)
            assert (
                f"port {port} " in lines[0] and "is taken by something that is not a Kafka broker" in lines[0]
            )
            assert "set FAAS_KAFKA_BOOTSTRAP_SERVERS" in lines[0], lines
        p = run_cli(root, "history", "alpha", env=on_port(port), timeout=120)
        assert p.returncode == 1 and p.stdout == "", p.stdout + p.stderr
        assert p.stderr.splitlines() == lines, p.stderr
        if listener is http_server:
            assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "not kafka\n"


@LISTENERS
def test_verbs_that_work_without_a_broker_take_a_port_that_is_not_kafka_for_none(
    tmp_path: Path, listener: Listener
) -> None:
    """1. As above, a listener that is not Kafka on FAAS_EMBEDDED_BROKER_PORT. 2. `faas deploy alpha`,
    `faas ls`, `faas undeploy alpha`. Result: as with no broker at all: each exits 0 within PROMPT seconds
    (deploy used to exit 1 after 20 s), deploy and undeploy edit the manifest (comments kept) and say in
    one line that nothing was published, ls shows the state without a revision; nothing on stderr."""
    root = project(tmp_path)
    path = root / "functions.yaml"
    with listener() as port:
        r, took = faas(root, port, "deploy", "alpha")
        assert r.exit_code == 0 and took < PROMPT, (r.output, took)
        assert r.stdout == f"alpha: productive in {path} (no Kafka broker reachable: not published)\n", (
            r.output
        )
        assert "    state: productive   # kept as written\n" in path.read_text()
        r, took = faas(root, port, "ls")
        assert r.exit_code == 0 and took < PROMPT, (r.output, took)
        row = r.stdout.splitlines()[1].split()
        assert row[0] == "alpha" and row[2] == "productive" and row[3] == "ping", r.stdout
        r, took = faas(root, port, "undeploy", "alpha")
        assert r.exit_code == 0 and took < PROMPT, (r.output, took)
        assert r.stdout == f"alpha: undeployed in {path} (no Kafka broker reachable: not published)\n"
        assert "    state: undeployed   # kept as written\n" in path.read_text()
        assert r.stderr == "", r.stderr


def test_with_the_broker_on_the_port_every_verb_uses_it(tmp_path: Path, broker: EmbeddedBroker) -> None:
    """1. The test broker (Tansu) on FAAS_EMBEDDED_BROKER_PORT; no FAAS_KAFKA_BOOTSTRAP_SERVERS; topics of
    this test's own. 2. `faas deploy alpha`, `ls`, `undeploy alpha`, `rollback alpha`, `history alpha`,
    `logs`, `replay --dry-run`, `emit ping --timeout 3` (no node reads the topic). Result: revision 1
    deployed, `productive r1`, revision 2 undeployed, revision 3 (rollback of 1), history lists 3, 2, 1 with
    3 live; logs and replay exit 0 with nothing to show; emit reaches the broker and exits 1 for want of a
    reply."""
    root = project(tmp_path)
    tag = new_id()[:8]
    env = on_port(
        broker.port,
        FAAS_DEPLOYMENTS_TOPIC=f"t.deploy.{tag}",
        FAAS_INVOCATIONS_TOPIC=f"t.invocations.{tag}",
        FAAS_DEADLETTER_TOPIC=f"t.dead.{tag}",
        FAAS_EVENTS_TOPIC=f"t.events.{tag}",
        FAAS_REPLIES_TOPIC=f"t.replies.{tag}",
    )

    def run(*args: str) -> Any:
        return run_cli(root, *args, env=env, timeout=120)

    r = run("deploy", "alpha")
    assert r.returncode == 0 and r.stdout == "alpha: revision 1 deployed\n", r.stdout + r.stderr
    r = run("ls")
    assert r.returncode == 0 and " productive r1 " in r.stdout, r.stdout + r.stderr
    r = run("undeploy", "alpha")
    assert r.returncode == 0 and r.stdout == "alpha: revision 2 undeployed\n", r.stdout + r.stderr
    r = run("rollback", "alpha")
    assert r.returncode == 0 and "alpha: revision 3 deployed (rollback of revision 1)" in r.stdout, r.stderr
    r = run("history", "alpha")
    assert r.returncode == 0, r.stdout + r.stderr
    revisions = [line.split()[0] for line in r.stdout.splitlines()[1:]]
    assert revisions == ["3", "2", "1"] and " live " in r.stdout.splitlines()[1], r.stdout
    r = run("logs")
    assert r.returncode == 0 and r.stdout == "", r.stdout + r.stderr
    r = run("replay", "--dry-run")
    assert r.returncode == 0 and "replayed 0" in r.stdout, r.stdout + r.stderr
    r = run("emit", "ping", "--timeout", "3")
    assert r.returncode == 1 and "no reply to the 'ping' event within 3 s" in r.stderr, r.stdout + r.stderr


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("host:abc", "port 'abc' is not a number"),
        ("127.0.0.1:99999", "port 99999 is not between 1 and 65535"),
        ("[::1", "no closing ']'"),
        ("k1:9092,", "an empty entry"),
    ],
)
def test_a_malformed_bootstrap_option_is_a_usage_error_naming_it(
    tmp_path: Path, value: str, problem: str
) -> None:
    """1. `--bootstrap` malformed (FAAS_KAFKA_BOOTSTRAP_SERVERS unset). 2. `faas emit`, `logs`, `replay`.
    Result: each exits 2 at once with one error line naming --bootstrap, the entry and what is wrong,
    by the same rule as the setting (a Kafka client would fail with a traceback)."""
    root = project(tmp_path)
    for args in (["emit", "ping", "--timeout", "5"], ["logs"], ["replay", "--dry-run"]):
        r, took = faas(root, free_port(), *args, "--bootstrap", value)
        assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (args, r.output, r.exception)
        error = r.stderr.splitlines()[-1]
        assert error.startswith("Error: Invalid value for '--bootstrap'") and problem in error, error
        assert took < PROMPT, (args, took)


def test_since_takes_any_length_and_a_cutoff_never_precedes_1970() -> None:
    """`--since` (logs and replay share it): 30000d and a length too long for a float are durations;
    their cutoff is the epoch, where Kafka's timestamps start."""
    assert duration(click.Context(main), _since(), "30000d") == 30000 * 86400
    assert cutoff_ms(30000 * 86400, now=1_700_000_000.0) == 0
    assert cutoff_ms(duration(click.Context(main), _since(), "9" * 400 + "d") or 0, now=1.0) == 0
    assert cutoff_ms(60, now=1_700_000_000.0) == 1_699_999_940_000
    for bad in ("10", "5x", "-1m", "m", "nan s"):
        with pytest.raises(click.BadParameter):
            duration(click.Context(main), _since(), bad)


def _since() -> click.Parameter:
    return click.Option(["--since"])
