"""Time limits count the time a process could run (`framework/run_clock.py`): a node or an instance
that was stopped (SIGSTOP, a frozen cgroup, a paused VM) does not fail what it held for the time it stood
still; a handler that runs past its limit, or an instance stopped while its node runs, still does."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import orjson
import psutil
import pytest

from framework.run_clock import EVERY, GAP, RunClock, keep
from tests.support import Node, metric, wait_for, write_project

SLEEPY = "dddddddd-0000-4000-8000-000000000001"
BLOCKING = "dddddddd-0000-4000-8000-000000000002"
SINGLE = "dddddddd-0000-4000-8000-000000000003"

MANIFEST = f"""
functions:
  - name: sleepy
    uuid: {SLEEPY}
    handler: functions.h:sleepy
    state: productive
    timeout: 1
  - name: blocking
    uuid: {BLOCKING}
    handler: functions.h:blocking
    state: productive
    timeout: 1
  - name: single
    uuid: {SINGLE}
    handler: functions.h:sleepy
    state: productive
    timeout: 5
    instances: {{max: 1, concurrency: 1}}
"""

HANDLERS = """
import asyncio, os, time

async def sleepy(payload, ctx):
    open(payload["mark"], "w").close()
    await asyncio.sleep(payload["for"])
    return {"slept": payload["for"], "instance": ctx.instance_id, "remaining": ctx.remaining()}

def blocking(payload, ctx):  # a def handler: runs on a thread of its instance
    open(payload["mark"], "w").close()
    time.sleep(payload["for"])
    return {"slept": payload["for"], "instance": ctx.instance_id, "remaining": ctx.remaining()}
"""

STOPPED = 3.0
"""Seconds a process is stopped: past a 1 s limit and the node's 1 s grace after it."""


# ---- the clock itself ----


def test_a_gap_in_which_the_process_used_no_cpu_counts_as_stood_still() -> None:
    """1. A clock sampled, then nothing samples it for GAP + 0.3 s while the process sleeps (as a stopped
    process would: no CPU). Result: the next sample counts the gap less EVERY. A short gap counts nothing."""
    clock = RunClock()
    time.sleep(0.05)
    assert clock.sample() == 0.0
    time.sleep(GAP + 0.3)
    counted = clock.sample()
    assert GAP + 0.3 - EVERY <= counted < GAP + 2, counted
    assert clock.stood == counted


def test_a_process_that_runs_in_short_bursts_between_stops_still_sees_its_clock_move() -> None:
    """1. Ten times: GAP + 0.1 s with nothing sampling and no CPU (a stop), then a sample and 0.02 s of run
    (a node on a freezer or CPU quota with a long period). Result: the clock moved at least EVERY a cycle,
    so a limit comes (a gap counted whole left it where it was: a stuck instance lived for good)."""
    clock = RunClock()
    loop = asyncio.new_event_loop()
    try:
        start = clock.now(loop)
        for _ in range(10):
            time.sleep(GAP + 0.1)
            clock.sample()
            time.sleep(0.02)
        moved = clock.now(loop) - start
    finally:
        loop.close()
    assert moved >= 10 * EVERY, (moved, clock.stood)


def test_a_gap_spent_computing_is_not_a_stop() -> None:
    """1. A clock sampled, then the process computes for GAP + 0.3 s with nothing sampling (a loop blocked
    in a computation). Result: nothing counted: the process ran all along."""
    clock = RunClock()
    end = time.monotonic() + GAP + 0.3
    while time.monotonic() < end:
        sum(range(1000))
    assert clock.sample() == 0.0
    assert clock.stood == 0.0


def test_a_thread_blocked_in_a_sleep_beside_a_sampler_is_not_a_stop() -> None:
    """1. A thread samples the clock every 0.05 s (an instance's watchdog). 2. The main thread sleeps
    GAP + 0.5 s (an `async def` handler blocking its loop in `time.sleep`), then samples. Result: nothing
    counted, so that handler's `Timeout` stands."""
    clock = RunClock()
    done = threading.Event()

    def sampler() -> None:
        while not done.is_set():
            clock.sample()
            time.sleep(0.05)

    t = threading.Thread(target=sampler)
    t.start()
    try:
        time.sleep(GAP + 0.5)
        clock.sample()
    finally:
        done.set()
        t.join()
    assert clock.stood == 0.0


def test_restart_forgets_the_gap_of_a_sampler_that_slept() -> None:
    """1. A clock, then GAP + 0.2 s with nothing sampling (an idle instance: its watchdog sleeps). 2.
    `restart` (the watchdog wakes for a request). Result: the next sample counts nothing."""
    clock = RunClock()
    time.sleep(GAP + 0.2)
    clock.restart()
    assert clock.sample() == 0.0


def test_the_nodes_keeper_samples_the_loop_so_an_idle_loop_counts_nothing() -> None:
    """1. `keep` on a loop, which then idles GAP + 0.5 s. Result: the process clock counted nothing (the
    keeper's samples every 0.1 s keep each gap short), where a clock nobody sampled would count the idle
    time as stood still."""
    from framework.run_clock import RUN_CLOCK

    async def idle() -> float:
        keep(asyncio.get_running_loop())
        before = RUN_CLOCK.stood
        await asyncio.sleep(GAP + 0.5)
        RUN_CLOCK.sample()
        return RUN_CLOCK.stood - before

    assert asyncio.run(idle()) == 0.0


def test_a_process_stopped_counts_its_stop() -> None:
    """1. A child process samples a clock every 0.05 s and prints what it counted. 2. It is stopped
    (SIGSTOP) for 1.5 s, then continued. Result: it counted about 1.5 s (less EVERY), once."""
    script = (
        "import time, sys\n"
        "from framework.run_clock import RunClock\n"
        "c = RunClock()\n"
        "print('up', flush=True)\n"
        "end = time.monotonic() + 4\n"
        "while time.monotonic() < end:\n"
        "    c.sample(); time.sleep(0.05)\n"
        "print(round(c.stood, 2), flush=True)\n"
    )
    import subprocess
    import sys

    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) as child:
        assert child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "up"
            os.kill(child.pid, signal.SIGSTOP)
            time.sleep(1.5)  # the stop itself is the scenario
            os.kill(child.pid, signal.SIGCONT)
            stood = float(child.stdout.readline())
        finally:
            child.kill()
    assert 1.5 - EVERY <= stood < 2.2, stood


# ---- a node and its instances, stopped ----


@pytest.fixture
def node(tmp_path: Path, nodes: Callable[..., Node]) -> Node:
    root = write_project(tmp_path, MANIFEST, {"h": HANDLERS})
    return nodes(
        root, None, kafka=False, env={"FAAS_QUEUE_TIMEOUT": "1", "FAAS_HTTP_BODY_TIMEOUT": "1"}
    ).wait_ready()


def _invoke(node: Node, uuid: str, payload: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{node.url}/functions/{uuid}/invoke", json=payload, timeout=30)


@contextmanager
def _calling(node: Node, uuid: str, payload: dict[str, Any]) -> Iterator[Future[httpx.Response]]:
    with ThreadPoolExecutor(1) as pool:
        yield pool.submit(_invoke, node, uuid, payload)


def _stopped(pids: list[int], seconds: float) -> None:
    """Stop `pids` (in order) for `seconds`, then continue them (in reverse order)."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)  # the stop itself is the scenario
    finally:
        for pid in reversed(pids):
            os.kill(pid, signal.SIGCONT)


def _tree(node: Node) -> list[int]:
    """The node's pid, then every process under it (its template and instances)."""
    return [node.proc.pid, *(p.pid for p in psutil.Process(node.proc.pid).children(recursive=True))]


def _started(mark: Path) -> None:
    wait_for(mark.exists, 20, message="the handler never started")


@pytest.mark.parametrize("uuid", [SLEEPY, BLOCKING], ids=["async", "def"])
def test_a_node_stopped_with_its_instances_answers_what_they_held(
    node: Node, tmp_path: Path, uuid: str
) -> None:
    """1. A function with a 1 s limit whose handler sleeps 0.5 s (an `async def`; a `def` on a thread) is
    invoked. 2. Once it runs, the node, its template and its instances are stopped together for 3 s (a
    frozen cgroup, `docker pause`, a paused VM), then continued. Result: 200 with the handler's result, its
    `ctx.remaining()` not 0, and the next call is warm on the same instance: it was neither answered
    `Timeout` (the instance counted 3 s of its limit it never ran) nor killed as stuck (the node counted
    them past its grace)."""
    mark = tmp_path / "mark"
    with _calling(node, uuid, {"mark": str(mark), "for": 0.5}) as call:
        _started(mark)
        _stopped(_tree(node), STOPPED)
        r = call.result()
    assert r.status_code == 200, (r.status_code, r.text, node.tail())
    first = r.json()
    assert first["result"]["slept"] == 0.5
    # 1 s less what it ran before and after the stop (its sleep's end came during it), not 0.0
    assert 0.2 < first["result"]["remaining"] < 1.0, first
    again = _invoke(node, uuid, {"mark": str(tmp_path / "again"), "for": 0})
    assert again.status_code == 200, again.text
    assert (
        again.json()["result"]["instance"] == first["result"]["instance"] and not again.json()["cold_start"]
    )
    assert "did not cut off" not in node.tail(200)


def test_a_node_stopped_alone_reads_the_answer_its_instance_gave_meanwhile(
    node: Node, tmp_path: Path
) -> None:
    """1. A call whose handler sleeps 0.5 s of a 1 s limit. 2. Once it runs, the node alone is stopped for
    3 s (its instance answers meanwhile, into its socket), then continued. Result: 200 with the result, the
    same instance serves the next call (the node used to kill it as stuck the moment it ran again, its
    answer unread: 504 Timeout)."""
    mark = tmp_path / "mark"
    with _calling(node, SLEEPY, {"mark": str(mark), "for": 0.5}) as call:
        _started(mark)
        _stopped([node.proc.pid], STOPPED)
        r = call.result()
    assert r.status_code == 200, (r.status_code, r.text, node.tail())
    again = _invoke(node, SLEEPY, {"mark": str(tmp_path / "again"), "for": 0})
    assert again.json()["result"]["instance"] == r.json()["result"]["instance"], again.text


def test_a_request_queued_on_a_stopped_node_is_served_after_it(node: Node, tmp_path: Path) -> None:
    """1. A function of one instance taking one request at a time, on a node whose queue timeout is 1 s: a
    call that sleeps 0.5 s, and a second one queued behind it. 2. The node alone is stopped for 3 s, then
    continued. Result: both answered 200 (the queued one was answered Overloaded as the node ran again:
    its 1 s wait had passed on the loop's clock, all of it while the node stood still)."""
    first_mark, second_mark = tmp_path / "first", tmp_path / "second"
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(_invoke, node, SINGLE, {"mark": str(first_mark), "for": 0.5})
        _started(first_mark)
        second = pool.submit(_invoke, node, SINGLE, {"mark": str(second_mark), "for": 0})
        wait_for(lambda: metric(node, "faas_queued_requests", function="single") == 1, 10)
        _stopped([node.proc.pid], STOPPED)
        answers = [first.result(), second.result()]
    assert [a.status_code for a in answers] == [200, 200], [a.text for a in answers]


def test_an_instance_stopped_while_its_node_runs_is_still_killed_at_its_limit(
    node: Node, tmp_path: Path
) -> None:
    """1. A call whose handler sleeps 0.5 s of a 1 s limit. 2. Once it runs, its instance alone is stopped
    (the node runs on). Result: 504 Timeout within a few seconds, the instance killed: to its node, an
    instance that does not answer is stuck, whatever the reason."""
    mark = tmp_path / "mark"
    with _calling(node, SLEEPY, {"mark": str(mark), "for": 0.5}) as call:
        _started(mark)
        # the instance is the newest process under the node (its template forked it)
        instance = max(psutil.Process(node.proc.pid).children(recursive=True), key=lambda p: p.create_time())
        started = time.monotonic()
        instance.send_signal(signal.SIGSTOP)
        try:
            r = call.result(timeout=20)
        finally:
            if instance.is_running():
                instance.send_signal(signal.SIGCONT)
    assert r.status_code == 504, (r.status_code, r.text)
    assert r.json()["error"]["type"] == "Timeout"
    assert time.monotonic() - started < 5
    assert "did not cut off" in node.tail(200)


def _request_in_two_parts(split: int) -> tuple[bytes, bytes]:
    """A direct invocation's bytes (head and JSON body), cut at `split` (negative: from the end)."""
    body = orjson.dumps({"mark": "/dev/null", "for": 0})
    head = (
        f"POST /functions/{SLEEPY}/invoke HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    whole = head + body
    return whole[:split], whole[split:]


def _unread(server_port: int, client_port: int) -> int | None:
    """Bytes the node's end of a connection has received and not read (its socket's receive queue, from
    /proc/net/tcp), None while that socket is not listed."""
    want = (f"{server_port:04X}", f"{client_port:04X}")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1].split(":")[1], fields[2].split(":")[1]) == want:
            return int(fields[4].split(":")[1], 16)
    return None


def _answer_of(sock: socket.socket) -> bytes:
    sock.settimeout(20)
    answer = b""
    while chunk := sock.recv(65536):
        answer += chunk
    return answer


@pytest.mark.parametrize("split", [-5, 20], ids=["mid-body", "mid-head"])
def test_what_a_client_sent_while_the_node_stood_still_is_read_not_refused(node: Node, split: int) -> None:
    """1. A node whose body and head timeouts are 1 s (`FAAS_HTTP_BODY_TIMEOUT`). 2. A client sends part of
    a request (all but the last 5 bytes of its body; the first 20 bytes of its head), and the node reads
    it (its socket's receive queue is empty). 3. The node alone is
    stopped for 3 s; the client sends the rest meanwhile. 4. The node is continued. Result: 200 with the
    result, not 400 "body incomplete" or "its head did not arrive" (as the node ran again, its timers could
    find the request's time up before it read the bytes waiting in its socket)."""
    first, rest = _request_in_two_parts(split)
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(first)
        wait_for(lambda: _unread(node.port, sock.getsockname()[1]) == 0, 10, message="the node read nothing")
        os.kill(node.proc.pid, signal.SIGSTOP)
        try:
            sock.sendall(rest)
            time.sleep(STOPPED)  # the stop itself is the scenario
        finally:
            os.kill(node.proc.pid, signal.SIGCONT)
        answer = _answer_of(sock)
    assert answer.startswith(b"HTTP/1.1 200"), answer[:300]


def test_a_client_that_stalls_is_still_refused(node: Node) -> None:
    """1. The same node. 2. A client sends all but the last 5 bytes of a body and then nothing. Result: 400
    "body incomplete" within a few seconds: the clock the node keeps still runs while it runs."""
    first, _ = _request_in_two_parts(-5)
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", node.port)) as sock:
        sock.sendall(first)
        answer = _answer_of(sock)
    assert answer.startswith(b"HTTP/1.1 400") and b"body incomplete" in answer, answer[:300]
    assert time.monotonic() - started < 5
