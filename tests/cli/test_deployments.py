"""`faas deploy`, `undeploy`, `history`, `rollback` on bad input and without a broker (DESIGN.md 12)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from framework.cli import main
from framework.control.manifest_edit import set_state
from framework.kafka.embedded import EmbeddedBroker, free_port
from tests.support import (
    RawHeaderName,
    consume,
    new_id,
    produce,
    produce_one_batch,
    run_cli,
    topic_exists,
    topic_now,
    write_project,
)

pytestmark = pytest.mark.timeout(600)  # CLI processes on a shared, slow machine

MODULE = "async def handle(payload, ctx):\n    return {'rev': ctx.revision}\n"


def manifest(uuid: str, state: str = "productive") -> str:
    return f"""
# the team's functions
functions:
  - name: alpha
    uuid: {uuid}
    handler: functions.m:handle
    state: {state}   # kept as written
"""


def env_for(bootstrap: str, topic: str, **extra: str) -> dict[str, str]:
    return {"FAAS_KAFKA_BOOTSTRAP_SERVERS": bootstrap, "FAAS_DEPLOYMENTS_TOPIC": topic, **extra}


def records(bootstrap: str, topic: str) -> list[str]:
    return [r["key"].decode() for r in topic_now(bootstrap, topic)]


def test_invalid_or_oversized_working_copy_publishes_nothing(tmp_path: Path, broker: EmbeddedBroker) -> None:
    """1. A draft alpha whose module does not import; `faas deploy alpha`. 2. A valid module over
    FAAS_MAX_CODE_BYTES; `faas deploy alpha`. Result: both exit 1, the first with a
    `functions.yaml:LINE:COL` error, the second naming FAAS_MAX_CODE_BYTES; the topic holds no record and
    the manifest is unchanged.
    """
    u, topic = new_id(), f"t.deploy.{new_id()[:8]}"
    root = write_project(tmp_path, manifest(u, "draft"), {"m": "def handle(:\n"})
    before = (root / "functions.yaml").read_text()
    r = run_cli(root, "deploy", "alpha", env=env_for(broker.bootstrap, topic))
    assert r.returncode == 1 and "functions.yaml:5:5: handler 'functions.m:handle'" in r.stderr, r.stderr
    (root / "functions" / "m.py").write_text(MODULE + f"BLOB = {'x' * 5000!r}\n")
    r = run_cli(root, "deploy", "alpha", env=env_for(broker.bootstrap, topic, FAAS_MAX_CODE_BYTES="300"))
    assert r.returncode == 1 and "over FAAS_MAX_CODE_BYTES (300 bytes)" in r.stderr, r.stderr
    assert records(broker.bootstrap, topic) == []
    assert (root / "functions.yaml").read_text() == before


def test_deploy_undeploy_history_and_rollback_errors(tmp_path: Path, broker: EmbeddedBroker) -> None:
    """0. `faas deploy --all` while alpha is a draft. 1. `faas deploy alpha` on the draft. 2. Again.
    3. `faas undeploy nosuch alpha`, then `faas undeploy alpha`. 4. `faas rollback alpha` with a message
    holding control characters, then `faas history`. 5. `faas rollback alpha --to 9` (and 0, -1).
    6. `faas rollback alpha --to 2` (the undeploy), twice.
    Result: 0 says there is nothing to deploy (exit 0) and creates no log; revision 1 deployed, the state
    line edited with its comment kept; unchanged, revision 1 (with another `-m`, saying the message is not
    kept: no revision was published to keep it); the mistyped name exits 1 having undeployed
    nothing, then revision 2 undeployed; the rollback publishes revision 3 (rollback of 1), whose message
    history prints escaped, on one line; --to 9, 0 and -1 exit 1 naming the kept revisions; --to 2 publishes
    revision 4, an undeploy (rollback of 2), then changes nothing. The log holds the code record first,
    then the revision records.
    """
    u, topic = new_id(), f"t.deploy.{new_id()[:8]}"
    root = write_project(tmp_path, manifest(u, "draft"), {"m": MODULE})
    env = env_for(broker.bootstrap, topic)
    r = run_cli(root, "deploy", "--all", env=env)
    assert r.returncode == 0 and r.stdout.startswith("nothing to deploy: no function in "), (
        r.stdout + r.stderr
    )
    assert not topic_exists(broker.bootstrap, topic)
    r = run_cli(root, "deploy", "alpha", "-m", "first", env=env)
    assert r.returncode == 0 and r.stdout == "alpha: revision 1 deployed\n", r.stderr
    assert "    state: productive   # kept as written\n" in (root / "functions.yaml").read_text()
    r = run_cli(root, "deploy", "--all", env=env)
    assert r.stdout == "alpha: unchanged, revision 1\n", r.stderr
    r = run_cli(root, "deploy", "alpha", "-m", "first", env=env)  # the message it has: nothing to say
    assert r.stdout == "alpha: unchanged, revision 1\n", r.stderr
    r = run_cli(root, "deploy", "alpha", "-m", "a reason", env=env)  # as after watch mode published it
    assert r.returncode == 0 and r.stdout.startswith("alpha: unchanged, revision 1 (published by "), r.stdout
    assert r.stdout.endswith(": nothing new to publish, so -m is not kept (revisions are never edited)\n")
    r = run_cli(root, "undeploy", "nosuch", "alpha", env=env)  # a typo takes nothing out of service
    assert r.returncode == 1 and r.stdout == "", r.stdout
    assert "'nosuch'" in r.stderr and "nothing undeployed" in r.stderr, r.stderr
    assert "    state: productive   # kept as written\n" in (root / "functions.yaml").read_text()
    r = run_cli(root, "undeploy", "alpha", env=env)
    assert r.returncode == 0 and r.stdout == "alpha: revision 2 undeployed\n", r.stderr
    assert "    state: undeployed   # kept as written\n" in (root / "functions.yaml").read_text()
    r = run_cli(root, "rollback", "alpha", "-m", "fix\nnext \x1b[31mRED\x1b[0m\x07", env=env)
    assert r.returncode == 0 and "alpha: revision 3 deployed (rollback of revision 1)" in r.stdout, r.stderr
    # Left alone: a watch-mode node would publish the working copy over the rollback if it turned productive.
    assert "    state: undeployed   # kept as written\n" in (root / "functions.yaml").read_text()
    r = run_cli(root, "history", "alpha", env=env)  # the message's control characters escaped, on one line
    [third] = [line for line in r.stdout.splitlines() if line.startswith("3 ")]
    assert third.endswith("fix\\x0anext \\x1b[31mRED\\x1b[0m\\x07 (rollback of 1)"), r.stdout
    for missing in ("9", "0", "-1"):  # any number that is not kept: exit 1 (section 12), not a usage error
        r = run_cli(root, "rollback", "alpha", "--to", missing, env=env)
        assert r.returncode == 1 and f"revision {missing} is not kept (kept: 3, 2, 1)" in r.stderr, r.stderr
    set_state(root / "functions.yaml", "alpha", "productive")  # as the live revision 3 is
    r = run_cli(root, "rollback", "alpha", "--to", "2", env=env)  # back to the undeploy
    assert r.returncode == 0 and r.stdout == "alpha: revision 4 undeployed (rollback of revision 2)\n", (
        r.stderr
    )
    assert "    state: undeployed   # kept as written\n" in (root / "functions.yaml").read_text()
    r = run_cli(root, "rollback", "alpha", "--to", "2", env=env)
    assert r.returncode == 0 and r.stdout == "alpha: unchanged, revision 4 is an undeploy too\n", r.stderr
    keys = records(broker.bootstrap, topic)
    assert keys[0].startswith("code:") and keys[1:] == [f"rev:{u}:{n}" for n in (1, 2, 3, 4)]
    revisions = [r["value"] for r in topic_now(broker.bootstrap, topic) if r["key"].startswith(b"rev:")]
    second, fourth = revisions[1], revisions[3]
    assert (fourth["action"], fourth["rollback_of"], fourth["message"]) == (
        "undeploy",
        2,
        "rollback to revision 2",
    )
    assert (fourth["spec"], fourth["code_sha256"]) == (second["spec"], second["code_sha256"])  # revision 2's


def test_broker_down_exits_1_in_bounded_time(tmp_path: Path) -> None:
    """1. FAAS_KAFKA_BOOTSTRAP_SERVERS names a port where nothing listens; `faas deploy alpha`,
    `faas history alpha`. Result: each exits 1 within 60 s naming the broker; the manifest still says
    draft (nothing half-done)."""
    u = new_id()
    root = write_project(tmp_path, manifest(u, "draft"), {"m": MODULE})
    dead = f"127.0.0.1:{free_port()}"
    for verb in ("deploy", "history"):
        started = time.monotonic()
        r = run_cli(root, verb, "alpha", env={"FAAS_KAFKA_BOOTSTRAP_SERVERS": dead}, timeout=120)
        assert r.returncode == 1 and f"Kafka broker at {dead}" in r.stderr, r.stderr
        assert time.monotonic() - started < 60
    assert "state: draft" in (root / "functions.yaml").read_text()


def test_without_a_broker_deploy_and_undeploy_only_edit_the_manifest(tmp_path: Path) -> None:
    """1. No FAAS_KAFKA_BOOTSTRAP_SERVERS and nothing on the embedded broker's port; `faas deploy alpha`,
    then `faas ls`, then `faas undeploy alpha`. Result: each verb exits 0, the manifest says productive,
    then undeployed (its comments kept), and the output says nothing was published; ls shows the state
    without a revision."""
    u = new_id()
    root = write_project(tmp_path, manifest(u, "draft"), {"m": MODULE})
    env = {"FAAS_EMBEDDED_BROKER_PORT": str(free_port()), "FAAS_KAFKA_BOOTSTRAP_SERVERS": ""}
    r = run_cli(root, "deploy", "alpha", env=env)
    assert r.returncode == 0 and "not published" in r.stdout, r.stdout + r.stderr
    assert "state: productive" in (root / "functions.yaml").read_text()
    r = run_cli(root, "ls", env=env)
    assert r.returncode == 0 and f"{u}  productive " in r.stdout, r.stdout
    r = run_cli(root, "undeploy", "alpha", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "alpha: undeployed in " in r.stdout and "not published" in r.stdout, r.stdout
    text = (root / "functions.yaml").read_text()
    assert "state: undeployed   # kept as written" in text, text


ANCHORED = """
functions:
  - name: alpha
    uuid: {uuid}
    handler: functions.m:handle
    state: &st draft
  - name: beta
    uuid: {other}
    handler: functions.m:handle
    state: *st
"""


def test_a_state_the_manifest_cannot_take_exits_1_saying_what_was_done(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. alpha's state is a YAML anchor (`&st draft`) that beta's aliases: it cannot be set by an edit of
    one line. 2. `faas deploy alpha` without a broker. 3. The same with a broker.
    Result: 2 exits 1 saying the state could not be set and nothing was published, and claims no success
    on stdout; 3 says revision 1 deployed, then exits 1: published, but the manifest could not be set, by
    line, with no traceback. The manifest is unchanged both times."""
    root = write_project(tmp_path, ANCHORED.format(uuid=new_id(), other=new_id()), {"m": MODULE})
    before = (root / "functions.yaml").read_text()
    alone = {"FAAS_EMBEDDED_BROKER_PORT": str(free_port()), "FAAS_KAFKA_BOOTSTRAP_SERVERS": ""}
    r = run_cli(root, "deploy", "alpha", env=alone)
    assert r.returncode == 1 and r.stdout == "", r.stdout + r.stderr
    assert "could not set state: productive: " in r.stderr, r.stderr
    assert "functions.yaml:5: the state of alpha is a YAML anchor" in r.stderr, r.stderr
    assert "nothing published" in r.stderr and "Traceback" not in r.stderr, r.stderr
    r = run_cli(root, "deploy", "alpha", env=env_for(broker.bootstrap, f"t.deploy.{new_id()[:8]}"))
    assert r.returncode == 1 and "alpha: revision 1 deployed" in r.stdout, r.stdout + r.stderr
    assert "alpha: published, but could not set state: productive" in r.stderr, r.stderr
    assert "set it by hand" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert (root / "functions.yaml").read_text() == before


@pytest.mark.parametrize(
    ("args", "env", "why"),
    [
        (["--all", "alpha"], {}, "--all deploys every productive function"),
        (["alpha", "--all"], {}, "--all deploys every productive function"),
        (["alpha"], {"FAAS_DEPLOY_ALL": "1"}, "FAAS_DEPLOY_ALL is set, which is --all"),
    ],
)
def test_deploy_names_with_all_is_a_usage_error(
    tmp_path: Path, args: list[str], env: dict[str, str], why: str
) -> None:
    """1. alpha (productive) and beta (a draft) in the manifest. 2. `faas deploy --all alpha` (or with
    FAAS_DEPLOY_ALL set). Result: exit 2 with one line saying to give NAMEs or --all (DESIGN.md: `NAME... |
    --all`), before any broker is looked for; the manifest is unchanged. (It deployed every productive
    function, whatever the names said.)"""
    text = manifest(new_id()) + f"  - {{name: beta, uuid: {new_id()}, handler: functions.m:handle}}\n"
    root = write_project(tmp_path, text, {"m": MODULE})
    before = (root / "functions.yaml").read_text()
    env = {**env, "FAAS_MANIFEST": str(root / "functions.yaml"), "FAAS_KAFKA_BOOTSTRAP_SERVERS": "k:1"}
    r = CliRunner().invoke(main, ["deploy", *args], env=env)
    assert r.exit_code == 2 and isinstance(r.exception, SystemExit), (r.output, r.exception)
    assert r.stderr.splitlines()[-1] == f"Error: give NAMEs or --all, not both ({why})", r.stderr
    assert (root / "functions.yaml").read_text() == before


def test_new_functions_made_at_once_are_all_in_the_manifest(tmp_path: Path) -> None:
    """1. Six `faas new` processes at once in one project. Result: each exits 0 and the manifest lists all
    six (before, a run kept only some, leaving handler files no entry names)."""
    root = write_project(tmp_path, "functions: []\n", {})
    env = {**os.environ, "FAAS_MANIFEST": str(root / "functions.yaml")}
    names = [f"fn{i}" for i in range(6)]
    command = [sys.executable, "-m", "framework", "new"]
    procs = [subprocess.Popen([*command, n], cwd=root, env=env, stderr=subprocess.PIPE) for n in names]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    r = run_cli(root, "ls", "--json")
    assert sorted(f["name"] for f in json.loads(r.stdout)["functions"]) == names, r.stdout + r.stderr


def test_history_and_rollback_of_a_function_no_one_knows_exit_1(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. alpha in the manifest, never deployed: `faas history alpha` (and `--json`). 2. `faas history
    ghost` (and `--json`), `faas rollback ghost`: neither the manifest nor the log knows ghost. 3. alpha
    deployed, then removed from the manifest: `faas history alpha`. Result: 1 exits 0 with no revisions
    (`[]`); 2 exits 1 with one line, as deploy does for an unknown name; 3 still lists revision 1 from
    the log."""
    u, topic = new_id(), f"t.deploy.{new_id()[:8]}"
    root = write_project(tmp_path, manifest(u, "draft"), {"m": MODULE})
    env = env_for(broker.bootstrap, topic)
    r = run_cli(root, "history", "alpha", env=env)
    assert r.returncode == 0 and r.stdout == "alpha: no revisions\n", r.stdout + r.stderr
    r = run_cli(root, "history", "alpha", "--json", env=env)
    assert r.returncode == 0 and r.stdout == "[]\n", r.stdout + r.stderr
    unknown = f"no function named 'ghost' in {root / 'functions.yaml'} or the deployment log"
    for args in (("history", "ghost"), ("history", "ghost", "--json"), ("rollback", "ghost")):
        r = run_cli(root, *args, env=env)
        assert r.returncode == 1 and r.stdout == "" and r.stderr.splitlines() == [no_log(topic), unknown], (
            args,
            r.stderr,
        )
    r = run_cli(root, "deploy", "alpha", env=env)
    assert r.returncode == 0, r.stderr
    (root / "functions.yaml").write_text("functions: []\n")
    r = run_cli(root, "history", "alpha", env=env)
    assert r.returncode == 0 and [line.split()[0] for line in r.stdout.splitlines()[1:]] == ["1"], r.stdout


def test_deploy_and_rollback_refuse_a_name_another_live_function_holds(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. Working copy A deploys alpha (uuid A). 2. Working copy B, whose draft alpha has uuid B, runs
    `faas deploy alpha`. 3. A undeploys alpha; B deploys alpha. 4. A runs `faas rollback alpha`.
    Result: step 2 exits 1 naming uuid A as the holder of 'alpha', publishes no revision of B and leaves B's
    manifest a draft (before, it said "revision 1 deployed" for a revision every reader refuses); step 3
    deploys B's revision 1; step 4 exits 1 naming uuid B, and A's log keeps revisions 1 and 2 only.
    """
    ua, ub, topic = new_id(), new_id(), f"t.deploy.{new_id()[:8]}"
    a = write_project(tmp_path / "a", manifest(ua, "draft"), {"m": MODULE})
    b = write_project(tmp_path / "b", manifest(ub, "draft"), {"m": MODULE})
    env = env_for(broker.bootstrap, topic)
    r = run_cli(a, "deploy", "alpha", env=env)
    assert r.returncode == 0 and r.stdout == "alpha: revision 1 deployed\n", r.stderr
    before = (b / "functions.yaml").read_text()
    r = run_cli(b, "deploy", "alpha", env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"alpha: not deployed: live function {ua} (revision 1) has the name 'alpha'" in r.stderr, r.stderr
    assert (b / "functions.yaml").read_text() == before
    assert not [k for k in records(broker.bootstrap, topic) if k.startswith(f"rev:{ub}:")]
    assert run_cli(a, "undeploy", "alpha", env=env).returncode == 0
    r = run_cli(b, "deploy", "alpha", env=env)
    assert r.returncode == 0 and r.stdout == "alpha: revision 1 deployed\n", r.stderr
    r = run_cli(a, "rollback", "alpha", env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"live function {ub} (revision 1) has the name 'alpha'" in r.stderr, r.stderr
    keys = records(broker.bootstrap, topic)
    assert [k for k in keys if k.startswith(f"rev:{ua}:")] == [f"rev:{ua}:1", f"rev:{ua}:2"], keys


def test_a_swap_of_two_names_in_one_deploy_is_refused(tmp_path: Path, broker: EmbeddedBroker) -> None:
    """1. `faas deploy alpha beta` (revision 1 each). 2. The manifest swaps the two names; `faas deploy
    --all`. Result: exit 1 with one line per function naming the other as the holder and saying names
    cannot be swapped in one deploy; no revision 2 is published (before: both "revision 2 deployed", exit
    0, and every reader refused both records)."""
    ua, ub, topic = new_id(), new_id(), f"t.deploy.{new_id()[:8]}"
    two = (
        manifest(ua) + f"  - name: beta\n    uuid: {ub}\n    handler: functions.m:handle\n    state: draft\n"
    )
    root = write_project(tmp_path, two, {"m": MODULE})
    env = env_for(broker.bootstrap, topic)
    r = run_cli(root, "deploy", "alpha", "beta", env=env)
    assert r.returncode == 0 and r.stdout.count("revision 1 deployed") == 2, r.stdout + r.stderr
    text = (root / "functions.yaml").read_text()
    swapped = text.replace("name: alpha", "name: tmp").replace("name: beta", "name: alpha")
    (root / "functions.yaml").write_text(swapped.replace("name: tmp", "name: beta"))
    r = run_cli(root, "deploy", "--all", env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if "not deployed" in line]
    assert len(lines) == 2 and all("cannot swap names in one deploy" in line for line in lines), r.stderr
    assert any(ua in line for line in lines) and any(ub in line for line in lines), lines
    published = sorted(k for k in records(broker.bootstrap, topic) if k.startswith("rev:"))
    assert published == sorted([f"rev:{ua}:1", f"rev:{ub}:1"]), published


def test_a_message_that_is_not_utf8_is_a_usage_error(tmp_path: Path, broker: EmbeddedBroker) -> None:
    """`faas deploy alpha -m <bytes that are not UTF-8>` (and undeploy, rollback). Result: exit 2 naming
    --message, nothing published (before: published, and the function's revisions route answered 500
    on every node, unable to encode the message)."""
    u, topic = new_id(), f"t.deploy.{new_id()[:8]}"
    root = write_project(tmp_path, manifest(u, "draft"), {"m": MODULE})
    env = env_for(broker.bootstrap, topic)
    bad = b"\xff".decode(errors="surrogateescape")
    for verb in (["deploy", "alpha"], ["undeploy", "alpha"], ["rollback", "alpha"]):
        r = subprocess.run(
            [sys.executable, "-m", "framework", *verb, "-m", bad],
            cwd=root,
            env={**os.environ, "FAAS_MANIFEST": str(root / "functions.yaml"), **env},
            capture_output=True,
            timeout=60,
        )
        stderr = r.stderr.decode(errors="replace")
        assert r.returncode == 2 and "Invalid value for '-m' / '--message'" in stderr, stderr
    assert records(broker.bootstrap, topic) == []


def test_history_outside_a_working_copy_shows_the_live_function_of_that_name(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. Working copy A deploys then undeploys alpha (uuid A). 2. Working copy B deploys its own alpha
    (uuid B). 3. `faas history alpha` and `faas rollback alpha` from a folder with no manifest. Result:
    history lists B's revision (the live alpha), without a "cannot read the manifest" line first;
    rollback acts on B (nothing earlier to go back to), not on A."""
    ua, ub, topic = new_id(), new_id(), f"t.deploy.{new_id()[:8]}"
    a = write_project(tmp_path / "a", manifest(ua, "draft"), {"m": MODULE})
    b = write_project(tmp_path / "b", manifest(ub, "draft"), {"m": MODULE})
    env = env_for(broker.bootstrap, topic)
    assert run_cli(a, "deploy", "alpha", env=env).returncode == 0
    assert run_cli(a, "undeploy", "alpha", env=env).returncode == 0
    assert run_cli(b, "deploy", "alpha", env=env).returncode == 0
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run_cli(empty, "history", "alpha", "--json", env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    assert [(rev["uuid"], rev["revision"], rev["live"]) for rev in json.loads(r.stdout)] == [(ub, 1, True)]
    r = run_cli(empty, "rollback", "alpha", env=env)
    assert r.returncode == 1 and "no earlier deployed revision" in r.stderr, r.stderr


def deployed_then_renamed(tmp_path: Path, broker: EmbeddedBroker) -> tuple[str, Path, dict[str, str]]:
    """alpha deployed (revision 1), then renamed beta in the manifest (the same uuid) and deployed
    (revision 2), on a log of its own: (its uuid, the project, the CLI's environment)."""
    u, topic = new_id(), f"t.deploy.{new_id()[:8]}"
    a = write_project(tmp_path / "a", manifest(u, "draft"), {"m": MODULE})
    env = env_for(broker.bootstrap, topic)
    assert run_cli(a, "deploy", "alpha", env=env).returncode == 0
    (a / "functions.yaml").write_text((a / "functions.yaml").read_text().replace("name: alpha", "name: beta"))
    assert run_cli(a, "deploy", "beta", env=env).returncode == 0
    return u, a, env


def test_history_by_a_name_given_up_in_a_rename_finds_the_function(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. Deploy alpha. 2. Rename it beta in the manifest (the same uuid) and deploy beta. 3. `faas history
    alpha`. 4. `faas undeploy alpha`, `faas rollback alpha`. Result: 3 lists the function's two revisions,
    beta's live, with a line on stderr naming its name now; 4 exits 1 naming beta and changes nothing (an
    old name in a script must not take down or rename the function); `faas history gamma` (never a name)
    still exits 1."""
    u, a, env = deployed_then_renamed(tmp_path, broker)
    r = run_cli(a, "history", "alpha", "--json", env=env)
    assert r.returncode == 0, r.stderr
    kept = [(rev["uuid"], rev["revision"], rev["function"], rev["live"]) for rev in json.loads(r.stdout)]
    assert kept == [(u, 2, "beta", True), (u, 1, "alpha", False)], kept
    assert r.stderr.strip() == "alpha: renamed since, now beta", r.stderr
    for verb in ("undeploy", "rollback"):
        r = run_cli(a, verb, "alpha", env=env)
        assert r.returncode == 1, (verb, r.stdout, r.stderr)
        assert f"no function is named 'alpha' now: function {u} had that name, and is 'beta'" in r.stderr
    r = run_cli(a, "history", "beta", "--json", env=env)
    assert [(rev["revision"], rev["live"]) for rev in json.loads(r.stdout)] == [(2, True), (1, False)]
    r = run_cli(a, "history", "gamma", env=env)
    assert r.returncode == 1 and "no function named 'gamma'" in r.stderr, r.stderr


def test_a_rollback_across_a_rename_names_the_function_as_it_is_served(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. Deploy alpha; rename it beta (the same uuid) and deploy beta. 2. `faas rollback beta` (to
    revision 1, named alpha). 3. `faas history alpha`, `faas undeploy beta`, `faas undeploy alpha`.
    Result: 2 says revision 3 is served as alpha again, and revision 3's `function` is alpha, as its spec
    (it said beta, while every node served alpha: `undeploy beta` then took down what ran as alpha);
    3 the history lists it under alpha, `undeploy beta` exits 1 naming alpha, `undeploy alpha` works."""
    u, a, env = deployed_then_renamed(tmp_path, broker)
    r = run_cli(a, "rollback", "beta", env=env)
    assert (
        r.returncode == 0
        and "beta: revision 3 deployed (rollback of revision 1, served as alpha again)" in (r.stdout)
    ), r.stdout + r.stderr
    r = run_cli(tmp_path, "history", "alpha", "--json", env=env)
    assert r.returncode == 0 and r.stderr == "", r.stderr
    newest = json.loads(r.stdout)[0]
    assert (newest["revision"], newest["function"], newest["spec"]["name"]) == (3, "alpha", "alpha"), newest
    r = run_cli(tmp_path, "undeploy", "beta", env=env)
    assert r.returncode == 1 and f"function {u} had that name, and is 'alpha'" in r.stderr, r.stderr
    r = run_cli(tmp_path, "undeploy", "alpha", env=env)
    assert r.returncode == 0 and "alpha: revision 4 undeployed" in r.stdout, r.stdout + r.stderr


def test_undeploy_takes_down_a_live_function_the_manifest_no_longer_holds(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. Working copy A deploys alpha, then drops it from its manifest (beta stays). 2. `faas undeploy
    alpha` in A, and `faas undeploy ghost` (known nowhere). Result: alpha gets an undeploy revision on the
    log (revision 2, said to be the log's only), the manifest is left as it is; ghost exits 1 naming the
    manifest and the log; a second undeploy of alpha says it is not deployed."""
    u, topic = new_id(), f"t.deploy.{new_id()[:8]}"
    a = write_project(tmp_path / "a", manifest(u, "draft"), {"m": MODULE})
    env = env_for(broker.bootstrap, topic)
    assert run_cli(a, "deploy", "alpha", env=env).returncode == 0
    other = manifest(new_id(), "draft").replace("name: alpha", "name: beta")
    (a / "functions.yaml").write_text(other)
    r = run_cli(a, "undeploy", "alpha", env=env)
    assert r.returncode == 0, r.stderr
    assert "alpha: revision 2 undeployed (in the deployment log; the manifest does not hold it)" in r.stdout
    assert (a / "functions.yaml").read_text() == other
    r = run_cli(a, "history", "alpha", "--json", env=env)
    kept = [(rev["uuid"], rev["revision"], rev["action"]) for rev in json.loads(r.stdout)]
    assert kept == [(u, 2, "undeploy"), (u, 1, "deploy")], kept
    r = run_cli(a, "undeploy", "ghost", env=env)
    assert r.returncode == 1 and "no function named 'ghost'" in r.stderr and "deployment log" in r.stderr
    r = run_cli(a, "undeploy", "alpha", env=env)
    assert r.returncode == 0 and "alpha: not deployed, revision 2" in r.stdout, r.stdout + r.stderr


def test_a_secrets_folder_inside_the_package_stays_out_of_the_revision(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. alpha reads secret `tok`, whose file is in `functions/secrets` (FAAS_SECRETS_DIR points there,
    inside the handler's package). 2. `faas deploy alpha`. Result: it deploys; the code record's zip holds
    the module but not the secrets folder, and no record on the log holds the secret's value."""
    import io
    import zipfile

    u, topic = new_id(), f"t.deploy.{new_id()[:8]}"
    text = manifest(u).replace("state: productive", "state: productive\n    secrets: [tok]")
    root = write_project(tmp_path, text, {"m": MODULE})
    (root / "functions" / "secrets").mkdir()
    value = f"s3cret-{new_id()}"
    (root / "functions" / "secrets" / "tok").write_text(value + "\n")
    r = run_cli(
        root, "deploy", "alpha", env=env_for(broker.bootstrap, topic, FAAS_SECRETS_DIR="functions/secrets")
    )
    assert r.returncode == 0 and "alpha: revision 1 deployed" in r.stdout, r.stderr
    raw = consume(broker.bootstrap, topic, 2, timeout=10)
    codes = [m["value"] for m in raw if m["key"].startswith(b"code:")]
    assert len(codes) == 1 and isinstance(codes[0], bytes)
    with zipfile.ZipFile(io.BytesIO(codes[0])) as z:
        names = z.namelist()
        assert "functions/m.py" in names and not any("secrets" in n for n in names), names
        assert all(value.encode() not in z.read(n) for n in names)
    assert all(value.encode() not in json.dumps(m["value"], default=repr).encode() for m in raw)


def no_log(topic: str) -> str:
    return f"(no deployment log {topic!r} on the broker: nothing was deployed through it)"


def test_only_deploy_creates_a_missing_deployment_log(tmp_path: Path, broker: EmbeddedBroker) -> None:
    """1. A topic name no log has (as a mistyped FAAS_DEPLOYMENTS_TOPIC would be): `faas ls`, `faas history
    alpha`, `faas rollback alpha`, `faas undeploy alpha`. 2. `faas deploy alpha`, then `faas history alpha`.
    Result: at 1 each verb says on stderr that there is no such log and reads it as empty (ls: no revision,
    so the productive alpha is a draft no node serves;
    history: no revisions; rollback: exit 1, none kept; undeploy: not deployed), and the broker still has
    no such topic afterwards; at 2 deploy creates it and history lists revision 1 without the note."""
    u, topic = new_id(), f"t.deploy.{new_id()[:8]}"
    root = write_project(tmp_path, manifest(u), {"m": MODULE})
    env = env_for(broker.bootstrap, topic)
    r = run_cli(root, "ls", env=env)
    assert r.returncode == 0 and f"{u}  draft (productive here, not deployed) " in r.stdout, r.stdout
    assert r.stderr.splitlines() == [no_log(topic)], r.stderr
    r = run_cli(root, "history", "alpha", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, "alpha: no revisions\n", no_log(topic) + "\n")
    r = run_cli(root, "rollback", "alpha", env=env)
    assert r.returncode == 1 and r.stderr.splitlines() == [no_log(topic), "alpha: no revisions kept"], (
        r.stderr
    )
    r = run_cli(root, "undeploy", "alpha", env=env)
    assert (r.returncode, r.stdout) == (0, "alpha: not deployed\n"), r.stdout + r.stderr
    assert r.stderr.splitlines() == [no_log(topic)], r.stderr
    assert not topic_exists(broker.bootstrap, topic)
    (root / "functions.yaml").write_text(manifest(u))
    r = run_cli(root, "deploy", "alpha", env=env)
    assert (r.returncode, r.stdout, r.stderr) == (0, "alpha: revision 1 deployed\n", ""), r.stderr
    r = run_cli(root, "history", "alpha", env=env)
    assert r.returncode == 0 and r.stderr == "" and r.stdout.splitlines()[1].split()[0] == "1", r.stdout


def test_ls_json_gives_the_revision_facts_the_table_shows(tmp_path: Path, broker: EmbeddedBroker) -> None:
    """1. `faas ls --json` before any deploy. 2. `faas deploy alpha`, then `ls --json`. 3. Edit the module,
    then `ls --json` and `ls`. Result: `state`, `revision`, `modified`, `deployed_at` are draft (productive
    in the working copy, but no node serves it), null, false, null at 1, as `GET /functions` says; productive,
    1, false and the revision's time at 2; 1 and true at 3, where the table says `modified r1`."""
    u, topic = new_id(), f"t.deploy.{new_id()[:8]}"
    root = write_project(tmp_path, manifest(u), {"m": MODULE})
    env = env_for(broker.bootstrap, topic)

    def listed() -> dict[str, object]:
        r = run_cli(root, "ls", "--json", env=env)
        assert r.returncode == 0, r.stderr
        [entry] = json.loads(r.stdout)["functions"]
        return {k: entry[k] for k in ("state", "revision", "modified", "deployed_at")}

    assert listed() == {"state": "draft", "revision": None, "modified": False, "deployed_at": None}
    assert run_cli(root, "deploy", "alpha", env=env).returncode == 0
    facts = listed()
    assert facts["state"] == "productive" and facts["revision"] == 1 and facts["modified"] is False, facts
    assert isinstance(facts["deployed_at"], str) and facts["deployed_at"].endswith("Z"), facts
    (root / "functions" / "m.py").write_text(MODULE.replace("ctx.revision", "ctx.revision, 'v': 2"))
    assert listed() == {**facts, "modified": True}
    assert "modified r1" in run_cli(root, "ls", env=env).stdout


def test_ls_names_events_and_schedules_not_deployed_yet(tmp_path: Path, broker: EmbeddedBroker) -> None:
    """1. alpha deployed with event `a.seen` and a schedule `0 1 * * *`. 2. The manifest edited, not
    deployed: event `b.seen` and a schedule `0 3 * * *` added, keep-warm set. 3. `faas ls` and `ls --json`.
    Result: the table says `b.seen (not deployed)` and `0 3 * * * [UTC] not deployed` (and so for
    keep_warm), the deployed schedule its next fire time; in JSON the new schedule and keep-warm have no
    next fire time, the deployed one has (it showed a next fire time for schedules no node fires)."""
    u, topic = new_id(), f"t.deploy.{new_id()[:8]}"
    first = manifest(u) + '    events: [a.seen]\n    schedules:\n      - cron: "0 1 * * *"\n'
    root = write_project(tmp_path, first, {"m": MODULE})
    env = env_for(broker.bootstrap, topic)
    assert run_cli(root, "deploy", "alpha", env=env).returncode == 0
    edited = (
        manifest(u)
        + '    events: [a.seen, b.seen]\n    keep_warm: "*/5 * * * *"\n    schedules:\n'
        + '      - cron: "0 1 * * *"\n      - cron: "0 3 * * *"\n'
    )
    (root / "functions.yaml").write_text(edited)
    r = run_cli(root, "ls", env=env)
    assert r.returncode == 0, r.stderr
    [row] = [line for line in r.stdout.splitlines() if line.startswith("alpha ")]
    assert "a.seen,b.seen (not deployed)" in row, row
    assert "0 1 * * * [UTC] next 20" in row and "0 3 * * * [UTC] not deployed" in row, row
    assert "keep_warm */5 * * * * [UTC] not deployed" in row, row
    r = run_cli(root, "ls", "--json", env=env)
    [entry] = json.loads(r.stdout)["functions"]
    fires = {s["cron"]: s["next_fire"] for s in entry["schedules"]}
    assert fires["0 3 * * *"] is None and isinstance(fires["0 1 * * *"], str), fires
    assert entry["keep_warm"]["next_fire"] is None, entry


def test_ls_shows_the_state_the_log_serves_not_the_manifests(tmp_path: Path, broker: EmbeddedBroker) -> None:
    """1. `faas deploy alpha`, then `faas undeploy alpha` (the manifest says undeployed). 2. `faas rollback
    alpha` (to a deploy: it leaves the manifest alone). 3. From a second copy of the project (the manifest
    there still says productive), `faas undeploy alpha`; `ls` in the first copy. Result: 1 `undeployed r2`
    and, in JSON, undeployed with null, false, null (as `GET /functions`); 2 `productive r3` and productive,
    3, false, its time, though the manifest says undeployed; 3 `undeployed r4 (modified)` in the first copy,
    whose manifest says productive (deploying it would change what is served), and in JSON undeployed with
    null, true, null; its schedule has no next fire time in either (it used to show one, and `modified
    r4`)."""
    u, topic = new_id(), f"t.deploy.{new_id()[:8]}"
    root = write_project(tmp_path / "one", manifest(u), {"m": MODULE})
    other = write_project(tmp_path / "two", manifest(u), {"m": MODULE})
    env = env_for(broker.bootstrap, topic)

    def listed(where: Path) -> tuple[str, dict[str, object]]:
        r = run_cli(where, "ls", env=env)
        assert r.returncode == 0, r.stderr
        [row] = [line for line in r.stdout.splitlines() if line.startswith("alpha ")]
        r = run_cli(where, "ls", "--json", env=env)
        assert r.returncode == 0, r.stderr
        [entry] = json.loads(r.stdout)["functions"]
        return row.split()[2] + " " + row.split()[3], {
            k: entry[k] for k in ("state", "revision", "modified", "deployed_at")
        }

    unserved = {"state": "undeployed", "revision": None, "modified": False, "deployed_at": None}
    assert run_cli(root, "deploy", "alpha", env=env).returncode == 0
    assert run_cli(root, "undeploy", "alpha", env=env).returncode == 0
    assert listed(root) == ("undeployed r2", unserved)
    r = run_cli(root, "rollback", "alpha", env=env)
    assert r.returncode == 0 and "revision 3 deployed" in r.stdout, r.stdout + r.stderr
    assert "state: undeployed" in (root / "functions.yaml").read_text()
    row, facts = listed(root)
    assert row == "productive r3", row
    assert {**facts, "deployed_at": None} == {**unserved, "state": "productive", "revision": 3}
    assert isinstance(facts["deployed_at"], str) and facts["deployed_at"].endswith("Z"), facts
    assert run_cli(other, "undeploy", "alpha", env=env).returncode == 0
    # Productive again in the first copy, with a schedule, not deployed: nothing fires it.
    (root / "functions.yaml").write_text(manifest(u) + "    schedules: [{cron: '0 3 * * *'}]\n")
    assert listed(root) == ("undeployed r4", {**unserved, "modified": True})
    [row] = [line for line in run_cli(root, "ls", env=env).stdout.splitlines() if line.startswith("alpha ")]
    assert "undeployed r4 (modified)" in row and row.endswith("0 3 * * * [UTC] next -"), row
    [entry] = json.loads(run_cli(root, "ls", "--json", env=env).stdout)["functions"]
    assert [s["next_fire"] for s in entry["schedules"]] == [None]


def test_code_over_the_limit_fails_validate_and_deploy_at_each_functions_handler(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. alpha and gamma share the package `functions`, which holds a data file that zips over
    FAAS_MAX_CODE_BYTES. 2. `faas validate`, `faas validate --json`, `faas deploy gamma`.
    Result: each exits 1 with an error at each function's own `handler` LINE:COL naming the limit (the
    deploy validates the whole working copy, as validate does; gamma's error is at gamma's line, not a
    message naming alpha because they share the zip); nothing is published."""
    u, g, topic = new_id(), new_id(), f"t.deploy.{new_id()[:8]}"
    text = manifest(u) + f"  - name: gamma\n    uuid: {g}\n    handler: functions.m:handle\n"
    root = write_project(tmp_path, text, {"m": MODULE})
    (root / "functions" / "blob.bin").write_bytes(os.urandom(4000))
    env = env_for(broker.bootstrap, topic, FAAS_MAX_CODE_BYTES="1000")
    r = run_cli(root, "validate", env=env)
    assert r.returncode == 1, r.stdout
    limit = r"zips to \d+ bytes, over FAAS_MAX_CODE_BYTES \(1000 bytes\)"
    assert re.search(rf"functions\.yaml:5:5: its code \(.*functions\) {limit}", r.stderr), r.stderr
    assert re.search(rf"functions\.yaml:9:5: its code \(.*functions\) {limit}", r.stderr), r.stderr
    r = run_cli(root, "validate", "--json", env=env)
    assert r.returncode == 1, r.stdout
    errors = json.loads(r.stdout)["errors"]
    assert [(e["line"], e["column"]) for e in errors] == [(5, 5), (9, 5)], errors
    assert all("FAAS_MAX_CODE_BYTES" in e["message"] for e in errors), errors
    r = run_cli(root, "deploy", "gamma", env=env)
    assert r.returncode == 1 and "functions.yaml:9:5: its code" in r.stderr, r.stderr
    assert "function alpha" not in r.stderr, r.stderr  # once the only place named, for gamma's deploy
    assert records(broker.bootstrap, topic) == []
    assert run_cli(root, "validate", env={**env, "FAAS_MAX_CODE_BYTES": "1000000"}).returncode == 0


@pytest.mark.parametrize(
    "verb",
    [["history", "alpha"], ["rollback", "alpha"], ["deploy", "alpha"], ["emit", "ping", "--timeout", "3"]],
    ids=lambda v: v[0],
)
def test_an_unreachable_broker_is_one_line(tmp_path: Path, verb: list[str]) -> None:
    """A verb of the log or of events against bootstrap servers where nothing listens: exit 1 with one line
    on stderr naming the broker (aiokafka's own connection error was logged before it)."""
    root = write_project(tmp_path, manifest(new_id()), {"m": MODULE})
    r = run_cli(root, *verb, env={"FAAS_KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{free_port()}"})
    lines = r.stderr.splitlines()
    assert r.returncode == 1 and len(lines) == 1 and "Kafka broker at 127.0.0.1:" in lines[0], r.stderr


def test_a_revision_whose_code_no_node_can_unpack_is_not_taken_for_live(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. `faas deploy alpha` (revision 1). 2. Revision 2 is written by hand, its code record bytes that
    match their sha256 but are no zip (the nodes skip it and keep serving revision 1).
    3. `faas history alpha --json`; `faas rollback alpha --to 2`.
    Result: history says revision 1 is live, as the nodes serve it, and lists no revision 2; the rollback
    to 2 exits 1 (it published a revision no node could serve)."""
    u, topic = new_id(), f"t.deploy.{new_id()[:8]}"
    root = write_project(tmp_path, manifest(u, "draft"), {"m": MODULE})
    env = env_for(broker.bootstrap, topic)
    assert run_cli(root, "deploy", "alpha", env=env).returncode == 0
    [first] = [r for r in consume(broker.bootstrap, topic, 2, timeout=10) if r["key"].startswith(b"rev:")]
    bad = b"PK-not-really-a-zip"
    sha = hashlib.sha256(bad).hexdigest()
    forged = {**first["value"], "revision": 2, "code_sha256": sha, "message": "forged"}
    produce(
        broker.bootstrap,
        topic,
        [(f"code:{sha}".encode(), bad, []), (f"rev:{u}:2".encode(), json.dumps(forged).encode(), [])],
    )
    r = run_cli(root, "history", "alpha", "--json", env=env)
    assert r.returncode == 0, r.stderr
    assert [(h["revision"], h["live"]) for h in json.loads(r.stdout)] == [(1, True)], r.stdout
    assert "not a zip" in r.stderr, r.stderr  # the skipped record is said
    r = run_cli(root, "rollback", "alpha", "--to", "2", env=env)
    assert r.returncode == 1 and "revision 2 is not kept" in r.stderr, (r.stdout, r.stderr)


def test_a_header_name_that_is_not_utf8_on_the_log_is_read_not_a_traceback(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. `faas deploy alpha`. 2. A record on the deployment log with a header named by bytes that are not
    UTF-8 (Go clients and librdkafka send any bytes), a junk key and value. 3. `faas history alpha`,
    `faas ls`, `faas deploy alpha` after a change.
    Result: each exits 0 (history showing revision 1, deploy publishing revision 2) with no traceback:
    the record is skipped with a warning (aiokafka's reader raised UnicodeDecodeError on it, and every
    verb reading the log failed for as long as the log held it)."""
    u, topic = new_id(), f"t.deploy.{new_id()[:8]}"
    root = write_project(tmp_path, manifest(u, "draft"), {"m": MODULE})
    env = env_for(broker.bootstrap, topic)
    r = run_cli(root, "deploy", "alpha", env=env)
    assert r.returncode == 0 and r.stdout == "alpha: revision 1 deployed\n", r.stderr
    produce_one_batch(broker.bootstrap, topic, [(b"junk", b"not json", [(RawHeaderName(b"x-\xff"), b"v")])])
    r = run_cli(root, "history", "alpha", env=env)
    assert r.returncode == 0 and re.search(r"^1 ", r.stdout, re.M), r.stdout + r.stderr
    r2 = run_cli(root, "ls", env=env)
    assert r2.returncode == 0 and "alpha" in r2.stdout, r2.stderr
    (root / "functions" / "m.py").write_text(MODULE + "# changed\n")
    r3 = run_cli(root, "deploy", "alpha", env=env)
    assert r3.returncode == 0 and r3.stdout == "alpha: revision 2 deployed\n", r3.stderr
    for done in (r, r2, r3):
        assert "Traceback" not in done.stderr and "UnicodeDecodeError" not in done.stderr, done.stderr
