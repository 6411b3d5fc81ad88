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
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

from framework import sandbox
from framework.control.snapshot import code_files, top_level_of

IMPORT_TIMEOUT = 30.0
"""Seconds one import-check subprocess may run before its current handler is blamed."""

_CHECK = """
import importlib, importlib.util, json, os, sys
from pathlib import Path
hiding = json.loads(sys.argv[2])
if hiding:  # as in instances (`framework/sandbox.py`), code run at import sees no secrets folder
    spec = importlib.util.spec_from_file_location("faas_sandbox", hiding["sandbox"])  # by path: the
    sandbox = importlib.util.module_from_spec(spec)  # framework may not be importable from here
    spec.loader.exec_module(sandbox)
    sandbox.hide(Path(hiding["hide"]), [Path(p) for p in hiding["keep"]])
sys.path.insert(0, sys.argv[1])  # the view: the handlers' top-level package, nothing else of the project
out = open(sys.argv[4], "a")
base = dict(os.environ)

def check(handler, env):
    module, _, attr = handler.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except BaseException as exc:
        return "does not import: %s: %s" % (type(exc).__name__, exc)
    return None if callable(obj) else "is not callable"

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
    out.write(json.dumps([index, check(handler, env)]) + "\\n")
    out.flush()
os._exit(0)  # not waiting for the threads an import started
"""


Check = tuple[str, Mapping[str, str]]
"""A `module:attr` handler and the env its function sets."""


def import_errors(root: Path, checks: Sequence[Check], secrets: Path | None = None) -> dict[int, str]:
    """Import each `module:attr` handler (with its env) in a subprocess run in `root`, seeing of `root` only
    a copy of what its revision would carry (less the `secrets` folder, as the revision's zip).

    Returns the problem of each check that fails, by its index in `checks`, e.g. `does not import:
    ModuleNotFoundError: ...`. A handler whose import kills or hangs the subprocess is blamed, and the rest
    are checked in a new one.
    """
    by_top: dict[str, dict[int, Check]] = {}
    for index, (handler, env) in enumerate(checks):
        by_top.setdefault(handler.partition(":")[0].split(".")[0], {})[index] = (handler, env)
    problems: dict[int, str] = {}
    for top, group in by_top.items():
        with tempfile.TemporaryDirectory(prefix="faas-check-") as view:
            source = top_level_of(root, top)
            if source is not None:  # else an installed module, or none: found on the path, or not at all
                for path in code_files(source, secrets):
                    copy = Path(view) / path.relative_to(source.parent)
                    copy.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(path, copy)
            problems.update(_check(root, Path(view), group, secrets))
    return problems


def _hiding(root: Path, view: Path, secrets: Path | None) -> str:
    """What the check's process hides, for `_CHECK` (JSON; an empty object: nothing)."""
    if secrets is None:
        return "{}"
    keep = [str(p) for p in sandbox.needed(root, view)]
    return json.dumps({"sandbox": sandbox.__file__, "hide": str(secrets), "keep": keep})


def _check(root: Path, view: Path, checks: dict[int, Check], secrets: Path | None) -> dict[int, str]:
    results: dict[int, str | None] = {}
    pending = sorted(checks, key=lambda i: (json.dumps(checks[i][1], sort_keys=True), i))  # env by env
    with tempfile.TemporaryDirectory(prefix="faas-check-io-") as io:
        todo, report = Path(io) / "checks.json", Path(io) / "report"
        while pending:
            todo.write_text(json.dumps([[i, checks[i][0], dict(checks[i][1])] for i in pending]))
            report.write_text("")
            proc = subprocess.Popen(
                # -P: `-c` would put the working directory, the whole project, first on the path.
                [
                    sys.executable,
                    "-P",
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
            try:
                code = proc.wait(IMPORT_TIMEOUT)
                failure = f"does not import: the import exited the process ({code})"
            except subprocess.TimeoutExpired:
                failure = f"does not import: the import did not finish within {IMPORT_TIMEOUT:g} s"
            finally:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for line in report.read_text().splitlines():
                with contextlib.suppress(ValueError):
                    index, problem = json.loads(line)
                    results[index] = problem
            pending = [i for i in pending if i not in results]
            if pending:
                results[pending.pop(0)] = failure
    return {i: p for i, p in results.items() if p is not None}
