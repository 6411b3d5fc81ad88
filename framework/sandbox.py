"""What instances cannot see: the secrets folder (DESIGN.md section 14: a function cannot read a secret it
did not list).

An instance gets the values of the secrets its function lists from the node (`ctx.secrets`) and never needs
the folder; but it runs as the node's user, so any handler could open the files of every other function's
secrets. So the template (`template.py`), before it forks its first instance, moves itself into a user and
mount namespace of its own where an empty, read-only tmpfs lies over the folder, and where the folders
instances need (the project, the code cache, the interpreter and the framework) are read-only: a handler that
could write them would reach every secret, through another function's module or a `.pth` file the next
template runs before it hides anything. Every instance forked from it inherits that view (5-7 ms once per
template, the trial in a child included); the node's own view is unchanged (it reads the secrets and
watches them for changes, and writes the code cache, whose new entries instances see as they appear).

What keeps a handler from getting around it:
- a user namespace, for root too (the process's own uid and gid mapped to themselves): capabilities held
  there reach nothing outside it, so `/proc/<node pid>/root` (the node's view of the files) is refused;
- the template gives up CAP_SYS_ADMIN and CAP_SYS_PTRACE (bounding set too; a non-root node's template
  gives up every capability, it had none before): no unmounting the tmpfs, no entering another namespace;
- each instance takes a user namespace of its own right after the fork (`isolate`), and the template is
  not dumpable: no instance can read another's memory or its programs' (`/proc/PID/mem`, `environ`: a
  program run with exec is dumpable again, so only the namespaces keep them apart), nor the template's,
  which receives every instance's start message. The node can: it owns the namespaces above them. About
  0.3 ms per instance, on its cold start.

The whole sequence is tried first in a forked child: a kernel that lets a process enter a user namespace
but not map its ids (Ubuntu's AppArmor restriction for unprivileged users) would otherwise leave the template
in an unmapped namespace where every file looks owned by nobody; the child also checks it can still read
what instances need (a root node's project in a user's 0750 home would not be). Where it cannot be done (a
container whose seccomp profile refuses `unshare`, a kernel without user namespaces), or where the folder
holds the project, the code cache or the interpreter (hiding it would hide the code), the folder stays
visible: `hide` says why, instances repeat it in their HELLO and the node logs it once. A folder missing
when the template starts has nothing to hide then; the node starts a fresh template when it appears or is
replaced (`Runtime`).

The node's own environment: `/proc/<node pid>/environ` is the block the node was started with, readable by
any process of its user that may trace it, the instances included (the namespaces above do not refuse it:
the node is an ancestor, and dumpable), and `FAAS_API_KEYS` and `FAAS_KAFKA_SASL_PASSWORD` may be in it.
Clearing `os.environ` would not change that block, so the node overwrites those values in it with `*`
once its settings are read (`scrub_environ`, about 50 us); its settings keep the values, and the processes
it starts get environments without them.

Side effects for handlers: programs that gain privileges on exec (setuid, file capabilities: `sudo`, some
`ping`s) do not, supplementary groups and files of other users show as `nogroup`/`nobody` (a root node's
handlers keep root's power over root's files only, and bind no port under 1024), `setgroups` is refused,
and mounts the host makes later do not reach instances (the namespace's mounts are private, so none of ours
reaches the host).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import site
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
MS_NOATIME, MS_NODIRATIME, MS_BIND = 1024, 2048, 4096
MS_REC, MS_PRIVATE, MS_RELATIME = 1 << 14, 1 << 18, 1 << 21
_ESCAPE = re.compile(rb"\\([0-7]{3})")
"""An octal escape in `/proc/self/mountinfo` (`\\040` for a space)."""
_KEPT_FLAGS = (
    (os.ST_NOSUID, MS_NOSUID),
    (os.ST_NODEV, MS_NODEV),
    (os.ST_NOEXEC, MS_NOEXEC),
    (os.ST_NOATIME, MS_NOATIME),
    (os.ST_NODIRATIME, MS_NODIRATIME),
    (os.ST_RELATIME, MS_RELATIME),
)
"""A mount's flags (`statvfs`) a read-only remount must carry over: in a user namespace the kernel refuses
to clear flags the mount had when the namespace was made (they are locked)."""
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
CAP_SYS_PTRACE, CAP_SYS_ADMIN = 19, 21
CAP_LAST = 63
"""Highest capability number tried when every one is dropped (the kernel refuses unknown ones: ignored)."""
_CAPABILITY_VERSION_3 = 0x20080522
TMPFS_OPTIONS = b"size=4k,mode=0555"
"""The empty folder shown in the secrets folder's place: read-only, nothing can be written to it."""

_DONE = "done"
"""What the trial child says when it could hide the folder (anything else is why it could not)."""

exposed: str | None = None
"""Why this process's view still shows the secrets folder (set in the template, inherited by its instances,
which tell the node in their HELLO); None: hidden, or none to hide."""
_libc: ctypes.CDLL | None = None
"""Set once `hide` made its namespace: then each instance makes one of its own (`isolate`)."""


class CodePath(NamedTuple):
    """The import path a node's templates get, fixed when the node starts (`at_start`), whatever later
    template starts or replaces another: a folder made after it would not be read-only for instances, and
    what a handler planted there (a `sitecustomize.py`, a `.pth` file) would run in the next template
    before it hides anything."""

    python_path: tuple[str, ...]
    """The folders of PYTHONPATH there at the start."""
    user_site: Path | None
    """The user's site-packages, when the interpreter reads one (not in a virtualenv) and it was there at
    the start; else templates start without it (`-s`)."""

    @classmethod
    def at_start(cls) -> CodePath:
        python_path = os.environ.get("PYTHONPATH", "").split(os.pathsep)
        return cls(tuple(p for p in python_path if p and os.path.exists(p)), user_site())


def needed(*folders: Path, code_path: CodePath | None = None) -> list[Path]:
    """`folders` and what every process of the platform needs besides: the interpreter's folders and
    import path (`sys.path`: site-packages, folders `.pth` files add; not its first entry, the script's
    folder or the working directory, which templates do not read), `code_path`'s folders (`CodePath`,
    now when not given) and the framework's own; all code a template runs. A secrets folder holding any
    of them stays visible (`hide`)."""
    code_path = code_path or CodePath.at_start()
    imports = sys.path if sys.flags.safe_path else sys.path[1:]
    return [
        *folders,
        Path(sys.prefix),
        Path(sys.base_prefix),
        *([] if code_path.user_site is None else [code_path.user_site]),
        *(Path(p) for p in code_path.python_path),
        *(Path(p) for p in imports if p),
        Path(__file__).resolve().parents[1],
    ]


def link_holders(path: Path) -> list[Path]:
    """The folders holding a link on the way to `path` (`/srv/app` for `/srv/app/current/functions.yaml`
    where `current -> releases/7`): kept read-only, no handler re-points the link or writes the release
    it would point to next."""
    holders, walked = [], Path(path.anchor)
    for part in path.absolute().parts[1:]:
        walked = walked / part
        if walked.is_symlink():
            holders.append(walked.parent.resolve())
            walked = walked.resolve()
    return holders


def user_site() -> Path | None:
    """The user's site-packages folder, when the interpreter would read it (not in a virtualenv) and it is
    there now."""
    if not site.ENABLE_USER_SITE:
        return None
    folder = Path(site.getusersitepackages())
    return folder if folder.is_dir() else None


def identity(folder: Path) -> tuple[int, int] | None:
    """(device, inode) of the folder now, None when it is not there: another one means a fresh template."""
    try:
        st = folder.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def hide(folder: Path, keep: Sequence[Path]) -> str | None:
    """Lay an empty read-only tmpfs over `folder` for this process and the children it forks from now on.

    Returns None when the folder is hidden (or there is none to hide), else a sentence saying it is not and
    why. Call it while the process has a single thread: a threaded process cannot enter a user namespace.
    `keep`: folders instances need (the project, the code cache, the interpreter), which must stay visible.
    """
    try:
        real = folder.resolve(strict=True)
    except OSError:
        return None
    problem = _why_not(real, keep)
    return None if problem is None else f"instances can read the secrets folder {real}: {problem}"


def _why_not(real: Path, keep: Sequence[Path]) -> str | None:
    for folder in keep:
        if folder.resolve().is_relative_to(real):
            return f"it holds {folder}, which instances need"
    if not sys.platform.startswith("linux"):
        return "hiding it takes Linux namespaces"
    libc = ctypes.CDLL(None, use_errno=True)
    problem = _in_child(libc, real, keep)  # a failure half-way must not strand this process
    if problem is None:
        problem = _enter(libc, real, keep)
    if problem is None:
        global _libc
        _libc = libc  # kept for every instance's `isolate`
    return problem


def isolating() -> bool:
    """Whether this process hid the secrets folder (or was forked from one that did): then the folders of
    code are read-only here."""
    return _libc is not None


def isolate() -> str | None:
    """In a forked instance of a template that hid the folder: a user namespace of the instance's own, so
    no other instance can read its memory or its subprocesses' (`/proc/PID/mem`, `environ`: a program
    run with exec is dumpable again), whatever their dumpable flag; the node, which owns the namespaces
    above, still reads it. The instance is dumpable again (the node reads its `smaps_rollup`); the
    capabilities its namespace gives it reach nothing outside it. Returns why that could not be done, or
    None (also when there is nothing to do)."""
    if _libc is None:
        return None
    uid, gid = os.geteuid(), os.getegid()
    if _libc.unshare(CLONE_NEWUSER) != 0:
        return _failed("unshare (the instance's user namespace)")
    # Dumpable again, before the maps: a process that is not has its /proc/self files owned by root, so a
    # node that is not root could not write them. The node reads its `smaps_rollup` and looks at its view
    # of the files; the namespaces, not the flag, keep other instances out.
    _libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    try:
        for name, ids in (("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            fd = os.open(f"/proc/self/{name}", os.O_WRONLY)
            try:
                os.write(fd, ids.encode())
            finally:
                os.close(fd)
    except OSError as exc:
        return f"mapping the instance's user namespace ids: {exc.strerror or exc}"
    # The capabilities the new namespace gives reach nothing outside it: they are left (dropping them
    # would cost a quarter of a millisecond more per cold start).
    return None


def _in_child(libc: ctypes.CDLL, real: Path, keep: Sequence[Path]) -> str | None:
    """`_enter` in a forked child, which then checks it can still read what instances need (a root node's
    project in a user's 0750 home would not be: other users' files are nobody's in the namespace),
    reports how it went and exits."""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
    except OSError as exc:
        os.close(read_end)
        os.close(write_end)
        return f"a trial in a child process could not start: {exc.strerror or exc}"
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            try:
                problem = _enter(libc, real, keep)
            except Exception as exc:  # said, not a trial that "ended without a word"
                problem = f"{type(exc).__name__}: {exc}"
            for folder in keep:
                if problem is None and folder.exists() and not os.access(folder, os.R_OK | os.X_OK):
                    problem = f"in the namespace {folder}, which instances need, is not readable"
            os.write(write_end, (problem or _DONE).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        told = pipe.read().decode(errors="replace")
    with contextlib.suppress(ChildProcessError):  # reaped already where SIGCHLD is ignored
        os.waitpid(pid, 0)
    if told == _DONE:
        return None
    return told or "the trial in a child process ended without a word"


def _enter(libc: ctypes.CDLL, real: Path, keep: Sequence[Path]) -> str | None:
    root = os.geteuid() == 0
    uid, gid = os.geteuid(), os.getegid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        return _failed("unshare (user and mount namespaces)")
    # A process whose ids changed (a node started by root dropping to a user) is not dumpable: its
    # /proc/self files are then root's, and the maps could not be written.
    libc.prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)
    try:
        # Our own ids only (mapping more takes a process outside the namespace); the gid map takes setgroups
        # denied first.
        Path("/proc/self/setgroups").write_text("deny")
        Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
        Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    except OSError as exc:
        return f"mapping the user namespace's ids: {exc.strerror or exc}"
    if libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:  # nothing we mount reaches the node
        return _failed("mount --make-rprivate /")
    problem = _read_only(libc, keep)
    if problem is not None:
        return problem
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    if libc.mount(b"faas-hidden", os.fsencode(real), b"tmpfs", flags, TMPFS_OPTIONS) != 0:
        return _failed("mount tmpfs over it")
    problem = _drop(libc, (CAP_SYS_ADMIN, CAP_SYS_PTRACE) if root else range(CAP_LAST + 1))
    if problem is not None:
        return problem
    if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        return _failed("prctl(PR_SET_DUMPABLE, 0)")
    return None


def _read_only(libc: ctypes.CDLL, folders: Sequence[Path]) -> str | None:
    """Bind each of `folders` that exists onto itself, read-only, with every mount below it (a volume on
    the project's `functions/`, say); outer folders first, so an inner one is bound again inside its outer
    one's view. A handler that could write them would reach every secret: another function's module, or a
    `.pth` file the next template runs before it hides anything."""
    for folder in bound(folders):
        path = os.fsencode(folder)
        if libc.mount(path, path, None, MS_BIND | MS_REC, None) != 0:
            return _failed(f"mount --rbind {folder}")
        for point in _mounts_under(folder):
            try:
                kept = os.statvfs(point).f_flag
            except OSError as exc:
                if point != folder:  # a mount below it this user may not look at (FUSE): nor may handlers
                    continue
                return f"reading the flags of {point}: {exc.strerror or exc}"
            flags = MS_REMOUNT | MS_BIND | MS_RDONLY
            for st_flag, ms_flag in _KEPT_FLAGS:
                if kept & st_flag:
                    flags |= ms_flag
            if libc.mount(None, os.fsencode(point), None, flags, None) != 0:
                return _failed(f"mount -o remount,bind,ro {point}")
    return None


def bound(folders: Sequence[Path]) -> list[str]:
    """The folders `_read_only` binds: those of `folders` there now, each once (links resolved), outer
    first; never one that is or holds the temporary folder or the home folder (`/`, `/home`, a link's
    folder in `~`), which functions write (caches, scratch files): those stay as they are."""
    real = {os.path.realpath(folder) for folder in folders if os.path.exists(folder)}
    spared = {os.path.realpath(tempfile.gettempdir()), os.path.realpath(os.path.expanduser("~")), "/tmp"}
    kept = {folder for folder in real if not any(Path(s).is_relative_to(folder) for s in spared)}
    return sorted(kept, key=lambda p: p.count(os.sep))


def writable_in(pid: int, folder: str) -> bool:
    """Whether `folder` is writable in the view of process `pid` (an instance of a template that bound it
    read-only): a folder removed and made again on the node's side is unmounted from every other view,
    which then shows the new one, writable. False when that view cannot be looked at (the process is
    gone)."""
    try:
        return not os.statvfs(f"/proc/{pid}/root{folder}").f_flag & os.ST_RDONLY
    except OSError:
        return False


def _mounts_under(folder: str) -> list[str]:
    """The mount points at `folder` and below it in this process's view (`/proc/self/mountinfo`), outer
    first; a point with mounts stacked on it once (a remount changes the one on top, the one seen)."""
    points = set()
    with open("/proc/self/mountinfo", "rb") as table:
        for line in table:
            # The fifth field, with space, tab, newline and backslash written as octal escapes.
            point = os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), line.split()[4]))
            if Path(point).is_relative_to(folder):
                points.add(point)
    return sorted(points, key=lambda p: p.count(os.sep))


def _drop(libc: ctypes.CDLL, caps: Sequence[int]) -> str | None:
    """Give up `caps` for good: the bounding set too, so no program run later gets them back."""
    for cap in caps:
        if libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and cap in (CAP_SYS_ADMIN, CAP_SYS_PTRACE):
            return _failed(f"dropping capability {cap} from the bounding set")
    header = _CapHeader(_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        return _failed("capget")
    for cap in caps:
        word, bit = divmod(cap, 32)
        if word < 2:
            keep = ~(1 << bit) & 0xFFFFFFFF
            data[word].effective &= keep
            data[word].permitted &= keep
            data[word].inheritable &= keep
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


def _failed(call: str) -> str:
    errno = ctypes.get_errno()
    return f"{call}: {os.strerror(errno)}"


def scrub_environ(names: frozenset[str]) -> int:
    """Overwrite with `*`, in this process's initial environment block (what `/proc/self/environ` shows), the
    values of the variables `names` (upper case; matched in any case). Returns how many were overwritten: 0
    where the block's bounds cannot be read or do not hold what `/proc/self/environ` says (nothing is
    written then). `os.environ`, a copy made at start, keeps the values."""
    try:
        stat = Path("/proc/self/stat").read_bytes().rsplit(b")", 1)[1].split()
        start, end = int(stat[47]), int(stat[48])  # fields 50 and 51, env_start and env_end (Linux 3.5)
        block = Path("/proc/self/environ").read_bytes()
    except (OSError, IndexError, ValueError):
        return 0
    if not block or len(block) > end - start or ctypes.string_at(start, len(block)) != block:
        return 0
    count = offset = 0
    for entry in block.split(b"\0"):
        name, sep, value = entry.partition(b"=")
        if sep and value and name.decode("utf-8", "replace").upper() in names:
            ctypes.memset(start + offset + len(name) + 1, ord("*"), len(value))
            count += 1
        offset += len(entry) + 1
    return count
