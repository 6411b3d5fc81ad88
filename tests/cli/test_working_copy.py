"""`faas new` on event types it cannot write (framework/cli/working_copy.py; DESIGN.md 6)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from framework.cli import main
from framework.control.manifest import load_manifest
from tests.support import write_project

MANIFEST = """
# the team's functions
functions: []
"""


@pytest.mark.parametrize(
    ("event", "problem"),
    [("", "must not be empty"), (" ", "must not be only whitespace"), ("\udcff", "is not valid UTF-8")],
)
def test_new_refuses_an_event_type_no_event_can_have(tmp_path: Path, event: str, problem: str) -> None:
    """`faas new ok1 --event EVENT` with an empty type (a CloudEvent's type is never empty) or command-line
    bytes that are not UTF-8: exit 2 naming --event; neither the manifest nor functions/ok1.py is written."""
    root = write_project(tmp_path, MANIFEST)
    before = (root / "functions.yaml").read_text()
    env = {"FAAS_MANIFEST": str(root / "functions.yaml")}
    r = CliRunner().invoke(main, ["new", "ok1", "--event", "ping", "--event", event], env=env)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    error = r.stderr.splitlines()[-1]
    assert error.startswith("Error: Invalid value for '--event'") and problem in error, error
    assert (root / "functions.yaml").read_text() == before
    assert not (root / "functions" / "ok1.py").exists()
    r = CliRunner().invoke(main, ["new", "ok1", "--event", "ping"], env=env)
    assert r.exit_code == 0 and "events: [ping]" in (root / "functions.yaml").read_text(), r.output


def test_new_in_a_folder_without_a_manifest_creates_one(tmp_path: Path) -> None:
    """`faas new hello` where no functions.yaml exists yet. Result: exit 0; functions.yaml is created with
    the draft entry (readable by others as the umask allows, not mkstemp's 0600), functions/hello.py
    exists, a `.gitignore` keeps `secrets/` and `.faas/` out of git (a project's own, later, is left as it
    is) and no temporary file is left (before: a FileNotFoundError traceback, a stray module and a
    `.functions.yaml.*` file, so a second try failed on the module)."""
    path = tmp_path / "functions.yaml"
    r = CliRunner().invoke(main, ["new", "hello"], env={"FAAS_MANIFEST": str(path)})
    assert r.exit_code == 0, (r.output, r.exception)
    assert "name: hello" in path.read_text() and "state: draft" in path.read_text()
    assert path.stat().st_mode & 0o044, oct(path.stat().st_mode)
    assert (tmp_path / "functions" / "hello.py").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gitignore", "functions", "functions.yaml"]
    assert (tmp_path / ".gitignore").read_text().splitlines()[1:] == ["secrets/", ".faas/"]
    (tmp_path / ".gitignore").write_text("mine\n")  # a project's own is never touched
    r = CliRunner().invoke(main, ["new", "second"], env={"FAAS_MANIFEST": str(path)})
    assert r.exit_code == 0 and (tmp_path / ".gitignore").read_text() == "mine\n", r.output


def test_new_with_a_manifest_in_a_folder_that_does_not_exist_creates_nothing(tmp_path: Path) -> None:
    """`faas --manifest DIR/missing/functions.yaml new a` (a mistyped path). Result: exit 1 with one line
    naming the folder; neither the folder, functions/a.py nor the manifest is created (they were, exit 0:
    the typo became a new project)."""
    path = tmp_path / "missing" / "functions.yaml"
    r = CliRunner().invoke(main, ["--manifest", str(path), "new", "a"])
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    assert r.stderr == f"cannot create {path}: its folder {path.parent} does not exist\n"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("package", [False, True], ids=["no-package", "package"])
def test_new_on_a_flow_style_functions_list_writes_no_file(tmp_path: Path, package: bool) -> None:
    """1. A manifest whose functions list is flow style (`functions: [{...}]`), with or without a
    `functions/` package already. 2. `faas new zed`. Result: exit 1 saying the list cannot be appended to;
    the manifest is unchanged and no file is made (functions/__init__.py was left behind, the folder too)."""
    text = "functions: [{name: a, uuid: 2f7c1e3a-6a53-4a5b-9a55-3b2f0c1d9e10, handler: functions.a:handle}]\n"
    path = tmp_path / "functions.yaml"
    path.write_text(text)
    if package:
        (tmp_path / "functions").mkdir()
        (tmp_path / "functions" / "a.py").write_text("async def handle(payload, ctx):\n    return 1\n")
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    r = CliRunner().invoke(main, ["new", "zed"], env={"FAAS_MANIFEST": str(path)})
    assert r.exit_code == 1 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    assert "cannot append to a flow-style functions list" in r.stderr, r.stderr
    assert path.read_text() == text
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


@pytest.mark.parametrize("text", ["", "# functions come here\n", "defaults: {timeout: 5}\n"])
def test_new_completes_a_manifest_without_a_functions_list(tmp_path: Path, text: str) -> None:
    """`faas new hello` on an empty manifest, a comment-only one and one with `defaults:` only (which load
    refuses as having no functions list): exit 0 and the manifest now lists hello, what was there kept."""
    path = tmp_path / "functions.yaml"
    path.write_text(text)
    r = CliRunner().invoke(main, ["new", "hello"], env={"FAAS_MANIFEST": str(path)})
    assert r.exit_code == 0, (r.output, r.exception)
    assert path.read_text().startswith(text) and "name: hello" in path.read_text()
    assert [f.name for f in load_manifest(path, check_handlers=False).functions] == ["hello"]


@pytest.mark.parametrize("command", [["validate"], ["new", "qq"], ["ls"]])
def test_a_manifest_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path, command: list[str]) -> None:
    """`faas --manifest PIPE ...` where PIPE is a FIFO (the same goes for a socket or a device, such as
    /dev/null). Result: exit 1 saying it is not a regular file, and `new` writes no module. (Reading it
    waited for a writer for ever; `new` on /dev/null, as root, replaced the device with a plain file.)"""
    fifo = tmp_path / "functions.yaml"
    os.mkfifo(fifo)
    done = subprocess.run(
        [sys.executable, "-m", "framework", "--manifest", str(fifo), *command],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert f"{fifo} is not a regular file (a FIFO, socket or device)" in done.stderr, done.stderr
    assert not (tmp_path / "functions").exists()


def test_new_inside_a_project_refuses_to_start_a_second_one(tmp_path: Path) -> None:
    """1. A project (`functions.yaml`, `functions/`). 2. `faas new x` run in `functions/` with no manifest
    given. 3. The same with `--manifest functions.yaml`. Result: 2 exits 1 naming the enclosing manifest and
    what to do, and writes nothing (it made `functions/functions.yaml` and `functions/functions/x.py`, a
    project inside the code of the first); 3 starts the project it was told to."""
    root = write_project(tmp_path, "functions: []\n", {"a": "async def handle(p, ctx):\n    return p\n"})
    inside = root / "functions"
    before = sorted(p.name for p in inside.iterdir())
    env = {k: v for k, v in os.environ.items() if k != "FAAS_MANIFEST"}

    def new(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "framework", *args]
        return subprocess.run(command, cwd=inside, env=env, capture_output=True, text=True, timeout=60)

    r = new("new", "x")
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"is inside the project of {root / 'functions.yaml'}" in r.stderr and "--manifest" in r.stderr
    assert sorted(p.name for p in inside.iterdir()) == before
    r = new("--manifest", "functions.yaml", "new", "x")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (inside / "functions.yaml").is_file() and (inside / "functions" / "x.py").is_file()
