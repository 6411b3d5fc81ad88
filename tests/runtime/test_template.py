"""The template's report of how its instances ended: wait statuses read off the control socket."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import site
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from framework.runtime import Runtime
from framework.runtime.template import _KEPT, Template, describe_exit
from framework.settings import Settings
from tests.runtime.conftest import SpecFactory, call


@pytest.mark.parametrize(
    ("status", "told"),
    [
        (None, "exited"),
        (0, "exited with code 0"),
        (3 << 8, "exited with code 3"),
        (signal.SIGSEGV, "was killed by signal 11 (SIGSEGV)"),
        (signal.SIGKILL | 0x80, "was killed by signal 9 (SIGKILL)"),  # with a core dump
        (100, "was killed by signal 100"),  # a number no name is known for
    ],
)
def test_describe_exit(status: int | None, told: str) -> None:
    assert describe_exit(status) == told


def test_a_real_status_reads_as_described() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(7)
    _, status = os.waitpid(pid, 0)
    assert describe_exit(status) == "exited with code 7"


def _fed_template() -> tuple[Template, socket.socket]:
    """A Template whose control socket is one end of a pair the test writes the template's messages to."""
    template = Template()
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    template._ctrl = ours
    template._loop = asyncio.get_running_loop()
    template._loop.add_reader(ours.fileno(), template._read_statuses, ours)
    return template, theirs


async def _told(fut: asyncio.Future[int | None], limit: float = 5.0) -> int | None:
    async with asyncio.timeout(limit):
        return await fut


async def test_a_status_reaches_whoever_waits_for_it_whatever_comes_first() -> None:
    """1. One waiter registers before its status arrives, another after. 2. Garbage and malformed
    messages come between. Result: each waiter gets its own status; the garbage is ignored; a forked pid is
    told once."""
    template, theirs = _fed_template()
    loop = asyncio.get_running_loop()
    early: asyncio.Future[int | None] = loop.create_future()
    template.when_exited(101, early.set_result, wait=10)
    for message in (b"garbage", b"exit x y", b"exit 1", b"fork inst-1 202", b"exit 101 768", b"exit 102 11"):
        theirs.send(message)
    assert await _told(early) == 768
    await _until(lambda: 102 in template._statuses)
    late: asyncio.Future[int | None] = loop.create_future()
    template.when_exited(102, late.set_result, wait=10)
    assert late.result() == 11
    assert template.forked_pid("inst-1") == 202
    assert template.forked_pid("inst-1") is None
    template.stop()
    theirs.close()


async def test_no_status_in_time_is_told_as_unknown() -> None:
    template, theirs = _fed_template()
    fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
    t = time.monotonic()
    template.when_exited(4242, fut.set_result, wait=0.2)
    assert await _told(fut) is None
    assert 0.15 < time.monotonic() - t < 3
    template.stop()
    theirs.close()


async def test_a_gone_template_tells_every_waiter_at_once() -> None:
    """1. Two waiters with a long wait. 2. The template's end of the control socket closes (it died).
    Result: both are told None at once, not after their wait."""
    template, theirs = _fed_template()
    loop = asyncio.get_running_loop()
    futs: list[asyncio.Future[int | None]] = [loop.create_future() for _ in range(2)]
    for pid, fut in zip((1, 2), futs, strict=True):
        template.when_exited(pid, fut.set_result, wait=60)
    theirs.close()
    assert [await _told(f) for f in futs] == [None, None]
    template.stop()


async def test_unclaimed_statuses_are_bounded() -> None:
    template, theirs = _fed_template()
    for first in range(1, _KEPT + 50, 50):  # in rounds: the socket's buffer holds a few hundred messages
        last = min(first + 50, _KEPT + 50)
        for pid in range(first, last):
            theirs.send(b"exit %d 0" % pid)
        newest = last - 1
        await _until(lambda: newest in template._statuses)  # noqa: B023 (awaited within the round)
    assert len(template._statuses) == _KEPT
    assert 1 not in template._statuses  # the oldest went first
    template.stop()
    theirs.close()


async def _until(check: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = time.monotonic() + limit
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def _mapped_kb(pid: int, name: str) -> int:
    """Resident KB of the executable mappings of `name` in process `pid`."""
    total, inside = 0, False
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            parts = line.split()
            if parts and "-" in parts[0] and not parts[0].endswith(":"):
                inside = name in line and parts[1].startswith("r-x")
            elif inside and parts[0] == "Rss:":
                total += int(parts[1])
    return total


async def test_the_template_ran_a_loop_once_and_kept_nothing_of_it(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. One call (the template is up). Result: the template has run an instance's event loop (the uvloop
    code the instance runs is resident in the template too, so instances share those pages instead of the
    first one counting them as its own) and kept nothing of it: one thread, no epoll, eventfd or io_uring
    descriptor."""
    value, _ = await call(runtime, spec("echo"))
    pid = runtime._template.pid
    assert pid is not None
    # Of the uvloop code an instance runs, the template has most resident (importing alone: a third).
    assert _mapped_kb(pid, "uvloop/loop.") > 0.8 * _mapped_kb(value["pid"], "uvloop/loop.")
    kinds = {os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
    assert not [k for k in kinds if any(x in k for x in ("eventpoll", "eventfd", "io_uring"))], kinds
    assert "Threads:\t1\n" in Path(f"/proc/{pid}/status").read_text()  # noqa: ASYNC240


async def test_a_replaced_secrets_folder_renews_the_template_once(tmp_path: Path) -> None:
    """1. A runtime hides `secrets`.
    2. The folder is replaced by another (another inode); the watcher knows it went; the runtime's own
       re-read (`refresh_secrets`) sees the new folder first, then the watcher's report that it appeared
       comes (the order the node's watcher may give).
    3. It is deleted and made again in place, and only the watcher reports it.
    Result: step 2 makes one fresh template, not two (the fresh one looked after the old folder went);
    step 3 makes one, though the folder made in place may have the old one's inode number."""
    folder = tmp_path / "secrets"
    folder.mkdir()
    rt = Runtime(Settings(manifest=tmp_path / "functions.yaml", secrets_dir=folder))
    await rt.start()
    try:
        first = rt._template
        (tmp_path / "new").mkdir()  # another inode for sure (a folder made in place may reuse the old one's)
        shutil.rmtree(folder)
        went_at = time.monotonic()
        (tmp_path / "new").rename(folder)
        rt.refresh_secrets()
        second = rt._template
        assert second is not first
        rt.secrets_folder_appeared(went_at)
        assert rt._template is second
        shutil.rmtree(folder)
        went_at = time.monotonic()
        folder.mkdir()
        rt.secrets_folder_appeared(went_at)
        assert rt._template is not second
    finally:
        await rt.stop(0)


async def test_a_hang_up_while_the_node_lives_leaves_the_instances_alone(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. An instance serves. 2. SIGHUP reaches the template while its node (this process) lives, as a
    terminal's hang-up reaches the process group of a `nohup faas run`. Result: the template and the
    instance live on and the next call is served by the same instance (the template's SIGHUP is its node's
    death signal, and only then kills every instance)."""
    s = spec("echo", max=1)
    value, _ = await call(runtime, s)
    template = runtime._template
    assert template.pid is not None
    os.kill(template.pid, signal.SIGHUP)
    await call(runtime, spec("echo", name="other", max=1))  # a cold start: through the template's loop
    again, _ = await call(runtime, s)
    assert again["instance"] == value["instance"] and template.alive()
    assert _running(value["pid"])


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_a_burst_of_spawns_beyond_the_sockets_room_waits_and_kills_nothing() -> None:
    """1. A running template is stopped (SIGSTOP), so it reads none of the spawns sent to it. 2. Instances
    are asked for until its control socket is full, and 100 more. 3. It is continued.
    Result: every spawn returned (none raised); the same template process lives on (a full socket used to
    make the node stop it, and every instance of every function died with it); once it catches up it has
    forked every instance asked for, in the order asked (the newest 250 are known by their ids, in the
    order their pids were reported); nothing is queued."""
    template = Template()
    template.start()
    pid = template.pid
    assert pid is not None
    spawned: list[tuple[socket.socket, ...]] = []
    try:
        os.kill(pid, signal.SIGSTOP)
        while len(template._backlog) < 100:  # an instance of a config this bare exits at once
            assert len(spawned) < 20_000, "the control socket never filled"
            spawned.append(template.spawn({"instance_id": f"burst-{len(spawned)}"}))
        os.kill(pid, signal.SIGCONT)
        await _until(lambda: not template._backlog, 30)
        assert template.pid == pid and template.alive() and template.died is None
        last = f"burst-{len(spawned) - 1}"
        await _until(lambda: template._forked.get(last) is not None, 30)
        newest = [f"burst-{i}" for i in range(len(spawned) - 250, len(spawned))]
        assert [i for i in template._forked if i in set(newest)] == newest  # reported in the order asked
        assert all(template.forked_pid(i) is not None for i in newest)
    finally:
        os.kill(pid, signal.SIGCONT)
        template.stop()
        for sockets in spawned:
            for sock in sockets:
                sock.close()


class _Started(Exception):
    """Raised in place of starting the template process: its arguments are all that is under test."""


def test_a_user_site_made_after_the_handle_never_reaches_a_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. A node's template handle is made while the user's site-packages folder and a PYTHONPATH folder
    are not there. 2. Both appear (a handler made them, with a `.pth` file and a `sitecustomize.py`), and
    the template is started (again: a handler can kill its template). 3. A handle made while they are
    there starts one.
    Result: 2 starts the interpreter without the user's site-packages (`-s`) nor that folder on its
    PYTHONPATH (they were not kept read-only, so what is in them must not run before the secrets folder is
    hidden); 3 with both (they are among the folders kept read-only)."""
    user, planted = tmp_path / "user-site", tmp_path / "later"
    monkeypatch.setattr(site, "ENABLE_USER_SITE", True)
    monkeypatch.setattr(site, "getusersitepackages", lambda: str(user))
    monkeypatch.setenv("PYTHONPATH", str(planted))
    started: list[list[str]] = []
    environs: list[dict[str, str]] = []

    def popen(args: list[str], env: dict[str, str], **options: object) -> None:
        started.append(args)
        environs.append(env)
        raise _Started

    monkeypatch.setattr(subprocess, "Popen", popen)
    early = Template()
    user.mkdir()
    planted.mkdir()
    with pytest.raises(_Started):
        early.start()
    late = Template()
    with pytest.raises(_Started):
        late.start()
    assert "-s" in started[0] and user not in early.keep
    assert str(planted) not in environs[0]["PYTHONPATH"].split(os.pathsep)
    assert "-s" not in started[1] and user in late.keep
    assert str(planted) in environs[1]["PYTHONPATH"].split(os.pathsep)
