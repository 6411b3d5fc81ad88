"""The handler import check: import every `module:attribute` handler in a subprocess, as an instance would.

An instance imports its revision's code, which is the handler's top-level package (or module) alone, never
the rest of the working copy (DESIGN.md section 12). So the check imports each handler from a copy of the
files its revision would carry (`snapshot.code_files`, the revision zip's own list): a module the package
imports from beside it in the project, a linked folder the zip leaves out, a path climbed to from
`__file__`, all fail here, at `faas validate` and `faas deploy`, and not at the first invocation. One
subprocess per top-level name (usually one in all), run in the manifest's folder like an instance, so a
broken module can neither crash nor pollute the calling process; a handler whose import kills or hangs
the subprocess is blamed, and the rest are checked in a new one.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from framework import sandbox
from framework.control.snapshot import code_files, top_level_of

IMPORT_TIMEOUT = 30.0
"""Seconds one import-check subprocess may run before its current handler is blamed."""

_MARK = "@@faas-check@@ "
_CHECK = f"""
import importlib, importlib.util, json, os, sys
from pathlib import Path
hiding = json.loads(sys.argv[2])
if hiding:  # as in instances (`framework/sandbox.py`), code run at import sees no secrets folder
    spec = importlib.util.spec_from_file_location("faas_sandbox", hiding["sandbox"])  # by path: the
    sandbox = importlib.util.module_from_spec(spec)  # framework may not be importable from here
    spec.loader.exec_module(sandbox)
    sandbox.hide(Path(hiding["hide"]), [Path(p) for p in hiding["keep"]])
sys.path.insert(0, sys.argv[1])  # the view: the handlers' top-level package, nothing else of the project
out, sys.stdout = sys.stdout, sys.stderr  # a module's prints must not mix with the report

def check(handler, env):
    os.environ.update(env)
    module, _, attr = handler.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except BaseException as exc:
        return "does not import: %s: %s" % (type(exc).__name__, exc)
    return None if callable(obj) else "is not callable"

for line in sys.stdin:
    handler, env = json.loads(line)
    out.write({_MARK!r} + json.dumps([handler, check(handler, env)]) + "\\n")
    out.flush()
"""


def import_errors(
    root: Path, handlers: dict[str, dict[str, str]], secrets: Path | None = None
) -> dict[str, str]:
    """Import each `module:attr` handler (with its env) in a subprocess run in `root`, seeing of `root` only
    a copy of what its revision would carry (less the `secrets` folder, as the revision's zip).

    Returns the problem of each handler that fails, e.g. `does not import: ModuleNotFoundError: ...`.
    A handler whose import kills or hangs the subprocess is blamed, and the rest are checked in a new one.
    """
    by_top: dict[str, dict[str, dict[str, str]]] = {}
    for handler, env in handlers.items():
        by_top.setdefault(handler.partition(":")[0].split(".")[0], {})[handler] = env
    problems: dict[str, str] = {}
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


def _check(
    root: Path, view: Path, handlers: dict[str, dict[str, str]], secrets: Path | None
) -> dict[str, str]:
    results: dict[str, str | None] = {}
    pending = list(handlers)
    while pending:
        stdin = "".join(json.dumps([h, handlers[h]]) + "\n" for h in pending)
        try:
            proc = subprocess.run(
                # -P: `-c` would put the working directory, the whole project, first on the path.
                [sys.executable, "-P", "-c", _CHECK, str(view), _hiding(root, view, secrets)],
                input=stdin,
                capture_output=True,
                text=True,
                cwd=root,
                timeout=IMPORT_TIMEOUT,
            )
            out, failure = proc.stdout, f"does not import: the import exited the process ({proc.returncode})"
        except subprocess.TimeoutExpired as exc:
            raw = exc.stdout or ""
            out = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            failure = f"does not import: the import did not finish within {IMPORT_TIMEOUT:g} s"
        for line in out.splitlines():
            if line.startswith(_MARK):
                handler, problem = json.loads(line[len(_MARK) :])
                results[handler] = problem
        pending = [h for h in pending if h not in results]
        if pending:
            results[pending.pop(0)] = failure
    return {h: p for h, p in results.items() if p is not None}
