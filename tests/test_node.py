"""`faas run` as a whole (DESIGN.md sections 3, 6 and 8): hot reload, rejected edits, SIGTERM and SIGINT
drain, --no-kafka, the embedded broker, what a handler sees and logs."""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from framework.kafka.embedded import EmbeddedBroker, free_port, port_open
from tests.support import Node, ce_headers, consume, new_id, produce, run_cli, wait_for, write_project

ECHO = "cccccccc-0000-4000-8000-000000000001"
DRAFT = "cccccccc-0000-4000-8000-000000000002"
HOLD = "cccccccc-0000-4000-8000-000000000003"
PROBE = "cccccccc-0000-4000-8000-000000000004"
SPAWN = "cccccccc-0000-4000-8000-000000000005"

MANIFEST = f"""
# the node's functions
functions:
  - name: echo
    uuid: {ECHO}
    handler: functions.h:echo
    state: productive
    events: [node.ping]
  - name: drafty          # deployed by the test
    uuid: {DRAFT}
    handler: functions.h:echo
  - name: hold
    uuid: {HOLD}
    handler: functions.h:hold
    state: productive
  - name: spawn
    uuid: {SPAWN}
    handler: functions.h:spawn
    state: productive
  - name: probe
    uuid: {PROBE}
    handler: functions.h:probe
    state: productive
    timeout: 7
"""
HANDLERS = """
import asyncio, os, sys, time

async def echo(payload, ctx):
    return {"echo": payload, "fn": ctx.function}

async def hold(payload, ctx):
    payload = payload or {}
    await asyncio.sleep(payload.get("sleep", 0))
    if "until" in payload:  # a file the test creates when the holding should end
        while not os.path.exists(payload["until"]):
            await asyncio.sleep(0.02)
    return "held"

def spawn(payload, ctx):
    import subprocess
    return subprocess.Popen(["sleep", "300"]).pid

async def probe(payload, ctx):
    print("to stderr:", payload, file=sys.stderr, flush=True)
    return {"uuid": ctx.uuid, "deadline": ctx.deadline, "now": time.time(), "remaining": ctx.remaining(),
            "invocation_id": ctx.invocation_id, "instance_id": ctx.instance_id}
"""
LOCATED = re.compile(r"functions\.yaml:\d+:\d+")
"""A manifest error names its place: `functions.yaml:LINE:COL: message`."""

Nodes = Callable[..., Node]


def invoke(node: Node, uuid: str, payload: Any = None, timeout: float = 30) -> httpx.Response:
    return httpx.post(f"{node.url}/functions/{uuid}/invoke", json=payload, timeout=timeout)


def status(node: Node, uuid: str) -> int:
    return invoke(node, uuid, {}).status_code


def inflight(node: Node, function: str) -> float:
    for family in text_string_to_metric_families(httpx.get(f"{node.url}/metrics").text):
        for s in family.samples:
            if s.name == "faas_inflight_requests" and s.labels.get("function") == function:
                return float(s.value)
    return 0.0


def start(nodes: Nodes, tmp_path: Path, bootstrap: str | None = None, **kw: Any) -> Node:
    root = write_project(tmp_path, MANIFEST, {"h": HANDLERS})
    return nodes(root, bootstrap, kafka=bootstrap is not None, **kw).wait_ready()


def readyz(node: Node) -> httpx.Response:
    r = httpx.get(f"{node.url}/readyz", timeout=5)
    assert r.status_code == 200, r.text  # a rejected edit never makes the node unready
    return r


def test_deploy_is_invocable_within_2s(tmp_path: Path, nodes: Nodes) -> None:
    n = start(nodes, tmp_path)
    manifest = n.root / "functions.yaml"
    assert status(n, DRAFT) == 404

    deploy = run_cli(n.root, "deploy", "drafty")
    assert deploy.returncode == 0, deploy.stderr
    deadline = manifest.stat().st_mtime + 2  # measured from the edit deploy made
    wait_for(
        lambda: status(n, DRAFT) == 200,
        timeout=max(0.0, deadline - time.time()),
        message="drafty invocable within 2 s of the deploy",
    )
    assert invoke(n, DRAFT, 7).json()["result"] == {"echo": 7, "fn": "drafty"}
    assert httpx.get(f"{n.url}/functions/{DRAFT}").status_code == 200
    assert "# the node's functions" in manifest.read_text()  # deploy kept the comments

    assert run_cli(n.root, "undeploy", "drafty").returncode == 0
    deadline = manifest.stat().st_mtime + 2
    wait_for(
        lambda: status(n, DRAFT) == 404,
        timeout=max(0.0, deadline - time.time()),
        message="drafty gone within 2 s of the undeploy",
    )
    assert n.proc.poll() is None


def test_bad_yaml_keeps_serving(tmp_path: Path, nodes: Nodes) -> None:
    n = start(nodes, tmp_path)
    manifest = n.root / "functions.yaml"
    good = manifest.read_text()
    manifest.write_text(good.replace("state: productive\n", "state: productive\n  - name: [unclosed\n", 1))

    errors = wait_for(lambda: readyz(n).json()["manifest_errors"], timeout=5, message="the edit rejected")
    assert any(LOCATED.search(e) and "YAML syntax error" in e for e in errors), errors
    assert status(n, ECHO) == 200 and status(n, DRAFT) == 404  # the last good manifest serves
    assert "manifest edit rejected" in n.tail(200)

    manifest.write_text(good.replace(f"uuid: {DRAFT}\n", f"uuid: {DRAFT}\n    state: productive\n"))
    wait_for(lambda: status(n, DRAFT) == 200, timeout=5, message="a valid edit applied")
    assert readyz(n).json()["manifest_errors"] == []


def test_broken_handler_keeps_serving(tmp_path: Path, nodes: Nodes) -> None:
    """1. A `hold` request (12 s) is in flight. 2. Its module is edited so that it no longer imports.
    Result: the edit is rejected (a located error in `/readyz`) while the request is still in flight (the
    in-flight gauge says so after the rejection); that request then answers 200; `echo` keeps serving;
    3. The module is edited to hang at import: `/readyz` says which handler the check is importing.
    4. A fixed module: the hanging check is given up for it, it gives fresh instances and clears the error
    and the check line."""
    n = start(nodes, tmp_path)
    module = n.root / "functions" / "h.py"
    assert status(n, ECHO) == 200
    in_flight: list[httpx.Response] = []
    holder = threading.Thread(target=lambda: in_flight.append(invoke(n, HOLD, {"sleep": 12})))
    holder.start()
    wait_for(lambda: inflight(n, "hold") >= 1, timeout=10, message="the hold request in flight")

    module.write_text("import not_a_module_anywhere_xyz\n" + module.read_text())
    errors = wait_for(lambda: readyz(n).json()["manifest_errors"], timeout=10, message="the edit rejected")
    assert any(LOCATED.search(e) and "not_a_module_anywhere_xyz" in e for e in errors), errors
    assert inflight(n, "hold") >= 1 and not in_flight, "the request was no longer in flight at the rejection"
    holder.join(30)
    assert in_flight and in_flight[0].status_code == 200  # nothing in flight failed because of it
    assert in_flight[0].json()["result"] == "held"
    assert status(n, ECHO) == 200

    module.write_text("import time\ntime.sleep(3600)\n" + HANDLERS)
    check = wait_for(
        lambda: "importing handler 'functions.h:" in (readyz(n).json()["manifest_check"] or ""),
        timeout=10,
        message="the hanging check shown in /readyz",
    )
    assert check and status(n, ECHO) == 200  # the last good manifest serves meanwhile

    module.write_text(HANDLERS.replace('"fn": ctx.function', '"fn": ctx.function, "v": 2'))
    wait_for(
        lambda: invoke(n, ECHO, {}).json()["result"].get("v") == 2,
        timeout=10,  # not the 30 s the hanging import would hold the check for
        message="fresh instances with the fixed module",
    )
    assert readyz(n).json()["manifest_errors"] == []
    wait_for(lambda: readyz(n).json()["manifest_check"] is None, timeout=5, message="no check running")


@pytest.mark.parametrize(
    ("sig", "group"),
    [(signal.SIGTERM, False), (signal.SIGINT, False), (signal.SIGTERM, True), (signal.SIGINT, True)],
    ids=["SIGTERM", "SIGINT", "SIGTERM-to-the-group", "SIGINT-to-the-group"],
)
def test_signal_drains_in_flight_requests(
    tmp_path: Path, nodes: Nodes, broker: EmbeddedBroker, sig: signal.Signals, group: bool
) -> None:
    """1. 20 requests are in flight (the in-flight gauge says so), each held until a file exists.
    2. SIGTERM, or SIGINT, to the node or to its whole process group (what Ctrl-C, `kill -- -PGID` and
    systemd's default KillMode=control-group do); the node says it is draining. 3. The file is created.
    Result: none had answered before the file; all 20 answer 200; the node exits 0. (A group SIGTERM
    killed the instances at once: their 20 requests were answered 502 InstanceCrashed.)"""
    n = start(nodes, tmp_path, broker.bootstrap)
    assert status(n, HOLD) == 200  # warm
    release = tmp_path / "release"
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(invoke, n, HOLD, {"until": str(release)}, 60) for _ in range(20)]
        wait_for(lambda: inflight(n, "hold") >= 20, timeout=30, message="20 requests in flight")
        if group:  # the node runs in a session of its own: its process group's id is its pid
            os.killpg(n.proc.pid, sig)
        else:
            n.proc.send_signal(sig)
        wait_for(lambda: f"{sig.name} received: draining" in n.tail(200), timeout=10, message="draining")
        assert not any(f.done() for f in futures), "a held request answered before its release"
        release.touch()
        codes = [f.result().status_code for f in futures]
    assert codes == [200] * 20
    assert n.proc.wait(40) == 0, n.tail()
    assert f"{sig.name} received: draining" in n.tail(200)


SLOW_IMPORT = """
import os, time
open(os.environ["T_IMPORTING"], "w").close()
time.sleep(3)

async def handle(payload, ctx):
    return payload
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_starting_stops_the_node_with_exit_0(
    tmp_path: Path, nodes: Nodes, sig: signal.Signals
) -> None:
    """1. A node starts whose handler takes 3 s to import (checked before the node serves). 2. While that
    import runs, SIGINT (Ctrl-C) or SIGTERM. Result: the node stops, exit 0, saying the signal came while it
    started; no traceback and no "Aborted!" (SIGINT was a KeyboardInterrupt there: exit 1)."""
    manifest = f"""
functions:
  - name: slow
    uuid: {ECHO}
    handler: functions.slow:handle
    state: productive
"""
    root = write_project(tmp_path, manifest, {"slow": SLOW_IMPORT})
    importing = tmp_path / "importing"
    n = nodes(root, None, kafka=False, env={"T_IMPORTING": str(importing)})
    wait_for(importing.exists, 30, message="the handler's import under way")
    n.proc.send_signal(sig)
    assert n.proc.wait(30) == 0, n.tail()
    out = n.tail(200)
    assert f"{sig.name} received while starting: stopped" in out, out
    assert "Traceback" not in out and "Aborted" not in out, out


def test_a_killed_node_leaves_no_process_its_handlers_started(tmp_path: Path, nodes: Nodes) -> None:
    """1. A handler starts `sleep 300` and returns its pid (the child is in its instance's process group,
    which no death signal reaches). 2. The node alone is SIGKILLed, as the OOM killer would.
    Result: the sleep is gone within seconds with the template and the instance (it lived on, reparented)."""
    node = start(nodes, tmp_path)
    r = invoke(node, SPAWN)
    assert r.status_code == 200, r.text
    child = r.json()["result"]
    assert _running(child)
    os.kill(node.proc.pid, signal.SIGKILL)
    node.proc.wait(10)
    wait_for(lambda: not _running(child), 10, message="the handler's child gone")


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_no_kafka_ready_without_a_broker(tmp_path: Path, nodes: Nodes) -> None:
    embedded = free_port()
    n = start(
        nodes,
        tmp_path,
        env={
            "FAAS_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1",  # nothing listens there
            "FAAS_EMBEDDED_BROKER_PORT": str(embedded),
        },
    )
    body = readyz(n).json()
    assert body["ready"] is True and body["reasons"] == []
    assert status(n, ECHO) == 200
    assert not port_open("127.0.0.1", embedded)  # and no embedded broker was started either


def test_run_without_bootstrap_servers_starts_the_embedded_broker(tmp_path: Path, nodes: Nodes) -> None:
    """1. `faas run` with FAAS_KAFKA_BOOTSTRAP_SERVERS empty and FAAS_EMBEDDED_BROKER_PORT free.
    2. An event for `echo` is produced to that port. 3. SIGTERM.
    Result: the node becomes ready on a broker it started there, answers the event `ok`, and on exit the
    broker is gone with it."""
    port = free_port()
    root = write_project(tmp_path, MANIFEST, {"h": HANDLERS})
    n = nodes(root, None, env={"FAAS_KAFKA_BOOTSTRAP_SERVERS": "", "FAAS_EMBEDDED_BROKER_PORT": str(port)})
    n.wait_ready(timeout=60)
    assert port_open("127.0.0.1", port)
    assert f"embedded broker (Tansu, memory only) on 127.0.0.1:{port}" in n.tail(200)
    bootstrap = f"127.0.0.1:{port}"
    eid = new_id()
    produce(bootstrap, n.events, [(b"k", b'{"n": 1}', ce_headers("node.ping", eid))])
    replies = [r for r in consume(bootstrap, n.replies, 1, timeout=30, ids={eid}) if r["value"]["id"] == eid]
    assert replies, f"no reply on the embedded broker\n{n.tail()}"
    reply = replies[0]["value"]
    assert reply["ok"] is True and reply["results"][0]["result"] == {"echo": {"n": 1}, "fn": "echo"}, reply
    assert n.stop() == 0, n.tail()
    wait_for(lambda: not port_open("127.0.0.1", port), timeout=10, message="the embedded broker stopped")


def test_handler_stderr_reaches_the_node_log_tagged(tmp_path: Path, nodes: Nodes) -> None:
    """1. A direct invocation of `probe`, which prints a line to stderr.
    Result: the node's log (JSON lines) holds that line, tagged with the function, the invocation id the
    response gave and the instance id the handler saw."""
    n = start(nodes, tmp_path, env={"FAAS_LOG_FORMAT": "json"})
    marker = new_id()
    r = invoke(n, PROBE, marker)
    assert r.status_code == 200, r.text
    body = r.json()

    def line() -> dict[str, Any] | None:
        for raw in n.log.read_text(errors="replace").splitlines():
            if marker in raw and raw.startswith("{"):
                record: dict[str, Any] = orjson.loads(raw)
                return record
        return None

    record = wait_for(line, timeout=10, message="the stderr line in the node log")
    assert record["message"].strip() == f"to stderr: {marker}", record
    assert record["function"] == "probe"
    assert record["invocation_id"] == body["invocation_id"] == body["result"]["invocation_id"]
    assert record["instance_id"] == body["result"]["instance_id"]


def test_ctx_uuid_and_deadline(tmp_path: Path, nodes: Nodes) -> None:
    """1. A direct invocation of `probe` (timeout 7 s).
    Result: `ctx.uuid` is the function's uuid; `ctx.deadline` is epoch seconds 7 s after the instance got
    the request (so between the request's start and its end, plus 7 s); `ctx.remaining()` agrees."""
    n = start(nodes, tmp_path)
    before = time.time()
    r = invoke(n, PROBE, None)
    after = time.time()
    assert r.status_code == 200, r.text
    got = r.json()["result"]
    assert got["uuid"] == PROBE
    assert before + 7 <= got["deadline"] <= after + 7, (before, got, after)
    assert 6.0 < got["deadline"] - got["now"] <= 7.0, got
    assert 6.0 < got["remaining"] <= 7.0, got


def test_a_stop_step_that_hangs_is_left_behind_and_named(caplog: pytest.LogCaptureFixture) -> None:
    """1. A stop step that never finishes, bounded to 0.2 s. 2. A step that finishes in time.
    Result: the first returns after its bound with a warning naming it; the second says nothing."""
    import asyncio

    from framework.node import _bounded

    async def hangs() -> None:
        await asyncio.Event().wait()

    async def steps() -> float:
        started = time.monotonic()
        await _bounded("the stuck part", hangs(), 0.2)
        took = time.monotonic() - started
        await _bounded("the quick part", asyncio.sleep(0), 5)
        return took

    with caplog.at_level("WARNING", logger="faas"):
        took = asyncio.run(steps())
    assert 0.2 <= took < 2, took
    assert [r.getMessage() for r in caplog.records] == [
        "stopping the stuck part took over 0 s: going on without it"
    ]


def test_a_node_raises_its_open_files_limit(tmp_path: Path, nodes: Nodes) -> None:
    """A node started with a soft limit of 256 open descriptors (a hard one above). Result: its soft limit
    is the hard one (four descriptors per live instance would otherwise cap it near 60 instances)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.fail(f"this machine's hard limit ({hard}) leaves nothing to raise")  # never the case in CI
    root = write_project(tmp_path, MANIFEST, {"h": HANDLERS})
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))  # inherited by the node started next
    try:
        n = nodes(root, None, kafka=False)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    n.wait_ready()
    limits = Path(f"/proc/{n.proc.pid}/limits").read_text()
    [line] = [x for x in limits.splitlines() if x.startswith("Max open files")]
    want = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert line.split()[3] == want or (want == "unlimited" and int(line.split()[3]) >= 1 << 20), line
