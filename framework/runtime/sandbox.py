"""What instances cannot see: the secrets folder (DESIGN.md section 14: a function cannot read a secret it
did not list).

An instance gets the values of the secrets its function lists from the node (`ctx.secrets`) and never needs
the folder; but it runs as the node's user, so any handler could open the files of every other function's
secrets. So the template (`template.py`), before it forks its first instance, moves itself into a mount
namespace of its own where an empty, read-only tmpfs lies over the folder. Every instance forked from it
inherits that view, at no cost per instance (about 0.5 ms once per template); the node's own view is
unchanged (it reads the secrets and watches them for changes).

A mount namespace is root's for the asking; any other user gets one inside a user namespace of its own, with
its uid and gid mapped to themselves, so files keep their owners and the node still signals its instances
and reads their memory figures. Where neither is allowed (a container whose seccomp profile refuses
`unshare`, a kernel without user namespaces), or where the folder holds the project or the code cache
(hiding it would hide the code), the folder stays visible: `hide` says why, instances repeat it in their
HELLO and the node logs it once. A folder missing when the template starts has nothing to hide then (the
default `secrets` may not exist at all); one created later is hidden from the next template on (a node
restart).
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Sequence
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REC, MS_PRIVATE = 1 << 14, 1 << 18
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
CAP_SYS_ADMIN = 21
_CAPABILITY_VERSION_3 = 0x20080522
TMPFS_OPTIONS = b"size=4k,mode=0555"
"""The empty folder shown in the secrets folder's place: read-only, nothing can be written to it."""

exposed: str | None = None
"""Why this process's view still shows the secrets folder (set in the template, inherited by its instances,
which tell the node in their HELLO); None: hidden, or none to hide."""


def hide(folder: Path, keep: Sequence[Path]) -> str | None:
    """Lay an empty read-only tmpfs over `folder` for this process and the children it forks from now on.

    Returns None when the folder is hidden (or there is none to hide), else a sentence saying it is not and
    why. Call it while the process has a single thread: a threaded process cannot enter a user namespace.
    `keep`: folders instances need (the project, the code cache), which must stay visible.
    """
    try:
        real = folder.resolve(strict=True)
    except OSError:
        return None
    problem = _why_not(real, keep)
    return None if problem is None else f"instances can read the secrets folder {real}: {problem}"


def _why_not(real: Path, keep: Sequence[Path]) -> str | None:
    for needed in keep:
        if needed.resolve().is_relative_to(real):
            return f"it holds {needed}, which instances need"
    if not sys.platform.startswith("linux"):
        return "hiding it takes a Linux mount namespace"
    libc = ctypes.CDLL(None, use_errno=True)
    problem = _enter_namespace(libc)
    if problem is not None:
        return problem
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:  # nothing we mount reaches the node
        return _failed("mount --make-rprivate /")
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    if libc.mount(b"faas-hidden", os.fsencode(real), b"tmpfs", flags, TMPFS_OPTIONS) != 0:
        return _failed("mount tmpfs over it")
    return _drop_admin(libc)


def _drop_admin(libc: ctypes.CDLL) -> str | None:
    """Give up CAP_SYS_ADMIN for good (the bounding set too, so no program run later gets it back): without
    it no handler can unmount the empty folder, or enter another mount namespace, to reach the secrets."""
    if libc.prctl(PR_CAPBSET_DROP, CAP_SYS_ADMIN, 0, 0, 0) != 0:
        return _failed("dropping CAP_SYS_ADMIN from the bounding set")
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        return _failed("capget")
    keep = ~(1 << CAP_SYS_ADMIN) & 0xFFFFFFFF
    data[0].effective &= keep
    data[0].permitted &= keep
    data[0].inheritable &= keep
    if libc.capset(ctypes.byref(header), data) != 0:
        return _failed("capset")
    return None


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _enter_namespace(libc: ctypes.CDLL) -> str | None:
    """A mount namespace of this process's own: directly (root), else inside a new user namespace."""
    if os.geteuid() == 0 and libc.unshare(CLONE_NEWNS) == 0:
        return None
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        return _failed("unshare (mount and user namespaces)")
    # A process whose ids changed (a node started by root dropping to a user) is not dumpable: its
    # /proc/self files are then root's, and the maps could not be written.
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    try:
        # Map our ids to themselves; a user namespace's gid map takes setgroups denied first.
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    except OSError as exc:
        return f"mapping the user namespace's ids: {exc.strerror or exc}"
    return None


def _failed(call: str) -> str:
    errno = ctypes.get_errno()
    return f"{call}: {os.strerror(errno)}"
