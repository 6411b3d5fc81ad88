"""The memory guard's measure of an instance's family: the processes found, and which bytes count."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest

from framework.runtime import memory
from framework.runtime.family import descendants
from framework.runtime.handle import InstanceHandle
from framework.runtime.memory import (
    MIB,
    MemoryGuard,
    anonymous_bytes,
    own_bytes,
    resident_bytes,
    unique_bytes,
)
from tests.support import wait_for

TREE = """
import subprocess, threading, time
# A child started by a worker thread (as a sync handler's would be), and a shell with a child of its own.
threading.Thread(target=lambda: subprocess.Popen(["sleep", "60"])).start()
subprocess.Popen(["sh", "-c", "sleep 61 & wait"])
time.sleep(60)
"""

FORKED = """
import os, sys, time
ballast = bytearray(40 * 1024 * 1024)  # zero-filled: every page touched, then shared with the fork
if os.fork() == 0:
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.01)
    own = bytearray(60 * 1024 * 1024)  # the child's own pages
    open(sys.argv[1] + ".done", "w").close()
time.sleep(60)
"""


@pytest.fixture
def started() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Processes a test starts, each in a session of its own: its whole tree is killed at the end."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def run(started: list[subprocess.Popen[bytes]], script: str, *args: str) -> int:
    p = subprocess.Popen([sys.executable, "-c", script, *args], start_new_session=True)
    started.append(p)
    return p.pid


class FakeInstance:
    """What the guard reads of an instance, and the kill it asks for."""

    def __init__(self, pid: int) -> None:
        self.pid, self.ready, self.dead = pid, True, False
        self.id, self.spec = "f-0", SimpleNamespace(name="f")
        self.killed: list[str] = []

    def known_pid(self) -> int:
        return self.pid

    def kill_for(self, reason: str, message: str) -> None:
        self.killed.append(f"{reason}: {message}")


def test_the_family_holds_grandchildren_and_the_children_of_worker_threads(
    started: list[subprocess.Popen[bytes]],
) -> None:
    """1. A process starts `sleep` from a worker thread and a shell that starts `sleep` of its own.
    Result: its descendants are those three processes; a process that is gone has none."""
    pid = run(started, TREE)

    def commands() -> list[bytes]:
        found = []
        for p in descendants(pid):
            with contextlib.suppress(OSError):
                found.append(Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[0])
        return sorted(found)

    # Until each has exec'd its program, a process still shows its parent's command line.
    wait_for(lambda: commands() == [b"sh", b"sleep", b"sleep"], message=f"sh, sleep, sleep: {commands()}")
    assert descendants(2**22 + 1) == []  # above pid_max: no such process


def test_pages_a_fork_shares_with_the_instance_count_once(
    started: list[subprocess.Popen[bytes]], tmp_path: Path
) -> None:
    """1. An "instance" holds 40 MB and forks; the child shares those pages (copy-on-write).
    2. The guard samples it with a limit 20 MB above the instance's own RSS.
    3. The child allocates 60 MB of its own; the guard samples again.
    Result: after 2 it is not killed, though the cheap bound (the child's anonymous memory) was over;
    after 3 it is, the message naming the process it started."""
    go = tmp_path / "go"
    pid = run(started, FORKED, str(go))
    [child] = wait_for(lambda: descendants(pid) or None, message="the fork")
    rss = wait_for(lambda: r if (r := resident_bytes(pid) or 0) > 40 * MIB else None, message="ballast")
    limit_mb = rss // MIB + 20
    assert rss + anonymous_bytes(child) > limit_mb * MIB  # the bound alone would kill it
    assert (unique_bytes(child) or 0) < 20 * MIB and own_bytes(child, anonymous_bytes(child)) < 20 * MIB
    inst = FakeInstance(pid)
    guard = MemoryGuard(lambda: [(cast(InstanceHandle, inst), limit_mb)])
    guard.check()
    assert inst.killed == []
    go.touch()
    wait_for(lambda: Path(f"{go}.done").exists(), message="the child's own 60 MB")
    deadline = time.monotonic() + 10
    while not inst.killed and time.monotonic() < deadline:
        guard.check()
        time.sleep(0.05)
    [message] = inst.killed
    assert message.startswith("memory: instance f-0 of function f was killed")
    assert "MB of it in 1 process it started" in message
    assert message.endswith(f"memory limit (instances.memory_mb: {limit_mb})")


MAPPED = """
import mmap, sys, time
with open(sys.argv[1], "rb") as f:
    m = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)
total = sum(m[i] for i in range(0, len(m), 4096))  # every page read: resident, and only ours
open(sys.argv[1] + ".done", "w").close()
time.sleep(60)
"""


def test_a_process_is_charged_its_anonymous_memory_not_the_files_it_maps(
    started: list[subprocess.Popen[bytes]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. A process maps a 50 MB file privately and reads every page.
    2. Its unique set size is read as usual, then as if `smaps_rollup` could not be read (a non-dumpable
    program, an old kernel).
    Result: its unique set size holds the file's pages, but what it counts toward a limit is its anonymous
    memory, both ways: a file's pages are the page cache's (reclaimable), not the handler's."""
    data = tmp_path / "data"
    data.write_bytes(b"\1" * 50 * MIB)
    pid = run(started, MAPPED, str(data))
    wait_for(lambda: Path(f"{data}.done").exists(), message="the file read")
    unique = unique_bytes(pid)
    assert unique is not None and unique > 40 * MIB
    assert own_bytes(pid, anonymous_bytes(pid)) == anonymous_bytes(pid) < 20 * MIB
    monkeypatch.setattr(memory, "unique_bytes", lambda pid: None)
    assert own_bytes(pid, anonymous_bytes(pid)) == anonymous_bytes(pid) < 20 * MIB


def test_a_size_just_over_the_limit_never_reads_as_the_limit() -> None:
    """A message said "its resident memory (64 MB) went over ... memory_mb: 64": sizes are rounded up to
    a tenth of a MB, so one just over the limit reads as more than it."""
    inst = cast(InstanceHandle, FakeInstance(1))
    assert memory.over_limit(inst, 64 * MIB, 64) is None
    message = memory.over_limit(inst, 64 * MIB + 1, 64)
    assert message is not None and "its resident memory (64.1 MB) went over" in message
    message = memory.over_limit(inst, 60 * MIB, 64, (5 * MIB + 2, 2))
    assert message is not None and "(65.1 MB, 5.1 MB of it in 2 processes it started)" in message
    assert message.endswith("(instances.memory_mb: 64)"), message  # it served: no more is said


def test_an_instance_over_its_limit_before_it_served_is_told_to_raise_it() -> None:
    """Killed while importing or at its HELLO (not ready): no call can run under this limit, so the message
    says so, whether the guard's sample or the check at the HELLO found it."""
    fake = FakeInstance(1)
    fake.ready = False
    message = memory.over_limit(cast(InstanceHandle, fake), 70 * MIB, 64)
    assert message is not None
    assert message.endswith(
        "went over the function's memory limit (instances.memory_mb: 64) before it served a call (the "
        "interpreter, the platform and its imports hold that much): raise the limit"
    ), message
