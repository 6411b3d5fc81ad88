"""The processes an instance started, found by walking the process tree, and killed with it.

An instance leads a process group of its own, so one `killpg` takes it and what its handlers started, as
long as all of them stay in that group. Some do not: a child started in a group of its own
(`subprocess.Popen(..., process_group=0)`, `os.setpgrp`), or the instance itself moved by a handler
(`os.setpgid`). Those are found by walking `/proc/PID/task/*/children` while the instance lives (about
20 us an instance) and killed one by one, each with its own group when it leads one. A process in a
session of its own (`start_new_session=True`) is left alone: the way a handler starts a process that is its
own to stop. A process whose parent exited before it (a double fork) has left the tree and is not found.

Never `killpg` a group the instance does not lead or a process of its tree does not lead: a handler can move
a process into the node's own group.
"""

from __future__ import annotations

import contextlib
import os
import signal

MAX_FAMILY = 256
"""Processes of one instance's tree walked, at most (a fork bomb is not walked to its end)."""


def read_small(path: str) -> bytes:
    """A small /proc file's bytes (64 KiB at most): os.open and one read, 4 times cheaper than `open`."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 65536)
    finally:
        os.close(fd)


def stat_fields(pid: int) -> list[bytes]:
    """The fields of /proc/PID/stat after the command name (state, parent pid, ...); [] when it cannot be
    read (gone, or no /proc)."""
    try:
        return read_small(f"/proc/{pid}/stat").rpartition(b")")[2].split()
    except OSError:
        return []


def descendants(pid: int, limit: int = MAX_FAMILY) -> list[int]:
    """The processes started by `pid` and by those, breadth first, at most `limit` ([] when it is gone).
    Each thread's children are listed apart (a child forked by a worker thread is that thread's)."""
    found: list[int] = []
    parents = [pid]
    while parents and len(found) < limit:
        parent = parents.pop(0)
        try:
            threads = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue  # gone meanwhile
        for tid in threads:
            try:
                children = [int(c) for c in read_small(f"/proc/{parent}/task/{tid}/children").split()]
            except (OSError, ValueError):
                continue
            found.extend(children)
            parents.extend(children)
    return found[:limit]


def parent_of(pid: int) -> int | None:
    """The parent pid of `pid` (None when it is gone, or there is no /proc)."""
    fields = stat_fields(pid)
    return int(fields[1]) if len(fields) > 1 else None


def kill_descendants(pid: int) -> int:
    """SIGKILL the processes `pid` started (and those started) in its session, each with the process group
    it leads, if any; returns how many were signalled. `pid` itself is not."""
    try:
        session = os.getsid(pid)
    except OSError:
        return 0
    killed = 0
    for child in descendants(pid):
        with contextlib.suppress(OSError):
            if os.getsid(child) != session:
                continue  # a session of its own: the handler's to stop
            leads = os.getpgid(child) == child
            os.kill(child, signal.SIGKILL)
            killed += 1
            if leads:  # what it started in its own group
                os.killpg(child, signal.SIGKILL)
    return killed


def kill_family(pid: int) -> None:
    """SIGKILL `pid`, a live process of ours (a child of our template, not reaped yet: its pid cannot have
    been reused), what it started in its session, and its process group (`pid` leads it, unless a handler
    moved it, when it may hold some of what it started)."""
    kill_descendants(pid)
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGKILL)
