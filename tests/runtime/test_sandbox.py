"""`sandbox.hide`: the secrets folder, empty and read-only for a process and its children, untouched for the
rest; run in forked children (a namespace is a process's own), as root and as an unprivileged user."""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import site
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import psutil
import pytest

from framework import sandbox
from tests.support import namespaces_allowed

NOBODY = 65534
MNT_DETACH = 2
PR_GET_DUMPABLE = 3
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


def _reported(uid: int | None, look: Callable[[], dict[str, object]]) -> dict[str, object]:
    """Fork; the child (as `uid` when given) runs `look` and sends back what it returns."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            if uid is not None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            os.write(write_end, orjson.dumps(look()))
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    assert data, "the child reported nothing"
    result: dict[str, object] = orjson.loads(data)
    return result


def _in_child(folder: Path, uid: int | None) -> dict[str, object]:
    """A child (as `uid` when given) calls `hide(folder)` and reports what it then sees."""

    def look() -> dict[str, object]:
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
        return seen

    return _reported(uid, look)


def _check(seen: dict[str, object], folder: Path, uid: int | None) -> None:
    if namespaces_allowed(uid):
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


def _writes_in_child(folder: Path, keep: list[Path], uid: int | None) -> dict[str, object]:
    """A child (as `uid` when given) hides `folder` keeping `keep`, then reads and writes in each kept
    folder and tries to make it writable again; it reports the errno of each (0: it could)."""

    def look() -> dict[str, object]:
        seen: dict[str, object] = {"why": sandbox.hide(folder, keep)}
        libc = ctypes.CDLL(None, use_errno=True)
        for place in keep:
            try:
                (place / "code.py").read_text()
                (place / "planted.pth").write_text("import os\n")
                seen[f"{place.name}:write"] = 0
            except OSError as exc:
                seen[f"{place.name}:write"] = exc.errno
            flags = sandbox.MS_REMOUNT | sandbox.MS_BIND
            refused = libc.mount(None, os.fsencode(place), None, flags, None) != 0
            seen[f"{place.name}:remount"] = ctypes.get_errno() if refused else 0
            seen[f"{place.name}:umount"] = ctypes.get_errno() if libc.umount2(os.fsencode(place), 2) else 0
        return seen

    return _reported(uid, look)


@pytest.mark.parametrize("uid", [None, NOBODY], ids=["as this user", "as nobody"])
def test_what_instances_need_is_read_only_for_them(folder: Path, uid: int | None) -> None:
    """1. A project folder holding the code cache, and a folder on another mount (`/dev/shm`, on most
       systems with flags of its own, nosuid and nodev, which the remount must keep), each with a module.
    2. A child hides the secrets folder keeping those three, then writes a `.pth` file in each, tries to
       remount each writable and to unmount each.
    Result: every write is refused (EROFS), the remount and the unmount too (EPERM: the child holds no
    CAP_SYS_ADMIN); here the three folders are as they were and stay writable."""
    if uid is not None and os.getuid() != 0:
        pytest.skip("not root: the case above already runs as an unprivileged user")
    if not namespaces_allowed(uid):
        pytest.skip("this kernel refuses user namespaces: hide says so (test above)")
    project = folder.parent / "project"
    cache = project / ".faas"
    shm = Path(tempfile.mkdtemp(prefix="faas-sandbox-", dir="/dev/shm"))
    try:
        for place in (project, cache, shm):
            place.mkdir(exist_ok=True)
            place.chmod(0o777)
            (place / "code.py").write_text("x = 1\n")
            (place / "code.py").chmod(0o644)
        seen = _writes_in_child(folder, [project, cache, shm], uid)
        assert seen["why"] is None, seen
        for place in (project, cache, shm):
            assert seen[f"{place.name}:write"] == errno.EROFS, seen
            assert seen[f"{place.name}:remount"] == errno.EPERM, seen
            assert seen[f"{place.name}:umount"] == errno.EPERM, seen
            assert not (place / "planted.pth").exists()
            (place / "ours.txt").write_text("still writable here")
    finally:
        shutil.rmtree(shm)


def test_instances_cannot_read_each_other_and_the_node_reads_them(folder: Path) -> None:
    """1. A child hides the folder (the template), then forks two instances, each of which takes a user
       namespace of its own (`isolate`); instance A runs a program holding a secret in its environment.
    2. Instance B reads that program's `/proc/PID/environ` and A's `/proc/PID/mem`; this process (the node)
       reads A's `smaps_rollup` and the program's `environ`.
    Result: B is refused both (EACCES: a program run with exec is dumpable again, so only the namespaces
    keep siblings apart); the node reads both."""
    if not namespaces_allowed(None):
        pytest.skip("this kernel refuses user namespaces: hide says so (test above)")
    report_r, report_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the template
        try:
            assert sandbox.hide(folder, []) is None
            ready_r, ready_w = os.pipe()
            a = os.fork()
            if a == 0:  # instance A: runs a program with a secret until the node has looked
                assert sandbox.isolate() is None
                program = subprocess.Popen(["sleep", "30"], env={"SECRET": "hunter22"})
                os.write(ready_w, f"{os.getpid()} {program.pid}".encode())
                os.read(go_r, 1)
                program.kill()
                program.wait()
                os._exit(0)
            a_pid, program_pid = map(int, os.read(ready_r, 100).split())
            seen_r, seen_w = os.pipe()
            b = os.fork()
            if b == 0:  # instance B: looks at A's memory and at its program's environment
                assert sandbox.isolate() is None
                seen = {}
                for what, path in (
                    ("environ", f"/proc/{program_pid}/environ"),
                    ("mem", f"/proc/{a_pid}/mem"),
                ):
                    try:
                        Path(path).read_bytes()
                        seen[what] = 0
                    except OSError as exc:
                        seen[what] = exc.errno or -1
                os.write(seen_w, orjson.dumps(seen))
                os._exit(0)
            b_seen = orjson.loads(os.read(seen_r, 1000))
            os.waitpid(b, 0)
            os.write(report_w, orjson.dumps({"a": a_pid, "program": program_pid, "b": b_seen}))
            os.waitpid(a, 0)
        finally:
            os._exit(0)
    os.close(report_w)
    got = orjson.loads(os.read(report_r, 1000))
    try:
        rollup = Path(f"/proc/{got['a']}/smaps_rollup").read_text()
        environ = Path(f"/proc/{got['program']}/environ").read_bytes()
    finally:
        os.write(go_w, b"x")
        os.waitpid(pid, 0)
    assert got["b"] == {"environ": errno.EACCES, "mem": errno.EACCES}, got
    assert "Private_Dirty" in rollup and b"SECRET=hunter22" in environ


def test_the_folders_of_code_include_pythonpath_and_an_existing_user_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folders kept visible and made read-only: PYTHONPATH's (a `sitecustomize.py` there runs in every
    template) and the user's site-packages (`.pth` files) when the interpreter reads it; each only if it is
    there when the import path is fixed (`CodePath.at_start`), as a template started later gets it too."""
    user, here, missing = tmp_path / "user-site", tmp_path / "a", tmp_path / "b"
    here.mkdir()
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(here), "", str(missing)]))
    monkeypatch.setattr(site, "ENABLE_USER_SITE", True)
    monkeypatch.setattr(site, "getusersitepackages", lambda: str(user))
    early = sandbox.CodePath.at_start()
    assert early == sandbox.CodePath((str(here),), None)
    user.mkdir()
    missing.mkdir()
    assert here in sandbox.needed(code_path=early) and user not in sandbox.needed(code_path=early)
    assert missing not in sandbox.needed(code_path=early)
    late = sandbox.CodePath.at_start()
    assert late.user_site == user and user in sandbox.needed(code_path=late)
    monkeypatch.setattr(site, "ENABLE_USER_SITE", False)  # a virtualenv's interpreter reads none
    assert sandbox.user_site() is None


def test_no_folder_holding_the_home_or_temporary_folder_is_bound(tmp_path: Path) -> None:
    """`bound` leaves out `/`, the temporary folder and the home folder and every folder holding one (a
    link's folder in `~`, say): functions write caches and scratch files there. Folders inside them, and
    elsewhere, are bound, each once and outer first."""
    home = Path(os.path.expanduser("~"))
    project = tmp_path / "project"
    (project / "functions").mkdir(parents=True)
    folders = [
        Path("/"),
        Path(tempfile.gettempdir()),
        home,
        home.parent,
        project / "functions",
        project,
        project,
    ]
    assert sandbox.bound(folders) == [os.path.realpath(project), os.path.realpath(project / "functions")]


def test_a_mount_inside_a_kept_folder_is_read_only_too(folder: Path) -> None:
    """1. As root, a child takes a mount namespace of its own and mounts a tmpfs on `project/functions`
       (a volume on the code, as `docker run -v ./functions:/app/functions` makes), with a module in it.
    2. It hides the secrets folder keeping the project, then writes in the project and in the mount.
    Result: both writes are refused (EROFS): the project's bind carries the mounts below it, and each is
    made read-only (before, the mount stayed writable: a handler could rewrite a module there)."""
    if os.getuid() != 0:
        pytest.skip("mounting the volume takes root")
    if not namespaces_allowed(None):
        pytest.skip("this kernel refuses user namespaces: hide says so (test above)")
    project = folder.parent / "project"
    (project / "functions").mkdir(parents=True)

    def look() -> dict[str, object]:
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.unshare(sandbox.CLONE_NEWNS) == 0
        assert libc.mount(None, b"/", None, sandbox.MS_REC | sandbox.MS_PRIVATE, None) == 0
        volume = os.fsencode(project / "functions")
        assert libc.mount(b"volume", volume, b"tmpfs", 0, b"size=64k") == 0
        (project / "functions" / "m.py").write_text("x = 1\n")
        seen: dict[str, object] = {"why": sandbox.hide(folder, [project])}
        for name, path in (("project", project / "a.pth"), ("volume", project / "functions" / "m.py")):
            try:
                with open(path, "a") as f:
                    f.write("import os\n")
                seen[name] = 0
            except OSError as exc:
                seen[name] = exc.errno
        return seen

    seen = _reported(None, look)
    assert seen == {"why": None, "project": errno.EROFS, "volume": errno.EROFS}, seen


def test_an_instance_of_a_node_that_is_not_root_maps_its_ids(folder: Path) -> None:
    """1. As `nobody`: a process (the node) forks the template, which hides the folder and forks an
       instance that takes a user namespace of its own (`isolate`) and waits.
    2. The node reads the instance's `smaps_rollup` and looks at its view of the folder.
    Result: `isolate` succeeds, the instance runs as `nobody` (its ids mapped: it wrote its maps after
    making itself dumpable again; before, a node that was not root got "Permission denied" and every
    instance ran unmapped, as 65534 in no map, with a warning that instances could read each other's
    memory), and the node reads what it needs (its memory figure, its view)."""
    if os.getuid() != 0:
        pytest.skip("becoming nobody takes root (as a user, the template tests run this path)")
    if not namespaces_allowed(NOBODY):
        pytest.skip("this kernel refuses user namespaces: hide says so (test above)")

    def node() -> dict[str, object]:
        report_r, report_w = os.pipe()
        go_r, go_w = os.pipe()
        template = os.fork()
        if template == 0:  # pragma: no cover - the template
            try:
                assert sandbox.hide(folder, []) is None
                instance = os.fork()
                if instance == 0:
                    why = sandbox.isolate()
                    mapped = Path("/proc/self/uid_map").read_text().split()
                    os.write(report_w, orjson.dumps({"why": why, "uid": os.getuid(), "map": mapped}))
                    os.read(go_r, 1)
                    os._exit(0)
                os.waitpid(instance, 0)
            finally:
                os._exit(0)
        told: dict[str, object] = orjson.loads(os.read(report_r, 1000))
        instance_pid = next(p.pid for p in psutil.Process(template).children())
        try:
            told["rollup"] = "Private_Dirty" in Path(f"/proc/{instance_pid}/smaps_rollup").read_text()
            told["view"] = sorted(os.listdir(f"/proc/{instance_pid}/root{folder}"))
        except OSError as exc:
            told["node"] = str(exc)
        finally:
            os.write(go_w, b"x")
            os.waitpid(template, 0)
        return told

    seen = _reported(NOBODY, node)
    assert seen == {
        "why": None,
        "uid": NOBODY,
        "map": [str(NOBODY), str(NOBODY), "1"],
        "rollup": True,
        "view": [],
    }, seen
