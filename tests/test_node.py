"""`faas run` as a whole (DESIGN.md section 6): hot reload, rejected edits, SIGTERM drain, --no-kafka."""

from __future__ import annotations

import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from framework.kafka.embedded import EmbeddedBroker, free_port, port_open
from tests.support import Node, run_cli, wait_for, write_project

ECHO = "cccccccc-0000-4000-8000-000000000001"
DRAFT = "cccccccc-0000-4000-8000-000000000002"
HOLD = "cccccccc-0000-4000-8000-000000000003"

MANIFEST = f"""
# the node's functions
functions:
  - name: echo
    uuid: {ECHO}
    handler: functions.h:echo
    state: productive
  - name: drafty          # deployed by the test
    uuid: {DRAFT}
    handler: functions.h:echo
  - name: hold
    uuid: {HOLD}
    handler: functions.h:hold
    state: productive
"""
HANDLERS = """
import asyncio

async def echo(payload, ctx):
    return {"echo": payload, "fn": ctx.function}

async def hold(payload, ctx):
    await asyncio.sleep((payload or {}).get("sleep", 0))
    return "held"
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
    assert any(LOCATED.search(e) for e in errors), errors
    assert status(n, ECHO) == 200 and status(n, DRAFT) == 404  # the last good manifest serves
    assert "manifest edit rejected" in n.tail(200)

    manifest.write_text(good.replace(f"uuid: {DRAFT}\n", f"uuid: {DRAFT}\n    state: productive\n"))
    wait_for(lambda: status(n, DRAFT) == 200, timeout=5, message="a valid edit applied")
    assert readyz(n).json()["manifest_errors"] == []


def test_broken_handler_keeps_serving(tmp_path: Path, nodes: Nodes) -> None:
    """1. A `hold` request (12 s) is in flight. 2. Its module is edited so that it no longer imports.
    Result: the edit is rejected (a located error in `/readyz`) while the request is still in flight (the
    in-flight gauge says so after the rejection); that request then answers 200; `echo` keeps serving;
    3. a fixed module gives fresh instances and clears the error."""
    n = start(nodes, tmp_path)
    module = n.root / "functions" / "h.py"
    assert status(n, ECHO) == 200
    in_flight: list[httpx.Response] = []
    holder = threading.Thread(target=lambda: in_flight.append(invoke(n, HOLD, {"sleep": 12})))
    holder.start()
    wait_for(lambda: inflight(n, "hold") >= 1, timeout=10, message="the hold request in flight")

    module.write_text("import not_a_module_anywhere_xyz\n" + module.read_text())
    errors = wait_for(lambda: readyz(n).json()["manifest_errors"], timeout=10, message="the edit rejected")
    assert any(LOCATED.search(e) for e in errors), errors
    assert inflight(n, "hold") >= 1 and not in_flight, "the request was no longer in flight at the rejection"
    holder.join(30)
    assert in_flight and in_flight[0].status_code == 200  # nothing in flight failed because of it
    assert in_flight[0].json()["result"] == "held"
    assert status(n, ECHO) == 200

    module.write_text(HANDLERS.replace('"fn": ctx.function', '"fn": ctx.function, "v": 2'))
    wait_for(
        lambda: invoke(n, ECHO, {}).json()["result"].get("v") == 2,
        timeout=5,
        message="fresh instances with the fixed module",
    )
    assert readyz(n).json()["manifest_errors"] == []


def test_sigterm_drains_in_flight_requests(tmp_path: Path, nodes: Nodes, broker: EmbeddedBroker) -> None:
    n = start(nodes, tmp_path, broker.bootstrap)
    assert status(n, HOLD) == 200  # warm
    with ThreadPoolExecutor(20) as pool:
        futures = [pool.submit(invoke, n, HOLD, {"sleep": 4}) for _ in range(20)]
        wait_for(lambda: inflight(n, "hold") >= 20, timeout=3.5, message="20 requests in flight")
        n.proc.send_signal(signal.SIGTERM)
        codes = [f.result().status_code for f in futures]
    assert codes == [200] * 20
    assert n.proc.wait(30) == 0, n.tail()


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
