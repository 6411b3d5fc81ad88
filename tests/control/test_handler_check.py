"""The handler import check sees of the project what a revision carries, as an instance does (section 12)."""

from __future__ import annotations

import os
import py_compile
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest

from framework.control import handler_check
from framework.control.handler_check import CheckCancelled, ImportChecks, import_errors
from tests.support import namespaces_allowed, wait_for


def project(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_module_beside_the_package_is_not_importable(tmp_path: Path) -> None:
    root = project(
        tmp_path,
        {
            "helpers.py": "VALUE = 1\n",
            "functions/__init__.py": "",
            "functions/h.py": "import helpers\n\ndef f(p, ctx):\n    return p\n",
            "functions/ok.py": "from . import inner\n\ndef f(p, ctx):\n    return inner.VALUE\n",
            "functions/inner.py": "VALUE = 2\n",
        },
    )
    problems = import_errors(root, [("functions.h:f", {}), ("functions.ok:f", {})])
    assert problems == {
        0: "does not import: ModuleNotFoundError: No module named 'helpers' (functions/h.py, line 1)"
    }


def test_a_path_climbed_to_from_file_is_the_copy_not_the_project(tmp_path: Path) -> None:
    """A module that puts its project folder on the path through `__file__` finds the revision's folder
    in an instance (the cache), so here the check's copy: not the working copy's `helpers`."""
    climb = (
        "import pathlib, sys\n"
        "sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))\n"
        "import helpers\n\ndef f(p, ctx):\n    return p\n"
    )
    root = project(
        tmp_path, {"helpers.py": "VALUE = 1\n", "functions/__init__.py": "", "functions/h.py": climb}
    )
    problems = import_errors(root, [("functions.h:f", {})])
    assert problems[0].startswith("does not import: ModuleNotFoundError"), problems


def test_what_the_revision_leaves_out_is_left_out(tmp_path: Path) -> None:
    """A compiled module without its source is not code (`snapshot.is_code`), nor is a module file shadowed
    by a folder of its name: the revision carries the folder, so `report:f` is looked up in it."""
    root = project(
        tmp_path,
        {
            "functions/__init__.py": "",
            "functions/h.py": "from . import compiled\n\ndef f(p, ctx):\n    return p\n",
            "report.py": "def f(p, ctx):\n    return p\n",
            "report/page.html": "<p></p>\n",
        },
    )
    source = project(tmp_path / "src", {"compiled.py": "X = 1\n"}) / "compiled.py"
    py_compile.compile(str(source), cfile=str(root / "functions" / "compiled.pyc"))
    problems = import_errors(root, [("functions.h:f", {}), ("report:f", {})])
    assert problems[0].startswith("does not import: ImportError: cannot import name"), problems
    assert problems[1].startswith("does not import: AttributeError"), problems
    # The same project, the compiled module in the package's source form: it imports.
    (root / "functions" / "compiled.pyc").unlink()
    (root / "functions" / "compiled.py").write_text("X = 1\n")
    assert import_errors(root, [("functions.h:f", {})]) == {}


def test_single_modules_installed_modules_and_env(tmp_path: Path) -> None:
    """A top-level module file, a module of an installed package, and the function's env at import."""
    root = project(
        tmp_path,
        {"solo.py": "import os\nLEVEL = os.environ['LEVEL']\n\ndef f(p, ctx):\n    return LEVEL\n"},
    )
    assert import_errors(root, [("solo:f", {"LEVEL": "3"}), ("operator:add", {})]) == {}
    missing = import_errors(root, [("solo:f", {})])
    assert missing == {0: "does not import: KeyError: 'LEVEL' (solo.py, line 2)"}
    # One handler, two functions' envs: each is checked with its own (the module is imported again).
    both = [("solo:f", {"LEVEL": "3"}), ("solo:f", {}), ("solo:f", {"LEVEL": "4"})]
    assert import_errors(root, both) == {1: "does not import: KeyError: 'LEVEL' (solo.py, line 2)"}
    assert import_errors(root, both[::-1]) == {1: "does not import: KeyError: 'LEVEL' (solo.py, line 2)"}


def test_a_failed_import_names_the_line_of_the_project_it_failed_at(tmp_path: Path) -> None:
    """A syntax error, and an error raised in the standard library called from a module the handler's
    imports: each names the file (relative to the project) and line of the project's code, not the
    basename Python gives a syntax error nor the library's own line."""
    root = project(
        tmp_path,
        {
            "functions/__init__.py": "",
            "functions/broken.py": "X = 1\n\ndef f(p, ctx:\n    return p\n",
            "functions/h.py": "from functions import table\n\ndef f(p, ctx):\n    return p\n",
            "functions/table.py": "import json\n\n\nROWS = json.loads('{oops')\n",
        },
    )
    problems = import_errors(root, [("functions.broken:f", {}), ("functions.h:f", {})])
    assert problems[0].startswith("does not import: SyntaxError: "), problems
    assert problems[0].endswith(" (functions/broken.py, line 3)"), problems
    assert problems[1].startswith("does not import: JSONDecodeError: Expecting property name"), problems
    assert problems[1].endswith(" (functions/table.py, line 4)"), problems


def test_code_run_at_import_sees_no_secrets_folder(tmp_path: Path) -> None:
    """A module that reads a secret file at import, as an instance would import it: the secrets folder is
    empty there (`framework/sandbox.py`), so the check says it does not import; with no secrets folder
    given, the same module imports (the file is there)."""
    token = tmp_path / "secrets" / "token"
    root = project(
        tmp_path,
        {
            "secrets/token": "hunter22\n",
            "functions/__init__.py": "",
            "functions/peek.py": f"TOKEN = open({str(token)!r}).read()\n\ndef f(p, ctx):\n    return p\n",
        },
    )
    problems = import_errors(root, [("functions.peek:f", {})], root / "secrets")
    if namespaces_allowed(None):
        assert problems[0].startswith("does not import: FileNotFoundError"), problems
    else:  # a kernel that refuses the namespace: the folder stays visible, as in instances
        assert problems == {}, problems
    assert import_errors(root, [("functions.peek:f", {})]) == {}
    assert token.read_text() == "hunter22\n"


def test_a_temporary_folder_inside_the_project_still_takes_the_checks_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. A project with a secrets folder whose temporary folder (TMPDIR) lies inside it. 2. Check a good
    handler and one whose module writes beside itself at import.
    Result: the good one passes (the check's results file, in the temporary folder, is opened before the
    project turns read-only for the imported code: it used to fail as "the import exited the process");
    the writing one does not import (EROFS), as in an instance."""
    root = project(
        tmp_path,
        {
            "secrets/token": "hunter22\n",
            "functions/__init__.py": "",
            "functions/h.py": "def f(p, ctx):\n    return p\n",
            "functions/w.py": "open(__file__ + '.note', 'w')\n\ndef f(p, ctx):\n    return p\n",
        },
    )
    temp = root / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    problems = import_errors(root, [("functions.h:f", {}), ("functions.w:f", {})], root / "secrets")
    if not namespaces_allowed(None):  # the folder stays visible and nothing is read-only
        assert problems == {}, problems
        return
    assert list(problems) == [1] and "Read-only file system" in problems[1], problems


def test_threads_and_processes_started_at_import_neither_hold_the_check_nor_outlive_it(
    tmp_path: Path,
) -> None:
    """A module that starts a thread that never ends and a child process at import (a non-daemon thread
    kept the check's process from exiting: every check took its 30 s limit, and the child outlived it).
    Result: the check is done in seconds, the handler imports, and the child is gone."""
    pid_file = tmp_path / "child.pid"
    module = (
        "import subprocess, threading, time\n"
        "threading.Thread(target=lambda: time.sleep(3600)).start()\n"
        f"child = subprocess.Popen(['sleep', '3600'])\nopen({str(pid_file)!r}, 'w').write(str(child.pid))\n"
        "def f(p, ctx):\n    return p\n"
    )
    root = project(tmp_path, {"functions/__init__.py": "", "functions/busy.py": module})
    started = time.monotonic()
    assert import_errors(root, [("functions.busy:f", {})]) == {}
    assert time.monotonic() - started < 15
    assert (
        not psutil.pid_exists(int(pid_file.read_text()))
        or psutil.Process(int(pid_file.read_text())).status() == psutil.STATUS_ZOMBIE
    )


def test_a_kept_check_imports_again_only_what_an_edit_can_have_changed(tmp_path: Path) -> None:
    """1. Five handlers in one package; `b` imports `shared`, `c` reads a data file at import; a first look
    imports all five. 2. Nothing changed: none is imported. 3. `a.py` edited: `a` alone. 4. `shared.py`
    edited: `b` alone (it imported it). 5. `table.json` edited: `c` alone. 6. A module added that no
    handler names: none. 7. `d.py` shadowed by a package `d/` added beside it (which fails): `d` alone.
    8. `shared.py` broken: `b`, and `d` (a failed check is always imported again). 9. Nothing changed:
    those two again, no other. Result: the problems are those of a full check (the last look compares)."""
    handle = "def f(p, ctx):\n    return p\n"
    root = project(
        tmp_path,
        {
            "functions/__init__.py": "",
            "functions/a.py": handle,
            "functions/b.py": "from functions import shared\n" + handle,
            "functions/shared.py": "VALUE = 1\n",
            "functions/c.py": "import json, pathlib\n"
            "TABLE = json.loads((pathlib.Path(__file__).parent / 'table.json').read_text())\n" + handle,
            "functions/table.json": "{}",
            "functions/d.py": handle,
            "functions/e.py": handle,
        },
    )
    checks: list[tuple[str, dict[str, str]]] = [(f"functions.{name}:f", {}) for name in "abcde"]
    cache = ImportChecks()
    try:

        def imported() -> list[str]:
            cache.errors(root, checks)
            return sorted(h.partition(":")[0].rpartition(".")[2] for h in cache.imported)

        assert imported() == ["a", "b", "c", "d", "e"]
        assert imported() == []
        (root / "functions/a.py").write_text(handle + "# edited\n")
        assert imported() == ["a"]
        (root / "functions/shared.py").write_text("VALUE = 2\n")
        assert imported() == ["b"]
        (root / "functions/table.json").write_text('{"k": 1}')
        assert imported() == ["c"]
        (root / "functions/unused.py").write_text("X = 1\n")
        assert imported() == []
        project(root, {"functions/d/__init__.py": "raise ImportError('the package shadows the module')\n"})
        assert imported() == ["d"]
        (root / "functions/shared.py").write_text("raise RuntimeError('broken')\n")
        problems = cache.errors(root, checks)
        assert sorted(cache.imported) == ["functions.b:f", "functions.d:f"]  # d: failed at step 7
        assert problems == {
            1: "does not import: RuntimeError: broken (functions/shared.py, line 1)",
            3: "does not import: ImportError: the package shadows the module"
            " (functions/d/__init__.py, line 1)",
        }
        assert cache.errors(root, checks) == problems == import_errors(root, checks)
        assert sorted(cache.imported) == ["functions.b:f", "functions.d:f"]
    finally:
        cache.close()


def test_a_cancelled_check_stops_at_once_and_says_what_it_was_importing(tmp_path: Path) -> None:
    """1. A handler whose import hangs is being checked. 2. `progress` names it while it runs. 3. Another
    thread cancels. Result: the check raises CheckCancelled within seconds (not the 30 s limit), and the
    next look is not affected (it fails on the import limit only if it hangs again; here it was fixed)."""
    root = project(
        tmp_path,
        {"functions/__init__.py": "", "functions/slow.py": "import time\ntime.sleep(120)\n"},
    )
    cache = ImportChecks()
    raised: list[BaseException] = []

    def look() -> None:
        try:
            cache.errors(root, [("functions.slow:f", {})])
        except CheckCancelled as exc:
            raised.append(exc)

    try:
        worker = threading.Thread(target=look)
        started = time.monotonic()
        worker.start()
        progress = wait_for(cache.progress, timeout=15, message="the import under way")
        assert progress[0] == "functions.slow:f" and progress[1] <= time.time()
        cache.cancel()
        worker.join(10)
        assert not worker.is_alive() and len(raised) == 1
        assert time.monotonic() - started < 15
        assert cache.progress() is None
        (root / "functions/slow.py").write_text("def f(p, ctx):\n    return p\n")
        assert cache.errors(root, [("functions.slow:f", {})]) == {}
    finally:
        cache.close()


_CHECK_THEN = (
    "import os, signal, sys, time\n"
    "from pathlib import Path\n"
    "from framework.control.handler_check import ImportChecks\n"
    "checks = ImportChecks()\n"
    "assert checks.errors(Path(sys.argv[1]), [('functions.h:f', {})]) == {}\n"
    "print('checked', flush=True)\n"
    "if sys.argv[2] == 'die':\n"
    "    os.kill(os.getpid(), signal.SIGKILL)\n"
    "time.sleep(60)\n"
)
"""A process that checks the project in argv[1], then dies by SIGKILL (argv[2] `die`) or lives on."""


def test_the_view_of_a_killed_process_is_removed_by_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. A process checks a project's handlers (its view, a copy of the package, lands in the temporary
    directory), then is SIGKILLed before it can remove the view. 2. Another process checks it and lives
    on. 3. This process checks the project.
    Result: the killed process's view is gone; the live process's view, this process's own and a folder
    that is no view stay. (Whether a view's process lives is told by the lock it holds on a file in it,
    not by its pid, which another pid namespace sharing the folder would not see.)"""
    root = project(
        tmp_path / "p", {"functions/__init__.py": "", "functions/h.py": "def f(p, ctx):\n    return p\n"}
    )
    temp = tmp_path / "tmp"
    temp.mkdir()
    (temp / "faas-check-io-kept").mkdir()
    env = {**os.environ, "TMPDIR": str(temp)}
    killed = subprocess.run(
        [sys.executable, "-c", _CHECK_THEN, str(root), "die"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    [dead] = [p.name for p in temp.iterdir() if p.name != "faas-check-io-kept"]
    living = subprocess.Popen(
        [sys.executable, "-c", _CHECK_THEN, str(root), "live"], env=env, stdout=subprocess.PIPE, text=True
    )
    checks = ImportChecks()
    try:
        assert living.stdout is not None and living.stdout.readline() == "checked\n"
        [alive] = [p.name for p in temp.iterdir() if p.name not in ("faas-check-io-kept", dead)]
        monkeypatch.setattr(tempfile, "tempdir", str(temp))
        monkeypatch.setattr(handler_check._View, "_swept", False)
        assert checks.errors(root, [("functions.h:f", {})]) == {}
        now = sorted(p.name for p in temp.iterdir())
        assert dead not in now
        assert alive in now and "faas-check-io-kept" in now
        assert any(name.startswith(f"faas-check-{os.getpid()}-") for name in now), now
    finally:
        checks.close()
        living.kill()
        living.communicate()
