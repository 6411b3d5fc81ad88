"""`faas run` and the embedded broker's port (framework/cli/serve.py, framework/node.py; DESIGN.md 6, 8)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import httpx
import pytest

from framework.kafka.embedded import EmbeddedBroker, free_port, port_open
from tests.support import Node, http_server, new_id, run_cli, silent_listener, write_project

pytestmark = pytest.mark.timeout(300)  # a CLI process on a shared, slow machine

MODULE = "async def handle(payload, ctx):\n    return payload\n"


def manifest() -> str:
    return f"""
functions:
  - name: alpha
    uuid: {new_id()}
    handler: functions.m:handle
    state: productive
"""


@pytest.mark.parametrize("listener", [http_server, silent_listener], ids=["http", "tcp"])
def test_run_refuses_a_port_held_by_something_that_is_not_kafka(
    tmp_path: Path, listener: Callable[[], AbstractContextManager[int]]
) -> None:
    """1. A real HTTP server, or a TCP listener that never answers, holds FAAS_EMBEDDED_BROKER_PORT.
    2. `faas run` with no FAAS_KAFKA_BOOTSTRAP_SERVERS. Result: exit 1 (as for the other setting errors)
    within 60 s, with one error that names the port, says it is not a Kafka broker and what to do (free
    the port or set FAAS_KAFKA_BOOTSTRAP_SERVERS), and no traceback; the HTTP server is left serving."""
    root = write_project(tmp_path, manifest(), {"m": MODULE})
    with listener() as port:
        env = {
            "FAAS_KAFKA_BOOTSTRAP_SERVERS": "",
            "FAAS_EMBEDDED_BROKER_PORT": str(port),
            "FAAS_HTTP_PORT": str(free_port()),
            "FAAS_LOG_FORMAT": "text",
        }
        started = time.monotonic()
        r = run_cli(root, "run", env=env, timeout=120)
        took = time.monotonic() - started
        print(f"\nfaas run with port {port} taken, after {took:.1f} s:\n{r.stderr}")
        assert r.returncode == 1, r.stdout + r.stderr
        assert took < 60
        errors = [line for line in r.stderr.splitlines() if "not a Kafka broker" in line]
        assert len(errors) == 1, r.stderr
        assert f"port {port} " in errors[0] and "FAAS_KAFKA_BOOTSTRAP_SERVERS" in errors[0], errors
        assert "free the port" in errors[0], errors
        assert "Traceback" not in r.stderr, r.stderr
        if listener is http_server:
            assert httpx.get(f"http://127.0.0.1:{port}/", timeout=5).text == "not kafka\n"


def test_run_uses_a_kafka_broker_already_on_the_port(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. The test broker (Tansu) listens on FAAS_EMBEDDED_BROKER_PORT. 2. `faas run` with no
    FAAS_KAFKA_BOOTSTRAP_SERVERS. Result: the node starts no broker of its own, says it uses the one
    there (and that it shares it with whatever else uses it, naming the setting for one of its own), and
    turns ready on it."""
    root = write_project(tmp_path, manifest(), {"m": MODULE})
    env = {"FAAS_KAFKA_BOOTSTRAP_SERVERS": "", "FAAS_EMBEDDED_BROKER_PORT": str(broker.port)}
    n = nodes(root, None, env=env).wait_ready(timeout=90)
    tail = n.tail(200)
    assert f"port {broker.port} is taken: using the Kafka broker already listening there" in tail, tail
    assert "each serves the other's functions" in tail and "set FAAS_EMBEDDED_BROKER_PORT" in tail, tail
    assert "embedded broker (Tansu" not in tail, tail
    assert n.stop() == 0, n.tail()


def test_run_exits_1_when_its_http_port_is_taken(tmp_path: Path) -> None:
    """1. Something listens on the HTTP port. 2. `faas run --no-kafka --port PORT`. Result: exit 1 (the
    contract's failure code, not uvicorn's 3) with the log line saying the address is in use and which
    settings choose it, and no traceback."""
    root = write_project(tmp_path, manifest(), {"m": MODULE})
    with silent_listener() as port:
        env = {"FAAS_LOG_FORMAT": "text", "FAAS_WATCH": "false"}
        r = run_cli(root, "run", "--no-kafka", "--port", str(port), env=env, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"error while attempting to bind on address ('127.0.0.1', {port}): address already in use" in (
        r.stderr
    ), r.stderr
    assert "FAAS_HTTP_PORT" in r.stderr and "--port" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_a_taken_http_port_fails_the_start_before_any_broker_or_group(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. Something listens on the HTTP port. 2. `faas run` on the embedded broker (a free broker port),
    then on a real broker. Result: exit 1 naming the address, before an embedded broker starts (none is
    left listening: once uvicorn's exit left Tansu orphaned) and before the node joins a consumer group
    (it took the live nodes' partitions on its way out: two rebalances)."""
    root = write_project(tmp_path, manifest(), {"m": MODULE})
    broker_port = free_port()
    with silent_listener() as port:
        env = {
            "FAAS_LOG_FORMAT": "text",
            "FAAS_WATCH": "false",
            "FAAS_KAFKA_BOOTSTRAP_SERVERS": "",
            "FAAS_EMBEDDED_BROKER_PORT": str(broker_port),
        }
        r = run_cli(root, "run", "--port", str(port), env=env, timeout=180)
        external = run_cli(
            root, "run", "--port", str(port), env={**env, "FAAS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap}
        )
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"error while attempting to bind on address ('127.0.0.1', {port}): address already in use" in (
        r.stderr
    ), r.stderr
    assert "embedded broker (Tansu" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not port_open("127.0.0.1", broker_port), f"a broker listens on {broker_port}"
    assert external.returncode == 1 and "address already in use" in external.stderr, external.stderr
    assert "joined group" not in external.stderr and "scheduler leadership" not in external.stderr


def test_run_refuses_a_cache_folder_it_cannot_write(tmp_path: Path) -> None:
    """1. FAAS_CACHE_DIR is a path under a regular file (no folder can be made there). 2. `faas run
    --no-kafka`. Result: exit 1 within the start, one line naming FAAS_CACHE_DIR and the path; before, the
    node said it was ready and answered every function NotFound (each revision skipped as unreadable)."""
    root = write_project(tmp_path, manifest(), {"m": MODULE})
    (tmp_path / "file").write_text("not a folder")
    env = {"FAAS_LOG_FORMAT": "text", "FAAS_CACHE_DIR": str(tmp_path / "file" / "cache")}
    r = run_cli(root, "run", "--no-kafka", "--port", str(free_port()), env=env, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"FAAS_CACHE_DIR {tmp_path / 'file' / 'cache'}: no revision code can be unpacked there" in r.stderr
    assert "Traceback" not in r.stderr, r.stderr


def test_run_without_a_manifest_leaves_nothing_behind(tmp_path: Path) -> None:
    """`faas run --no-kafka` in a folder with no `functions.yaml`. Result: exit 1 naming the manifest, and
    the folder stays empty (it was left holding an empty `.faas/`, the code cache made before the manifest
    was read)."""
    r = run_cli(tmp_path, "run", "--no-kafka", "--port", str(free_port()), env={"FAAS_LOG_FORMAT": "text"})
    assert r.returncode == 1 and "functions.yaml" in r.stderr, r.stdout + r.stderr
    assert list(tmp_path.iterdir()) == [], list(tmp_path.iterdir())


def test_port_0_serves_on_a_free_port_and_says_which(tmp_path: Path) -> None:
    """`faas run --no-kafka --port 0`: the log names the port the node really listens on (it said `:0`),
    and that port answers."""
    root = write_project(tmp_path, manifest(), {"m": MODULE})
    env = {**os.environ, "FAAS_MANIFEST": str(root / "functions.yaml"), "FAAS_LOG_FORMAT": "text"}
    args = [sys.executable, "-m", "framework", "run", "--no-kafka", "--port", "0"]
    proc = subprocess.Popen(args, cwd=root, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        deadline, found = time.monotonic() + 60, None
        while found is None and time.monotonic() < deadline:
            found = re.search(r"serving \d+ functions on http://127\.0\.0\.1:(\d+) ", proc.stderr.readline())
        assert found is not None, "no 'serving' line"
        port = int(found.group(1))
        assert port != 0 and httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=10).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(60)
        if proc.stderr is not None:
            proc.stderr.close()
    assert code == 0
