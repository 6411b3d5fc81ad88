"""Revision code on disk: each code zip of the deployment log unpacked into `FAAS_CACHE_DIR/<sha256>/`.

Instances import a revision's handler from its folder here (`FunctionSpec.code`), never from the working
copy, so deleting or editing `functions/` does not change what a node serves. A folder is written under
a temporary name and renamed into place, so a folder that exists is complete; the zip itself is kept
beside it (`<sha256>.zip`, written whole and renamed into place too, and read back only when its sha256
still matches) so a node can publish the exact bytes again after the broker lost its log.
Entries are removed only by `prune`: the code of no revision the log still holds, used by no instance of
this node, and untouched for a while (`Deployments` sweeps the cache every `PRUNE_EVERY` seconds). Without
it the folder grew by a revision's code at every save in watch mode, for good.

The zips come from the log, so any bytes may arrive: `store` turns every way unpacking can fail (not a
zip, corrupt deflate data, encryption, an unknown compression method, a path outside the folder, a name
the file system refuses, more files or bytes than a revision may hold, ...) into ValueError, the one
exception the log's reader skips a record for, and leaves nothing of it behind. A failure of this node's
own disk is no fault of the record: it stays an OSError (`LOCAL_ERRNOS` inside the zip's extraction, any
OSError around it), and the reader keeps the record (`log_state.py`), so this node numbers revisions as
every other node does, and unpacks the code again later (`Deployments._code`).
"""

from __future__ import annotations

import contextlib
import errno
import io
import math
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable, Collection
from pathlib import Path, PurePosixPath
from typing import TypeVar

from framework.control.revisions import sha256, unpacked_problem
from framework.control.snapshot import CACHE_TAG

LOCAL_ERRNOS = frozenset(
    {
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EROFS,
        errno.EIO,
        errno.EACCES,
        errno.EPERM,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
    }
)
"""OSErrors of this node's disk, folder or process, whatever the zip holds."""

_ENTRY = re.compile(r"^(?:([0-9a-f]{64})(\.zip)?|\.(?:unpack|zip|check|prune)-.*)$")
"""The names this cache writes: `<sha256>`, `<sha256>.zip`, and temporary ones (group 1 empty)."""


class CodeCache:
    """Content-addressed folders under `base` (the manifest folder's `.faas` by default)."""

    def __init__(self, base: Path, compile_code: bool = False) -> None:
        self.base = base
        self.compile_code = compile_code
        """Byte-compile each folder stored, in the background (`compile_later`): a node's instances may not
        write the cache (`sandbox.py`), so without it each of their cold starts compiles its modules."""
        self._lock = threading.Lock()
        """Held by `store` and by `prune` for each code it removes (`prune` runs in a thread): a code stored
        while a sweep runs is never removed by it, nor its fresh zip."""

    def folder_problem(self) -> str | None:
        """Why revisions cannot be unpacked here (the folder cannot be made, or written to), or None.
        Checked at start: otherwise every revision is skipped as unreadable and a "ready" node serves
        nothing."""
        try:
            self.base.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryDirectory(dir=self.base, prefix=".check-").cleanup()
            self._tag()
        except OSError as exc:
            why = exc.strerror or exc
            return f"FAAS_CACHE_DIR {self.base}: no revision code can be unpacked there ({why})"
        return None

    def _tag(self) -> None:
        """Mark the folder a cache (`snapshot.CACHE_TAG`): never part of a revision's code."""
        tag = self.base / CACHE_TAG
        if not tag.exists():
            tag.write_text(
                "Signature: 8a477f597d28d172789f06886806bc55\n"
                "# The code of faas revisions, unpacked: made again as needed (https://bford.info/cachedir/)\n"
            )

    def path(self, sha: str) -> Path:
        return self.base / sha

    def has(self, sha: str) -> bool:
        return self.path(sha).is_dir()

    def zip_bytes(self, sha: str) -> bytes | None:
        """The zip kept beside folder `sha`, or None when there is none or it is not that zip (a file left
        cut short by a crash or a full disk before writes were atomic, or edited by hand): publishing it
        again would give every reader a code record it refuses."""
        try:
            data = (self.base / f"{sha}.zip").read_bytes()
        except OSError:
            return None
        return data if sha256(data) == sha else None

    def store(self, sha: str, data: bytes) -> Path:
        """Unpack `data` (a zip whose sha256 must be `sha`) as `base/sha`; raises ValueError when corrupt."""
        if sha256(data) != sha:
            raise ValueError(f"code record {sha[:12]}: its value's sha256 is {sha256(data)[:12]}")
        with self._lock:
            target = self.path(sha)
            if target.is_dir():
                with contextlib.suppress(OSError):  # in use again: `prune` (of any node sharing it) leaves it
                    os.utime(target)
                # Unpacked, but its zip is missing or not whole: kept again.
                if self.zip_bytes(sha) is None:
                    self._keep_zip(sha, data)
            else:
                self.base.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(dir=self.base, prefix=".unpack-"))
                try:
                    _unpack(sha, data, tmp)
                    self._tag()  # a folder made again since the start (removed by hand) is tagged again
                    self._keep_zip(sha, data)
                    with contextlib.suppress(OSError):  # another process raced us to the same content
                        tmp.rename(target)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
        if self.compile_code:  # a folder there already too: stored before compiling began, or cut short
            compile_later(target)
        return target

    def touch(self, shas: Collection[str]) -> None:
        """Mark the code `shas` used now (those this cache holds), so `prune` of a node sharing the folder
        leaves it. Blocking file work: call it in a thread."""
        base = self.base
        for sha in shas:
            for name in (sha, f"{sha}.zip"):
                with contextlib.suppress(OSError):
                    os.utime(base / name)

    def prune(self, keep: Collection[str], idle: float) -> list[str]:
        """Remove the code (folder and zip) of every sha256 not in `keep` whose newest entry is at least
        `idle` seconds old, and what an interrupted write left (temporary names that old); returns the
        sha256s removed. The code in `keep` is marked used now (`touch`). A folder is renamed away before it
        is deleted, so it is whole or gone for any reader. Names this cache does not write are left alone.
        Blocking file work: call it in a thread."""
        base = self.base  # once: a re-pointed manifest moves `base` (`Deployments._follow`)
        cutoff = time.time() - idle
        try:
            names = os.listdir(base)
        except OSError:
            return []
        present = set(names)
        self.touch([sha for sha in keep if sha in present or f"{sha}.zip" in present])
        candidates: set[str] = set()
        for name in names:
            match = _ENTRY.match(name)
            if match is None or match.group(1) in keep:
                continue
            if match.group(1) is not None:
                candidates.add(match.group(1))
            elif _newest_mtime(base, name) < cutoff:  # a temporary entry: a crash or a full disk left it
                _remove(base / name)
        removed = []
        for sha in sorted(candidates):
            gone = base / f".prune-{sha}"
            with self._lock:  # its age looked at under the lock: `store` may be using it right now
                newest = _newest_mtime(base, sha, f"{sha}.zip")
                if newest >= cutoff or newest == -math.inf:  # used since, or gone already
                    continue
                try:
                    (base / sha).rename(gone)
                except FileNotFoundError:
                    pass
                except OSError:
                    continue
                with contextlib.suppress(OSError):
                    (base / f"{sha}.zip").unlink()
            _remove(gone)
            removed.append(sha)
        return removed

    def _keep_zip(self, sha: str, data: bytes) -> None:
        """Write `<sha>.zip` under a temporary name and rename it into place: a reader (the republish after
        a broker lost its log, another node sharing the folder) never sees a zip cut short."""
        fd, staged = tempfile.mkstemp(dir=self.base, prefix=".zip-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(staged, self.base / f"{sha}.zip")
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(staged)
            raise


def _newest_mtime(base: Path, *names: str) -> float:
    """The newest modification time of the entries `names` in `base` (-inf when none is there)."""
    newest = -math.inf
    for name in names:
        with contextlib.suppress(OSError):
            newest = max(newest, (base / name).lstat().st_mtime)
    return newest


def _remove(path: Path) -> None:
    """Delete a file or a folder tree, whatever is left of it; errors are ignored (the next sweep retries)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def verify(sha: str, data: bytes) -> None:
    """What `store` checks, without unpacking: ValueError when `data` is not the zip `sha` names, or a zip
    no node would unpack (an unsafe path, a corrupt entry). The CLI reads the log with it, so what
    `faas history` and `faas rollback` take for a revision's code is what the nodes can serve."""
    if sha256(data) != sha:
        raise ValueError(f"code record {sha[:12]}: its value's sha256 is {sha256(data)[:12]}")
    bad = _with_zip(sha, data, lambda z: z.testzip())
    if bad is not None:
        raise ValueError(f"code record {sha[:12]}: cannot unpack it (entry {bad!r} is corrupt)")


class _Refused(ValueError):
    """A zip refused before anything is unpacked: an entry that would land outside the folder, or more
    files or bytes than a revision's code may hold (`revisions.unpacked_problem`)."""


_COMPILE = """
import compileall, ctypes, os, py_compile, signal, sys
try:  # killed with the thread that started it, so with the node, whose stop then leaves no process behind
    ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit()
os.nice(10)
for folder in sys.argv[2:]:
    if not os.path.isdir(folder):  # pruned meanwhile: compiling would make its folders again
        continue
    compileall.compile_dir(folder, quiet=2, invalidation_mode=py_compile.PycInvalidationMode.TIMESTAMP)
"""
"""Byte-compile each folder given into its `__pycache__` folders, as an import would (each file written
whole and renamed into place, so an instance reads a whole one or none; those up to date are left)."""
COMPILE_TIMEOUT = 600.0
"""Seconds one compiling process may take before it is killed (the folders' imports compile then)."""
COMPILE_BATCH = 20
"""Folders one compiling process takes at most (a node reading its log at start queues every revision's)."""
_to_compile: queue.SimpleQueue[Path] = queue.SimpleQueue()
"""Folders waiting for the compiling thread."""
_compiler: threading.Thread | None = None
"""The thread that runs the compiling processes, one at a time (started with the first folder)."""
_compiler_lock = threading.Lock()
"""Held while `_compiler` is looked at and started."""


def compile_later(folder: Path) -> None:
    """Have `folder` byte-compiled soon, in a process of its own at low priority, one at a time: compiling
    holds the interpreter's lock a module at a time (100 revisions compiled on threads of the node held its
    loop up to 0.4 s at once), and a revision may hold megabytes of source. A module that does not compile
    is left to its import, which says why; a folder pruned meanwhile is no matter."""
    global _compiler
    _to_compile.put(folder)
    with _compiler_lock:
        if _compiler is None or not _compiler.is_alive():
            _compiler = threading.Thread(target=_compile_forever, name="faas-compile", daemon=True)
            _compiler.start()


def _compile_forever() -> None:
    """Compile what is queued, COMPILE_BATCH folders a process, for the life of the process."""
    while True:
        folders = {_to_compile.get()}
        with contextlib.suppress(queue.Empty):
            while len(folders) < COMPILE_BATCH:  # what queued meanwhile goes in the same process
                folders.add(_to_compile.get_nowait())
        args = [sys.executable, "-I", "-c", _COMPILE, str(os.getpid()), *map(str, sorted(folders))]
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run(args, stdin=subprocess.DEVNULL, capture_output=True, timeout=COMPILE_TIMEOUT)


def _unpack(sha: str, data: bytes, into: Path) -> None:
    """Extract the zip `data` into `into`; raises ValueError whatever the bytes make zipfile raise."""
    _with_zip(sha, data, lambda z: z.extractall(into))


T = TypeVar("T")


def _with_zip(sha: str, data: bytes, use: Callable[[zipfile.ZipFile], T]) -> T:
    """`use` the zip `data` once its entry names are checked safe; ValueError whatever zipfile raises."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            entries = z.infolist()
            for entry in entries:
                path = PurePosixPath(entry.filename)
                if path.is_absolute() or ".." in path.parts:
                    raise _Refused(f"code record {sha[:12]}: unsafe path {entry.filename!r} in the zip")
            # zipfile never extracts more than an entry declares, so the declared sizes bound the disk used.
            problem = unpacked_problem(len(entries), sum(e.file_size for e in entries))
            if problem is not None:
                raise _Refused(f"code record {sha[:12]}: {problem}")
            return use(z)
    except _Refused:
        raise
    except OSError as exc:
        if exc.errno in LOCAL_ERRNOS:  # this node's disk, not the bytes: not the record's fault
            raise
        raise ValueError(f"code record {sha[:12]}: cannot unpack it ({_kind(exc)}: {exc})") from None
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"code record {sha[:12]}: not a zip ({exc})") from None
    except Exception as exc:
        # The bytes come from the log, so anything goes: flipped deflate bytes (zlib.error), an encrypted
        # entry (RuntimeError), an unknown compression method (NotImplementedError), a name the file
        # system refuses (OSError), and whatever else zipfile raises. All mean one thing: unusable.
        raise ValueError(f"code record {sha[:12]}: cannot unpack it ({_kind(exc)}: {exc})") from None


def _kind(exc: BaseException) -> str:
    """`zlib.error`, `RuntimeError`: the exception's type as a reader of the log would look it up."""
    kind = type(exc)
    return kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
