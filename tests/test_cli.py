"""framework.cli: the `faas` command, partly in-process (click's runner), partly as real subprocesses."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import click
import httpx
import psutil
import pytest
from click.testing import CliRunner, Result

from framework.cli import main
from framework.cli.common import TwinOption, option
from framework.control.manifest import load_manifest
from framework.kafka.embedded import EmbeddedBroker, free_port, port_open
from tests.support import Node, http_server, run_cli, wait_for, write_project

REPO = Path(__file__).resolve().parent.parent
MANIFEST = """\
# functions of the test project
functions:
  - name: alpha
    uuid: 0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01
    handler: functions.mod:handle
    state: productive
    events: [ping]
    schedules:
      - cron: "0 9 * * *"
        timezone: Europe/Berlin
  # beta is a draft
  - name: beta
    uuid: 1c7a4d2f-4e2a-4d2b-8b8f-6e3a9f5c7b02
    handler: functions.mod:handle
    state: draft   # not yet
"""
MODULES = {"mod": "async def handle(payload, ctx):\n    return payload\n"}
ALPHA = "0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, MANIFEST, MODULES)


def faas(root: Path, *args: str) -> Result:
    """Run the command in-process with FAAS_MANIFEST pointing at `root`."""
    return CliRunner().invoke(main, list(args), env={"FAAS_MANIFEST": str(root / "functions.yaml")})


# ---- real subprocess runs ----


def test_validate_the_example_project() -> None:
    r = run_cli(REPO, "validate")
    assert r.returncode == 0, r.stderr
    assert re.fullmatch(r"ok: \d+ functions\n", r.stdout)


def test_validate_reports_every_error_on_stderr(tmp_path: Path) -> None:
    manifest = MANIFEST.replace("state: draft", "state: live").replace(
        "functions.mod:handle\n    state: p", "x\n    state: p"
    )
    root = write_project(tmp_path, manifest, MODULES)
    r = run_cli(root, "validate")
    assert r.returncode == 1 and r.stdout == ""
    assert [int(n) for n in re.findall(r"functions\.yaml:(\d+):\d+:", r.stderr)] == [5, 15], r.stderr


def test_deploy_then_undeploy_changes_only_the_state_line(project: Path) -> None:
    """1. `faas deploy beta`, then `faas undeploy beta`.
    Result: after each, the file differs from the original only in beta's state line, comments included.
    """
    path = project / "functions.yaml"
    before = path.read_text().splitlines()
    r = run_cli(project, "deploy", "beta")
    assert r.returncode == 0, r.stderr
    diff = [(a, b) for a, b in zip(before, path.read_text().splitlines(), strict=True) if a != b]
    assert diff == [("    state: draft   # not yet", "    state: productive   # not yet")]
    r = run_cli(project, "undeploy", "beta")
    assert r.returncode == 0, r.stderr
    diff = [(a, b) for a, b in zip(before, path.read_text().splitlines(), strict=True) if a != b]
    assert diff == [("    state: draft   # not yet", "    state: undeployed   # not yet")]


def test_deploy_refuses_a_broken_handler(project: Path) -> None:
    path = project / "functions.yaml"
    path.write_text(
        MANIFEST.replace("functions.mod:handle\n    state: draft", "functions.nope:handle\n    state: draft")
    )
    before = path.read_bytes()
    r = run_cli(project, "deploy", "beta")
    assert r.returncode == 1
    assert "functions.yaml:14:5: handler 'functions.nope:handle' does not import" in r.stderr
    assert path.read_bytes() == before


def test_new_then_validate_and_ls(project: Path) -> None:
    """1. `faas new gamma --event ping`. 2. `faas validate`. 3. `faas ls`.
    Result: a module and a draft entry with a fresh uuid; the manifest is valid and ls lists gamma.
    """
    r = run_cli(project, "new", "gamma", "--event", "ping")
    assert r.returncode == 0, r.stderr
    assert "ctx.log" in (project / "functions" / "gamma.py").read_text()
    gamma = load_manifest(project / "functions.yaml").functions[-1]
    assert (gamma.name, gamma.state, gamma.events, gamma.handler) == (
        "gamma",
        "draft",
        ("ping",),
        "functions.gamma:handle",
    )
    r = run_cli(project, "validate")
    assert r.returncode == 0 and r.stdout == "ok: 3 functions\n", r.stderr
    r = run_cli(project, "ls")
    assert r.returncode == 0 and re.search(rf"gamma\s+{gamma.uuid}\s+draft\s+ping", r.stdout), r.stdout


def test_usage_error_exits_2(project: Path) -> None:
    r = run_cli(project, "deploy")
    assert r.returncode == 2 and "Missing argument" in r.stderr
    r = run_cli(project, "no-such-command")
    assert r.returncode == 2


def test_broker_runs_until_sigterm(tmp_path: Path) -> None:
    """1. `faas broker --port P`. 2. Wait for the port. 3. SIGTERM.
    Result: it listens on P, then exits 0 and the port closes.
    """
    port = free_port()
    cmd = [sys.executable, "-m", "framework", "broker", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: port_open("127.0.0.1", port), timeout=20, message="broker port open")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        proc.kill() if proc.poll() is None else None
    assert proc.returncode == 0, err
    assert f"127.0.0.1:{port}" in out and not port_open("127.0.0.1", port)


def test_a_sigkilled_owner_takes_its_embedded_broker_with_it(tmp_path: Path) -> None:
    """1. `faas broker --port P` (the broker runs in a session of its own, as under `faas run`, so a Ctrl-C
       in a terminal reaches its owner first). 2. The owner alone is SIGKILLed.
    Result: the port closes within seconds: the broker died with it (a `faas run` node starts its broker
    the same way), instead of holding the port for the next `faas run` to take over as "the Kafka broker
    already listening there"."""
    port = free_port()
    cmd = [sys.executable, "-m", "framework", "broker", "--port", str(port)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    brokers: list[psutil.Process] = []
    try:
        wait_for(lambda: port_open("127.0.0.1", port), timeout=20, message="broker port open")
        brokers = psutil.Process(proc.pid).children()
        assert brokers, "faas broker started no process"
        proc.kill()
        proc.wait(10)
        wait_for(lambda: not port_open("127.0.0.1", port), timeout=10, message="the orphaned broker gone")
    finally:
        proc.kill()
        for child in brokers:  # a broker that outlived its owner must not hold the port for later tests
            with contextlib.suppress(psutil.NoSuchProcess):
                child.kill()


# ---- in-process ----


def test_ls_shows_the_next_fire_time_in_the_schedule_timezone(project: Path) -> None:
    r = faas(project, "ls")
    assert r.exit_code == 0, r.output
    header, alpha, beta = r.output.splitlines()
    assert header.split() == ["NAME", "UUID", "STATE", "EVENTS", "SCHEDULES"]
    when = re.search(r"0 9 \* \* \* \[Europe/Berlin\] next (\S+)", alpha)
    assert when, alpha
    fire = datetime.fromisoformat(when.group(1))
    assert (
        (fire.hour, fire.minute) == (9, 0)
        and fire.utcoffset() is not None
        and fire > datetime.now(fire.tzinfo)
    )
    assert beta.split()[2:] == ["draft", "-", "-"]


def test_unknown_name_exits_1(project: Path) -> None:
    for command in ("deploy", "undeploy", "invoke"):
        r = faas(project, command, "nobody")
        assert r.exit_code == 1 and "no function named 'nobody'" in r.output, r.output


def test_new_refuses_existing_and_invalid_names(project: Path) -> None:
    assert faas(project, "new", "alpha").exit_code == 1
    for bad in ("Bad Name", "Hello", "9abc", "a" * 64):  # usage errors (exit 2), naming the argument
        r = faas(project, "new", bad)
        assert r.exit_code == 2 and "Invalid value for NAME" in r.output, r.output
    assert faas(project, "new", "a" * 63).exit_code == 0  # the longest name
    (project / "functions" / "taken.py").write_text("")
    assert faas(project, "new", "taken").exit_code == 1
    assert "taken" not in (project / "functions.yaml").read_text()


def test_invalid_data_is_a_usage_error(project: Path) -> None:
    r = faas(project, "invoke", "beta", "--data", "{nope")
    assert r.exit_code == 2 and "not valid JSON" in r.output
    r = faas(project, "invoke", "beta", "--data", "@missing.json")
    assert r.exit_code == 2 and "cannot read" in r.output


PROBE_MANIFEST = """\
functions:
  - name: probe
    uuid: 2d8b5e3a-5f3b-4e3c-9c9a-7f4b0a6d8c03
    handler: functions.probe:handle
  - name: sleepy
    uuid: 3e9c6f4b-6a4c-4f4d-8dab-8a5c1b7e9d04
    handler: functions.probe:sleepy
    timeout: 1
  - name: broken
    uuid: 4fad7a5c-7b5d-4a5e-9ebc-9b6d2c8f0e05
    handler: functions.probe:broken
"""
PROBE_MODULE = """\
import asyncio, os, sys

async def handle(payload, ctx):
    print("probe ran", ctx.invocation_id, file=sys.stderr, flush=True)
    ctx.log.info("probe info line")
    print("probe printed line")
    return {"payload": payload, "function": ctx.function, "uuid": ctx.uuid, "trigger": ctx.trigger,
            "pid": os.getpid(), "instance_id": ctx.instance_id}

async def sleepy(payload, ctx):
    await asyncio.sleep(20)

async def broken(payload, ctx):
    raise ValueError("bad input: " + repr(payload))
"""


def test_invoke_runs_a_draft_locally_by_name_or_uuid(project: Path) -> None:
    """1. `faas invoke beta --data JSON` (a draft). 2. `faas invoke ALPHA-UUID --data @file`.
    Result: each runs in a real local instance (a `faas` process of its own; nothing replaced) and prints
    the handler's result: the payload it was given."""
    (project / "data.json").write_text('{"a": [1, 2]}\n')
    r = run_cli(project, "invoke", "beta", "--data", '{"a": 1}')
    assert r.returncode == 0 and json.loads(r.stdout) == {"a": 1}, r.stderr
    r = run_cli(project, "invoke", ALPHA.upper(), "--data", f"@{project / 'data.json'}")
    assert r.returncode == 0 and json.loads(r.stdout) == {"a": [1, 2]}, r.stderr


def test_invoke_locally_in_a_fresh_instance(tmp_path: Path) -> None:
    """1. `faas invoke probe` (a draft) with a payload. 2. `faas invoke sleepy` (timeout 1 s, sleeps 20 s).
    3. `faas invoke broken` (raises).
    Result: 1 prints what the handler saw (its own name and uuid, trigger `direct`, the payload) from an
    instance process that is not the test's, and its stderr, stdout and ctx.log lines reach the command's
    stderr; 2 exits 1 with
    `Timeout` well before 20 s; 3 exits 1 with the `FunctionError` naming the exception."""
    root = write_project(tmp_path, PROBE_MANIFEST, {"probe": PROBE_MODULE})
    r = run_cli(root, "invoke", "probe", "--data", '{"n": 7}')
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["payload"] == {"n": 7} and got["function"] == "probe" and got["trigger"] == "direct"
    assert got["uuid"] == "2d8b5e3a-5f3b-4e3c-9c9a-7f4b0a6d8c03" and got["instance_id"]
    assert got["pid"] != os.getpid()
    assert "probe ran" in r.stderr, r.stderr
    # What it logs at INFO and prints to stdout is shown too (on stderr: stdout holds the result alone).
    assert "probe info line" in r.stderr and "probe printed line" in r.stderr, r.stderr

    started = time.monotonic()
    r = run_cli(root, "invoke", "sleepy")
    assert r.returncode == 1 and "Timeout" in r.stderr, (r.stdout, r.stderr)
    assert time.monotonic() - started < 15, "the 1 s time limit did not cut the 20 s handler off"

    r = run_cli(root, "invoke", "broken", "--data", '"x"')
    assert r.returncode == 1 and "FunctionError" in r.stderr and "ValueError: bad input: 'x'" in r.stderr
    assert r.stdout == ""


def test_a_local_invoke_imports_what_a_revision_would_carry(tmp_path: Path) -> None:
    """1. `add` imports `helpers`, a module beside the manifest (no revision carries it: only the handler's
    top-level package). 2. `faas invoke add`, then `faas validate`. 3. `helpers` moved into the package.
    Result: 2 fails both ways, naming the missing module (the test run used to import it from the project
    and succeed, while deploy refused it); after 3 the invoke prints the helper's value."""
    manifest = """
functions:
  - name: add
    uuid: 3d8b5e3a-5f3b-4e3c-9c9a-7f4b0a6d8c09
    handler: functions.add:handle
"""
    add = "import helpers\n\nasync def handle(payload, ctx):\n    return helpers.V\n"
    root = write_project(tmp_path, manifest, {"add": add})
    (root / "helpers.py").write_text("V = 'helped'\n")
    r = run_cli(root, "invoke", "add")
    assert r.returncode == 1 and "No module named 'helpers'" in r.stderr, (r.stdout, r.stderr)
    r = run_cli(root, "validate")
    assert r.returncode == 1 and "No module named 'helpers'" in r.stderr, (r.stdout, r.stderr)
    (root / "helpers.py").rename(root / "functions" / "helpers.py")
    (root / "functions" / "add.py").write_text(add.replace("import helpers", "from functions import helpers"))
    r = run_cli(root, "invoke", "add")
    assert r.returncode == 0 and json.loads(r.stdout) == "helped", (r.stdout, r.stderr)


def test_invoke_url_against_a_real_node(project: Path, nodes: Callable[..., Node]) -> None:
    """1. A real node (`faas run --no-kafka`, FAAS_API_KEYS=k1,k2). 2. `faas invoke alpha --url` with the same
    keys; with `--api-key k2`; with a wrong key; for beta's uuid (a draft).
    Result: alpha's result is printed (exit 0) with either key; a wrong key exits 1 `Unauthorized: ...`; the
    draft exits 1 `NotFound: ...` (a node serves only productive functions), each as a local call prints a
    failure, not the node's JSON body."""
    keys = {"FAAS_API_KEYS": "k1,k2"}
    n = nodes(project, None, kafka=False, env=keys).wait_ready()
    r = run_cli(project, "invoke", "alpha", "--url", n.url, "--data", "[1]", env=keys)
    assert r.returncode == 0 and r.stdout == "[1]\n", r.stderr
    r = run_cli(project, "invoke", "alpha", "--url", n.url, "--api-key", "k2", "--data", '{"b": 2, "c": "é"}')
    assert r.returncode == 0 and r.stdout == '{"b":2,"c":"é"}\n', r.stderr  # compact, as a local run prints
    local = run_cli(project, "invoke", "alpha", "--data", '{"b": 2, "c": "é"}')
    assert local.returncode == 0 and local.stdout == r.stdout, (local.stdout, local.stderr)
    r = run_cli(project, "invoke", "alpha", "--url", n.url, "--api-key", "wrong")
    assert r.returncode == 1 and r.stderr.startswith("Unauthorized: "), r.stderr  # `Type: message`, as local
    r = run_cli(project, "invoke", "1c7a4d2f-4e2a-4d2b-8b8f-6e3a9f5c7b02", "--url", n.url, env=keys)
    assert r.returncode == 1 and r.stderr.startswith("NotFound: "), r.stderr
    # By name from a folder with no manifest: the node names what it serves.
    elsewhere = project.parent / "no-project"
    elsewhere.mkdir(exist_ok=True)
    r = run_cli(elsewhere, "invoke", "alpha", "--url", n.url, "--data", "[3]", env=keys)
    assert r.returncode == 0 and r.stdout == "[3]\n", r.stderr
    r = run_cli(elsewhere, "invoke", "beta", "--url", n.url, env=keys)
    assert r.returncode == 1 and r.stderr == f"no productive function named 'beta' on {n.url}\n", r.stderr


def test_emit_against_a_real_node(project: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]) -> None:
    """1. A real node on the test broker; `alpha` listens to `ping`. 2. `faas emit ping --data JSON`.
    3. `faas emit nobody.listens`. 4. `faas emit ping --timeout 3` to a topic no node reads.
    5. `faas emit ping` with the broker named by `--bootstrap`, then by FAAS_EMBEDDED_BROKER_PORT alone.
    Result: 2 prints the combined reply (ok, alpha's result = the payload); 3 an ok reply with no results;
    4 exits 1 saying no reply came; 5 reaches the same node both ways."""
    n = nodes(project, broker.bootstrap).wait_ready()
    env = {
        "FAAS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "FAAS_EVENTS_TOPIC": n.events,
        "FAAS_REPLIES_TOPIC": n.replies,
    }
    r = run_cli(project, "emit", "ping", "--data", '{"x": 1}', env=env)
    assert r.returncode == 0, r.stderr
    reply = json.loads(r.stdout)
    assert reply["ok"] is True and reply["event"] == "ping", reply
    assert [(x["function"], x["result"]) for x in reply["results"]] == [("alpha", {"x": 1})]
    r = run_cli(project, "emit", "nobody.listens", env=env)
    assert r.returncode == 0 and json.loads(r.stdout)["results"] == [], r.stderr
    r = run_cli(project, "emit", "ping", "--timeout", "3", env={**env, "FAAS_EVENTS_TOPIC": f"{n.events}.x"})
    assert r.returncode == 1 and "no reply" in r.stderr, r.stderr
    topics = {
        "FAAS_KAFKA_BOOTSTRAP_SERVERS": "",
        "FAAS_EVENTS_TOPIC": n.events,
        "FAAS_REPLIES_TOPIC": n.replies,
    }
    r = run_cli(project, "emit", "ping", "--bootstrap", broker.bootstrap, "--data", "2", env=topics)
    assert r.returncode == 0 and json.loads(r.stdout)["results"][0]["result"] == 2, r.stderr
    port = {**topics, "FAAS_EMBEDDED_BROKER_PORT": str(broker.port)}
    r = run_cli(project, "emit", "ping", "--data", "3", env=port)
    assert r.returncode == 0 and json.loads(r.stdout)["results"][0]["result"] == 3, r.stderr


class _Handler(BaseHTTPRequestHandler):
    seen: list[tuple[str, str | None, bytes]] = []

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Authorization"), b""))
        listing = {"functions": [{"name": "alpha", "uuid": ALPHA.upper(), "state": "productive"}]}
        data = json.dumps(listing).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append((self.path, self.headers.get("Authorization"), body))
        status, reply = (
            (200, {"result": {"ok": 1}})
            if "0b6f" in self.path.lower()
            else (404, {"error": {"type": "NotFound"}})
        )
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_node() -> Iterator[str]:
    _Handler.seen.clear()
    with http_server(_Handler) as port:
        yield f"http://127.0.0.1:{port}"


def test_invoke_over_http(project: Path, http_node: str) -> None:
    """1. `faas invoke alpha --url URL` with FAAS_API_KEYS set. 2. The same for beta's uuid (answers 404).
    Result: the node's `GET /functions` resolves the name to alpha's uuid (in the node's spelling), the
    first key is the bearer of both calls, the result is printed; the 404 body goes to stderr with exit 1.
    """
    env = {"FAAS_MANIFEST": str(project / "functions.yaml"), "FAAS_API_KEYS": "k1,k2"}
    r = CliRunner().invoke(main, ["invoke", "alpha", "--url", http_node, "--data", "[1]"], env=env)
    assert r.exit_code == 0 and r.output == '{"ok":1}\n', r.output
    r = CliRunner().invoke(
        main, ["invoke", "1c7a4d2f-4e2a-4d2b-8b8f-6e3a9f5c7b02", "--url", http_node], env=env
    )
    assert r.exit_code == 1 and "NotFound" in r.output
    assert _Handler.seen == [
        ("/functions", "Bearer k1", b""),
        (f"/functions/{ALPHA.upper()}/invoke", "Bearer k1", b"[1]"),
        ("/functions/1c7a4d2f-4e2a-4d2b-8b8f-6e3a9f5c7b02/invoke", "Bearer k1", b"null"),
    ]


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, Any, float]]:
    """Replace framework.kafka.client with an EventClient that answers by event type."""
    calls: list[tuple[str, str, Any, float]] = []

    class EventClient:
        def __init__(self, bootstrap: str, settings: Any, source: str = "faas-client") -> None:
            self.bootstrap = bootstrap

        async def emit(
            self, type_: str, payload: Any, timeout: float, key: bytes | None = None, id: str | None = None
        ) -> dict[str, Any]:
            calls.append((self.bootstrap, type_, payload, timeout))
            if type_ == "silent":  # no reply: the client's limit runs out
                await asyncio.sleep(timeout)
                raise TimeoutError
            if type_ == "cut":  # a TimeoutError before the limit (a Ctrl-C while the client starts)
                raise TimeoutError
            return {"id": "e1", "event": type_, "ok": type_ != "bad", "results": [], "error": None}

    monkeypatch.setitem(sys.modules, "framework.kafka.client", types.SimpleNamespace(EventClient=EventClient))
    return calls


def test_emit_prints_the_reply(
    project: Path,
    fake_client: list[tuple[str, str, Any, float]],
    monkeypatch: pytest.MonkeyPatch,
    broker: EmbeddedBroker,
) -> None:
    """`faas emit` hands the client the broker: the embedded broker's port (it answers as Kafka), else
    FAAS_KAFKA_BOOTSTRAP_SERVERS, else `--bootstrap`; the client here is a fake."""
    monkeypatch.delenv("FAAS_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    env = {"FAAS_EMBEDDED_BROKER_PORT": str(broker.port)}
    r = CliRunner().invoke(main, ["emit", "ping", "--data", '{"x": 1}', "--timeout", "3"], env=env)
    assert r.exit_code == 0 and json.loads(r.output)["ok"] is True, r.output
    r = CliRunner().invoke(main, ["emit", "bad"], env={"FAAS_KAFKA_BOOTSTRAP_SERVERS": "k:1"})
    assert r.exit_code == 1 and json.loads(r.output)["ok"] is False
    r = CliRunner().invoke(main, ["emit", "silent", "--bootstrap", "b:2", "--timeout", "0.2"])
    assert r.exit_code == 1 and "no reply to the 'silent' event within 0.2 s" in r.output, r.output
    r = CliRunner().invoke(main, ["emit", "cut", "--bootstrap", "b:2"])
    assert r.exit_code == 1 and "gave up on the 'cut' event after 0.0 s" in r.output, r.output
    assert fake_client == [
        (broker.bootstrap, "ping", {"x": 1}, 3.0),
        ("k:1", "bad", None, 30.0),
        ("b:2", "silent", None, 0.2),
        ("b:2", "cut", None, 30.0),
    ]


def test_run_calls_serve_and_exits_with_its_code(monkeypatch: pytest.MonkeyPatch, project: Path) -> None:
    calls: list[tuple[Path, bool]] = []

    def serve(settings: Any, kafka: bool = True, unknown: Sequence[str] = ()) -> int:
        calls.append((settings.manifest, kafka))
        return 3

    monkeypatch.setitem(sys.modules, "framework.node", types.SimpleNamespace(serve=serve))
    assert faas(project, "run", "--no-kafka").exit_code == 3
    r = CliRunner().invoke(main, ["run"], env={"FAAS_MANIFEST": "x.yaml", "FAAS_RUN_NO_KAFKA": "1"})
    assert r.exit_code == 3
    assert calls == [(project / "functions.yaml", False), (Path("x.yaml"), False)]


def test_option_twins_are_read_from_dotenv_below_the_environment(
    monkeypatch: pytest.MonkeyPatch, project: Path
) -> None:
    """1. A `.env` in the working directory sets `faas_run_no_kafka=1` (click's twin of `run --no-kafka`,
    no setting of its own; in lower case, as the settings accept it); `faas run`. 2. The environment sets
    the twin empty. Result: 1 serves without Kafka; 2 with Kafka (a variable set in the environment, even
    empty, decides alone, as it does for a setting)."""
    calls: list[bool] = []

    def serve(settings: Any, kafka: bool = True, unknown: Sequence[str] = ()) -> int:
        calls.append(kafka)
        return 0

    monkeypatch.setitem(sys.modules, "framework.node", types.SimpleNamespace(serve=serve))
    monkeypatch.chdir(project)
    monkeypatch.delenv("FAAS_RUN_NO_KAFKA", raising=False)
    (project / ".env").write_text("# local\nfaas_run_no_kafka=1\nOTHER=x\n")
    assert CliRunner().invoke(main, ["run"]).exit_code == 0
    assert CliRunner().invoke(main, ["run"], env={"FAAS_RUN_NO_KAFKA": ""}).exit_code == 0
    assert calls == [False, True]


def test_a_twin_from_dotenv_is_read_as_the_variable_would_be(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """1. A command with a repeatable option, a flag and a secret-looking option, their twins in `.env`
    only. 2. The same with the repeatable option's twin in the environment, and with it on the command
    line. 3. `--help`. Result: 1 splits the repeatable one on spaces and parses the flag, as click does
    for a variable; 2 takes the environment's, then the command line's; 3 names the twins and shows no
    value from `.env`."""
    seen: list[tuple[tuple[str, ...], bool, str | None]] = []

    @click.group(context_settings={"auto_envvar_prefix": "FAAS", "show_default": True})
    def group() -> None:
        pass

    @group.command()
    @option("--id", "ids", multiple=True, show_envvar=True)
    @option("--dry-run", is_flag=True, show_envvar=True)
    @option("--api-key", show_envvar=True)
    def verb(ids: tuple[str, ...], dry_run: bool, api_key: str | None) -> None:
        seen.append((ids, dry_run, api_key))

    monkeypatch.chdir(tmp_path)
    for name in ("FAAS_VERB_IDS", "FAAS_VERB_DRY_RUN", "FAAS_VERB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".env").write_text("FAAS_VERB_IDS=a b\nFAAS_VERB_DRY_RUN=false\nFAAS_VERB_API_KEY=sekrit\n")
    assert CliRunner().invoke(group, ["verb"]).exit_code == 0
    assert CliRunner().invoke(group, ["verb"], env={"FAAS_VERB_IDS": "c"}).exit_code == 0
    assert CliRunner().invoke(group, ["verb", "--id", "d"], env={"FAAS_VERB_IDS": "c"}).exit_code == 0
    assert seen == [(("a", "b"), False, "sekrit"), (("c",), False, "sekrit"), (("d",), False, "sekrit")]
    shown = CliRunner().invoke(group, ["verb", "--help"]).output
    assert "FAAS_VERB_API_KEY" in shown and "sekrit" not in shown and "a b" not in shown, shown


def test_every_option_of_the_command_reads_dotenv() -> None:
    """Every option of every verb is a `TwinOption` (made with `common.option`), so no twin ignores
    `.env`, and `--help` names each one's twin."""
    plain = [
        f"{verb} {param.name}"
        for verb, command in main.commands.items()
        for param in command.params
        if isinstance(param, click.Option) and not isinstance(param, TwinOption) and param.name != "help"
    ]
    assert plain == []
    assert all(isinstance(p, TwinOption) for p in main.params if p.name not in ("help", "version"))
    hidden = [
        f"{verb} {param.name}"
        for verb, command in main.commands.items()
        for param in command.params
        if isinstance(param, TwinOption) and not param.show_envvar
    ]
    assert hidden == [], "every option's --help names its environment twin"


def test_a_dotenv_that_is_not_text_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """1. A `.env` of binary garbage in the working directory; `faas ls`. Result: exit 2 (a usage error)
    with one line naming the file and what is wrong with it, no traceback."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_bytes(b"\xff\xfe FAAS_HTTP_PORT=1\n")
    r = CliRunner().invoke(main, ["ls"])
    assert r.exit_code == 2, r.output
    assert f"cannot read {tmp_path / '.env'}: 'utf-8' codec can't decode byte 0xff" in r.output, r.output
    assert "Traceback" not in r.output


def test_a_twin_in_dotenv_reaches_a_real_faas_process(project: Path) -> None:
    """1. A `.env` beside the manifest sets `FAAS_LS_AS_JSON=1` (click's twin of `faas ls --json`, named
    after its parameter `as_json`); the working directory is the project; `faas ls` in a process of its
    own. 2. The environment sets the twin empty.
    Result: 1 prints the JSON listing; 2 the table (the environment, even empty, wins)."""
    (project / ".env").write_text("FAAS_LS_AS_JSON=1\n")
    env = {"FAAS_KAFKA_BOOTSTRAP_SERVERS": "", "FAAS_EMBEDDED_BROKER_PORT": str(free_port())}
    r = run_cli(project, "ls", env=env)
    assert r.returncode == 0 and "functions" in json.loads(r.stdout), r.stdout + r.stderr
    r = run_cli(project, "ls", env={**env, "FAAS_LS_AS_JSON": ""})
    assert r.returncode == 0 and r.stdout.startswith("NAME"), r.stdout + r.stderr


# ---- broken input the CLI must name in one line (no traceback) ----


class _Broken(BaseHTTPRequestHandler):
    """Answers by path: `/cut/...` closes the connection without a word, `/page/...` answers 200 with an HTML
    page (a proxy's login page, say), `/short/...` promises more body than it sends."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if self.path.startswith("/cut/"):
            self.close_connection = True
            self.connection.shutdown(2)
            return
        body = b"<html>sign in</html>"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body) + (100 if self.path.startswith("/short/") else 0)))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize(
    ("prefix", "words"),
    [("cut", "broke off its answer: RemoteDisconnected"), ("short", "broke off its answer: IncompleteRead"),
     ("page", "answered 200 with something that is not JSON: is it a faas node?")],
)  # fmt: skip
def test_invoke_url_against_a_server_that_breaks_off_or_is_no_node(
    project: Path, prefix: str, words: str
) -> None:
    """`faas invoke UUID --url` against a server that closes the connection mid-call (a node SIGKILLed), cuts
    its body short, or answers 200 with HTML. Result: exit 1 and one line saying which (it was a traceback
    from http.client or json)."""
    with http_server(_Broken) as port:
        r = faas(project, "invoke", ALPHA, "--url", f"http://127.0.0.1:{port}/{prefix}")
    assert r.exit_code == 1 and words in r.output, r.output
    assert "Traceback" not in r.output


def test_credentials_in_the_url_are_refused_without_echoing_them(project: Path) -> None:
    r = faas(project, "invoke", ALPHA, "--url", "http://user:s3cret@127.0.0.1:9/")
    assert r.exit_code == 2 and "credentials in the URL are not used" in r.output, r.output
    assert "s3cret" not in r.output
    # The option it names is the one that exists.
    named = r.output.rsplit("with ", 1)[1].split()[0]
    assert named == "--api-key", r.output
    assert (
        "no such option"
        not in faas(project, "invoke", ALPHA, named, "k", "--url", "http://127.0.0.1:9/").output.lower()
    )


def test_data_from_a_closed_standard_input_is_a_usage_error(project: Path) -> None:
    """`--data @-` with standard input closed (as under some service managers). Result: exit 2 naming it,
    not an AttributeError traceback."""
    r = subprocess.run(
        [sys.executable, "-m", "framework", "invoke", "beta", "--data", "@-"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.close(0),  # a child with no descriptor 0
    )
    assert r.returncode == 2 and "@-: there is no standard input (it is closed)" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_new_where_functions_is_a_file_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "functions.yaml").write_text("functions: []\n")
    (tmp_path / "functions").write_text("not a folder")
    r = faas(tmp_path, "new", "a")
    assert r.exit_code == 1 and "functions is not a folder" in r.output, r.output
    assert "Traceback" not in r.output and "name: a" not in (tmp_path / "functions.yaml").read_text()


@pytest.mark.parametrize("line", ['FAAS_LOG_LEVEL="DEBUG', "just words"])
def test_a_dotenv_line_that_cannot_be_parsed_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, line: str
) -> None:
    """A `.env` line python-dotenv cannot parse (an unclosed quote; words without `=`) used to be skipped
    with a warning naming no file, its setting silently left at its default. Result: exit 2 naming the
    file and the line, not its text (it may hold a secret)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text(f"FAAS_HTTP_PORT=8081\n{line}\n")
    r = CliRunner().invoke(main, ["ls"])
    assert r.exit_code == 2 and f"{tmp_path / '.env'}:2: not a NAME=value line" in r.output, r.output
    assert line not in r.output


def test_ls_shows_control_characters_escaped(tmp_path: Path) -> None:
    """An event type holding ESC, BEL and a carriage return (the manifest takes any text). Result: `faas
    ls` prints them escaped, never raw (they would drive the reader's terminal)."""
    manifest = MANIFEST.replace("events: [ping]", 'events: ["x\\e[31mRED\\a", "y\\rz"]')
    root = write_project(tmp_path, manifest, MODULES)
    r = faas(root, "ls")
    assert r.exit_code == 0, r.output
    assert "x\\x1b[31mRED\\x07,y\\x0dz" in r.output, r.output
    assert not any(c in r.output for c in "\x1b\x07\r")


def test_ctrl_c_while_the_cli_loads_is_quiet(tmp_path: Path) -> None:
    """SIGINT at several moments of `faas ls` starting (before, during and after the CLI's imports).
    Result: never a traceback (one ran through the imports), whichever moment it lands in."""
    for delay in (0.1, 0.2, 0.3, 0.4):
        p = subprocess.Popen(
            [str(Path(sys.executable).parent / "faas"), "ls"],
            cwd=tmp_path,
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        time.sleep(delay)  # the moment to interrupt at, not a wait for something to happen
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=30)
        assert b"Traceback" not in err, (delay, err.decode(errors="replace"))


def test_an_output_that_cannot_be_written_is_one_line(project: Path) -> None:
    """1. `faas ls` with its standard output on /dev/full (a full disk). 2. `faas ls --json` with its
    standard output closed. Result: 1. exit 1 and one line naming the error, no traceback; 2. exit 2
    saying so (click dropped every line it printed, and the command exited 0: an emitted event's reply
    lost without a word)."""

    def faas_ls(out: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["sh", "-c", f'exec "{sys.executable}" -m framework ls {out}'],
            cwd=project,
            env={**os.environ, "FAAS_MANIFEST": str(project / "functions.yaml")},
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )

    r = faas_ls("> /dev/full")
    assert r.returncode == 1, r.stderr
    assert r.stderr == "faas: cannot write its output: No space left on device\n"
    closed = faas_ls("--json >&-")
    assert closed.returncode == 2, closed.stderr
    assert closed.stderr == "faas: standard output is closed: redirect it to a file, or to /dev/null\n"


def test_a_node_runs_with_its_standard_output_closed(project: Path) -> None:
    """1. `faas run --no-kafka` with standard output closed (a node logs to stderr and prints no result).
    Result: it serves (`/readyz` 200), as it did before a closed output became a usage error of the
    commands that print one."""
    port = free_port()
    env = {**os.environ, "FAAS_MANIFEST": str(project / "functions.yaml"), "FAAS_WATCH": "false"}
    node = subprocess.Popen(
        ["sh", "-c", f'exec "{sys.executable}" -m framework run --no-kafka --port {port} >&-'],
        cwd=project,
        env=env,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for(lambda: _ready(port), 45, message="the node ready")
    finally:
        os.killpg(node.pid, signal.SIGTERM)
        node.wait(30)


def _ready(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
