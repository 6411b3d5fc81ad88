"""`faas replay`'s arguments (framework/cli/replay.py); the replay itself: tests/kafka/test_replay.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from framework.cli import main
from tests.support import write_project


@pytest.mark.parametrize("option", ["--id", "--function", "--type"])
def test_an_empty_filter_is_a_usage_error(tmp_path: Path, option: str) -> None:
    """`faas replay --id ''` (an unset shell variable), and the same of `--function` and `--type`.
    Result: exit 2 naming the option, before any broker is asked (it selected nothing, said "no failed event
    with ce_id ''" and exited 0)."""
    root = write_project(tmp_path, "functions: []\n", {})
    env = {"FAAS_MANIFEST": str(root / "functions.yaml"), "FAAS_KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    r = CliRunner().invoke(main, ["replay", option, ""], env=env)
    assert r.exit_code == 2, (r.output, r.exception)
    said = f"Error: Invalid value for '{option}': is empty: give a value, or leave the option out for the "
    said += "default"
    assert r.stderr.splitlines()[-1] == said
