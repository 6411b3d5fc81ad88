"""An instance's processes die with it: those in a group of their own, and an instance moved out of it."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from framework.errors import Timeout
from framework.runtime import Runtime
from framework.runtime.handle import InstanceHandle
from tests.runtime.conftest import SpecFactory, alive, call, until


def _instance(runtime: Runtime, name: str) -> InstanceHandle:
    [inst] = [i for p in runtime._all_pools() for i in p.instances if p.spec.name == name]
    return inst


async def test_an_instance_a_handler_moved_out_of_its_group_is_killed_all_the_same(
    runtime: Runtime, spec: SpecFactory, tmp_path: Path
) -> None:
    """1. A handler (limit 1 s) moves its instance into its template's process group, then blocks its loop
    for 30 s. Result: answered Timeout with the instance killed, and the instance's process is gone within
    seconds (the node's kill signalled a process group that no longer existed: the instance lived on until
    its blocking call returned)."""
    note = tmp_path / "pid"
    s = spec("escape", timeout=1, max=1)
    try:
        with pytest.raises(Timeout, match="instance killed"):
            await call(runtime, s, {"note": str(note), "block": 30})
        pid = int(note.read_text())
        await until(lambda: not alive(pid), 5, f"instance {pid} gone")
    finally:
        if note.exists():
            with contextlib.suppress(OSError):
                os.kill(int(note.read_text()), signal.SIGKILL)


@pytest.mark.parametrize("end", ["kill", "close"])
async def test_a_process_in_a_group_of_its_own_goes_with_its_instance(
    runtime: Runtime, spec: SpecFactory, end: str
) -> None:
    """1. A handler starts `sleep 300` in a process group of its own (`process_group=0`) and another in a
    session of its own (`start_new_session=True`). 2. Its instance is killed (`kill`), or closed as an idle
    one is and exits on its own (`close`). Result: the first `sleep` is gone with the instance (it outlived
    both, reparented to init); the second is left running, the handler's to stop (README, Limits)."""
    s = spec("own_group", max=1)
    value, _ = await call(runtime, s, {})
    try:
        assert alive(value["child"]) and alive(value["session"])
        inst = _instance(runtime, s.name)
        inst.kill() if end == "kill" else inst.close()
        await until(lambda: not alive(value["pid"]), 10, "the instance gone")
        await until(lambda: not alive(value["child"]), 5, "its child in a group of its own gone")
        assert alive(value["session"])
    finally:
        for pid in (value["child"], value["session"]):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


CHILD = """
import os, subprocess
from framework.runtime.family import kill_descendants, parent_of
out = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
grouped = subprocess.Popen(["sleep", "300"], process_group=0, **out)
apart = subprocess.Popen(["sleep", "300"], start_new_session=True, **out)
try:
    assert parent_of(grouped.pid) == os.getpid() and parent_of(2**22 + 1) is None
    killed = kill_descendants(os.getpid())
    code = grouped.wait(timeout=5)
    print(killed, code, apart.poll())
finally:
    grouped.kill()
    apart.kill()
"""


def test_kill_descendants_spares_the_caller_and_processes_of_another_session() -> None:
    """1. A process starts `sleep` in a group of its own and `sleep` in a session of its own, then calls
    `kill_descendants` on itself. Result: the first is SIGKILLed, the second still runs, the caller lives
    on to say so."""
    done = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", str(-signal.SIGKILL), "None"]
