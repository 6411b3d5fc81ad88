"""`faas logs` (framework/cli/logs.py) against real `faas run` nodes and the real broker: two nodes
sharing the invocations topic, the filters (NAME, --failed, --invocation, --since), --follow ended by
Ctrl-C, --json, the human form (indented log lines, colours only on a terminal), bad input on the topic,
no broker."""

from __future__ import annotations

import asyncio
import json
import os
import pty
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from aiokafka import AIOKafkaProducer
from click.testing import CliRunner

from framework.cli import main
from framework.cli.logs import _started_ms, render
from framework.kafka.embedded import EmbeddedBroker, free_port
from tests.faults.stall_proxy import AdvertisedBroker, StallingProxy
from tests.support import (
    Node,
    RawHeaderName,
    SameIdBroker,
    new_id,
    produce_one_batch,
    run_cli,
    silent_listener,
    wait_for,
    write_project,
)

ECHO = "6c6c6c6c-0000-4000-8000-000000000001"
BOOM = "6c6c6c6c-0000-4000-8000-000000000002"
MANIFEST = f"""
functions:
  - {{name: echo, uuid: {ECHO}, handler: functions.lg:echo, state: productive}}
  - {{name: boom, uuid: {BOOM}, handler: functions.lg:boom, state: productive}}
"""
MODULES = {
    "lg": """
        async def echo(payload, ctx):
            ctx.log.info("hello %s", payload["tok"])
            print(f"second line {payload['tok']}")
            return payload["tok"]

        async def boom(payload, ctx):
            raise RuntimeError(f"kaboom {payload['tok']}")
    """
}


class Cluster:
    def __init__(self, root: Path, bootstrap: str, topic: str, nodes: list[Node]) -> None:
        self.root, self.bootstrap, self.topic, self.nodes = root, bootstrap, topic, nodes

    @property
    def env(self) -> dict[str, str]:
        return {"FAAS_KAFKA_BOOTSTRAP_SERVERS": self.bootstrap, "FAAS_INVOCATIONS_TOPIC": self.topic}

    def logs(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.root, "logs", *args, env=self.env, timeout=90)

    def json_until(
        self,
        *args: str,
        want: set[str],
        until: Callable[[list[dict[str, Any]]], bool] = lambda _: True,
        timeout: float = 60,
    ) -> list[dict[str, Any]]:
        """`faas logs ARGS --json` until every id in `want` is printed (and `until` holds); every line
        must be JSON."""
        last: list[dict[str, Any]] = []

        def check() -> bool:
            nonlocal last
            r = self.logs(*args, "--json")
            assert r.returncode == 0, r.stderr
            last = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
            return want <= {x["invocation_id"] for x in last} and until(last)

        wait_for(check, timeout, 0.5, f"faas logs {' '.join(args)} printing {want}")
        return last


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, broker: EmbeddedBroker) -> Iterator[Cluster]:
    """Two nodes with topics of their own except the invocations topic, which they share."""
    root = write_project(tmp_path_factory.mktemp("logs"), MANIFEST, MODULES)
    topic = f"t.inv.shared.{new_id()[:8]}"
    started = [
        Node(root, broker.bootstrap, env={"FAAS_INVOCATIONS_TOPIC": topic, "FAAS_NODE_NAME": name})
        for name in ("alpha", "beta")
    ]
    try:
        for n in started:
            n.wait_ready(90)
        yield Cluster(root, broker.bootstrap, topic, started)
    finally:
        for n in started:
            n.kill()


def invoke(n: Node, uuid: str, tok: str) -> httpx.Response:
    return httpx.post(f"{n.url}/functions/{uuid}/invoke", json={"tok": tok}, timeout=60)


def test_two_nodes_name_and_failed(cluster: Cluster) -> None:
    """1. echo runs on node alpha and on node beta; boom fails on beta.
    2. `faas logs --json`, `faas logs echo --json`, `faas logs --failed --json`.
    Result: all three invocations from both nodes; NAME keeps echo's only; --failed boom's only."""
    a, b = cluster.nodes
    tok = new_id()[:8]
    on_a = invoke(a, ECHO, tok).json()["invocation_id"]
    on_b = invoke(b, ECHO, tok).json()["invocation_id"]
    r = invoke(b, BOOM, tok)
    assert r.status_code == 500
    every = cluster.json_until(want={on_a, on_b})
    nodes = {x["node"] for x in every if x["invocation_id"] in (on_a, on_b)}
    assert nodes == {"alpha", "beta"}
    echo = cluster.json_until("echo", want={on_a, on_b})
    assert {x["function"] for x in echo} == {"echo"}

    def booms(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [x for x in records if f"kaboom {tok}" in (x["error"] or {}).get("message", "")]

    failed = cluster.json_until("--failed", want=set(), until=lambda rs: bool(booms(rs)))
    boom = booms(failed)
    assert len(boom) == 1 and boom[0]["node"] == "beta" and boom[0]["error"]["type"] == "FunctionError"
    assert all(x["ok"] is False for x in failed)
    assert cluster.json_until(ECHO, want={on_a}) == echo  # the uuid selects as the name does
    assert cluster.json_until(ECHO.upper(), want={on_a}) == echo  # in any case, as the HTTP API takes it


def test_one_invocation_readable(cluster: Cluster) -> None:
    """1. echo runs twice. 2. `faas logs --invocation ID` (stdout not a terminal).
    Result: one line with the time, the function, the full id, trigger, outcome, duration and cold/warm;
    its two log lines indented below; nothing of the other invocation; no colour codes."""
    a = cluster.nodes[0]
    toks = [new_id()[:8], new_id()[:8]]
    ids = [invoke(a, ECHO, t).json()["invocation_id"] for t in toks]
    cluster.json_until("echo", want=set(ids))
    r = cluster.logs("--invocation", ids[0])
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 3, r.stdout
    head = lines[0].split()
    assert head[1:6] == ["echo", ids[0], "direct", "-", "ok"] and head[6].endswith("ms")
    assert head[7] in ("cold", "warm") and head[-2:] == ["on", "alpha"]
    assert lines[1].startswith("    ") and lines[1].rstrip().endswith(f"INFO    hello {toks[0]}")
    assert lines[2].startswith("    ") and lines[2].rstrip().endswith(f"second line {toks[0]}")
    assert ids[1] not in r.stdout and "\x1b[" not in r.stdout
    upper = cluster.logs("--invocation", ids[0].upper())  # an id in capitals, as GET /invocations/{id} takes
    assert upper.returncode == 0 and upper.stdout == r.stdout, upper.stderr


def test_colours_on_a_terminal(cluster: Cluster) -> None:
    """`faas logs --invocation ID` with stdout on a pseudo-terminal: colour codes; with NO_COLOR: none."""
    a = cluster.nodes[0]
    inv = invoke(a, ECHO, "tty").json()["invocation_id"]
    cluster.json_until("--invocation", inv, want={inv})
    for extra, coloured in (({}, True), ({"NO_COLOR": "1"}, False)):
        out = _on_a_terminal(cluster, extra, "logs", "--invocation", inv)
        assert inv in out and ("\x1b[" in out) is coloured, out


def _on_a_terminal(cluster: Cluster, extra: dict[str, str], *args: str) -> str:
    main, side = pty.openpty()
    env = {**os.environ, **cluster.env, "FAAS_MANIFEST": str(cluster.root / "functions.yaml")}
    env.pop("NO_COLOR", None)
    env.update(extra)
    proc = subprocess.Popen([sys.executable, "-m", "framework", *args], stdout=side, stderr=side, env=env)
    os.close(side)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(60)
    os.close(main)
    return b"".join(chunks).decode(errors="replace")


async def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, bytes, int]]) -> None:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await p.start()
    try:
        for key, value, ts in records:
            await p.send_and_wait(topic, value, key=key, timestamp_ms=ts)
    finally:
        await p.stop()


def test_since_checks_record_times_and_bad_values_are_skipped(cluster: Cluster) -> None:
    """1. Put on the topic a record of an invocation that started 2 hours ago but reached Kafka just now (a
    node sends what it buffered while the broker was away), one of 90 minutes ago written at +05:00, and
    three values that are not records (one is JSON with a lone surrogate escape), and a record whose
    `logs` is not a list and whose event type and node hold terminal escapes and a line break.
    2. `faas logs --since 1h`, with no `--since`, `--since 3h`, `--invocation OLD_ID` (no --since),
       `--invocation NOSUCH`.
    Result: 1h and the default window (an hour) leave the old record out (its `started_at` decides, not
    when it reached Kafka; the embedded broker's offsets_for_times answers 0 anyway), 3h and --invocation
    show it, 3h in time order; the bad values are skipped, counted on stderr, exit 0; the odd record is
    one line with its escapes shown escaped (it was a TypeError traceback, and raw escapes before that);
    an id with no record is said so on stderr, exit 0."""
    old_id = new_id()
    old = {
        "invocation_id": old_id,
        "function": "echo",
        "uuid": ECHO,
        "trigger": "direct",
        "ok": True,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - 7200)),
        "logs": [],
    }
    # Another writer's record, 90 minutes old, its time at +05:00: as text it sorts after this hour's.
    shifted = time.strftime("%Y-%m-%dT%H:%M:%S.000+05:00", time.gmtime(time.time() - 5400 + 5 * 3600))
    offset = {**old, "invocation_id": new_id(), "started_at": shifted}
    # Any producer (or a handler that rewrote its instance's renderer) can write such a record.
    odd = {
        **old,
        "invocation_id": new_id(),
        "logs": 5,
        "event": "ev\x1b[31mred\nline2",
        "node": "n\x1b]0;t\x07",
    }
    now = int(time.time() * 1000)
    asyncio.run(
        _produce(
            cluster.bootstrap,
            cluster.topic,
            [
                (ECHO.encode(), json.dumps(offset).encode(), now),
                (ECHO.encode(), json.dumps(old).encode(), now),
                (ECHO.encode(), json.dumps(odd).encode(), now),
                (ECHO.encode(), b"\xff not json", now),
                (ECHO.encode(), b'{"a": "record without the fields"}', now),
                # A lone surrogate escape: JSON that names no character, which no terminal could print.
                (
                    ECHO.encode(),
                    json.dumps({**old, "invocation_id": new_id(), "function": "\udcff"}).encode(),
                    now,
                ),
            ],
        )
    )
    fresh = invoke(cluster.nodes[1], ECHO, "fresh").json()["invocation_id"]
    recent = cluster.json_until("--since", "1h", want={fresh})
    assert old_id not in {x["invocation_id"] for x in recent}
    default = cluster.json_until(want={fresh})  # no --since: the last hour (DESIGN.md section 13)
    assert old_id not in {x["invocation_id"] for x in default}
    ids = [old_id, offset["invocation_id"], fresh]
    wide = cluster.json_until("--since", "3h", want=set(ids))
    assert [x["invocation_id"] for x in wide if x["invocation_id"] in ids] == ids  # by time, any offset
    r = cluster.logs("--invocation", old_id, "--json")
    assert r.returncode == 0 and [json.loads(x)["invocation_id"] for x in r.stdout.splitlines()] == [old_id]
    assert "skipped 3 records that are not invocation records" in r.stderr
    r = cluster.logs("--invocation", str(odd["invocation_id"]))  # the human form, every field from outside
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert r.stdout.count("\n") == 1 and "\x1b" not in r.stdout, r.stdout
    assert "ev\\x1b[31mred\\x0aline2" in r.stdout and "on n\\x1b]0;t\\x07" in r.stdout, r.stdout
    r = cluster.logs("--invocation", "no-such-invocation")
    assert r.returncode == 0 and r.stdout == "", r.stdout
    assert "no record of invocation 'no-such-invocation' on the topic" in r.stderr, r.stderr


class Follower:
    """`faas logs ARGS --follow --json` in a process of its own, its JSON lines collected in `seen` by a
    thread; leaving the block sends SIGINT and keeps the exit `code` and `stderr`."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path | None = None) -> None:
        self.args, self.env, self.cwd = args, env, cwd
        self.seen: list[dict[str, Any]] = []
        self.said: list[str] = []
        """Its stderr lines so far."""
        self.code: int | None = None
        self.stderr = ""

    def __enter__(self) -> Follower:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "framework", "logs", *self.args, "--follow", "--json"],
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
        )
        lines: Iterable[str] = self.proc.stdout or []
        self.reader = threading.Thread(target=lambda: self.seen.extend(json.loads(line) for line in lines))
        self.reader.start()
        errors: Iterable[str] = self.proc.stderr or []
        self.listener = threading.Thread(target=lambda: self.said.extend(errors))
        self.listener.start()
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self.proc
        proc.send_signal(signal.SIGINT)
        self.code = proc.wait(30)
        self.reader.join(10)
        self.listener.join(10)
        self.stderr = "".join(self.said)
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()


def test_follow_prints_new_invocations_and_ctrl_c_ends_quietly(cluster: Cluster) -> None:
    """1. `faas logs echo --follow --json --since 10m` runs. 2. echo is invoked on both nodes.
    3. SIGINT. Result: both invocations printed as they happen; exit 0 with no traceback."""
    env = {**os.environ, **cluster.env, "FAAS_MANIFEST": str(cluster.root / "functions.yaml")}
    with Follower(["echo", "--since", "10m"], env) as follower:
        seen, proc = follower.seen, follower.proc
        ids: set[str] = set()
        deadline = time.monotonic() + 90
        while not ids or not ids <= {x["invocation_id"] for x in seen}:
            assert time.monotonic() < deadline, f"not followed: {ids} vs {seen}"
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            if len(ids) < 2:  # the reader may still be positioning: keep invoking until one shows
                ids |= {invoke(n, ECHO, "follow").json()["invocation_id"] for n in cluster.nodes}
            time.sleep(0.5)
    code, stderr = follower.code, follower.stderr
    assert code == 0
    # Quiet: no traceback; at most the count of bad values an earlier test put on the topic, and, when it
    # started before any invocation was recorded, that the topic is not there yet.
    said = ("faas logs: skipped ", "faas logs: the broker has no topic ")
    assert all(line.startswith(said) for line in stderr.splitlines()), stderr


def test_unreachable_broker_is_one_line_and_exit_1(tmp_path: Path) -> None:
    root = write_project(tmp_path, MANIFEST, MODULES)
    port = free_port()
    r = run_cli(root, "logs", env={"FAAS_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}, timeout=60)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the Kafka broker at 127.0.0.1:{port}" in lines[0], r.stderr


def test_a_broker_that_stops_serving_reads_is_an_error_not_an_empty_answer(tmp_path: Path) -> None:
    """1. 20 records on the invocations topic, through a proxy in front of the broker. 2. The proxy drops
    every Fetch request from then on (a broker that stops serving reads). 3. `faas logs --since 1h`.
    Result: exit 1 after the stall limit, naming the partition, its position and its end offset (it
    printed nothing, as if the topic were empty, and exited 0; `--invocation` of a record that is there
    said "no record")."""
    root = write_project(tmp_path, MANIFEST, MODULES)
    port = free_port()
    broker = AdvertisedBroker(port).start()
    try:
        with StallingProxy(broker.port, port).running() as proxy:
            bootstrap = f"127.0.0.1:{port}"
            topic = f"t.invocations.{new_id()[:8]}"
            asyncio.run(_produce_to_0(bootstrap, topic, _records("stalled", 20)))
            proxy.drop_fetches = True
            env = {"FAAS_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FAAS_INVOCATIONS_TOPIC": topic}
            r = run_cli(root, "logs", "--since", "1h", env=env, timeout=120)
    finally:
        broker.stop()
    assert r.returncode == 1, (r.stdout, r.stderr)
    # Of 1, not 20: Tansu's end offset is its last batch's first offset + 1 (one batch of 20 here).
    assert f"reading {topic} stalled" in r.stderr and "0 (at offset 0 of " in r.stderr, r.stderr


def test_a_topic_that_does_not_exist_is_said(tmp_path: Path, broker: EmbeddedBroker) -> None:
    """`faas logs` with FAAS_INVOCATIONS_TOPIC naming no topic: exit 0 with nothing to print, and one line
    saying the topic is not there (a typo in its name went unseen: no output at all)."""
    root = write_project(tmp_path, MANIFEST, MODULES)
    topic = f"t.none.{new_id()[:8]}"
    env = {"FAAS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "FAAS_INVOCATIONS_TOPIC": topic}
    r = run_cli(root, "logs", env=env, timeout=60)
    assert r.returncode == 0 and r.stdout == "", (r.stdout, r.stderr)
    assert r.stderr.strip() == (
        f"faas logs: the broker has no topic {topic} (FAAS_INVOCATIONS_TOPIC): no node has recorded an "
        "invocation there yet"
    ), r.stderr


@pytest.mark.parametrize("since", ["10", "5x", "-1m", "m"])
def test_bad_since_is_a_usage_error(tmp_path: Path, since: str) -> None:
    root = write_project(tmp_path, MANIFEST, MODULES)
    r = run_cli(root, "logs", "--since", since, timeout=60)
    assert r.returncode == 2 and "--since" in r.stderr


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_invocation_id_is_a_usage_error(tmp_path: Path, value: str) -> None:
    """`faas logs --invocation ''` (an unset shell variable): exit 2 naming --invocation, before any broker
    is reached (it read the whole topic, then exited 0 with "no record of invocation ''")."""
    root = write_project(tmp_path, MANIFEST, MODULES)
    r = CliRunner().invoke(
        main,
        ["logs", "--invocation", value],
        env={"FAAS_MANIFEST": str(root / "functions.yaml"), "FAAS_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
    )
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    assert r.stderr.splitlines()[-1] == (
        "Error: Invalid value for '--invocation': is empty: give an invocation id, or leave the option out"
    ), r.stderr


def _record(function: str, uuid: str) -> bytes:
    return json.dumps(
        {
            "invocation_id": new_id(),
            "function": function,
            "uuid": uuid,
            "trigger": "direct",
            "ok": True,
            "started_at": "2030-01-01T00:00:00.000Z",
            "logs": [],
        }
    ).encode()


@pytest.fixture(scope="module")
def topic(broker: EmbeddedBroker) -> str:
    """An invocations topic holding one record of echo and one of `gone`, a function no manifest names."""
    name = f"t.inv.{new_id()[:8]}"
    now = int(time.time() * 1000)
    gone = new_id()
    asyncio.run(
        _produce(
            broker.bootstrap,
            name,
            [(ECHO.encode(), _record("echo", ECHO), now), (gone.encode(), _record("gone", gone), now)],
        )
    )
    return name


def test_since_reaching_before_1970_reads_the_whole_topic(
    tmp_path: Path, broker: EmbeddedBroker, topic: str
) -> None:
    """`faas logs --since 30000d` (and a length too long for a float), as `faas replay --since 30000d`
    takes it: exit 0 with the topic's records (Kafka refuses a negative time to look up)."""
    root = write_project(tmp_path, MANIFEST, MODULES)
    env = {"FAAS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "FAAS_INVOCATIONS_TOPIC": topic}
    for since in ("30000d", "9" * 400 + "d"):
        r = run_cli(root, "logs", "--since", since, "--json", env=env, timeout=90)
        assert r.returncode == 0 and r.stderr == "", r.stderr
        assert sorted(json.loads(line)["function"] for line in r.stdout.splitlines()) == ["echo", "gone"]


def test_a_name_no_function_has_is_read_and_warned_about_when_nothing_matches(
    tmp_path: Path, broker: EmbeddedBroker, topic: str
) -> None:
    """1. A topic with records of echo and of `gone` (removed from the manifest). 2. `faas logs gone`,
    `faas logs nope`, `faas logs boom` (in the manifest, no records), `faas logs <a uuid no one has>`.
    Result: all exit 0 (the topic legitimately holds removed functions' records); gone's record is shown
    with no warning; only `nope`, neither a function of the manifest nor a uuid, gets one warning line on
    stderr saying so."""
    root = write_project(tmp_path, MANIFEST, MODULES)
    env = {"FAAS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "FAAS_INVOCATIONS_TOPIC": topic}

    def logs(name: str) -> subprocess.CompletedProcess[str]:
        r = run_cli(root, "logs", name, "--json", env=env, timeout=90)
        assert r.returncode == 0, r.stderr
        return r

    r = logs("gone")
    assert [json.loads(line)["function"] for line in r.stdout.splitlines()] == ["gone"] and r.stderr == ""
    r = logs("nope")
    assert r.stdout == "" and r.stderr.splitlines() == [
        "faas logs: no function named 'nope' in "
        f"{root / 'functions.yaml'}, and no invocation records of it matched"
    ], r.stderr
    for quiet in ("boom", new_id()):
        r = logs(quiet)
        assert r.stdout == "" and r.stderr == "", (quiet, r.stderr)


def test_a_header_name_that_is_not_utf8_is_read_not_a_traceback(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. An invocations topic with, in one batch, a record carrying a header named by bytes that are not
    UTF-8 (Go clients and librdkafka send any bytes), then a plain one. 2. `faas logs --json`.
    Result: exit 0 with both records, no traceback (aiokafka's reader raised UnicodeDecodeError: `faas
    logs`, `replay`, `history`, `ls` and `deploy` failed on such a record while the topic held it)."""
    root = write_project(tmp_path, MANIFEST, MODULES)
    topic = f"t.inv.{new_id()[:8]}"
    odd, plain = _record("echo", ECHO), _record("boom", BOOM)
    produce_one_batch(
        broker.bootstrap,
        topic,
        [(ECHO.encode(), odd, [(RawHeaderName(b"x-\xff"), b"v")]), (BOOM.encode(), plain, [])],
    )
    env = {"FAAS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "FAAS_INVOCATIONS_TOPIC": topic}
    r = run_cli(root, "logs", "--json", env=env, timeout=90)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert [json.loads(line)["function"] for line in r.stdout.splitlines()] == ["echo", "boom"], r.stdout


def test_a_handlers_control_characters_are_shown_escaped() -> None:
    """A record whose log line and error message hold NUL and terminal escapes (a handler's binary output):
    rendered with them escaped (they would drive the reader's terminal); tabs and line breaks stay; a level
    without a colour gets no bare reset code."""
    record = {
        "started_at": "2026-12-03T10:00:00.000Z",
        "function": "f",
        "invocation_id": "i-1",
        "trigger": "direct",
        "ok": False,
        "error": {"type": "FunctionError", "message": "bad\x00\x1b[2J"},
        "logs": [{"time": "2026-12-03T10:00:00.001Z", "level": "INFO", "message": "a\x00b\x1b[31mc\td\ne"}],
    }
    text = render(record)
    assert "FunctionError: bad\\x00\\x1b[2J" in text
    assert "INFO    a\\x00b\\x1b[31mc\td\n" in text and "\x00" not in text and "\x1b[2J" not in text
    assert "INFO   \x1b[0m" not in text


def _records(tag: str, n: int) -> list[bytes]:
    now = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return [
        json.dumps(
            {"invocation_id": f"{tag}-{i}", "function": "echo", "uuid": ECHO, "trigger": "direct", "ok": True,
             "started_at": now, "duration_ms": 1.0, "logs": []}
        ).encode()
        for i in range(n)
    ]  # fmt: skip


async def _produce_to_0(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for value in values:
            await producer.send(topic, value, partition=0)
        await producer.flush()
    finally:
        await producer.stop()


def _follow_across_a_restart(
    root: Path, kind: type[EmbeddedBroker], old: int, new: int
) -> tuple[Follower, int, str]:
    """A broker of `kind` on a port of its own; `old` records on partition 0 of an invocations topic, which
    `faas logs --follow --json` prints; the broker killed and started again on the port, empty; `new`
    records produced there, waited for in the follower's output. Returns the follower (ended), the port
    and the topic."""
    port, topic = free_port(), f"t.inv.{new_id()[:8]}"
    first = kind(port=port).start()
    second: EmbeddedBroker | None = None
    env = {**os.environ, "FAAS_KAFKA_BOOTSTRAP_SERVERS": first.bootstrap, "FAAS_INVOCATIONS_TOPIC": topic}
    follower = Follower([], env, cwd=root)
    seen = follower.seen
    try:
        with follower:
            asyncio.run(_produce_to_0(first.bootstrap, topic, _records("old", old)))
            wait_for(lambda: len(seen) >= old, 60, 0.2, f"the first {old} records followed")
            first.kill()
            second = kind(port=port).start()
            asyncio.run(_produce_to_0(second.bootstrap, topic, _records("new", new)))
            wait_for(
                lambda: {f"new-{i}" for i in range(new)} <= {x["invocation_id"] for x in seen},
                60,
                0.2,
                f"the new broker's {new} records followed: {[x['invocation_id'] for x in seen[old:]]}",
            )
    finally:
        for b in (first, second):
            if b is not None:
                b.stop()
    assert follower.code == 0 and "Traceback" not in follower.stderr, follower.stderr
    return follower, port, topic


@pytest.mark.usefixtures("broker_kills")
def test_follow_reads_a_restarted_embedded_broker_from_its_start(tmp_path: Path) -> None:
    """1. A broker of its own; 30 records on partition 0 of the invocations topic; `faas logs --follow
    --json` prints them. 2. The broker is killed and a new, empty one started on the same port (a
    restarted embedded broker); 5 records are produced there.
    Result: the 5 are printed, and stderr says the broker is a new cluster. (The reader used to wait at
    offset 30 of the new topic: it printed nothing until the topic grew past 30, then skipped its first
    30 records, silently.)"""
    root = write_project(tmp_path, MANIFEST, MODULES)
    follower, port, topic = _follow_across_a_restart(root, EmbeddedBroker, 30, 5)
    said = f"127.0.0.1:{port} is a new cluster (restarted?): reading {topic} from its start"
    assert said in follower.stderr, follower.stderr


@pytest.mark.usefixtures("broker_kills")
def test_follow_reads_a_broker_restarted_under_the_same_cluster_id_from_its_start(tmp_path: Path) -> None:
    """1. A broker started without `--cluster-id` (DESIGN.md section 8's command: the same id at every
    start); 5 records on partition 0; `faas logs --follow --json` prints them. 2. The broker is killed and
    started again empty on the same port; 8 records are produced there.
    Result: all 8 are printed, and stderr says the broker no longer holds the records read. (Only the last 3
    were, silently: the reader went on from offset 5 of the new topic, and the probe saw the same id.)"""
    root = write_project(tmp_path, MANIFEST, MODULES)
    follower, _, topic = _follow_across_a_restart(root, SameIdBroker, 5, 8)
    assert f"no longer holds the records read of {topic} (restarted?)" in follower.stderr, follower.stderr


def test_follow_waits_out_a_broker_that_went_and_ctrl_c_ends_quietly(tmp_path: Path) -> None:
    """1. A broker of its own; one follower reads a topic with 3 records, another waits for a topic that is
    not there yet. 2. The broker stops. 3. SIGINT to both.
    Result: the first says once that the broker does not answer and that it waits; both keep running until
    the SIGINT, then exit 0 with no traceback (they printed aiokafka's tracebacks: the stop re-raised a
    fetch's cancellation, and the wait for the topic raised the metadata error)."""
    root = write_project(tmp_path, MANIFEST, MODULES)
    topic = f"t.inv.{new_id()[:8]}"
    broker = EmbeddedBroker(port=free_port()).start()
    env = {**os.environ, "FAAS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "FAAS_INVOCATIONS_TOPIC": topic}
    reading = Follower([], env, cwd=root)
    waiting = Follower([], {**env, "FAAS_INVOCATIONS_TOPIC": f"{topic}.later"}, cwd=root)
    try:
        with reading, waiting:
            asyncio.run(_produce_to_0(broker.bootstrap, topic, _records("r", 3)))
            wait_for(lambda: len(reading.seen) >= 3, 60, 0.2, "the 3 records followed")
            # The waiting one says nothing: its connection to the broker says it started (a start that
            # fails is the other case, exit 1, "cannot reach": tested apart).
            wait_for(lambda: _connected(waiting.proc.pid, broker.port), 60, 0.2, "the waiting one started")
            broker.stop()
            outage_said = lambda: any("does not answer" in line for line in reading.said)  # noqa: E731
            wait_for(outage_said, 60, 0.2, "the outage said")
            assert reading.proc.poll() is None and waiting.proc.poll() is None, reading.said + waiting.said
    finally:
        broker.stop()
    for follower in (reading, waiting):
        assert follower.code == 0 and "Traceback" not in follower.stderr, follower.stderr
    assert f"the broker at {broker.bootstrap} does not answer: waiting for it" in reading.stderr


def test_follow_says_what_it_skipped_as_it_follows(tmp_path: Path, broker: EmbeddedBroker) -> None:
    """1. `faas logs --follow` on a topic with one record. 2. Two values that are no invocation records, then
    a record. Result: while it still runs, stderr says it skipped 2 (it said so only once stopped)."""
    root = write_project(tmp_path, MANIFEST, MODULES)
    topic = f"t.inv.{new_id()[:8]}"
    env = {**os.environ, "FAAS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap, "FAAS_INVOCATIONS_TOPIC": topic}
    with Follower([], env, cwd=root) as follower:
        asyncio.run(_produce_to_0(broker.bootstrap, topic, _records("a", 1)))
        wait_for(lambda: len(follower.seen) >= 1, 60, 0.2, "the first record followed")
        asyncio.run(_produce_to_0(broker.bootstrap, topic, [b"not json", b"[1]", *_records("b", 1)]))
        wait_for(lambda: len(follower.seen) >= 2, 60, 0.2, "the record after the bad ones followed")
        skipped = "faas logs: skipped 2 records that are not invocation records\n"
        wait_for(lambda: skipped in follower.said, 10, 0.1, f"the skipped ones said: {follower.said}")
    assert follower.code == 0 and follower.stderr.count("skipped") == 1, follower.stderr


def test_ctrl_c_while_connecting_ends_quietly(tmp_path: Path) -> None:
    """1. `faas logs --follow` on a port that accepts connections and never answers. 2. SIGINT once it is
    connected. Result: no warning of an unclosed consumer (the consumer's start was cancelled and the
    consumer left to the collector), no traceback."""
    root = write_project(tmp_path, MANIFEST, MODULES)
    with silent_listener() as port:
        env = {**os.environ, "FAAS_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}
        with Follower([], env, cwd=root) as follower:
            wait_for(lambda: _connected(follower.proc.pid, port), 30, 0.1, "connected to the silent port")
    assert "Unclosed" not in follower.stderr and "Traceback" not in follower.stderr, follower.stderr


def _connected(pid: int, port: int) -> bool:
    """Whether process `pid` holds an established TCP connection to `port` on this machine."""
    try:
        connections = psutil.Process(pid).net_connections("tcp")
    except psutil.Error:
        return False
    return any(c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED for c in connections)


def test_started_at_in_lower_case_is_a_time() -> None:
    """RFC 3339 allows `t` and `z`: such a `started_at` (another tool's record) is a time for `--since` and
    the order, not an unreadable one (it fell back to the Kafka timestamp: a record two hours old showed
    under `--since 10m`, first)."""
    upper = _started_ms("2026-12-05T23:54:36.407Z", 0)
    assert (
        upper == _started_ms("2026-12-05t23:54:36.407z", 0) == _started_ms("2026-12-06T00:54:36.407+01:00", 0)
    )
    assert upper == 1_796_514_876_407 and _started_ms("yesterday", 7) == 7
