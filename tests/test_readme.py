"""The README is the user's guide: every command and route it documents must exist."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from framework.kafka.embedded import EmbeddedBroker
from framework.settings import Settings
from tests.support import Node, run_cli

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def _table_rows(heading: str) -> list[str]:
    section = README.split(f"## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return [line for line in section.splitlines() if line.startswith("| `")]


def _commands() -> list[str]:
    found: set[str] = set()
    for row in _table_rows("CLI"):
        for cmd in re.findall(r"`faas ([a-z]+)", row):
            found.add(cmd)
    return sorted(found)


def _routes() -> list[tuple[str, str]]:
    out = []
    for row in _table_rows("HTTP API"):
        m = re.match(r"\| `(GET|POST) (/[^`]*)`", row)
        assert m, row
        out.append((m.group(1), m.group(2)))
    return out


def test_readme_opens_with_the_two_commands() -> None:
    head = README.split("\n## ", 1)[0]
    assert "make run" in head and "make test" in head


def test_every_documented_setting_exists() -> None:
    """1. Read each `FAAS_*` name of the Settings table (`_SUFFIX` cells extend the name before them).
    Result: each is a field of Settings."""
    known = {f"FAAS_{n.upper()}" for n in Settings.model_fields}
    names: set[str] = set()
    for row in _table_rows("Settings"):
        cells = re.findall(r"`(FAAS_[A-Z_]+|_[A-Z_]+)`", row.split("|")[1])
        base = ""
        for cell in cells:
            if cell.startswith("FAAS_"):
                base = cell
                names.add(cell)
            else:
                names.add(base.rsplit("_", 1)[0] + cell)
    assert len(names) >= 20
    assert names <= known, sorted(names - known)
    assert known - names == set(), f"settings missing from the README: {sorted(known - names)}"


@pytest.mark.parametrize("command", _commands())
def test_documented_command_has_help(tmp_path: Path, command: str) -> None:
    r = run_cli(tmp_path, command, "--help")
    assert r.returncode == 0, r.stderr
    assert command in r.stdout.lower()


def test_documented_routes_answer(tmp_path: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]) -> None:
    """1. Start `faas run` on the example project. 2. Call each route of the README's HTTP table with
    `{uuid}` and `{type}` filled from the example manifest. Result: none is 404 for lack of a route
    or 405, and the documented status of the health routes is 200."""
    node = nodes(ROOT, broker.bootstrap).wait_ready()
    listed = httpx.get(f"{node.url}/functions", timeout=10).json()["functions"]
    productive = next(f for f in listed if f["state"] == "productive" and not f["events"])
    event = next(e for f in listed if f["state"] == "productive" for e in f["events"])
    routes = _routes()
    assert len(routes) >= 15
    invoked = httpx.post(f"{node.url}/functions/{productive['uuid']}/invoke", json={"a": 1}, timeout=30)
    invocation = invoked.json()["invocation_id"]
    for method, path in routes:
        url = node.url + path.replace("{uuid}", productive["uuid"]).replace("{type}", event)
        url = url.replace("{invocation_id}", invocation)
        r = httpx.request(method, url, json={"a": 1, "b": 2}, timeout=30)
        assert r.status_code not in (404, 405), (method, path, r.status_code, r.text)
        assert r.status_code < 500, (method, path, r.status_code, r.text)


def _documented_options() -> list[tuple[str, str]]:
    """(command, option) of every `--option` the README writes after `faas COMMAND` in one code span."""
    found: set[tuple[str, str]] = set()
    for span in re.findall(r"`(faas [^`]+)`", README):
        words = span.split()
        if len(words) < 2 or not re.fullmatch(r"[a-z]+", words[1]):
            continue
        for option in re.findall(r"(?<![\w-])(--[a-z][a-z-]*)", span):
            found.add((words[1], option))
    return sorted(found)


def test_every_documented_option_exists() -> None:
    """1. Collect each `--option` the README shows in a `faas COMMAND ...` code span. Result: COMMAND (or
    the `faas` group itself, for the options every command takes) has that option."""
    import click

    from framework.cli import main

    documented = _documented_options()
    assert len(documented) >= 20, documented
    group = {o for p in main.params for o in [*p.opts, *p.secondary_opts]} | {"--help", "--version"}
    missing = []
    for command, option in documented:
        cmd = main.commands.get(command)
        assert isinstance(cmd, click.Command), f"`faas {command}` is not a command"
        own = {o for p in cmd.params for o in [*p.opts, *p.secondary_opts]}
        if option not in own | group:
            missing.append(f"faas {command} {option}")
    assert missing == [], missing
