"""The CLI's forms for scripts (DESIGN.md section 6): `--json` reports, `--data @-`,
`emit --key/--id/--source`, `run --host/--port/--log-level` and shell completion; in-process where no node
is needed, else against a real broker and a real `faas run`."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result

from framework.cli import main
from framework.kafka.embedded import EmbeddedBroker, free_port
from tests.support import LOGS, Node, consume, new_id, wait_for, write_project

ECHO = "aeaeaeae-0000-4000-8000-000000000001"
MANIFEST = f"""\
functions:
  - name: echo
    uuid: {ECHO}
    handler: functions.mod:handle
    state: productive
    events: [cli.seen]
    keep_warm: "*/4 * * * *"
    schedules:
      - cron: "0 9 * * *"
        timezone: Europe/Berlin
        payload: {{kind: nightly}}
  - name: quiet
    uuid: aeaeaeae-0000-4000-8000-000000000002
    handler: functions.mod:handle
    schedules: [{{cron: "0 9 * * *"}}]
"""
MODULE = """
def handle(payload, ctx):
    return {"payload": payload, "key": ctx.key, "event_id": ctx.event_id, "source": ctx.source}
"""


EMIT_REST = ("--source", "s/1", "--data", "@-", "--timeout", "60")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    return write_project(tmp_path, MANIFEST, {"mod": MODULE})


def faas(root: Path, *args: str, stdin: str | None = None) -> Result:
    env = {"FAAS_MANIFEST": str(root / "functions.yaml")}
    return CliRunner().invoke(main, list(args), env=env, input=stdin)


def test_ls_json(project: Path) -> None:
    """`faas ls --json`: every function with state, events, schedules (cron, timezone, payload, next fire
    as ISO 8601 in its timezone; null for a draft, which does not fire, as `GET /functions` says) and
    keep-warm."""
    r = faas(project, "ls", "--json")
    assert r.exit_code == 0, r.output
    fns = {f["name"]: f for f in json.loads(r.output)["functions"]}
    echo, quiet = fns["echo"], fns["quiet"]
    assert (echo["uuid"], echo["state"], echo["events"]) == (ECHO, "productive", ["cli.seen"])
    (sched,) = echo["schedules"]
    assert (sched["cron"], sched["timezone"], sched["payload"]) == (
        "0 9 * * *",
        "Europe/Berlin",
        {"kind": "nightly"},
    )
    assert sched["next_fire"].endswith(("+01:00", "+02:00")) and "T09:00:00" in sched["next_fire"], sched
    assert echo["keep_warm"]["cron"] == "*/4 * * * *" and echo["keep_warm"]["next_fire"]
    assert (quiet["state"], quiet["keep_warm"]) == ("draft", None)
    (never,) = quiet["schedules"]
    assert never == {"cron": "0 9 * * *", "timezone": "UTC", "payload": None, "next_fire": None}
    table = faas(project, "ls").output
    assert re.search(r"quiet .*draft .*0 9 \* \* \* \[UTC\] next -$", table, re.MULTILINE), table


def test_validate_json(project: Path) -> None:
    """1. `faas validate --json` on a valid manifest. 2. On one with a bad timeout, an unknown key and a
       handler that does not import.
    Result: 1 exit 0, `{"ok": true, "functions": 2}`; 2 exit 1, every error with file, 1-based line and
    column, message and the plain text line, on stdout (stderr empty)."""
    r = faas(project, "validate", "--json")
    assert r.exit_code == 0 and json.loads(r.output) == {"ok": True, "functions": 2}, r.output
    text = MANIFEST.replace("    state: productive\n", "    state: productive\n    timeout: 31\n")
    text = (
        text.replace("functions.mod:handle\n\n", "functions.mod:handle\n").rstrip() + "\n    colour: blue\n"
    )
    text = text.replace("handler: functions.mod:handle\n  ", "handler: functions.nope:handle\n  ", 1)
    (project / "functions.yaml").write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "framework", "validate", "--json"],
        cwd=project,
        env={**os.environ, "FAAS_MANIFEST": str(project / "functions.yaml")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is False and result.stderr == ""
    lines = {e["line"] for e in report["errors"]}
    assert {4, 6, 17} <= lines, report  # the unknown key after the last line, quiet's schedules
    for e in report["errors"]:
        assert e["file"].endswith("functions.yaml") and e["column"] >= 1 and e["message"], e
        assert e["text"] == f"{e['file']}:{e['line']}:{e['column']}: {e['message']}", e


def test_invoke_data_from_stdin_and_bad_input(project: Path) -> None:
    """1. `faas invoke echo --data @-` with JSON on stdin. 2. With text that is not JSON on stdin.
    Result: 1 prints the result holding the payload; 2 exits 2 (usage) saying stdin was not JSON."""
    r = faas(project, "invoke", "echo", "--data", "@-", stdin='{"from": "stdin"}')
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["payload"] == {"from": "stdin"}
    r = faas(project, "invoke", "echo", "--data", "@-", stdin="{nope")
    assert r.exit_code == 2 and "standard input" in r.output, r.output


def test_data_from_an_endless_file_is_refused_at_its_bound(project: Path) -> None:
    """`faas invoke echo --data @/dev/zero`. Result: exit 2 saying the file holds over 64 MiB, after reading
    that much (it read until the memory ran out, then printed a MemoryError traceback)."""
    r = faas(project, "invoke", "echo", "--data", "@/dev/zero")
    assert r.exit_code == 2 and "/dev/zero holds over 64 MiB" in r.output, r.output


def test_emit_with_key_id_and_source(project: Path, broker: EmbeddedBroker) -> None:
    """1. A node on the broker. 2. `faas emit cli.seen --key K --id ID --source S --data @-`.
    Result: exit 0, the printed reply has id ID; the handler saw key K, event id ID and source S; the record
    on the events topic has key K and headers ce_id ID, ce_source S."""
    node = Node(project, broker.bootstrap).wait_ready()
    try:
        eid, key = new_id(), f"key-{new_id()[:6]}"
        env = {
            "FAAS_EVENTS_TOPIC": node.events,
            "FAAS_REPLIES_TOPIC": node.replies,
            "FAAS_MANIFEST": str(project / "functions.yaml"),
            "FAAS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        }
        r = subprocess.run(
            [sys.executable, "-m", "framework", "emit", "cli.seen", *("--key", key, "--id", eid), *EMIT_REST],
            cwd=project,
            env={**os.environ, **env},
            input='{"n": 1}',
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        reply = json.loads(r.stdout)
        assert reply["id"] == eid and reply["ok"] is True, reply
        res = reply["results"][0]["result"]
        assert res == {"payload": {"n": 1}, "key": key, "event_id": eid, "source": "s/1"}, res
        recs = consume(broker.bootstrap, node.events, 1, timeout=20)
        mine = [x for x in recs if x["headers"].get("ce_id") == eid]
        assert len(mine) == 1, recs
        assert (mine[0]["key"], mine[0]["headers"]["ce_source"], mine[0]["value"]) == (
            key.encode(),
            "s/1",
            {"n": 1},
        )
    finally:
        node.kill()


def test_run_host_port_and_log_level(project: Path) -> None:
    """1. `faas run --no-kafka --host 127.0.0.1 --port P --log-level warning` (the settings say otherwise),
    with a misspelt setting in the environment (FAAS_HTTP_PROT) and a twin of another verb's option.
    2. `faas run --port 70000`.
    Result: 1 serves on P, and its log has no INFO lines (the 'serving' line is INFO) and warns of the
    misspelt name, naming the setting meant, not of the twin; 2 exits 2."""
    port = free_port()
    log = LOGS / f"cli-run-{port}.log"
    env = {
        **os.environ,
        "FAAS_MANIFEST": str(project / "functions.yaml"),
        "FAAS_HTTP_PORT": "1",
        "FAAS_LOG_LEVEL": "DEBUG",
        "FAAS_HTTP_PROT": "9",
        "FAAS_LOGS_SINCE": "2h",
    }
    args = ["run", "--no-kafka", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "framework", *args],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:

        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return proc.poll() is not None

        wait_for(healthy, timeout=60, message="faas run on --port")
        assert proc.poll() is None, log.read_text()
        answer = httpx.post(f"http://127.0.0.1:{port}/functions/{ECHO}/invoke", json=1, timeout=30)
        assert answer.status_code == 200, answer.text
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "serving" not in text and " INFO " not in text, text
    said = "FAAS_HTTP_PROT is set but is no setting: ignored (did you mean FAAS_HTTP_PORT?)"
    assert said in text and "FAAS_LOGS_SINCE" not in text, text
    r = faas(project, "run", "--port", "70000")
    assert r.exit_code == 2 and "70000" in r.output, r.output


def test_shell_completion_script(project: Path) -> None:
    """`_FAAS_COMPLETE=bash_source faas` (as the README documents) prints a bash completion script."""
    r = subprocess.run(
        [sys.executable, "-c", "from framework.cli import main; main(prog_name='faas')"],
        env={**os.environ, "_FAAS_COMPLETE": "bash_source"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and "_faas_completion" in r.stdout and "complete " in r.stdout, (
        r.stdout + r.stderr
    )
