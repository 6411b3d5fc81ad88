"""The handler import check: import every `module:attribute` handler in a subprocess, as an instance would.

An instance imports its revision's code, which is the handler's top-level package (or module) alone, never
the rest of the working copy (DESIGN.md section 12). So the check imports each handler from a copy of the
files its revision would carry (`snapshot.code_files`, the revision zip's own list): a module the package
imports from beside it in the project, a linked folder the zip leaves out, a path climbed to from
`__file__`, all fail here, at `faas validate` and `faas deploy`, and not at the first invocation. One
subprocess per top-level name (usually one in all), run in the manifest's folder like an instance, so a
broken module can neither crash nor pollute the calling process; a handler whose import kills or hangs
the subprocess is blamed, and the rest are checked in a new one.

Each check is a handler with its function's `env`: two functions sharing a handler with different envs are
two checks (the package is imported again, its modules forgotten, when the env changes), since a module
that reads its env at import may work with one and not the other. The subprocess writes its report to a
file and ends with `os._exit` once the last check is done, in a session of its own that is then killed:
a thread or a process a module starts at import neither holds the check until its timeout (as a normal
exit, or pipes it inherited, would) nor outlives it.

Checking again only what an edit can have changed (`ImportChecks`, kept by the watcher between edits): the
subprocess records, for each check, what its import depended on: the modules of the package it imported
(through `import` statements and `importlib.import_module`, its own and those of the modules it imported,
at any depth, including names it tried and did not find), the files those modules opened and the folders
they listed at import (under the copy or the project). A check that passed is passed again without an
import while every one of those is as it was: the same bytes in each file (sha256), the same entries in
each folder, and, for each module name, the same files that could hold it (`x.py`, `x/`, `x.*.so`), so a
module added that shadows or supplies one counts as a change. A check that failed is always imported again
(anything may have fixed it: a module installed meanwhile). With 1,000 functions in one package, an edit of
one handler module imports that handler alone (about 0.1 s, against 1-2 s for all of them).
What is left: an import whose result turns on something not recorded (a file it only `stat`s, a module
of an installed package that changes, an import made by C code) is not checked again until one of its
recorded dependencies changes or the watch starts anew; a first check (`faas validate`, a node's start)
imports everything, as before.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework import sandbox
from framework.control.snapshot import code_files, top_level_name, top_level_of

IMPORT_TIMEOUT = 30.0
"""Seconds one import-check subprocess may run before its current handler is blamed."""

_CHECK = """
import builtins, importlib, importlib.util, inspect, json, os, sys
from pathlib import Path
out = open(sys.argv[4], "a")  # before hiding: the temporary folder may be in the project, read-only then
hiding = json.loads(sys.argv[2])
if hiding:  # as in instances (`framework/sandbox.py`), code run at import sees no secrets folder
    spec = importlib.util.spec_from_file_location("faas_sandbox", hiding["sandbox"])  # by path: the
    sandbox = importlib.util.module_from_spec(spec)  # framework may not be importable from here
    spec.loader.exec_module(sandbox)
    sandbox.hide(Path(hiding["hide"]), [Path(p) for p in hiding["keep"]])
view = sys.argv[1]
sys.path.insert(0, view)  # the view: the handlers' top-level package, nothing else of the project
base = dict(os.environ)
inside = (view + os.sep, os.getcwd() + os.sep)  # the copy, the project
edges = {}  # module of the view -> the module names it imported, or tried to
reads = {}  # module of the view -> ("f", file opened) and ("d", folder listed) at its import

def owner():  # the module of the view whose code runs now, if any
    frame = sys._getframe(2)
    while frame is not None:
        if frame.f_code.co_filename.startswith(inside[0]):
            return frame.f_globals.get("__name__")
        frame = frame.f_back
    return None

def audit(event, args):
    if event == "open":
        kind = "f"
    elif event in ("os.listdir", "os.scandir"):
        kind = "d"
    else:
        return
    if sys._getframe(1).f_code.co_filename.startswith("<frozen importlib"):
        return  # the import system finding and reading modules: module names stand for those
    path = args[0]
    if path is None or isinstance(path, int):
        return
    try:
        path = os.path.abspath(os.fsdecode(path))
    except Exception:
        return
    if path.startswith(inside):
        name = owner()
        if name is not None:
            reads.setdefault(name, set()).add((kind, path))

def record(globals_, name, package, level, fromlist):
    importer = globals_.get("__name__") if globals_ else None
    if importer is None or not str(globals_.get("__file__") or "").startswith(inside[0]):
        return
    try:
        target = importlib.util.resolve_name("." * level + name, package) if level else name
    except Exception:
        return
    names = edges.setdefault(importer, set())
    names.add(target)
    listed = list(fromlist or ())
    if "*" in listed:
        listed += list(getattr(sys.modules.get(target), "__all__", ()))
    names.update(target + "." + item for item in listed if isinstance(item, str) and item != "*")

real_import, real_import_module = builtins.__import__, importlib.import_module

def tracked_import(name, globals=None, locals=None, fromlist=(), level=0):
    try:
        return real_import(name, globals, locals, fromlist, level)
    finally:
        record(globals, name, (globals or {}).get("__package__"), level, fromlist)

def tracked_import_module(name, package=None):
    try:
        return real_import_module(name, package)
    finally:
        level = len(name) - len(name.lstrip("."))
        record(sys._getframe(1).f_globals, name.lstrip("."), package, level, ())

builtins.__import__, importlib.import_module = tracked_import, tracked_import_module
sys.addaudithook(audit)

def check(handler, env):
    module, _, attr = handler.partition(":")
    try:
        mod = obj = real_import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except BaseException as exc:
        return "does not import: %s: %s" % (type(exc).__name__, located(exc))
    if not callable(obj):
        return "is not callable"
    # An instance calls handle(payload, ctx), and its module's `warmup(ctx)` on keep-warm calls (when it
    # is callable: an instance ignores a `warmup` that is not, so every keep-warm call would do nothing).
    problem = takes(obj, 2, "handle(payload, ctx)")
    try:
        hook = getattr(mod, "warmup", None)
    except BaseException as exc:
        return "has a module whose warmup cannot be read: %s: %s" % (type(exc).__name__, located(exc))
    if problem is None and hook is not None:
        if not callable(hook):
            return "has a module whose warmup (the keep-warm hook, warmup(ctx)) is not callable but %s" % (
                type(hook).__name__,
            )
        problem = takes(hook, 1, "warmup(ctx)")
        if problem is not None:
            problem = "has a module whose warmup " + problem
    return problem

def takes(fn, count, form):  # why `fn` cannot be called with `count` arguments, or None
    try:  # the signature called, not a wrapped function's (a decorator may change what it takes)
        signature = inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):  # none to read (some builtins, an odd __signature__): the call will tell
        return None
    try:
        signature.bind(*([None] * count))
    except TypeError:
        return "cannot be called as %s: its parameters are %s" % (form, signature)
    return None

def located(exc):  # the message, with the innermost line of the project's code it was raised at
    if isinstance(exc, SyntaxError) and str(exc.filename or "").startswith(inside[0]):
        return "%s (%s, line %s)" % (exc.msg, exc.filename[len(inside[0]):], exc.lineno)
    where, tb = None, exc.__traceback__
    while tb is not None:
        name = tb.tb_frame.f_code.co_filename
        if name.startswith(inside[0]):
            where = (name[len(inside[0]):], tb.tb_lineno)
        tb = tb.tb_next
    return str(exc) if where is None else "%s (%s, line %d)" % (exc, *where)

def depends(handler):  # what the import of `handler` went through, at any depth
    parts = handler.partition(":")[0].split(".")
    todo = [".".join(parts[: i + 1]) for i in range(len(parts))]
    names, found = set(), set()
    while todo:
        name = todo.pop()
        if name in names:
            continue
        names.add(name)
        if "." in name:
            todo.append(name.rpartition(".")[0])
        todo.extend(edges.get(name, ()))
        source = getattr(sys.modules.get(name), "__file__", None)
        if isinstance(source, str) and source.startswith(inside[0]):
            found.add(("f", source))
        found.update(reads.get(name, ()))
    return {"names": sorted(names), "paths": sorted(found)}

last = None
for index, handler, env in json.loads(Path(sys.argv[3]).read_text()):
    if env != last:  # imported again under this env: what a module read of the last one is forgotten
        if last is not None:
            top = handler.partition(":")[0].split(".")[0]
            for name in [m for m in sys.modules if m == top or m.startswith(top + ".")]:
                del sys.modules[name]
        os.environ.clear()
        os.environ.update(base)
        os.environ.update(env)
        last = env
    problem = check(handler, env)
    out.write(json.dumps([index, problem, depends(handler)]) + "\\n")
    out.flush()
os._exit(0)  # not waiting for the threads an import started
"""


Check = tuple[str, Mapping[str, str]]
"""A `module:attr` handler and the env its function sets."""


Zipped = Callable[[Path], Mapping[str, bytes] | None]
"""The files of a top-level package as its revision's zip holds them (path relative to the project: bytes),
or None when there is no zip of it (`working_copy.CodeZips.files_in`)."""


def import_errors(
    root: Path,
    checks: Sequence[Check],
    secrets: Path | None = None,
    cache: ImportChecks | None = None,
    zipped: Zipped | None = None,
) -> dict[int, str]:
    """Import each `module:attr` handler (with its env) in a subprocess run in `root`, seeing of `root` only
    a copy of what its revision would carry (less the `secrets` folder, as the revision's zip). With
    `zipped`, that copy is made from the zip itself, so what is checked is what is published, whatever
    changes in the working copy meanwhile (read apart, a file saved between the zip and the copy was
    published unchecked: a deploy said "deployed" of code that did not import).

    Returns the problem of each check that fails, by its index in `checks`, e.g. `does not import:
    ModuleNotFoundError: ...`. A handler whose import kills or hangs the subprocess is blamed, and the rest
    are checked in a new one. With `cache` (kept between calls), a check that passed and whose
    dependencies did not change is not imported again.
    """
    if cache is not None:
        return cache.errors(root, checks, secrets, zipped)
    once = ImportChecks()
    try:
        return once.errors(root, checks, secrets, zipped)
    finally:
        once.close()


class CheckCancelled(Exception):
    """The look was stopped by `ImportChecks.cancel`: a newer one is wanted instead."""


@dataclass(frozen=True)
class _Running:
    """The import subprocess running now: its report file and the handlers in the order it imports them."""

    proc: subprocess.Popen[bytes]
    report: Path
    order: list[str]


@dataclass(frozen=True)
class _Passed:
    """A check that passed, and the state of what its import depended on then (`_Look.state`)."""

    depends: tuple[tuple[str, str], ...]
    state: tuple[object, ...]


VIEW_PREFIX = "faas-check-"
"""A view's folder in the temporary directory: `faas-check-<pid>-<random>`, pid of the process it serves."""
VIEW_LOCK = ".faas-check.lock"
"""A file in each view that its process holds an exclusive `flock` on for as long as it lives: the kernel
drops the lock when the process dies, however it dies, whatever pid namespace looks at it."""


def _remove_stale_views() -> None:
    """Remove the views of processes that are gone: a node SIGKILLed (the OOM killer, a machine's stop)
    leaves its view behind, a copy of the package per kill. Only a view of this user whose lock nobody
    holds goes: a live process holds its lock (in this pid namespace or another sharing the folder), and
    a folder without a lock file is no view of ours, or one being made. Housekeeping: it never fails a
    check."""
    base = Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for path in base.glob(f"{VIEW_PREFIX}*"):
            with contextlib.suppress(OSError):
                if path.is_symlink() or path.lstat().st_uid != os.getuid():
                    continue
                fd = os.open(path / VIEW_LOCK, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process lives
                finally:
                    os.close(fd)
                shutil.rmtree(path, ignore_errors=True)


class _View:
    """The copy of one top-level package the checks import from; kept between looks, updated file by file."""

    _swept = False
    """Whether this process removed the stale views yet (once: the first view it makes)."""

    def __init__(self) -> None:
        if not _View._swept:
            _View._swept = True
            _remove_stale_views()
        self.path = Path(tempfile.mkdtemp(prefix=f"{VIEW_PREFIX}{os.getpid()}-"))
        lock = os.open(self.path / VIEW_LOCK, os.O_WRONLY | os.O_CREAT, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)  # held until the process ends (or `cleanup`): the view is in use
        # Removed by `cleanup`, else when the view is collected or the process exits (no warning then).
        self.cleanup = weakref.finalize(self, _remove_view, self.path, lock)
        self.files: dict[str, str] = {}
        """Relative path (to the project) → sha256 of what was copied there."""

    def sync(self, wanted: dict[str, tuple[Path | bytes, str]]) -> None:
        """Make the copy hold exactly `wanted` (relative path → its source file or content, and sha256)."""
        for rel in [r for r in self.files if r not in wanted]:
            with contextlib.suppress(OSError):
                (self.path / rel).unlink()
            del self.files[rel]
        for rel, (source, digest) in wanted.items():
            if self.files.get(rel) != digest:
                copy = self.path / rel
                copy.parent.mkdir(parents=True, exist_ok=True)
                if isinstance(source, bytes):
                    copy.write_bytes(source)
                else:
                    shutil.copyfile(source, copy)
                self.files[rel] = digest


def _remove_view(path: Path, lock: int) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.close(lock)


class _Look:
    """One top-level package as it is now: its files' digests, for the state of a check's dependencies."""

    def __init__(self, root: Path, view: _View, digest: Any) -> None:
        self.root = root
        self.view = view
        self._digest = digest
        self.stems: dict[str, list[str]] = {}
        """`a/b/c` → the files that could be module `a.b.c` (`a/b/c.py`, `a/b/c.*.so`, ...)."""
        self.folders: dict[str, set[str]] = {}
        """Folder (relative, "" for the view itself) → the names in it."""
        for rel in view.files:
            head, _, name = rel.rpartition("/")
            self.stems.setdefault(f"{head}/{name.split('.')[0]}".lstrip("/"), []).append(rel)
            while True:
                self.folders.setdefault(head, set()).add(name)
                if not head:
                    break
                head, _, name = head.rpartition("/")

    def state(self, depends: Sequence[tuple[str, str]]) -> tuple[object, ...]:
        """What each dependency is now: a module name's candidate files, a file's sha256, a folder's
        entries (None: not there)."""
        return tuple(self._one(kind, what) for kind, what in depends)

    def _one(self, kind: str, what: str) -> object:
        if kind == "m":
            path = what.replace(".", "/")
            stems = self.stems.get(path, []) + self.stems.get(f"{path}/__init__", [])
            return (path in self.folders, tuple(sorted(stems)))
        if kind == "vf":
            return self.view.files.get(what)
        if kind == "vd":
            found = self.folders.get(what)
            return None if found is None else tuple(sorted(found))
        if kind == "pf":
            return self._digest(self.root / what)
        with contextlib.suppress(OSError):  # "pd": a folder of the project
            return tuple(sorted(os.listdir(self.root / what)))
        return None


class ImportChecks:
    """Import checks kept between looks at one working copy (the watcher's): copies of the packages,
    updated file by file, and the checks that passed with what they depended on (module docstring).

    Thread-safe: one look at a time. `imported` lists the handlers the last look imported (the rest
    passed on what was recorded); `close` removes the copies.
    """

    def __init__(self) -> None:
        self._views: dict[Path, _View] = {}
        self._passed: dict[tuple[str, str, str, str], _Passed] = {}
        self._digests: dict[Path, tuple[tuple[int, int, int, int], str]] = {}
        self._lock = threading.Lock()
        self._guard = threading.Lock()
        """Guards `_running` and `_cancelled`, which `cancel` and `progress` use from another thread."""
        self._running: _Running | None = None
        self._cancelled = False
        self.imported: list[str] = []

    def cancel(self) -> None:
        """Stop the look in progress, if any, from another thread: it raises CheckCancelled at once (its
        subprocess killed) and what it had found is not kept. A look that starts later is not affected."""
        with self._guard:
            self._cancelled = True
            if self._running is not None:
                _kill(self._running.proc)

    def progress(self) -> tuple[str, float] | None:
        """The handler being imported now and since when (seconds since the epoch), or None when no
        import runs."""
        with self._guard:
            running = self._running
        if running is None:
            return None
        try:
            done = running.report.read_bytes().count(b"\n")
            since = running.report.stat().st_mtime  # its last line, else its start
        except OSError:
            return None
        return (running.order[done], since) if done < len(running.order) else None

    def close(self) -> None:
        with self._lock:
            for view in self._views.values():
                view.cleanup()
            self._views.clear()
            self._passed.clear()

    def errors(
        self, root: Path, checks: Sequence[Check], secrets: Path | None = None, zipped: Zipped | None = None
    ) -> dict[int, str]:
        """`import_errors` of `checks`, importing only those not known to pass."""
        with self._lock:
            with self._guard:
                self._cancelled = False
            self.imported = []
            by_top: dict[str, dict[int, Check]] = {}
            for index, (handler, env) in enumerate(checks):
                by_top.setdefault(top_level_name(handler), {})[index] = (handler, env)
            problems: dict[int, str] = {}
            keys: set[tuple[str, str, str, str]] = set()
            for top, group in by_top.items():
                problems.update(self._group(root, top, group, secrets, keys, zipped))
            self._passed = {k: v for k, v in self._passed.items() if k in keys}  # what is gone, forgotten
            return problems

    def _group(
        self,
        root: Path,
        top: str,
        group: dict[int, Check],
        secrets: Path | None,
        keys: set[tuple[str, str, str, str]],
        zipped: Zipped | None,
    ) -> dict[int, str]:
        source = top_level_of(root, top)
        view = self._views.get(root / top)
        if view is None:
            view = self._views[root / top] = _View()
        wanted: dict[str, tuple[Path | bytes, str]] = {}
        files = None if source is None or zipped is None else zipped(source)
        if files is not None:  # what the revision's zip holds
            for rel, content in files.items():
                wanted[rel] = (content, hashlib.sha256(content).hexdigest())
        elif source is not None:  # else an installed module, or none: found on the path, or not at all
            for path in code_files(source, secrets):
                digest = self._digest(path)
                if digest is not None:  # gone since it was listed: as if it had not been
                    wanted[path.relative_to(source.parent).as_posix()] = (path, digest)
        view.sync(wanted)
        look = _Look(root, view, self._digest)
        todo: dict[int, Check] = {}
        for index, (handler, env) in group.items():
            key = (str(root), str(secrets), handler, json.dumps(dict(env), sort_keys=True))
            keys.add(key)
            passed = self._passed.get(key)
            if passed is None or look.state(passed.depends) != passed.state:
                todo[index] = (handler, env)
        self.imported.extend(todo[i][0] for i in sorted(todo))
        if not todo:
            return {}
        problems: dict[int, str] = {}
        for index, (problem, found) in self._check(root, view.path, todo, secrets).items():
            handler, env = todo[index]
            key = (str(root), str(secrets), handler, json.dumps(dict(env), sort_keys=True))
            if problem is not None:
                problems[index] = problem
                self._passed.pop(key, None)
                continue
            depends = _depends(found, top, root, view.path)
            self._passed[key] = _Passed(depends, look.state(depends))
        return problems

    def _digest(self, path: Path) -> str | None:
        """sha256 of the file at `path` (None: not there), read again only when its stat changed."""
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino)
            known = self._digests.get(path)
            if known is not None and known[0] == stamp:
                return known[1]
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError:
            return None
        self._digests[path] = (stamp, digest)
        return digest

    def _check(
        self, root: Path, view: Path, checks: dict[int, Check], secrets: Path | None
    ) -> dict[int, tuple[str | None, dict[str, Any] | None]]:
        """Each check's problem (None: it passed) and what its import depended on (None: not known)."""
        results: dict[int, tuple[str | None, dict[str, Any] | None]] = {}
        pending = sorted(checks, key=lambda i: (json.dumps(checks[i][1], sort_keys=True), i))  # env by env
        with tempfile.TemporaryDirectory(prefix="faas-check-io-") as io:
            todo, report = Path(io) / "checks.json", Path(io) / "report"
            while pending:
                todo.write_text(json.dumps([[i, checks[i][0], dict(checks[i][1])] for i in pending]))
                report.write_text("")
                if self._cancelled:
                    raise CheckCancelled
                proc = subprocess.Popen(
                    # -P: `-c` would put the working directory, the whole project, first on the path. -B: the
                    # copy is kept between looks and rewritten within a second; no stale `.pyc` of it.
                    [
                        sys.executable,
                        "-P",
                        "-B",
                        "-c",
                        _CHECK,
                        str(view),
                        _hiding(root, view, secrets),
                        str(todo),
                        str(report),
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,  # a module's prints: nobody reads them
                    stderr=subprocess.DEVNULL,
                    cwd=root,
                    start_new_session=True,  # its own process group: what its imports start goes with it
                )
                order = [checks[i][0] for i in pending]
                with self._guard:
                    self._running = _Running(proc, report, order)
                    if self._cancelled:  # asked between the look above and the start
                        _kill(proc)
                try:
                    code = proc.wait(IMPORT_TIMEOUT)
                    failure = f"does not import: the import exited the process ({code})"
                except subprocess.TimeoutExpired:
                    failure = f"does not import: the import did not finish within {IMPORT_TIMEOUT:g} s"
                finally:
                    with self._guard:
                        self._running = None
                    _kill(proc)
                    proc.wait()
                if self._cancelled:
                    raise CheckCancelled
                for line in report.read_text().splitlines():
                    with contextlib.suppress(ValueError, TypeError):
                        index, problem, found = json.loads(line)
                        results[index] = (problem, found)
                pending = [i for i in pending if i not in results]
                if pending:
                    results[pending.pop(0)] = (failure, None)
        return results


def _depends(found: dict[str, Any] | None, top: str, root: Path, view: Path) -> tuple[tuple[str, str], ...]:
    """The subprocess's report of one import as dependencies: ("m", module name of the package), ("vf"
    | "vd", file | folder of the copy), ("pf" | "pd", file | folder of the project), relative paths."""
    if not found:
        return ()
    out: set[tuple[str, str]] = set()
    for name in found.get("names", ()):
        if name == top or name.startswith(top + "."):
            out.add(("m", name))
    for kind, raw in found.get("paths", ()):
        path = Path(raw)
        if path == view or path.is_relative_to(view):
            rel = path.relative_to(view).as_posix()
            out.add(("vf" if kind == "f" else "vd", "" if rel == "." else rel))
        elif path.is_relative_to(root):
            out.add(("pf" if kind == "f" else "pd", path.relative_to(root).as_posix()))
    return tuple(sorted(out))


def _hiding(root: Path, view: Path, secrets: Path | None) -> str:
    """What the check's process hides, for `_CHECK` (JSON; an empty object: nothing)."""
    if secrets is None:
        return "{}"
    keep = [str(p) for p in sandbox.needed(root, view)]
    return json.dumps({"sandbox": sandbox.__file__, "hide": str(secrets), "keep": keep})


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """End the check's process and what its imports started (its process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
