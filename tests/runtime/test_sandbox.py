"""`sandbox.hide`: the secrets folder, empty and read-only for a process and its children, untouched for the
rest; run in forked children (a namespace is a process's own), as root and as an unprivileged user."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from framework.runtime import sandbox

NOBODY = 65534
MNT_DETACH = 2
PR_GET_DUMPABLE = 3
CLONE_NEWUSER = 0x10000000
CAP_SYS_PTRACE, CAP_SYS_ADMIN = 19, 21


@pytest.fixture
def folder() -> Iterator[Path]:
    """A secrets folder any user may read (pytest's own temporary folders are its user's only)."""
    base = Path(tempfile.mkdtemp(prefix="faas-sandbox-"))
    base.chmod(0o755)
    secrets = base / "secrets"
    secrets.mkdir(mode=0o755)
    (secrets / "token").write_text("hunter22\n")
    (secrets / "token").chmod(0o644)
    yield secrets
    shutil.rmtree(base)


def _in_child(folder: Path, uid: int | None) -> dict[str, object]:
    """Fork; the child (as `uid` when given) calls `hide(folder)` and reports what it then sees."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            if uid is not None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            why = sandbox.hide(folder, [])
            seen: dict[str, object] = {"why": why, "names": sorted(os.listdir(folder)), "uid": os.getuid()}
            try:
                seen["token"] = (folder / "token").read_text()
            except OSError as exc:
                seen["token"] = exc.errno
            try:
                (folder / "new").write_text("x")
                seen["wrote"] = True
            except OSError:
                seen["wrote"] = False
            libc = ctypes.CDLL(None, use_errno=True)
            seen["umount"] = ctypes.get_errno() if libc.umount2(os.fsencode(folder), MNT_DETACH) else 0
            seen["names_after_umount"] = sorted(os.listdir(folder))
            try:  # the parent's view of the files, which a root process could otherwise take
                seen["via_parent"] = Path(f"/proc/{os.getppid()}/root{folder}/token").read_text()
            except OSError as exc:
                seen["via_parent"] = exc.errno
            status = dict(line.split(":\t", 1) for line in Path("/proc/self/status").read_text().splitlines())
            seen["caps"] = int(status["CapEff"], 16)
            seen["dumpable"] = libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
            os.write(write_end, orjson.dumps(seen))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    assert data, "the child reported nothing"
    result: dict[str, object] = orjson.loads(data)
    return result


def _namespaces_allowed(uid: int | None) -> bool:
    """Whether a process (as `uid`) may enter a user namespace here: then hiding must succeed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            if uid is not None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            os._exit(0 if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWUSER) == 0 else 1)
        finally:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def _check(seen: dict[str, object], folder: Path, uid: int | None) -> None:
    if _namespaces_allowed(uid):
        assert seen["why"] is None, seen
        assert seen["names"] == [] and seen["token"] == errno.ENOENT and seen["wrote"] is False, seen
        assert seen["umount"] == errno.EPERM and seen["names_after_umount"] == [], "unmounted: " + str(seen)
        assert seen["via_parent"] == errno.EACCES, "read through /proc/PID/root: " + str(seen)
        caps = int(str(seen["caps"]))
        assert not caps & (1 << CAP_SYS_ADMIN | 1 << CAP_SYS_PTRACE), hex(caps)
        assert caps == 0 or seen["uid"] == 0, "a user's instances keep no capability: " + hex(caps)
        assert seen["dumpable"] == 0, seen
    else:  # a kernel or container that forbids the namespace: said so, and nothing changed
        assert "can read the secrets folder" in str(seen["why"]) and "unshare" in str(seen["why"]), seen
        assert seen["token"] == "hunter22\n", seen
    assert [p.name for p in folder.iterdir()] == ["token"] and (folder / "token").read_text() == "hunter22\n"


def test_hidden_from_the_process_and_never_from_its_parent(folder: Path) -> None:
    """1. A child of this process hides the folder, then lists it, reads the secret, writes a file, tries
       to unmount what hides it, and to read the secret through `/proc/<parent pid>/root`.
    Result: it sees an empty folder it cannot write to or unmount (EPERM) and no secret, the parent's view
    is refused (EACCES), it holds neither CAP_SYS_ADMIN nor CAP_SYS_PTRACE and is not dumpable; here the
    folder and the file are as they were (the mount stays in the child's namespace)."""
    seen = _in_child(folder, None)
    assert seen["uid"] == os.getuid()
    _check(seen, folder, None)


def test_hidden_for_an_unprivileged_user_too(folder: Path) -> None:
    """1. As root: a child becomes `nobody`, then hides the folder (inside a user namespace of its own).
    Result: as for root. (As any other user, the test above runs this very path.)"""
    if os.getuid() != 0:
        pytest.skip("not root: the test above already runs as an unprivileged user")
    seen = _in_child(folder, NOBODY)
    assert seen["uid"] == NOBODY
    _check(seen, folder, NOBODY)


def test_a_folder_holding_what_instances_need_is_left_and_said_why(folder: Path) -> None:
    """A folder holding the project (or the code cache) is not hidden: hiding it would hide the code. Nothing
    is changed and the reason names both folders. A missing folder has nothing to hide."""
    why = sandbox.hide(folder, [folder / "project"])
    assert why is not None and str(folder) in why and "which instances need" in why
    assert sandbox.hide(folder.parent / "missing", []) is None
    assert [p.name for p in folder.iterdir()] == ["token"]
