"""Deployments with real nodes and a real broker (DESIGN.md section 12): the log decides what is served."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from framework.cli.deployments import with_log
from framework.control.kafka_log import KafkaLog
from framework.control.manifest import load_manifest
from framework.control.revisions import sha256
from framework.control.working_copy import CodeZips, candidates
from framework.kafka.embedded import EmbeddedBroker, free_port
from framework.settings import Settings
from tests.control.zips import BROKEN
from tests.support import (
    LOGS,
    Node,
    Record,
    metric,
    new_id,
    produce,
    run_cli,
    topic_now,
    wait_for,
    write_project,
)

NO_WATCH = {"FAAS_WATCH": "false"}
pytestmark = pytest.mark.timeout(600)  # real nodes and CLI processes on a shared, slow machine


def module(version: str, delay: float = 0.0) -> str:
    return f"""
import asyncio

VERSION = {version!r}

async def handle(payload, ctx):
    if isinstance(payload, dict) and payload.get("sleep"):
        await asyncio.sleep(payload["sleep"])
    return {{"v": VERSION, "rev": ctx.revision}}
"""


def manifest(uuid: str, state: str = "productive", env: str = "Hello") -> str:
    return f"""
functions:
  - name: alpha
    uuid: {uuid}
    handler: functions.m:handle
    state: {state}
    env: {{GREETING: {env}}}
"""


def served(n: Node, uuid: str) -> dict[str, Any] | None:
    r = httpx.post(f"{n.url}/functions/{uuid}/invoke", json={}, timeout=30)
    return r.json()["result"] if r.status_code == 200 else None


def serves(n: Node, uuid: str, result: dict[str, Any]) -> Callable[[], bool]:
    """Whether `n` answers `uuid` with `result` now (a condition for `wait_for`)."""
    return lambda: served(n, uuid) == result


def entry(n: Node, uuid: str) -> dict[str, Any]:
    functions = httpx.get(f"{n.url}/functions", timeout=10).json()["functions"]
    return next(f for f in functions if f["uuid"] == uuid)


def held_codes(n: Node, uuid: str) -> set[str]:
    """The code record keys the kept revisions of `uuid` use."""
    revs = httpx.get(f"{n.url}/functions/{uuid}/revisions", timeout=10).json()["revisions"]
    return {f"code:{x['code_sha256']}" for x in revs}


def live_code_keys(bootstrap: str, n: Node) -> set[str]:
    """The code record keys whose last record on the deployment log is not a tombstone: what a reader of
    the compacted log keeps."""
    last: dict[str, object] = {}
    for r in topic_now(bootstrap, n.deployments):
        last[r["key"].decode()] = r["value"]
    return {k for k, v in last.items() if k.startswith("code:") and v is not None}


def kept(n: Node, uuid: str) -> list[int]:
    r = httpx.get(f"{n.url}/functions/{uuid}/revisions", timeout=10)
    assert r.status_code == 200, r.text
    return [x["revision"] for x in r.json()["revisions"]]


def cli_env(n: Node, bootstrap: str) -> dict[str, str]:
    return {
        "FAAS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "FAAS_DEPLOYMENTS_TOPIC": n.deployments,
        "FAAS_WATCH": "false",
    }


def publish(
    root: Path, n: Node, bootstrap: str, message: str, create: bool = False
) -> list[tuple[int, bool]]:
    """Publish the working copy's alpha the way `faas deploy` does, in this process (`create`: as `deploy`
    does, making the log when the broker has none)."""
    settings = Settings(manifest=root / "functions.yaml", deployments_topic=n.deployments)
    found = candidates(load_manifest(settings.manifest), CodeZips(settings.max_code_bytes), message)
    items = [(c.revision, c.code) for c in found.values() if c.revision is not None]

    async def work(log: KafkaLog) -> list[tuple[int, bool]]:
        return [(rev.revision, new) for rev, new in await log.publish_all(items)]

    return with_log(settings, bootstrap, work, 60, create)


def deploy(root: Path, env: dict[str, str], *args: str) -> str:
    r = run_cli(root, "deploy", *args, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def test_nodes_serve_code_deployed_from_another_folder(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Two nodes (watch off) share a broker, each with its own folder holding alpha v1.
    2. A third folder holds alpha v2; `faas deploy alpha` there. 3. A fourth node starts later from a
    folder that still holds v1. Result: both nodes serve v2 as revision 2 although their folders never
    changed; the late node serves revision 2 too, not its working copy, and lists it as modified.
    """
    u = new_id()
    tag = new_id()[:8]
    one = write_project(tmp_path / "one", manifest(u), {"m": module("v1")})
    two = write_project(tmp_path / "two", manifest(u), {"m": module("v1")})
    a = nodes(one, broker.bootstrap, tag=tag, env=NO_WATCH).wait_ready()
    b = nodes(two, broker.bootstrap, tag=tag, env=NO_WATCH).wait_ready()
    assert served(a, u) == {"v": "v1", "rev": 1} and served(b, u) == {"v": "v1", "rev": 1}
    third = write_project(tmp_path / "three", manifest(u), {"m": module("v2")})
    out = deploy(third, cli_env(a, broker.bootstrap), "alpha", "-m", "from the third folder")
    assert "alpha: revision 2 deployed" in out
    for n in (a, b):
        wait_for(lambda: served(n, u) == {"v": "v2", "rev": 2}, 10, message="revision 2 served")  # noqa: B023
    assert "v1" in (one / "functions" / "m.py").read_text()
    late = nodes(one, broker.bootstrap, tag=tag, env=NO_WATCH).wait_ready()
    assert served(late, u) == {"v": "v2", "rev": 2}
    assert entry(late, u)["modified"] is True and entry(late, u)["revision"] == 2
    assert kept(late, u) == [2, 1]


def test_seven_deploys_keep_five_and_rollback_is_a_revision(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Node (watch off) serving alpha v0 as revision 1. 2. Edit and `faas deploy` six times (v1..v6).
    3. `faas history`, `faas rollback alpha --to 4`, `faas rollback alpha --to 1`.
    Result: revisions 3..7 are kept (the log holds tombstones for 1 and 2, and for their code records,
    which no kept revision uses); history lists them newest first with 7 live; the rollback is revision 8
    with revision 4's code (v3) and rollback_of 4, served, and the log then holds the code records of the
    kept revisions only; rolling back to 1 (not kept) exits 1 naming the kept ones.
    """
    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v0")})
    n = nodes(root, broker.bootstrap, env=NO_WATCH).wait_ready()
    env = cli_env(n, broker.bootstrap)
    for i in range(1, 6):  # in-process, as `faas deploy` publishes (the machine is slow to start CLIs)
        (root / "functions" / "m.py").write_text(module(f"v{i}"))
        assert publish(root, n, broker.bootstrap, f"cut {i}") == [(i + 1, True)]
    (root / "functions" / "m.py").write_text(module("v6"))
    assert "alpha: revision 7 deployed" in deploy(root, env, "alpha", "-m", "cut 6")
    wait_for(lambda: served(n, u) == {"v": "v6", "rev": 7}, 10, message="revision 7 served")
    assert kept(n, u) == [7, 6, 5, 4, 3]
    records = topic_now(broker.bootstrap, n.deployments)
    tombstones = {r["key"].decode() for r in records if r["value"] is None}
    assert {k for k in tombstones if k.startswith("rev:")} == {f"rev:{u}:1", f"rev:{u}:2"}
    forgotten_codes = {k for k in tombstones if k.startswith("code:")}
    assert len(forgotten_codes) == 2 and not forgotten_codes & held_codes(n, u), (forgotten_codes, records)
    assert live_code_keys(broker.bootstrap, n) == held_codes(n, u)
    r = run_cli(root, "history", "alpha", env=env)
    assert r.returncode == 0, r.stderr
    lines = [line for line in r.stdout.splitlines()[1:] if line.strip()]
    assert [line.split()[0] for line in lines] == ["7", "6", "5", "4", "3"]
    assert "live" in lines[0] and "cut 6" in lines[0] and "live" not in "".join(lines[1:])
    r = run_cli(root, "history", "alpha", "--json", env=env)
    assert [(x["revision"], x["live"]) for x in json.loads(r.stdout)][:2] == [(7, True), (6, False)]
    r = run_cli(root, "rollback", "alpha", "--to", "4", env=env)
    assert r.returncode == 0 and "revision 8 deployed (rollback of revision 4)" in r.stdout, r.stderr
    wait_for(lambda: served(n, u) == {"v": "v3", "rev": 8}, 10, message="the rollback served")
    revs = httpx.get(f"{n.url}/functions/{u}/revisions", timeout=10).json()["revisions"]
    assert revs[0]["rollback_of"] == 4
    assert revs[0]["code_sha256"] == next(x for x in revs if x["revision"] == 4)["code_sha256"]
    assert live_code_keys(broker.bootstrap, n) == held_codes(n, u)  # revision 3's code (v2) forgotten too
    r = run_cli(root, "rollback", "alpha", "--to", "1", env=env)
    assert r.returncode == 1 and "revision 1 is not kept (kept: 8, 7, 6, 5, 4)" in r.stderr, r.stderr
    assert served(n, u) == {"v": "v3", "rev": 8}


def test_in_flight_request_finishes_on_the_old_revision(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Node (watch off) serving alpha v1. 2. Start a request that takes 4 s. 3. While it runs, deploy
    v2 from the same folder. Result: the next requests get v2 (revision 2) while the slow one is still
    running, and the slow one returns v1 (revision 1).
    """
    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
    n = nodes(root, broker.bootstrap, env=NO_WATCH).wait_ready()
    assert served(n, u) == {"v": "v1", "rev": 1}
    slow: list[httpx.Response] = []

    def call() -> None:
        slow.append(httpx.post(f"{n.url}/functions/{u}/invoke", json={"sleep": 4}, timeout=60))

    thread = threading.Thread(target=call)
    thread.start()
    wait_for(lambda: entry(n, u)["instances"] >= 1 and inflight(n) >= 1, 10, message="request in flight")
    (root / "functions" / "m.py").write_text(module("v2"))
    deploy(root, cli_env(n, broker.bootstrap), "alpha")
    wait_for(lambda: served(n, u) == {"v": "v2", "rev": 2}, 10, message="revision 2 served")
    still_running = thread.is_alive()
    thread.join(60)
    assert slow and slow[0].status_code == 200, slow
    assert slow[0].json()["result"] == {"v": "v1", "rev": 1}
    assert still_running or slow[0].json()["duration_ms"] >= 3900


def inflight(n: Node) -> float:
    text = httpx.get(f"{n.url}/metrics", timeout=10).text
    found = re.findall(r'^faas_inflight_requests\{function="alpha"\} ([0-9.e+]+)$', text, re.M)
    return float(found[0]) if found else 0.0


def test_watch_off_edit_is_modified_until_deployed(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Node with watch off serving alpha v1. 2. Edit the module to v2. 3. `faas deploy alpha`.
    Result: after 2, GET /functions says modified with revision 1, `faas ls` says `modified r1` and v1 is
    still served; after 3, v2 is served as revision 2, not modified, `faas ls` says `productive r2`.
    """
    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
    n = nodes(root, broker.bootstrap, env=NO_WATCH).wait_ready()
    env = cli_env(n, broker.bootstrap)
    first = entry(n, u)
    assert (first["revision"], first["modified"]) == (1, False) and first["deployed_at"]
    (root / "functions" / "m.py").write_text(module("v2"))
    wait_for(lambda: entry(n, u)["modified"] is True, 10, message="modified")
    assert re.search(rf"alpha\s+{u}\s+modified r1\b", run_cli(root, "ls", env=env).stdout)
    assert served(n, u) == {"v": "v1", "rev": 1}
    deploy(root, env, "alpha")
    wait_for(lambda: served(n, u) == {"v": "v2", "rev": 2}, 10, message="revision 2 served")
    wait_for(lambda: entry(n, u)["modified"] is False, 10, message="not modified")
    assert re.search(rf"alpha\s+{u}\s+productive r2\b", run_cli(root, "ls", env=env).stdout)


def test_watch_mode_deploys_every_valid_edit(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Node in watch mode (the default) serving alpha v1. 2. Edit the module to v2. 3. Break the
    module. 4. Set alpha's state to draft. Result: after 2, v2 is served as revision 2 within 5 s; 3 is
    rejected (no revision, v2 still served); after 4, an undeploy revision 3, alpha answers 404, and both
    `GET /functions` and `faas ls` say it is undeployed (the log's word, not the working copy's draft).
    """
    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
    n = nodes(root, broker.bootstrap).wait_ready()
    assert served(n, u) == {"v": "v1", "rev": 1}
    (root / "functions" / "m.py").write_text(module("v2"))
    wait_for(lambda: served(n, u) == {"v": "v2", "rev": 2}, 5, message="the edit deployed")
    (root / "functions" / "m.py").write_text("def handle(:\n")
    wait_for(lambda: httpx.get(f"{n.url}/readyz").json()["manifest_errors"], 5, message="edit rejected")
    assert served(n, u) == {"v": "v2", "rev": 2} and kept(n, u) == [2, 1]
    (root / "functions" / "m.py").write_text(module("v2"))
    (root / "functions.yaml").write_text(manifest(u, state="draft").lstrip("\n"))
    wait_for(lambda: kept(n, u) == [3, 2, 1], 5, message="an undeploy revision")
    wait_for(lambda: served(n, u) is None, 5, message="alpha no longer served")
    revs = httpx.get(f"{n.url}/functions/{u}/revisions", timeout=10).json()["revisions"]
    assert revs[0]["action"] == "undeploy"
    assert entry(n, u)["state"] == "undeployed"
    listed = json.loads(run_cli(root, "ls", "--json", env=cli_env(n, broker.bootstrap)).stdout)["functions"]
    assert [f["state"] for f in listed if f["uuid"] == u] == ["undeployed"]


def test_watch_mode_deploys_an_edit_of_a_data_file_in_the_package(
    tmp_path: Path, nodes: Callable[..., Node]
) -> None:
    """1. Node in watch mode (log in memory) serving alpha, whose handler reads `greeting.txt` beside its
    module. 2. Python writes a `.pyc` into the package. 3. Edit `greeting.txt`.
    Result: the new text is served as revision 2 within 5 s (a data file is part of the revision's code,
    so its edit is an edit of the function); the `.pyc` made no revision."""
    u = new_id()
    reader = (
        "from pathlib import Path\n\n"
        "async def handle(payload, ctx):\n"
        "    return {'text': (Path(__file__).parent / 'greeting.txt').read_text(), 'rev': ctx.revision}\n"
    )
    root = write_project(tmp_path / "p", manifest(u), {"m": reader})
    (root / "functions" / "greeting.txt").write_text("hi")
    n = nodes(root, None, kafka=False).wait_ready()
    assert served(n, u) == {"text": "hi", "rev": 1}
    (root / "functions" / "__pycache__").mkdir(exist_ok=True)
    (root / "functions" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0" * 16)
    (root / "functions" / "greeting.txt").write_text("hello")
    wait_for(lambda: served(n, u) == {"text": "hello", "rev": 2}, 5, message="the data edit deployed")
    assert kept(n, u) == [2, 1]


def test_watch_mode_names_the_manifest_as_the_node_was_given_it(
    tmp_path: Path, nodes: Callable[..., Node]
) -> None:
    """1. Node in watch mode started in the project folder with `FAAS_MANIFEST=functions.yaml` (relative,
    the default). 2. A bad edit. Result: `/readyz` lists `functions.yaml:LINE:COL: ...`, as `faas validate`
    would, not the file's absolute path."""
    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
    n = nodes(root, None, kafka=False, env={"FAAS_MANIFEST": "functions.yaml"}).wait_ready()
    (root / "functions.yaml").write_text(manifest(u).replace("state: productive", "state: live"))

    def errors() -> list[str]:
        found: list[str] = httpx.get(f"{n.url}/readyz", timeout=10).json()["manifest_errors"]
        return found

    wait_for(errors, 5, message="the edit rejected")
    assert errors()[0].startswith("functions.yaml:6:5: state: "), errors()


def test_watch_mode_rejects_an_emptied_manifest(tmp_path: Path, nodes: Callable[..., Node]) -> None:
    """1. Node in watch mode (log in memory) serving alpha. 2. The manifest is emptied (an editor's
    truncate-then-write, a bad checkout). 3. `functions: []` is written.
    Result: 2 is rejected at 1:1 and alpha is still served at revision 1 (before, every function was
    undeployed); 3 is taken as meant: alpha is undeployed (revision 2)."""
    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
    n = nodes(root, None, kafka=False).wait_ready()
    (root / "functions.yaml").write_text("")
    wait_for(lambda: httpx.get(f"{n.url}/readyz").json()["manifest_errors"], 5, message="edit rejected")
    assert (
        "functions.yaml:1:1: the manifest is empty"
        in httpx.get(f"{n.url}/readyz").json()["manifest_errors"][0]
    )
    assert served(n, u) == {"v": "v1", "rev": 1} and kept(n, u) == [1]
    (root / "functions.yaml").write_text("functions: []\n")
    wait_for(lambda: served(n, u) is None, 5, message="alpha undeployed")
    assert kept(n, u) == [2, 1]


def test_deleting_the_working_copy_keeps_serving(tmp_path: Path, nodes: Callable[..., Node]) -> None:
    """1. Node without Kafka (the log in memory) serving alpha, instances idle out after 1 s.
    2. Delete the `functions/` folder. 3. Wait until alpha has no instance, invoke it.
    Result: a fresh instance starts from the cached revision and answers v1; the revisions are listed.
    """
    u = new_id()
    text = manifest(u) + "    instances: {idle_timeout: 1}\n"
    root = write_project(tmp_path / "p", text, {"m": module("v1")})
    n = nodes(root, None, kafka=False).wait_ready()
    assert served(n, u) == {"v": "v1", "rev": 1}
    shutil.rmtree(root / "functions")
    wait_for(lambda: entry(n, u)["instances"] == 0, 15, message="alpha went cold")
    assert served(n, u) == {"v": "v1", "rev": 1}
    assert kept(n, u) == [1]


def _serving_revision_2(
    tmp_path: Path, nodes: Callable[..., Node], broker: EmbeddedBroker
) -> tuple[str, Path, Node]:
    """A node (watch off) on `broker` serving alpha deployed twice: (alpha's uuid, project, node)."""
    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
    n = nodes(root, broker.bootstrap, env=NO_WATCH).wait_ready()
    (root / "functions" / "m.py").write_text(module("v2"))
    assert publish(root, n, broker.bootstrap, "second") == [(2, True)]
    wait_for(lambda: served(n, u) == {"v": "v2", "rev": 2}, 10, message="revision 2 served")
    return u, root, n


@pytest.mark.usefixtures("broker_kills")
def test_restarted_memory_broker_gets_the_revisions_back(tmp_path: Path, nodes: Callable[..., Node]) -> None:
    """1. A broker of its own; a node (watch off) serving alpha, deployed twice (revisions 1 and 2).
    2. The broker is stopped and a new, empty one starts on the same port. Result: the node keeps
    serving revision 2 throughout, and the log holds `rev:<uuid>:1` and `rev:<uuid>:2` again (with
    their code records), published again by the node; the numbers go on from 3 afterwards.
    """
    port = free_port()
    own = [EmbeddedBroker(port=port, log_path=LOGS / f"broker-deploy-{port}.log").start()]
    try:
        u, root, n = _serving_revision_2(tmp_path, nodes, own[0])
        own[0].stop()
        assert served(n, u) == {"v": "v2", "rev": 2}
        own.append(EmbeddedBroker(port=port, log_path=LOGS / f"broker-deploy-{port}-2.log").start())

        def republished() -> bool:
            keys = {r["key"].decode() for r in topic_now(own[1].bootstrap, n.deployments)}
            return {f"rev:{u}:1", f"rev:{u}:2"} <= keys and sum(k.startswith("code:") for k in keys) == 2

        wait_for(republished, 60, interval=0.5, message="the log republished")
        assert served(n, u) == {"v": "v2", "rev": 2}
        (root / "functions" / "m.py").write_text(module("v3"))
        assert publish(root, n, own[1].bootstrap, "third") == [(3, True)]
        wait_for(lambda: served(n, u) == {"v": "v3", "rev": 3}, 10, message="revision 3 served")
    finally:
        for b in own:
            b.stop()


@pytest.mark.usefixtures("broker_kills")
@pytest.mark.parametrize("deploys", [1, 2])
def test_a_deploy_right_after_a_broker_restart_is_what_is_served(
    tmp_path: Path, nodes: Callable[..., Node], deploys: int
) -> None:
    """1. A broker of its own; a node (watch off) serving alpha, deployed twice (revisions 1 and 2: four
    records on the log). 2. The broker is stopped and a new, empty one starts on the same port; at once,
    alpha is deployed `deploys` times from the working copy (v9, then v10). Result: the node serves the
    last of those, and it is the log's newest revision of alpha (whether the node published its kept
    revisions again before the deploys, which then number on from them, or after).
    (With 2 the new log was as long as the old one before the node's check saw it shorter: the node went
    on serving the old revision 2 while the log's revision 2 was v10. With 1 the node noticed, but
    published its kept revision 2 again over the fresh revision 1.)"""
    port = free_port()
    own = [EmbeddedBroker(port=port, log_path=LOGS / f"broker-deploy-{port}.log").start()]
    try:
        u, root, n = _serving_revision_2(tmp_path, nodes, own[0])
        own[0].stop()
        own.append(EmbeddedBroker(port=port, log_path=LOGS / f"broker-deploy-{port}-2.log").start())
        for version in ["v9", "v10"][:deploys]:
            (root / "functions" / "m.py").write_text(module(version))
            [(number, new)] = publish(root, n, own[1].bootstrap, version, create=True)
            assert new
        # The node may republish before the deploys (they then number on from its revisions) or after;
        # either way the last deploy is the newest revision, and served.
        want = {"v": version, "rev": number}
        wait_for(lambda: served(n, u) == want, 60, interval=0.5, message=f"{want} served")
        republished = "kept revisions again"  # what the node's republish wrote, once it is done
        wait_for(lambda: republished in n.log.read_text(errors="replace"), 30, message="the republish")
        keys = {r["key"].decode() for r in topic_now(own[1].bootstrap, n.deployments)}
        numbers = {int(k.rsplit(":", 1)[1]) for k in keys if k.startswith(f"rev:{u}:")}
        assert max(numbers) == number, (numbers, number)
        assert served(n, u) == want
    finally:
        for b in own:
            b.stop()


@pytest.mark.usefixtures("broker_kills")
def test_memory_broker_restarted_after_an_outage_serves_the_republished_log(
    tmp_path: Path, nodes: Callable[..., Node]
) -> None:
    """1. A broker of its own; a node (watch off) serving alpha, deployed twice (revisions 1 and 2).
    2. The broker is stopped, and only once the node's `/readyz` reports it unreachable (seconds later:
    its clients' metadata refreshes have failed meanwhile, so its producer still lists the lost topic)
    does a new, empty one start on the same port. 3. The node publishes its kept revisions again.
    4. `faas history alpha`; a second node on the same topics starts from a folder holding v1.
    Result: the history lists revisions 2 and 1; the second node turns ready and serves revision 2 from
    the log. (The node used to write them to a topic the new broker did not have, which Tansu acknowledged
    and never served: the history timed out and the second node stayed 503.)
    """
    port = free_port()
    own = [EmbeddedBroker(port=port, log_path=LOGS / f"broker-deploy-{port}.log").start()]
    try:
        u, root, n = _serving_revision_2(tmp_path, nodes, own[0])
        own[0].stop()

        def unreachable() -> bool:
            r = httpx.get(f"{n.url}/readyz", timeout=5)
            return r.status_code == 503 and "unreachable" in r.text

        wait_for(unreachable, 30, interval=0.2, message="the node reports the broker unreachable")
        own.append(EmbeddedBroker(port=port, log_path=LOGS / f"broker-outage-{port}-2.log").start())
        wait_for(
            lambda: "published 2 kept revisions again" in n.log.read_text(errors="replace"),
            60,
            interval=0.5,
            message="the kept revisions published again",
        )
        r = run_cli(root, "history", "alpha", env=cli_env(n, own[1].bootstrap))
        assert r.returncode == 0, r.stdout + r.stderr
        assert [line.split()[0] for line in r.stdout.splitlines()[1:] if line.strip()] == ["2", "1"]
        late = write_project(tmp_path / "late", manifest(u), {"m": module("v1")})
        second = nodes(late, own[1].bootstrap, tag=n.tag, env=NO_WATCH).wait_ready(60)
        assert served(second, u) == {"v": "v2", "rev": 2} and kept(second, u) == [2, 1]
        assert served(n, u) == {"v": "v2", "rev": 2}
    finally:
        for b in own:
            b.stop()


def test_two_nodes_bootstrapping_the_same_files_publish_one_revision(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Two nodes start at once on a fresh deployment log, each with a copy of the same project.
    Result: both serve revision 1 and the log holds one revision of alpha (an identical publication is
    no new revision).
    """
    u, tag = new_id(), new_id()[:8]
    one = write_project(tmp_path / "one", manifest(u), {"m": module("v1")})
    two = write_project(tmp_path / "two", manifest(u), {"m": module("v1")})
    a = nodes(one, broker.bootstrap, tag=tag, env=NO_WATCH)
    b = nodes(two, broker.bootstrap, tag=tag, env=NO_WATCH)
    a.wait_ready()
    b.wait_ready()
    assert served(a, u) == served(b, u) == {"v": "v1", "rev": 1}
    assert kept(a, u) == kept(b, u) == [1]
    keys = {r["key"].decode() for r in topic_now(broker.bootstrap, a.deployments)}
    assert {k for k in keys if k.startswith("rev:")} == {f"rev:{u}:1"}


def test_corrupt_records_are_skipped_and_the_node_keeps_serving(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Node (watch off) serving alpha revision 1. 2. Produce to its deployment log: a value that is not
    JSON, an unknown action, a deploy whose code record is missing, a code record whose value does not
    match its sha256, a foreign key. 3. Deploy v2. Result: each bad record is logged as skipped and alpha
    keeps serving revision 1 meanwhile; revision 2 is then served.
    """
    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
    n = nodes(root, broker.bootstrap, env=NO_WATCH).wait_ready()
    good = httpx.get(f"{n.url}/functions/{u}/revisions", timeout=10).json()["revisions"][0]
    bad: list[Record] = [
        (f"rev:{u}:2".encode(), b"not json {", []),
        (f"rev:{u}:2".encode(), json.dumps({**good, "revision": 2, "action": "explode"}).encode(), []),
        (f"rev:{u}:2".encode(), json.dumps({**good, "revision": 2, "code_sha256": "ab" * 32}).encode(), []),
        (f"code:{'cd' * 32}".encode(), b"PK-not-this", []),
        (b"someone-elses-key", b"{}", []),
    ]
    produce(broker.bootstrap, n.deployments, bad)
    wait_for(lambda: n.tail(200).count("deployment log: skipped the record") >= 5, 20, message="skips logged")
    for why in ("not JSON", "unknown action 'explode'", "is missing", "sha256 is", "not a key"):
        assert why in n.tail(200), why
    assert served(n, u) == {"v": "v1", "rev": 1} and kept(n, u) == [1]
    (root / "functions" / "m.py").write_text(module("v2"))
    assert publish(root, n, broker.bootstrap, "after the junk") == [(2, True)]
    wait_for(lambda: served(n, u) == {"v": "v2", "rev": 2}, 10, message="revision 2 served")


def test_no_kafka_keeps_the_log_in_memory_with_watch_on(tmp_path: Path, nodes: Callable[..., Node]) -> None:
    """1. `faas run --no-kafka` with FAAS_WATCH=false serving alpha v1. 2. Edit the module.
    Result: revision 1 at start; the edit is deployed anyway (watch mode is on without Kafka) as
    revision 2; an unknown uuid's revisions answer 404 NotFound.
    """
    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
    n = nodes(root, None, kafka=False, env=NO_WATCH).wait_ready()
    assert served(n, u) == {"v": "v1", "rev": 1}
    (root / "functions" / "m.py").write_text(module("v2"))
    wait_for(lambda: served(n, u) == {"v": "v2", "rev": 2}, 10, message="the edit deployed")
    assert kept(n, u) == [2, 1]
    r = httpx.get(f"{n.url}/functions/{new_id()}/revisions", timeout=10)
    assert r.status_code == 404 and r.json()["error"]["type"] == "NotFound"


async def test_served_registry_follows_the_log_not_the_working_copy(tmp_path: Path) -> None:
    """In process, on the in-memory log with watch off. 1. A working copy with productive alpha and draft
    beta; start (bootstrap). 2. Publish a function only the log knows (gamma, from another folder).
    3. Edit alpha's code past the code size limit. Result: alpha is served as revision 1 from the cache;
    beta is listed, not served, and never deployed (null, false, null); gamma is served as well; after 3
    alpha still serves revision 1 and is modified; an unknown uuid has no revisions.
    """
    from framework.control.code_cache import CodeCache
    from framework.control.deployment_log import MemoryLog
    from framework.control.deployments import Deployments
    from framework.control.log_state import LogState
    from framework.control.registry import Registry

    ua, ub, ug = new_id(), new_id(), new_id()
    text = manifest(ua) + f"  - name: beta\n    uuid: {ub}\n    handler: functions.m:handle\n"
    root = write_project(tmp_path / "p", text, {"m": module("v1")})
    cache = CodeCache(tmp_path / "cache")
    state = LogState(on_code=cache.store)
    served_now: list[Registry] = []
    working = load_manifest(root / "functions.yaml")
    d = Deployments(MemoryLog(state), cache, working, False, CodeZips(1 << 20), served_now.append)
    await d.start()
    reg = served_now[-1]
    alpha = reg.productive(ua)
    assert alpha is not None and alpha.revision == 1 and alpha.code is not None
    assert (alpha.code / "functions" / "m.py").read_text() == module("v1")
    assert reg.productive(ub) is None and reg.by_uuid(ub) is not None
    assert d.status(ub) == {"revision": None, "modified": False, "deployed_at": None}
    other = write_project(tmp_path / "other", manifest(ug).replace("alpha", "gamma"), {"m": module("g")})
    found = candidates(load_manifest(other / "functions.yaml"), CodeZips(1 << 20))[ug]
    assert found.revision is not None
    await d.log.publish(found.revision, found.code)
    gamma = served_now[-1].productive(ug)
    assert gamma is not None and gamma.name == "gamma" and gamma.revision == 1
    (root / "functions" / "m.py").write_text(module("v2") + f"BLOB = {'x' * 3000!r}\n")
    big = load_manifest(root / "functions.yaml")
    d.working_copy_changed(big, CodeZips(500))
    assert served_now[-1].productive(ua) == alpha
    assert d.status(ua)["modified"] is True and d.status(ua)["revision"] == 1
    assert d.revisions(new_id()) is None and [r["revision"] for r in d.revisions(ua) or []] == [1]
    await d.stop()


async def test_a_revisions_spec_is_made_once_while_it_is_served(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, on the in-memory log with watch off. 1. alpha and gamma served (revision 1 each).
    2. What is served is worked out three more times (as every change read from the log does); then
    gamma gets a revision 2. Result: alpha's spec is the same object throughout, made once (validating
    every served spec each time took a node with 1,000 functions seconds per deploy); gamma's is made
    again for its new revision, and serves it."""
    from framework.control.code_cache import CodeCache
    from framework.control.deployment_log import MemoryLog
    from framework.control.deployments import Deployments
    from framework.control.log_state import LogState
    from framework.control.registry import Registry
    from framework.control.revisions import spec_from
    from framework.control.spec import FunctionSpec

    made: list[str] = []
    real = spec_from

    def counted(data: dict[str, Any], *rest: Any) -> FunctionSpec:
        made.append(data["name"])
        return real(data, *rest)

    monkeypatch.setattr("framework.control.deployments.spec_from", counted)
    ua, ug = new_id(), new_id()
    root = write_project(tmp_path / "p", manifest(ua), {"m": module("v1")})
    cache = CodeCache(tmp_path / "cache")
    served_now: list[Registry] = []
    working = load_manifest(root / "functions.yaml")
    d = Deployments(
        MemoryLog(LogState(on_code=cache.store)), cache, working, False, CodeZips(1 << 20), served_now.append
    )
    await d.start()
    other = write_project(tmp_path / "other", manifest(ug).replace("alpha", "gamma"), {"m": module("g")})
    found = candidates(load_manifest(other / "functions.yaml"), CodeZips(1 << 20))[ug]
    assert found.revision is not None
    await d.log.publish(found.revision, found.code)
    alpha = served_now[-1].productive(ua)
    for _ in range(3):
        d.refresh()
        assert served_now[-1].productive(ua) is alpha
    assert made.count("alpha") == 1 and made.count("gamma") == 1, made
    (other / "functions" / "m.py").write_text(module("g2"))
    again = candidates(load_manifest(other / "functions.yaml"), CodeZips(1 << 20))[ug]
    assert again.revision is not None
    await d.log.publish(again.revision, again.code)
    gamma = served_now[-1].productive(ug)
    assert gamma is not None and gamma.revision == 2 and made.count("gamma") == 2
    assert served_now[-1].productive(ua) is alpha
    await d.stop()


async def test_code_a_full_disk_refused_is_unpacked_once_there_is_room(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, on the in-memory log with watch off, looks at refused code every 0.05 s. 1. alpha
    deployed (revision 1). 2. The disk is full (the cache's writes fail with ENOSPC); gamma is published
    from another folder. 3. There is room again; nothing else changes.
    Result: 2 keeps gamma's revision (served, its code not unpacked yet) and the numbering (the next
    publication of gamma would be 2: skipping the record had made this node write a second revision 1);
    after 3 gamma's code is in the cache and nothing is left to unpack, by the planned look alone."""
    import errno

    from framework.control import deployments
    from framework.control.code_cache import CodeCache
    from framework.control.deployment_log import MemoryLog
    from framework.control.deployments import Deployments
    from framework.control.log_state import LogState
    from framework.control.registry import Registry
    from tests.runtime.conftest import until

    class FillingCache(CodeCache):
        full = False

        def store(self, sha: str, data: bytes) -> Path:
            if self.full:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().store(sha, data)

    monkeypatch.setattr(deployments, "UNPACK_RETRY", 0.05)
    ua, ug = new_id(), new_id()
    root = write_project(tmp_path / "p", manifest(ua), {"m": module("v1")})
    cache = FillingCache(tmp_path / "cache")
    state = LogState(on_code=cache.store)
    served_now: list[Registry] = []
    d = Deployments(
        MemoryLog(state),
        cache,
        load_manifest(root / "functions.yaml"),
        False,
        CodeZips(1 << 20),
        served_now.append,
    )
    await d.start()
    other = write_project(tmp_path / "other", manifest(ug).replace("alpha", "gamma"), {"m": module("g")})
    found = candidates(load_manifest(other / "functions.yaml"), CodeZips(1 << 20))[ug]
    assert found.revision is not None
    cache.full = True
    await d.log.publish(found.revision, found.code)
    gamma = served_now[-1].productive(ug)
    assert gamma is not None and gamma.revision == 1 and gamma.code is not None and not gamma.code.is_dir()
    assert state.next_number(ug) == 2 and list(state.unstored) == [found.revision.code_sha256]
    cache.full = False
    await until(lambda: not state.unstored, message="the refused code unpacked by the planned look")
    gamma = served_now[-1].productive(ug)
    assert gamma is not None and gamma.code is not None
    assert (gamma.code / "functions" / "m.py").read_text() == module("g") and state.unstored == {}
    await d.stop()


async def test_a_re_pointed_manifest_moves_the_project_folder_and_a_relative_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In process, on the in-memory log with watch off, FAAS_CACHE_DIR relative (`.faas`). 1. `current ->
    a`; alpha deployed from a (revision 1). 2. `current` re-pointed to b (other code), the edit applied, a
    deleted. 3. Re-pointed to c (a's code again), b deleted first, the edit applied. 4. Re-pointed to d
    (other code), c deleted first, the edit applied. Result: after each step revision 1 is served from the
    new folder (its `root`) with its code unpacked in that folder's `.faas`: copied from the old cache in 2,
    from the working copy in 3 (the old cache was gone); in 4 it is in neither, and a warning names its
    code; nothing is written into a deleted folder."""
    from framework.control.code_cache import CodeCache
    from framework.control.deployment_log import MemoryLog
    from framework.control.deployments import Deployments
    from framework.control.log_state import LogState
    from framework.control.registry import Registry

    u = new_id()
    folders = {
        name: write_project(tmp_path / name, manifest(u), {"m": module(version)}).resolve()
        for name, version in (("a", "v1"), ("b", "v2"), ("c", "v1"), ("d", "v3"))
    }
    current = tmp_path / "current"
    current.symlink_to(folders["a"], target_is_directory=True)
    cache = CodeCache(folders["a"] / ".faas")
    served_now: list[Registry] = []
    working = load_manifest(current / "functions.yaml")
    log = MemoryLog(LogState(on_code=cache.store))
    d = Deployments(log, cache, working, False, CodeZips(1 << 20), served_now.append, Path(".faas"))
    await d.start()
    code = sha256(candidates(working, CodeZips(1 << 20))[u].code or b"")

    def re_point(to: str, delete: str | None) -> Path:
        link = tmp_path / "current.new"
        link.symlink_to(folders[to], target_is_directory=True)
        os.replace(link, current)
        if delete is not None:
            shutil.rmtree(folders[delete])
        d.working_copy_changed(load_manifest(current / "functions.yaml"))
        alpha = served_now[-1].productive(u)
        assert alpha is not None and alpha.revision == 1 and alpha.root == folders[to]
        assert cache.base == folders[to] / ".faas" and alpha.code == cache.path(code)
        return alpha.code

    with caplog.at_level(logging.WARNING, "faas.deployments"):
        assert (re_point("b", None) / "functions" / "m.py").read_text() == module("v1")
        shutil.rmtree(folders["a"])
        assert (re_point("c", "b") / "functions" / "m.py").read_text() == module("v1")
        assert caplog.records == []
        assert not re_point("d", "c").exists()
    assert [r.getMessage() for r in caplog.records if code[:12] in r.getMessage()], caplog.text
    assert not any(folders[name].exists() for name in "abc")
    await d.stop()


def test_broker_down_at_start_serves_the_working_copy_meanwhile(
    tmp_path: Path, nodes: Callable[..., Node]
) -> None:
    """1. A node whose FAAS_KAFKA_BOOTSTRAP_SERVERS names a port where nothing listens.
    Result: `/readyz` is 503 naming the deployment log; alpha answers from the working copy (no revision)
    after the fallback delay, so HTTP keeps working while the broker is away.
    """
    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
    n = nodes(root, f"127.0.0.1:{free_port()}", env=NO_WATCH)

    def unready() -> list[str]:
        try:
            r = httpx.get(f"{n.url}/readyz", timeout=2)
        except httpx.HTTPError:
            return []
        reasons: list[str] = r.json()["reasons"] if r.status_code == 503 else []
        return [x for x in reasons if x.startswith("deployments:")]

    assert wait_for(unready, 60, interval=0.2, message="readyz names the deployment log")
    wait_for(lambda: served(n, u) == {"v": "v1", "rev": None}, 30, message="the working copy served")
    assert unready()


def skips(n: Node) -> list[str]:
    return [line for line in n.tail(400).splitlines() if "deployment log: skipped the record" in line]


def test_unusable_code_records_are_skipped_by_running_and_new_nodes(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Node a (watch off) serving alpha revision 1. 2. Produce to its deployment log one code record of
    each unusable zip (flipped deflate bytes, encrypted, unknown compression method, 300-character name,
    truncated), each keyed by the sha256 of its value. 3. Deploy v2. 4. Node b starts on the same log.
    Result: a logs a warning per record naming its offset and why and keeps serving revision 1, then
    serves revision 2 after 3 and stays ready; b turns ready, logs the same warnings and serves
    revision 2.
    """
    u, tag = new_id(), new_id()[:8]
    root = write_project(tmp_path / "a", manifest(u), {"m": module("v1")})
    a = nodes(root, broker.bootstrap, tag=tag, env=NO_WATCH).wait_ready()
    bad: list[Record] = []
    for make, _ in BROKEN.values():
        data = make()
        bad.append((f"code:{sha256(data)}".encode(), data, []))
    produce(broker.bootstrap, a.deployments, bad)
    wait_for(lambda: len(skips(a)) >= len(BROKEN), 20, message="a's skips logged")
    for line, (_, why) in zip(skips(a), BROKEN.values(), strict=True):
        assert "WARNING" in line and re.search(r"at offset \d+ ", line) and why in line, line
    assert served(a, u) == {"v": "v1", "rev": 1}
    (root / "functions" / "m.py").write_text(module("v2"))
    assert publish(root, a, broker.bootstrap, "after the broken zips") == [(2, True)]
    wait_for(lambda: served(a, u) == {"v": "v2", "rev": 2}, 10, message="a serves revision 2")
    assert httpx.get(f"{a.url}/readyz", timeout=10).status_code == 200
    other = write_project(tmp_path / "b", manifest(u), {"m": module("v1")})
    b = nodes(other, broker.bootstrap, tag=tag, env=NO_WATCH).wait_ready()
    assert served(b, u) == {"v": "v2", "rev": 2}
    assert [which(line) for line in skips(b)] == [which(line) for line in skips(a)]


def which(skip: str) -> str:
    """`at offset N (key '...')` of a skip's log line."""
    found = re.search(r"at offset \d+ \(key '[^']*'\)", skip)
    assert found is not None, skip
    return found.group(0)


def test_a_revision_taking_a_live_functions_name_is_refused(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Node (watch off) serving alpha (uuid U) as revision 1. 2. Produce a hand-made record rev:<V>:1
    of a new uuid V whose spec is alpha's (named alpha), with alpha's code. 3. Produce rev:<V>:2, the same
    spec named beta. Result: 2 is refused with a warning naming U, V and the record's offset; GET
    /functions lists one function named alpha, U at revision 1, and V is not served; after 3, V is
    served as beta next to alpha: the node goes on applying the log.
    """
    u, v = new_id(), new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
    n = nodes(root, broker.bootstrap, env=NO_WATCH).wait_ready()
    good = httpx.get(f"{n.url}/functions/{u}/revisions", timeout=10).json()["revisions"][0]
    twin = {**good, "uuid": v, "revision": 1, "spec": {**good["spec"], "uuid": v}}
    produce(broker.bootstrap, n.deployments, [(f"rev:{v}:1".encode(), json.dumps(twin).encode(), [])])
    refusal = wait_for(lambda: [line for line in skips(n) if v in line], 20, message="the refusal logged")
    assert len(refusal) == 1 and u in refusal[0] and "'alpha'" in refusal[0], refusal
    assert re.search(r"WARNING .*at offset \d+ ", refusal[0]), refusal[0]
    named = [
        f for f in httpx.get(f"{n.url}/functions", timeout=10).json()["functions"] if f["name"] == "alpha"
    ]
    assert [(f["uuid"], f["revision"]) for f in named] == [(u, 1)]
    assert served(n, v) is None and served(n, u) == {"v": "v1", "rev": 1}
    beta = {**twin, "revision": 2, "function": "beta", "spec": {**twin["spec"], "name": "beta"}}
    produce(broker.bootstrap, n.deployments, [(f"rev:{v}:2".encode(), json.dumps(beta).encode(), [])])
    wait_for(lambda: served(n, v) == {"v": "v1", "rev": 2}, 10, message="beta served")
    names = sorted(f["name"] for f in httpx.get(f"{n.url}/functions", timeout=10).json()["functions"])
    assert names == ["alpha", "beta"] and served(n, u) == {"v": "v1", "rev": 1}


async def test_a_failed_start_is_tried_again_until_the_log_is_read(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In process. 1. Deployments over an in-memory log whose start fails twice, with errors that are not
    a broker's (zlib.error, then RuntimeError). 2. `begin`, as a node does. Result: each failure is a
    warning saying it retries; the third attempt reads the log, the node is ready and serves alpha as
    revision 1."""
    import zlib

    from framework.control.code_cache import CodeCache
    from framework.control.deployment_log import MemoryLog
    from framework.control.deployments import Deployments
    from framework.control.log_state import LogState
    from framework.control.registry import Registry

    class Flaky(MemoryLog):
        def __init__(self, state: LogState) -> None:
            super().__init__(state)
            self.failures: list[Exception] = [zlib.error("Error -3 while decompressing"), RuntimeError("odd")]

        async def start(self) -> None:
            if self.failures:
                raise self.failures.pop(0)

    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
    cache = CodeCache(tmp_path / "cache")
    served_now: list[Registry] = []
    log = Flaky(LogState(on_code=cache.store))
    d = Deployments(
        log, cache, load_manifest(root / "functions.yaml"), False, CodeZips(1 << 20), served_now.append
    )
    assert d.not_ready() == ["deployments: reading the deployment log"]
    with caplog.at_level(logging.WARNING, "faas.deployments"):
        d.begin()
        try:
            deadline = asyncio.get_running_loop().time() + 10
            while not d.booted:
                assert asyncio.get_running_loop().time() < deadline, d.not_ready()
                await asyncio.sleep(0.05)
        finally:
            await d.stop()
    retries = [r.getMessage() for r in caplog.records if "retrying in" in r.getMessage()]
    assert len(retries) == 2 and "zlib.error" not in retries[1], retries
    assert "Error -3" in retries[0] and "RuntimeError('odd')" in retries[1], retries
    assert d.not_ready() == [] and log.failures == []
    alpha = served_now[-1].productive(u)
    assert alpha is not None and alpha.revision == 1


async def test_a_name_held_from_elsewhere_is_not_published(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In process, on the in-memory log. 1. A function from another folder (uuid G) is live as alpha.
    2. A node whose working copy has its own productive alpha (uuid U) starts (bootstrap). Result: U is
    not published (no record a reader would refuse): an error names both uuids; G keeps serving as
    alpha and U is listed, not served."""
    from framework.control.code_cache import CodeCache
    from framework.control.deployment_log import MemoryLog
    from framework.control.deployments import Deployments
    from framework.control.log_state import LogState
    from framework.control.registry import Registry

    u, g = new_id(), new_id()
    cache = CodeCache(tmp_path / "cache")
    log = MemoryLog(LogState(on_code=cache.store))
    elsewhere = write_project(tmp_path / "elsewhere", manifest(g), {"m": module("g")})
    found = candidates(load_manifest(elsewhere / "functions.yaml"), CodeZips(1 << 20))[g]
    assert found.revision is not None
    await log.publish(found.revision, found.code)
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
    served_now: list[Registry] = []
    d = Deployments(
        log, cache, load_manifest(root / "functions.yaml"), True, CodeZips(1 << 20), served_now.append
    )
    with caplog.at_level(logging.WARNING, "faas.deployments"):
        await d.start()
    await d.stop()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "not deployed" in messages[0], messages
    assert u in messages[0] and g in messages[0]
    assert log.state.kept(u) == [] and log.state.skipped == 0
    reg = served_now[-1]
    alpha = reg.by_name("alpha")
    assert alpha is not None and alpha.uuid == g and alpha.productive and reg.productive(u) is None


async def _published(d: Any, root: Path) -> None:
    """The working copy at `root` handed to `d` as watch mode does, and its publication awaited."""
    d.working_copy_changed(load_manifest(root / "functions.yaml"))
    publishing = list(d._tasks)  # the watch's publication runs in a task of its own
    assert publishing
    done, _ = await asyncio.wait(publishing, timeout=10)
    assert len(done) == len(publishing)


async def test_a_swap_of_two_names_is_not_published(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """In process, on the in-memory log, watch on. 1. alpha (U1) and beta (U2) are deployed (bootstrap).
    2. The working copy swaps their names. 3. The swap is undone. Result: 2 publishes neither (readers
    would refuse both: no order frees a name first): one error each, naming the holder and saying names
    cannot be swapped in one step, also in `problems` (which /readyz and the dashboard show: they were in
    the log only); both keep serving their revision 1 under their old names, and the log has no skipped
    record. 3 clears the problems."""
    from framework.control.code_cache import CodeCache
    from framework.control.deployment_log import MemoryLog
    from framework.control.deployments import Deployments
    from framework.control.log_state import LogState
    from framework.control.registry import Registry

    u1, u2 = new_id(), new_id()
    text = (
        manifest(u1)
        + f"  - name: beta\n    uuid: {u2}\n    handler: functions.m:handle\n    state: productive\n"
    )
    root = write_project(tmp_path / "p", text, {"m": module("v1")})
    log = MemoryLog(LogState(on_code=CodeCache(tmp_path / "cache").store))
    served_now: list[Registry] = []
    d = Deployments(
        log,
        CodeCache(tmp_path / "cache"),
        load_manifest(root / "functions.yaml"),
        True,
        CodeZips(1 << 20),
        served_now.append,
    )
    await d.start()
    assert {f.name: f.uuid for f in served_now[-1].functions} == {"alpha": u1, "beta": u2}
    swapped = (
        text.replace("name: alpha", "name: tmp")
        .replace("name: beta", "name: alpha")
        .replace("name: tmp", "name: beta")
    )
    (root / "functions.yaml").write_text(swapped)
    with caplog.at_level(logging.WARNING, "faas.deployments"):
        await _published(d, root)
    refusals = d.problems()  # on /readyz and the dashboard, not only in the log
    (root / "functions.yaml").write_text(text)  # the swap undone
    await _published(d, root)
    await d.stop()
    assert len(refusals) == 2 and all("cannot swap names" in r for r in refusals), refusals
    assert d.problems() == []
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2 and all("cannot swap names" in m for m in messages), messages
    assert u1 in messages[0] + messages[1] and u2 in messages[0] + messages[1]
    assert [r.revision for r in log.state.kept(u1)] == [1] and [r.revision for r in log.state.kept(u2)] == [1]
    assert log.state.skipped == 0
    live = {r.spec["name"]: u for u, r in log.state.live().items()}
    assert live == {"alpha": u1, "beta": u2}


def test_code_over_the_limit_is_a_manifest_error_at_start_and_in_watch_mode(
    tmp_path: Path, nodes: Callable[..., Node]
) -> None:
    """1. A node (log in memory, watch on, FAAS_MAX_CODE_BYTES=2000) serving alpha v1. 2. A data file that
    zips over the limit lands in the package, and the module is edited to v2. 3. The data file goes.
    4. A second node starts on the working copy with the data file back in.
    Result: 2. the edit is rejected: /readyz (200) lists alpha's `handler` LINE:COL naming the limit, v1 is
    still served. 3. v2 is served, no errors. 4. the node starts and is ready, its /readyz lists the same
    error, and alpha, which it could not deploy, is not served."""
    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
    env = {"FAAS_MAX_CODE_BYTES": "2000"}
    n = nodes(root, None, kafka=False, env=env).wait_ready()
    assert served(n, u) == {"v": "v1", "rev": 1}
    blob = root / "functions" / "blob.bin"
    blob.write_bytes(os.urandom(5000))
    (root / "functions" / "m.py").write_text(module("v2"))

    def errors(node: Node) -> list[str]:
        found: list[str] = httpx.get(f"{node.url}/readyz", timeout=10).json()["manifest_errors"]
        return found

    found = wait_for(lambda: errors(n), 10, message="the edit rejected")
    limit = r"functions\.yaml:4:5: its code .* over FAAS_MAX_CODE_BYTES \(2000"
    assert any(re.search(limit, e) for e in found), found
    assert httpx.get(f"{n.url}/readyz", timeout=10).status_code == 200
    assert served(n, u) == {"v": "v1", "rev": 1}
    blob.unlink()
    (root / "functions" / "m.py").write_text(module("v2") + "\n")  # the watch reloads on module edits
    wait_for(lambda: served(n, u) == {"v": "v2", "rev": 2}, 10, message="v2 deployed once the file left")
    assert errors(n) == []
    blob.write_bytes(os.urandom(5000))
    second = nodes(root, None, kafka=False, env=env).wait_ready()
    assert any("over FAAS_MAX_CODE_BYTES (2000" in e for e in errors(second)), errors(second)
    assert served(second, u) is None


def test_the_code_cache_keeps_only_the_code_of_kept_revisions(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Node in watch mode with FAAS_CACHE_IDLE=1, serving alpha v0 as revision 1; its cache holds a
    folder an interrupted unpack left two hours ago and a file of the user's. 2. Edit the module six times
    (v1..v6), each served before the next. Result: the log forgets revisions 1 and 2 and their code, and
    within 10 s the cache holds exactly the folder and zip of each kept revision's code (five), without
    the interrupted unpack, with the user's file; alpha still serves v6 as revision 7; a rollback to a kept
    revision is served from the cache.
    """
    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v0")})
    cache = root / ".faas"
    (cache / ".unpack-crashed").mkdir(parents=True)
    (cache / "notes.txt").write_text("mine")
    then = time.time() - 7200
    os.utime(cache / ".unpack-crashed", (then, then))
    n = nodes(root, broker.bootstrap, env={"FAAS_CACHE_IDLE": "1"}).wait_ready()
    assert served(n, u) == {"v": "v0", "rev": 1}
    seen: set[str] = set()
    for i in range(1, 7):
        seen |= {p.name for p in cache.iterdir() if len(p.name) == 64}
        (root / "functions" / "m.py").write_text(module(f"v{i}"))
        wait_for(serves(n, u, {"v": f"v{i}", "rev": i + 1}), 10, message=f"v{i} served")
    wait_for(lambda: kept(n, u) == [7, 6, 5, 4, 3], 10, message="revisions 1 and 2 forgotten")
    held = {key.removeprefix("code:") for key in held_codes(n, u)}
    assert len(held) == 5 and len(seen - held) == 2, (seen, held)
    want = {*held, *(f"{sha}.zip" for sha in held), "notes.txt", "CACHEDIR.TAG"}
    wait_for(lambda: {p.name for p in cache.iterdir()} == want, 10, message="the forgotten code pruned")
    assert served(n, u) == {"v": "v6", "rev": 7}
    r = run_cli(root, "rollback", "alpha", "--to", "3", env=cli_env(n, broker.bootstrap))
    assert r.returncode == 0, r.stderr
    wait_for(lambda: served(n, u) == {"v": "v2", "rev": 8}, 10, message="the rollback served")


async def test_a_prune_leaves_the_code_an_instance_runs_from(tmp_path: Path) -> None:
    """In process, on the in-memory log. 1. alpha deployed (revision 1). 2. Two codes the log never held,
    two hours old, are in the cache; the node's instances run from one of them (a retiring pool of a
    forgotten revision). 3. Prune with an idle time of an hour. Result: only the other one is removed;
    alpha's code stays."""
    from framework.control.code_cache import CodeCache
    from framework.control.deployment_log import MemoryLog
    from framework.control.deployments import Deployments
    from framework.control.log_state import LogState
    from tests.control.zips import package

    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
    cache = CodeCache(tmp_path / "cache")
    working = load_manifest(root / "functions.yaml")
    state = LogState(on_code=cache.store)
    d = Deployments(MemoryLog(state), cache, working, False, CodeZips(1 << 20), lambda _: None)
    await d.start()
    running, unused = package("VALUE = 1\n"), package("VALUE = 2\n")
    then = time.time() - 7200
    for data in (running, unused):
        cache.store(sha256(data), data)
        for path in (cache.path(sha256(data)), cache.base / f"{sha256(data)}.zip"):
            os.utime(path, (then, then))
    d.upkeep.in_use = lambda: [cache.path(sha256(running))]
    assert await d.upkeep.prune(3600) == [sha256(unused)]
    alpha = d.registry().productive(u)
    assert alpha is not None and alpha.code is not None and alpha.code.is_dir()
    assert cache.has(sha256(running)) and not cache.has(sha256(unused))
    await d.stop()


def test_a_watch_mode_edit_made_while_the_broker_is_away_is_published_when_it_is_back(
    tmp_path: Path, nodes: Callable[..., Node]
) -> None:
    """1. Node in watch mode on a broker of its own, serving alpha v1 as revision 1. 2. The broker freezes
    (SIGSTOP); alpha is edited to v2. 3. The broker answers again (SIGCONT). Result: during 2 `/readyz`
    says the working copy's changes are not published yet, and v1 is still served; after 3, v2 is served
    as revision 2 within 60 s, with no edit after it, and `/readyz` no longer says so."""
    own = EmbeddedBroker(port=free_port(), log_path=LOGS / f"broker-watch-{new_id()[:8]}.log").start()
    try:
        u = new_id()
        root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
        n = nodes(root, own.bootstrap).wait_ready()
        assert served(n, u) == {"v": "v1", "rev": 1}
        assert own.proc is not None
        own.proc.send_signal(signal.SIGSTOP)
        try:
            (root / "functions" / "m.py").write_text(module("v2"))

            def waiting() -> bool:
                reasons = httpx.get(f"{n.url}/readyz", timeout=10).json()["reasons"]
                return any("not published yet" in r for r in reasons)

            wait_for(waiting, 60, message="readyz says the edit waits")
            assert served(n, u) == {"v": "v1", "rev": 1}
        finally:
            own.proc.send_signal(signal.SIGCONT)
        wait_for(serves(n, u, {"v": "v2", "rev": 2}), 60, message="the edit published after the outage")
        wait_for(lambda: not waiting(), 10, message="readyz no longer says the edit waits")
    finally:
        own.stop()


def test_code_deleted_under_a_running_node_is_unpacked_again_from_the_log(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Node (watch off) serving alpha and beta, one package, as revision 1 (v1); alpha answers. 2. The
    working copy is edited to v2, not deployed. 3. The node's cache folder is deleted (as `git clean -fdX`
    does). Result: within 20 s beta, which needs its first instance, answers v1 from revision 1 (its code
    neither in the cache nor in the working copy, but on the log), and the node's log says so."""
    u, b = new_id(), new_id()
    beta = f"  - name: beta\n    uuid: {b}\n    handler: functions.m:handle\n    state: productive\n"
    text = manifest(u) + beta
    root = write_project(tmp_path / "p", text, {"m": module("v1")})
    n = nodes(root, broker.bootstrap, env=NO_WATCH).wait_ready()
    assert served(n, u) == {"v": "v1", "rev": 1}
    (root / "functions" / "m.py").write_text(module("v2"))
    wait_for(lambda: entry(n, u)["modified"] is True, 10, message="the edit seen")
    shutil.rmtree(root / ".faas")
    wait_for(serves(n, b, {"v": "v1", "rev": 1}), 20, message=f"beta started from the log's code\n{n.tail()}")
    assert served(n, u) == {"v": "v1", "rev": 1}
    assert "unpacked again from the log" in n.log.read_text()


def test_a_node_without_watch_mode_starts_on_a_broken_working_copy_and_serves_the_log(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. A node (watch off) bootstraps alpha v1 as revision 1, and stops. 2. The manifest is broken (a
    negative timeout) and a node (watch off) starts on the same log. 3. The manifest is fixed. 4. A node
    in watch mode starts on the broken manifest.
    Result: 2 gets ready and serves revision 1, with `/readyz` naming the error by line (a restart of a
    cluster node is not an outage for a typo); after 3 the error is gone; 4 exits 1 naming it (a laptop's
    node serves its working copy: it cannot go on without one)."""
    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v1")})
    first = nodes(root, broker.bootstrap, env=NO_WATCH).wait_ready()
    assert served(first, u) == {"v": "v1", "rev": 1}
    assert first.stop() == 0
    (root / "functions.yaml").write_text(manifest(u).lstrip("\n") + "    timeout: -1\n")
    n = nodes(root, broker.bootstrap, tag=first.tag, env=NO_WATCH).wait_ready()
    assert served(n, u) == {"v": "v1", "rev": 1}

    def manifest_errors() -> list[str]:
        found: list[str] = httpx.get(f"{n.url}/readyz", timeout=10).json()["manifest_errors"]
        return found

    errors = manifest_errors()
    assert len(errors) == 1 and re.search(r"functions\.yaml:\d+:\d+: .*timeout", errors[0]), errors
    (root / "functions.yaml").write_text(manifest(u).lstrip("\n"))
    wait_for(lambda: not manifest_errors(), 10, message="the fixed manifest taken")
    assert served(n, u) == {"v": "v1", "rev": 1}
    (root / "functions.yaml").write_text(manifest(u).lstrip("\n") + "    timeout: -1\n")
    watching = nodes(root, broker.bootstrap, tag=first.tag)
    assert watching.proc.wait(60) == 1
    assert "invalid manifest" in watching.log.read_text() and "timeout" in watching.log.read_text()


@pytest.mark.parametrize("records", ["true", "false"])
def test_a_request_queued_when_a_revision_lands_runs_on_the_new_revision(
    tmp_path: Path, nodes: Callable[..., Node], records: str
) -> None:
    """1. Node in watch mode (log in memory, invocation records on or off: two paths through the pool)
    serving alpha v1, one instance of concurrency 1. 2. A call
    sleeping 4 s runs; a second call queues behind it. 3. The module is edited to v2 (revision 2).
    Result: the queued call answers v2 from revision 2 while the first is still running (it waited for
    the old instance, and could run into the queue's timeout, while a new one was free); the first call
    finishes on revision 1."""
    u = new_id()
    text = manifest(u) + "    instances: {max: 1, concurrency: 1}\n"
    root = write_project(tmp_path / "p", text, {"m": module("v1")})
    n = nodes(root, None, kafka=False, env={"FAAS_RECORDS": records}).wait_ready()
    assert served(n, u) == {"v": "v1", "rev": 1}
    results: dict[str, tuple[float, dict[str, Any]]] = {}

    def call(name: str, payload: dict[str, Any]) -> None:
        r = httpx.post(f"{n.url}/functions/{u}/invoke", json=payload, timeout=60)
        results[name] = (time.monotonic(), r.json())

    slow = threading.Thread(target=call, args=("slow", {"sleep": 4}))
    slow.start()
    wait_for(lambda: metric(n, "faas_inflight_requests", function="alpha") == 1, 10, message="slow runs")
    queued = threading.Thread(target=call, args=("queued", {}))
    queued.start()
    wait_for(lambda: metric(n, "faas_queued_requests", function="alpha") == 1, 10, message="one queued")
    (root / "functions" / "m.py").write_text(module("v2"))
    queued.join(30)
    slow.join(30)
    assert results["queued"][1]["result"] == {"v": "v2", "rev": 2}, results
    assert results["slow"][1]["result"] == {"v": "v1", "rev": 1}, results
    assert results["queued"][0] < results["slow"][0], results


def test_the_code_a_running_call_imports_from_is_kept_until_it_ends(
    tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]
) -> None:
    """1. Node in watch mode with FAAS_CACHE_IDLE=1, serving alpha v0 as revision 1. 2. A call sleeping
    20 s starts on revision 1. 3. The module is edited six times (v1..v6), each served before the next:
    the log forgets revisions 1 and 2 and their code. Result: while the call runs, revision 2's code is
    pruned but revision 1's stays (an instance of the node runs from it); the call answers v0 from
    revision 1; then revision 1's code is pruned too."""
    u = new_id()
    root = write_project(tmp_path / "p", manifest(u), {"m": module("v0")})
    cache = root / ".faas"
    n = nodes(root, broker.bootstrap, env={"FAAS_CACHE_IDLE": "1"}).wait_ready()
    assert served(n, u) == {"v": "v0", "rev": 1}
    codes = [{p.name for p in cache.iterdir() if len(p.name) == 64}]
    results: list[dict[str, Any]] = []
    slow = threading.Thread(
        target=lambda: results.append(
            httpx.post(f"{n.url}/functions/{u}/invoke", json={"sleep": 20}, timeout=60).json()
        )
    )
    slow.start()
    wait_for(lambda: metric(n, "faas_inflight_requests", function="alpha") == 1, 10, message="the call runs")
    for i in range(1, 7):
        (root / "functions" / "m.py").write_text(module(f"v{i}"))
        wait_for(serves(n, u, {"v": f"v{i}", "rev": i + 1}), 10, message=f"v{i} served")
        codes.append({p.name for p in cache.iterdir() if len(p.name) == 64} - set().union(*codes))
    first, second = (next(iter(c)) for c in codes[:2])
    wait_for(lambda: not (cache / second).exists(), 10, message="revision 2's code pruned")
    assert slow.is_alive() and (cache / first).is_dir(), "revision 1's code went while its call ran"
    slow.join(60)
    assert results and results[0]["result"] == {"v": "v0", "rev": 1}, results
    wait_for(lambda: not (cache / first).exists(), 20, message="revision 1's code pruned once its call ended")
