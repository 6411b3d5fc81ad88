"""`faas new` on event types it cannot write (framework/cli/working_copy.py; DESIGN.md 6)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from framework.cli import main
from tests.support import write_project

MANIFEST = """
# the team's functions
functions: []
"""


@pytest.mark.parametrize(
    ("event", "problem"),
    [("", "must not be empty"), (" ", "must not be empty"), ("\udcff", "is not valid UTF-8")],
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
