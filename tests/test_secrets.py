"""Secrets and memory limits on real `faas run` nodes (DESIGN.md section 14).

Nodes run without Kafka (`--no-kafka`) where Kafka plays no part: secrets and limits are the node's and
the instance's business, and a node without a consumer group to join is ready in a second.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import json
import os
import re
import shutil
import sysconfig
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from framework.kafka.embedded import EmbeddedBroker
from framework.runtime.worker import watchdog
from tests.support import Node, ce_headers, consume, metric, new_id, produce, run_cli, wait_for, write_project

READER = "5ec5ec00-0000-4000-8000-000000000011"
LEAK = "5ec5ec00-0000-4000-8000-000000000012"
HOG = "5ec5ec00-0000-4000-8000-000000000013"
PEEK = "5ec5ec00-0000-4000-8000-000000000015"

MODULES = {
    "sec": """
import asyncio, hashlib, logging, os, sys

async def reader(payload, ctx):
    await asyncio.sleep((payload or {}).get("sleep", 0))
    value = ctx.secrets["api_token"]
    return {"sha256": hashlib.sha256(value.encode()).hexdigest(), "pid": os.getpid(),
            "in_env": value in str(dict(ctx.env)) or value in str(dict(os.environ)),
            "names": sorted(ctx.secrets)}

async def leak(payload, ctx):
    value = ctx.secrets["api_token"]
    ctx.log.info("ctx.log line %s", value)
    logging.getLogger("somelib").warning("library line %s", value)
    print("print line", value)
    os.write(2, f"raw line {value}\\n".encode())
    # Lines longer than 64 KiB go out in pieces, each redacted alone: the value where one is cut.
    head = "long " + "z" * (65536 - 5 - 2)
    sys.stdout.write(head)
    sys.stdout.write(value[:6])  # the line passes 64 KiB here, before the value is whole
    sys.stdout.write(value[6:] + " end of the long print\\n")
    os.write(1, f"{head[:-2]}{value} end of the long raw line\\n".encode())
    raise RuntimeError(f"could not use {value}")

async def peek(payload, ctx):
    # What a function that lists no secret finds when it opens the secrets folder itself.
    folder = payload["folder"]
    try:
        names = sorted(os.listdir(folder))
    except OSError as e:
        names = [f"errno {e.errno}"]
    read = {}
    for name in ("api_token", "someone_elses"):
        try:
            with open(os.path.join(folder, name)) as f:
                read[name] = f.read()
        except OSError as e:
            read[name] = f"errno {e.errno}"
    try:  # the node's own view of the files
        with open(f"/proc/{payload['node']}/root{folder}/api_token") as f:
            via_node = f.read()
    except OSError as e:
        via_node = f"errno {e.errno}"
    return {"names": names, "read": read, "via_node": via_node, "cwd_files": sorted(os.listdir("."))}

async def hog(payload, ctx):
    payload = payload or {}
    chunks = []
    for _ in range(payload.get("mb", 0) // 10):
        chunks.append(bytearray(10 * 1024 * 1024))
        await asyncio.sleep(0.1)
    await asyncio.sleep(payload.get("hold", 0))
    return {"pid": os.getpid()}
"""
}

MANIFEST = f"""\
functions:
  - name: reader
    uuid: {READER}
    handler: functions.sec:reader
    state: productive
    secrets: [api_token]
  - name: leak
    uuid: {LEAK}
    handler: functions.sec:leak
    state: productive
    events: [secret.leak]
    secrets: [api_token]
  - name: peek
    uuid: {PEEK}
    handler: functions.sec:peek
    state: productive
  - name: hog
    uuid: {HOG}
    handler: functions.sec:hog
    state: productive
    timeout: 30
    instances: {{max: 1, memory_mb: 64}}
"""

Start = Callable[..., Node]


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def project(
    tmp_path: Path, manifest: str = MANIFEST, modules: dict[str, str] | None = None
) -> tuple[Path, Path, str]:
    """A project whose secrets folder lives outside it (a mount), with `modules` beside the usual ones;
    returns (root, folder, value)."""
    root = write_project(tmp_path / "proj", manifest, {**MODULES, **(modules or {})})
    folder = tmp_path / "mounted"
    folder.mkdir()
    value = f"tok-{uuid.uuid4().hex}"
    (folder / "api_token").write_text(value + "\n")
    return root, folder, value


def invoke(n: Node, u: str, payload: object = None) -> httpx.Response:
    return httpx.post(f"{n.url}/functions/{u}/invoke", json=payload, timeout=60)


def manifest_errors(n: Node) -> list[str]:
    """The node's manifest errors, as `/readyz` lists them."""
    errors: list[str] = httpx.get(n.url + "/readyz", timeout=10).json()["manifest_errors"]
    return errors


def served_again(n: Node, value: str, within: float) -> None:
    """Once the secret is there: `reader` serves and the manifest errors are gone within `within` seconds,
    and its value never reached the node's log."""
    wait_for(lambda: invoke(n, READER).status_code == 200, within, message="served once the secret is there")
    wait_for(
        lambda: not manifest_errors(n),
        within,
        message="the manifest errors gone",
    )
    assert value not in n.log.read_text()


def start(nodes: Start, root: Path, folder: Path, **env: str) -> Node:
    return nodes(root, None, kafka=False, env={"FAAS_SECRETS_DIR": str(folder), **env}).wait_ready()


def test_the_value_reaches_the_handler_and_nothing_else(tmp_path: Path, nodes: Start) -> None:
    """1. A node serves `reader`, which lists api_token, from a folder outside the project.
    2. Invoke it; list the functions; read /readyz and the node's log.
    Result: the handler sees the value (sha256 equal, newline removed) and only the secrets it listed,
    not in ctx.env or os.environ; the value is in no listing, readiness body or log line."""
    root, folder, value = project(tmp_path)
    (folder / "someone_elses").write_text("other-value\n")
    n = start(nodes, root, folder)
    r = invoke(n, READER)
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert res["sha256"] == sha(value) and res["names"] == ["api_token"] and res["in_env"] is False
    for path in ("/functions", f"/functions/{READER}", "/readyz", "/metrics"):
        body = httpx.get(n.url + path, timeout=10).text
        assert value not in body, path
    assert n.stop() == 0
    assert value not in n.log.read_text()


def test_a_function_cannot_open_the_secrets_folder(tmp_path: Path, nodes: Start) -> None:
    """1. A node serves `reader` (lists api_token) and `peek` (lists none) from a secrets folder outside the
       project holding api_token and someone_elses.
    2. `peek` lists the folder, opens both files by their paths and through the node's `/proc/PID/root`;
       `reader` reads its own secret.
    Result: `peek` finds the folder empty, neither file there (every instance sees an empty read-only folder
    in its place) and the node's view refused; `reader` still gets its value (from the node); the node still
    reads the folder (a rotated value is served), and the files are untouched; nothing was logged about it."""
    root, folder, value = project(tmp_path)
    (folder / "someone_elses").write_text("other-value\n")
    n = start(nodes, root, folder)
    r = invoke(n, PEEK, {"folder": str(folder), "node": n.proc.pid})
    assert r.status_code == 200, r.text
    res = r.json()["result"]
    assert res["names"] == [] and res["read"] == {"api_token": "errno 2", "someone_elses": "errno 2"}, res
    assert res["via_node"] == "errno 13", "read through /proc/<node pid>/root: " + str(res)
    assert "functions.yaml" in res["cwd_files"], "the project folder stays the instances' own"
    assert invoke(n, READER).json()["result"]["sha256"] == sha(value)
    rotated = f"tok-{uuid.uuid4().hex}"
    (folder / "api_token").write_text(rotated + "\n")
    wait_for(lambda: invoke(n, READER).json()["result"]["sha256"] == sha(rotated), 10, message="rotation")
    assert sorted(p.name for p in folder.iterdir()) == ["api_token", "someone_elses"]
    assert "can read the secrets folder" not in n.log.read_text()


def test_a_folder_that_appears_or_is_replaced_is_hidden_too(tmp_path: Path, nodes: Start) -> None:
    """1. A node starts with no secrets folder (the default `secrets`, absent: nothing to hide yet).
    2. The folder appears with a secret; later, while `reader` serves a 3 s call, it is deleted and made
       again (a rotation by replacement, which may reuse the inode number).
    Result: after each, `peek` soon finds the folder empty (the node started its instances from a fresh
    template, which hides the new folder); the call in flight is answered (the old template stays until
    its instances are gone); each change made one fresh template, and the files are there for the node."""
    root = write_project(tmp_path / "proj", MANIFEST, MODULES)
    folder = root / "secrets"
    n = nodes(root, None, kafka=False).wait_ready()

    def peeked() -> dict[str, object]:
        r = invoke(n, PEEK, {"folder": str(folder), "node": n.proc.pid})
        assert r.status_code == 200, r.text
        result: dict[str, object] = r.json()["result"]
        return result

    assert peeked()["names"] == ["errno 2"]
    in_flight: list[httpx.Response] = []
    for value in ("first-value", "second-value"):
        if folder.exists():
            served_again(n, "first-value", 10)
            slow = threading.Thread(target=lambda: in_flight.append(invoke(n, READER, {"sleep": 3})))
            slow.start()
            wait_for(
                lambda: metric(n, "faas_inflight_requests", function="reader") >= 1, 10, message="in flight"
            )
            shutil.rmtree(folder)
        folder.mkdir()
        (folder / "api_token").write_text(value + "\n")
        wait_for(lambda: peeked()["names"] == [], 30, message=f"the folder hidden ({value})")
        assert peeked()["read"] == {"api_token": "errno 2", "someone_elses": "errno 2"}
        assert (folder / "api_token").read_text() == value + "\n"
    slow.join(30)
    assert [r.status_code for r in in_flight] == [200], [r.text for r in in_flight]
    renewals = n.log.read_text().count("appeared or was replaced: every function gets fresh instances")
    assert renewals == 2, renewals


def test_a_secrets_folder_holding_the_code_stays_visible_and_says_so(tmp_path: Path, nodes: Start) -> None:
    """1. A node whose FAAS_CACHE_DIR (the revisions' code) is inside its FAAS_SECRETS_DIR: hiding the
       secrets folder would hide the code.
    2. Invoke `peek` on that folder, and `reader`.
    Result: both serve (nothing hidden), `peek` reads the file, and the node logs once that instances can
    read the secrets folder, and why."""
    root, folder, value = project(tmp_path)
    n = start(nodes, root, folder, FAAS_CACHE_DIR=str(folder / "code-cache"))
    r = invoke(n, PEEK, {"folder": str(folder), "node": n.proc.pid})
    assert r.status_code == 200 and r.json()["result"]["read"]["api_token"] == value + "\n", r.text
    assert invoke(n, READER).json()["result"]["sha256"] == sha(value)
    wait_for(lambda: "can read the secrets folder" in n.log.read_text(), 10, message="the warning")
    lines = [line for line in n.log.read_text().splitlines() if "can read the secrets folder" in line]
    assert len(lines) == 1 and "which instances need" in lines[0], lines


EROFS = errno.EROFS
PLANT = "5ec5ec00-0000-4000-8000-000000000017"
PLANTER = """
import errno, os, sysconfig, tempfile

async def plant(payload, ctx):
    # What a function's author would write to reach other functions' secrets: its own module in the code
    # cache, the working copy's module and the manifest, a `.pth` file the next template would run.
    targets = {
        "own module": __file__,
        "cache entry": os.path.join(os.path.dirname(os.path.dirname(__file__)), "planted.txt"),
        "working copy": payload["module"],
        "manifest": payload["manifest"],
        "site-packages": os.path.join(sysconfig.get_paths()["purelib"], "planted.pth"),
        **payload.get("more", {}),
    }
    seen = {}
    for what, path in targets.items():
        try:
            with open(path, "a") as f:
                f.write("import os\\n")
            seen[what] = 0
        except OSError as e:
            seen[what] = e.errno
    with tempfile.NamedTemporaryFile() as f:  # scratch space stays the function's
        f.write(b"scratch")
        seen["tmp"] = 0
    return seen

async def scribble(payload, ctx):
    open(__file__, "a")  # the error a handler that does not catch it gets
"""


SCRIBBLE = "5ec5ec00-0000-4000-8000-000000000019"
PLANTING = (
    MANIFEST
    + f"""\
  - name: plant
    uuid: {PLANT}
    handler: functions.plant:plant
    state: productive
  - name: scribble
    uuid: {SCRIBBLE}
    handler: functions.plant:scribble
    state: productive
"""
)


def test_a_function_cannot_write_the_code_the_cache_or_the_interpreter(tmp_path: Path, nodes: Start) -> None:
    """1. A node with a secrets folder serves `plant`, which appends to its own module (in the code cache),
       writes a file in the cache, appends to the working copy's module and to the manifest, and writes a
       `.pth` file in the interpreter's site-packages; then it writes a temporary file.
    2. Invoke it; then invoke `reader` on a fresh instance; then `scribble`, which opens its module to
       write and lets the error out.
    Result: every write but the temporary file's is refused (EROFS: instances see those folders
    read-only), the files are unchanged, and `reader` still serves its secret; `scribble`'s error says
    why the file system is read-only and where to write instead."""
    root, folder, value = project(tmp_path, PLANTING, {"plant": PLANTER})
    module, yaml = root / "functions" / "plant.py", root / "functions.yaml"
    before = {path: path.read_bytes() for path in (module, yaml)}
    planted = Path(sysconfig.get_paths()["purelib"]) / "planted.pth"
    n = start(nodes, root, folder)
    try:
        r = invoke(n, PLANT, {"module": str(module), "manifest": str(yaml)})
        assert r.status_code == 200, r.text
        seen = r.json()["result"]
        refused = dict.fromkeys(
            ("own module", "cache entry", "working copy", "manifest", "site-packages"), EROFS
        )
        assert seen == {**refused, "tmp": 0}, seen
        assert {path: path.read_bytes() for path in (module, yaml)} == before
        assert not planted.exists()
    finally:
        planted.unlink(missing_ok=True)  # this test's virtualenv is every test's
    assert invoke(n, READER).json()["result"]["sha256"] == sha(value)
    error = invoke(n, SCRIBBLE).json()["error"]
    assert error["type"] == "FunctionError" and "Read-only file system" in error["message"], error
    assert error["message"].endswith(watchdog.READ_ONLY), error  # why, said


def test_a_release_link_and_the_releases_beside_it_are_read_only_too(tmp_path: Path, nodes: Start) -> None:
    """1. A deploy root holding `releases/A` and `releases/B` and the link `current -> releases/A`; a node
       runs `current/functions.yaml` with a secrets folder outside it.
    2. `plant` writes the next release's module (`releases/B/functions/plant.py`) and a link in the root
       (`current.new`, as a re-pointing would).
    Result: both refused (EROFS): a handler neither re-points the node's manifest nor writes the code
    watch mode would publish once it is re-pointed (both used to succeed)."""
    base = tmp_path / "deploy"
    for release in ("A", "B"):
        write_project(base / "releases" / release, PLANTING, {**MODULES, "plant": PLANTER})
    (base / "current").symlink_to(Path("releases") / "A")
    folder = tmp_path / "mounted"
    folder.mkdir()
    (folder / "api_token").write_text("tok-0123456789\n")
    n = start(nodes, base / "current", folder)
    module, yaml = base / "current" / "functions" / "plant.py", base / "current" / "functions.yaml"
    more = {
        "next release": str(base / "releases" / "B" / "functions" / "plant.py"),
        "link": str(base / "current.new"),
    }
    r = invoke(n, PLANT, {"module": str(module), "manifest": str(yaml), "more": more})
    assert r.status_code == 200, r.text
    seen = r.json()["result"]
    assert seen["next release"] == EROFS and seen["link"] == EROFS, seen
    assert not (base / "current.new").exists()


def test_a_local_test_run_sees_its_code_read_only_as_a_node_does(tmp_path: Path) -> None:
    """1. A project with a secrets folder. 2. `faas invoke plant` (a local run, its code unpacked in a
       temporary folder).
    Result: its writes are refused as on a node (the unpacked code too: it used to be writable, so a test
    run passed where a node failed)."""
    root, folder, _ = project(tmp_path, PLANTING, {"plant": PLANTER})
    module, yaml = root / "functions" / "plant.py", root / "functions.yaml"
    data = json.dumps({"module": str(module), "manifest": str(yaml)})
    done = run_cli(root, "invoke", "plant", "--data", data, env={"FAAS_SECRETS_DIR": str(folder)})
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["own module"] == EROFS and seen["cache entry"] == EROFS and seen["working copy"] == EROFS, (
        seen
    )


def test_a_code_cache_replaced_by_hand_gets_a_fresh_template(tmp_path: Path, nodes: Start) -> None:
    """1. A node with a secrets folder and a code cache outside the project serves `plant`.
    2. The cache is removed by hand and made again (the kernel then unmounts the read-only view of it
       from the template's namespace, which shows the new folder, writable). 3. `plant`'s module is
       edited (watch mode: a new revision, unpacked into the new cache), and `plant` invoked.
    Result: the node says the cache was replaced and starts a fresh template within the secrets folder's
    re-read (10 s); `plant` serves the new revision and still cannot write the cache (EROFS)."""
    root, folder, _ = project(tmp_path, PLANTING, {"plant": PLANTER})
    cache = tmp_path / "cache"
    module, yaml = root / "functions" / "plant.py", root / "functions.yaml"
    payload = {"module": str(module), "manifest": str(yaml)}
    n = start(nodes, root, folder, FAAS_CACHE_DIR=str(cache))
    assert invoke(n, PLANT, payload).json()["result"]["cache entry"] == EROFS
    shutil.rmtree(cache)
    cache.mkdir()
    said = f"{cache}, which instances see read-only, was replaced: every function gets fresh instances"
    wait_for(lambda: said in n.log.read_text(), 20, message=f"the fresh template\n{n.tail()}")
    module.write_text(PLANTER + "# revision 2\n")

    def served() -> object:
        r = invoke(n, PLANT, payload)
        return r.status_code == 200 and r.json()["result"]

    result = wait_for(served, 30, message=f"the new revision served\n{n.tail()}")
    assert result["cache entry"] == EROFS and result["own module"] == EROFS, result
    assert not list(cache.glob("*/planted.txt"))


def test_a_secret_setting_in_dotenv_is_warned_of(tmp_path: Path, nodes: Start) -> None:
    """1. The project's `.env` (in the node's working directory) sets FAAS_API_KEYS. 2. Start a node.
    Result: it serves with that key, and its log says the file is readable by every function's code and
    where the key belongs instead, without the key itself."""
    root, folder, _ = project(tmp_path)
    key = f"dotenv-key-{uuid.uuid4().hex}"
    (root / ".env").write_text(f"FAAS_API_KEYS={key}\n")
    n = start(nodes, root, folder)
    headers = {"Authorization": f"Bearer {key}"}
    assert httpx.get(n.url + "/functions", headers=headers, timeout=10).status_code == 200
    said = "FAAS_API_KEYS is set in " + str(root / ".env") + ", which every function's code can read"
    wait_for(lambda: said in n.log.read_text(), 10, message=f"the warning\n{n.tail()}")
    assert key not in n.log.read_text()


SCAN = "5ec5ec00-0000-4000-8000-000000000016"


def test_no_instance_finds_another_functions_secret_in_its_memory(tmp_path: Path, nodes: Start) -> None:
    """1. `reader` lists a secret of 2,000 characters; it is invoked (its instance gets the secret in its
    start message, through the template every instance is forked from). 2. `scan`, which lists no secret,
    reads all of its own memory (`/proc/self/mem`) for it, in a fresh instance.
    Result: not found. (It was, four times: the template parsed each start message, and the freed copies
    of the secrets were in every later fork.)"""
    manifest = (
        MANIFEST
        + f"""\
  - name: scan
    uuid: {SCAN}
    handler: functions.scan:handle
    state: productive
    timeout: 30
"""
    )
    scan = """
import re

async def handle(payload, ctx):
    pattern = re.compile(re.escape(payload["prefix"].encode()) + rb"q{2000}END")
    found = 0
    with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5].startswith("[v")):
                continue
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(lo)
                found += len(pattern.findall(mem.read(hi - lo)))
            except (OSError, OverflowError, ValueError):
                continue
    return found
"""
    root = write_project(tmp_path / "proj", manifest, {**MODULES, "scan": scan})
    folder = tmp_path / "mounted"
    folder.mkdir()
    prefix = f"long-{uuid.uuid4().hex}-"
    (folder / "api_token").write_text(prefix + "q" * 2000 + "END\n")
    n = start(nodes, root, folder)
    assert invoke(n, READER).status_code == 200
    r = invoke(n, SCAN, {"prefix": prefix})
    assert r.status_code == 200 and r.json()["result"] == 0, r.text


ENVIRON = "5ec5ec00-0000-4000-8000-000000000014"


def test_the_nodes_own_secret_settings_never_reach_an_instance(tmp_path: Path, nodes: Start) -> None:
    """1. A node started with FAAS_API_KEYS and FAAS_KAFKA_SASL_PASSWORD in its environment (one of them
    in lower case, as pydantic-settings also reads it). 2. A handler returns what it finds of them in
    `os.environ` and `ctx.env`, and the values of them it reads in the node's `/proc/<pid>/environ` (the
    node's environment as it started, not `os.environ`).
    Result: nothing in its own; in the node's, both, overwritten with `*`: a function sees only the secrets
    it lists (section 14), and cannot print the node's."""
    manifest = f"""\
functions:
  - name: environ
    uuid: {ENVIRON}
    handler: functions.env:handle
    state: productive
"""
    module = """
import os

def secret(name):
    return "api_keys" in name.lower() or "sasl" in name.lower()

async def handle(payload, ctx):
    template = os.getppid()
    node = int(open(f"/proc/{template}/stat").read().rpartition(")")[2].split()[1])
    with open(f"/proc/{node}/environ", "rb") as f:
        block = [entry.decode().partition("=") for entry in f.read().split(b"\\0")]
    return {
        "own": sorted({k for k in (*os.environ, *ctx.env) if secret(k)}),
        "node": sorted(value for name, _, value in block if secret(name)),
    }
"""
    root = write_project(tmp_path / "proj", manifest, {"env": module})
    key, password = f"key-{uuid.uuid4().hex}", f"pw-{uuid.uuid4().hex}"
    env = {"FAAS_API_KEYS": key, "faas_kafka_sasl_password": password, "OTHER_VARIABLE": "kept"}
    n = nodes(root, None, kafka=False, env=env).wait_ready()
    r = httpx.post(
        f"{n.url}/functions/{ENVIRON}/invoke", headers={"Authorization": f"Bearer {key}"}, timeout=60
    )
    assert r.status_code == 200 and r.json()["result"] == {
        "own": [],
        "node": sorted(["*" * len(key), "*" * len(password)]),
    }, r.text
    assert n.stop() == 0
    assert key not in n.log.read_text() and password not in n.log.read_text()


def test_values_are_redacted_before_they_leave_the_instance(tmp_path: Path, nodes: Start) -> None:
    """1. `leak` logs the value with ctx.log and a library logger, prints it, writes it to descriptor 2,
    writes two lines over 64 KiB with the value where such a line is cut (printed in parts, and to
    descriptor 1), and raises with it. Result: the HTTP error says `***`; the node's log has each line with
    `***` and never the value, nor the part of it after a cut (the long lines' pieces used to be redacted
    one by one)."""
    root, folder, value = project(tmp_path)
    n = start(nodes, root, folder)
    r = invoke(n, LEAK)
    assert r.status_code == 500, r.text
    assert r.json()["error"] == {"type": "FunctionError", "message": "RuntimeError: could not use ***"}
    wanted = (
        "ctx.log line ***",
        "library line ***",
        "print line ***",
        "raw line ***",
        "*** end of the long print",
        "*** end of the long raw line",
        "RuntimeError: could not use ***",
    )
    wait_for(lambda: all(w in n.log.read_text() for w in wanted), 20, message="redacted lines in the log")
    assert value not in n.log.read_text() and value[6:] not in n.log.read_text()


def test_rotation_gives_fresh_instances_within_2_s(tmp_path: Path, nodes: Start) -> None:
    """1. A request holds a `reader` instance for 3 s. 2. The secret file is replaced (atomic rename).
    3. Then a Kubernetes-style update: the `..data` symlink is swapped to a new timestamped folder.
    Result: after each change, requests see the new value within 2 s on a new instance; the held
    request finishes (200) on the instance it started on."""
    root, folder, _ = project(tmp_path)
    n = start(nodes, root, folder)
    first = invoke(n, READER).json()["result"]
    with httpx.Client(timeout=60) as client:
        held = client.build_request("POST", f"{n.url}/functions/{READER}/invoke", json={"sleep": 3})
        answer: list[httpx.Response] = []
        thread = threading.Thread(target=lambda: answer.append(client.send(held)))
        thread.start()
        wait_for(
            lambda: 'faas_inflight_requests{function="reader"} 1.0' in httpx.get(n.url + "/metrics").text,
            20,
            message="held request in flight",
        )
        new = f"rotated-{uuid.uuid4().hex}"
        (folder / "tmp").write_text(new + "\n")
        os.replace(folder / "tmp", folder / "api_token")
        t = time.monotonic()
        wait_for(
            lambda: invoke(n, READER).json()["result"]["sha256"] == sha(new),
            10,
            0.05,
            "new value served",
        )
        assert time.monotonic() - t < 2.0, time.monotonic() - t
        thread.join(30)
    assert answer and answer[0].status_code == 200 and answer[0].json()["result"]["pid"] == first["pid"]
    assert invoke(n, READER).json()["result"]["pid"] != first["pid"]

    # Kubernetes: api_token -> ..data/api_token, ..data -> ..2026_1; an update swaps ..data atomically.
    k8s = tmp_path / "k8s"
    (k8s / "..2026_1").mkdir(parents=True)
    (k8s / "..2026_1" / "api_token").write_text("k8s-value-1")
    (k8s / "..data").symlink_to("..2026_1")
    (k8s / "api_token").symlink_to("..data/api_token")
    n2 = start(nodes, root, k8s)
    assert invoke(n2, READER).json()["result"]["sha256"] == sha("k8s-value-1")
    (k8s / "..2026_2").mkdir()
    (k8s / "..2026_2" / "api_token").write_text("k8s-value-2")
    (k8s / "..data_tmp").symlink_to("..2026_2")
    os.replace(k8s / "..data_tmp", k8s / "..data")
    t = time.monotonic()
    wait_for(
        lambda: invoke(n2, READER).json()["result"]["sha256"] == sha("k8s-value-2"),
        10,
        0.05,
        "Kubernetes update served",
    )
    assert time.monotonic() - t < 2.0


def test_a_secret_the_node_lacks(tmp_path: Path, nodes: Start) -> None:
    """1. A serving node's api_token file is deleted. 2. It comes back.
    Result: 1. `reader` is answered 502 InstanceCrashed naming the secret (not its value); /readyz stays
    200 and lists it; `hog`, which lists no secret, keeps serving. 2. `reader` serves again, reason gone."""
    root, folder, value = project(tmp_path)
    n = start(nodes, root, folder)
    assert invoke(n, READER).status_code == 200
    (folder / "api_token").unlink()

    def crashed() -> httpx.Response | None:
        r = invoke(n, READER)
        return r if r.status_code == 502 else None

    r = wait_for(crashed, 10, message="InstanceCrashed for the missing secret")
    err = r.json()["error"]
    assert err["type"] == "InstanceCrashed" and "secret 'api_token' is missing" in err["message"]
    assert value not in r.text
    ready = httpx.get(n.url + "/readyz", timeout=10)
    assert ready.status_code == 200
    assert any("reader" in x and "api_token" in x for x in ready.json()["reasons"]), ready.text
    assert invoke(n, HOG).status_code == 200
    (folder / "api_token").write_text(value)
    wait_for(lambda: invoke(n, READER).status_code == 200, 10, message="served again")
    assert not httpx.get(n.url + "/readyz", timeout=10).json()["reasons"]


def test_a_fifo_in_place_of_a_secret_never_blocks_the_node(tmp_path: Path, nodes: Start) -> None:
    """1. A serving node's api_token file is replaced by a FIFO (opening one for reading waits for a
    writer). Result: /healthz and /readyz answer at once, /readyz lists the secret as not a regular file,
    `reader` is answered 502 InstanceCrashed saying so, and `hog`, which lists no secret, keeps serving."""
    root, folder, _ = project(tmp_path)
    n = start(nodes, root, folder)
    assert invoke(n, READER).status_code == 200
    (folder / "api_token").unlink()
    os.mkfifo(folder / "api_token")

    def crashed() -> httpx.Response | None:
        r = invoke(n, READER)
        return r if r.status_code == 502 else None

    r = wait_for(crashed, 10, message="InstanceCrashed for the FIFO")
    assert "not a regular file" in r.json()["error"]["message"], r.text
    assert httpx.get(n.url + "/healthz", timeout=5).status_code == 200
    ready = httpx.get(n.url + "/readyz", timeout=5)
    assert any("api_token" in x and "not a regular file" in x for x in ready.json()["reasons"]), ready.text
    assert invoke(n, HOG).status_code == 200


def test_watch_rejects_an_edit_listing_a_missing_secret(tmp_path: Path, nodes: Start) -> None:
    """1. A running node's manifest is edited so that `reader` also lists `not_there`. 2. The file
    `not_there` is added to the secrets folder.
    Result: 1. the edit is rejected with the item's LINE:COL in /readyz (still 200); `reader` keeps
    serving. 2. the edit is applied: no manifest errors left."""
    root, folder, _ = project(tmp_path)
    n = start(nodes, root, folder)
    text = MANIFEST.replace(
        "    secrets: [api_token]\n  - name: leak",
        "    secrets:\n      - api_token\n      - not_there\n  - name: leak",
        1,
    )
    (root / "functions.yaml").write_text(text)

    errors = wait_for(lambda: manifest_errors(n), 20, message="edit rejected")
    assert any(re.search(r"functions\.yaml:8:9: secret 'not_there' is missing", e) for e in errors), errors
    assert httpx.get(n.url + "/readyz", timeout=10).status_code == 200
    assert invoke(n, READER).status_code == 200
    (folder / "not_there").write_text("here now\n")
    wait_for(lambda: not manifest_errors(n), 20, message="edit applied once the secret exists")


def test_watch_says_a_secret_file_deleted_is_missing_and_clears_it_when_back(
    tmp_path: Path, nodes: Start
) -> None:
    """1. A node in watch mode serves `reader`, which lists api_token. 2. The file is deleted. 3. It is
    written again.
    Result: 2 is a manifest error at the item's LINE:COL in /readyz (before, only once the manifest was
    edited), `reader` answers InstanceCrashed naming the secret; 3 clears the error and `reader` serves."""
    root, folder, value = project(tmp_path)
    n = start(nodes, root, folder)
    assert invoke(n, READER).status_code == 200

    (folder / "api_token").unlink()
    said = wait_for(lambda: manifest_errors(n), 20, message=f"the missing secret in /readyz\n{n.tail()}")
    assert any(re.search(r"functions\.yaml:\d+:\d+: secret 'api_token' is missing", e) for e in said), said
    r = invoke(n, READER)
    assert r.status_code == 502 and "api_token" in r.json()["error"]["message"], r.text
    (folder / "api_token").write_text(value + "\n")
    wait_for(lambda: not manifest_errors(n), 20, message="the error cleared")
    served_again(n, value, 20)


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda f: (f / "FAAS_API_KEYS").write_text("k\n"), r"secret 'FAAS_API_KEYS' .* under 4 characters"),
        (lambda f: (f / "FAAS_KAFKA_SASL_PASSWORD").mkdir(), r"FAAS_KAFKA_SASL_PASSWORD.* is a folder"),
    ],
    ids=["api-keys-file", "sasl-password-folder"],
)
def test_the_node_never_starts_with_a_platform_secret_it_cannot_read(
    tmp_path: Path, nodes: Start, setup: Callable[[Path], object], message: str
) -> None:
    """A platform secret (a setting read from the folder) that is unusable: no start, the file named."""
    root, folder, value = project(tmp_path)
    setup(folder)
    n = nodes(root, None, kafka=False, env={"FAAS_SECRETS_DIR": str(folder)})
    code = n.proc.wait(60)
    log = n.log.read_text()
    assert code in (1, 2) and re.search(message, log), log
    assert value not in log


@pytest.mark.parametrize(
    ("setup", "message", "answer"),
    [
        (lambda f: (f / "api_token").unlink(), "secret 'api_token' is missing", "is missing"),
        (lambda f: (f / "api_token").write_text("abc\n"), "under 4 characters", "under 4 characters"),
    ],
    ids=["missing", "short"],
)
def test_a_node_starting_without_a_secret_its_manifest_lists_serves_the_rest(
    tmp_path: Path, nodes: Start, setup: Callable[[Path], object], message: str, answer: str
) -> None:
    """1. The manifest lists api_token for `reader`; this node's folder lacks it (or holds a value too
    short to redact). Start the node. 2. Write the secret.
    Result: 1. the node starts and is ready (200); /readyz lists the secret's `functions.yaml:LINE:COL`
    error among its manifest errors and `reader` among its reasons; `reader` is answered 502
    InstanceCrashed naming the secret; `hog`, which lists no secret, serves (DESIGN.md 14: the other
    functions keep serving). 2. `reader` serves and the error is gone."""
    root, folder, value = project(tmp_path)
    setup(folder)
    n = start(nodes, root, folder)
    ready = httpx.get(n.url + "/readyz", timeout=10)
    assert ready.status_code == 200, ready.text
    errors = ready.json()["manifest_errors"]
    assert any(re.search(rf"functions\.yaml:6:15: .*{message}", e) for e in errors), errors
    assert any("reader" in x and "api_token" in x for x in ready.json()["reasons"]), ready.text
    r = invoke(n, READER)
    assert r.status_code == 502 and r.json()["error"]["type"] == "InstanceCrashed", r.text
    assert "api_token" in r.json()["error"]["message"] and answer in r.json()["error"]["message"], r.text
    assert invoke(n, HOG).status_code == 200
    (folder / "api_token").write_text(value + "\n")
    served_again(n, value, 20)


def test_a_missing_default_folder_is_an_error_at_each_listed_secret(tmp_path: Path, nodes: Start) -> None:
    """1. FAAS_SECRETS_DIR not set, no `secrets/` beside the manifest, functions listing a secret: the node
    starts; each listed secret is reported at its LINE:COL in the log and /readyz, those functions are
    answered InstanceCrashed, `hog` serves. 2. The folder appears, with the secret in it (as a mount:
    whole). Result: `reader` serves and the manifest errors are gone, with no edit of the manifest and no
    write in the folder once it is there (nothing but its appearing tells the node)."""
    root, mounted, value = project(tmp_path)
    n = nodes(root, None, kafka=False).wait_ready()
    log = n.log.read_text()
    assert re.search(
        r"functions\.yaml:6:15: .*secrets folder .*proj/secrets \(FAAS_SECRETS_DIR\) does not exist", log
    )
    assert re.search(r"functions\.yaml:12:15: .*does not exist", log), log
    errors = manifest_errors(n)
    assert len(errors) == 2, errors
    assert invoke(n, READER).status_code == 502
    assert invoke(n, HOG).status_code == 200
    mounted.rename(root / "secrets")
    served_again(n, value, 10)


def test_a_secrets_dir_set_to_nowhere_stops_the_start(tmp_path: Path, nodes: Start) -> None:
    """A FAAS_SECRETS_DIR the user set must exist even when no function lists a secret (a typo shows)."""
    root = write_project(
        tmp_path / "proj",
        MANIFEST.split("  - name: leak")[0].replace("    secrets: [api_token]\n", ""),
        MODULES,
    )
    n = nodes(root, None, kafka=False, env={"FAAS_SECRETS_DIR": str(tmp_path / "typo")})
    assert n.proc.wait(60) == 1
    assert re.search(r"secrets folder .*typo \(FAAS_SECRETS_DIR\) does not exist", n.log.read_text())
    # The default folder (`secrets` beside the manifest) may be absent.
    assert nodes(root, None, kafka=False).wait_ready().proc.poll() is None


def test_api_keys_from_the_secrets_folder(tmp_path: Path, nodes: Start) -> None:
    """1. `FAAS_API_KEYS` is a file in the secrets folder. 2. It is replaced in one step (written beside,
    renamed over) by two keys separated by a comma, then by two keys on lines of their own. 3. It is
    replaced by a file holding no key, then removed.
    Result: at 1 calls need that key; at 2, within 2 s, the new keys are taken and the old ones refused, on
    the invoke route, the other API routes and the dashboard's session alike; at 3 the rotated keys stay in
    force (auth never turns off while running) and `/readyz` says why; no key is ever logged."""
    root, folder, _ = project(tmp_path)
    (folder / "FAAS_API_KEYS").write_text("key-from-a-file-77\n")
    n = start(nodes, root, folder, FAAS_LOG_LEVEL="DEBUG")
    assert invoke(n, READER).status_code == 401

    def answers(key: str) -> tuple[int, int, bool]:
        bearer = {"Authorization": f"Bearer {key}"}
        invoked = httpx.post(f"{n.url}/functions/{READER}/invoke", headers=bearer, timeout=30).status_code
        listed = httpx.get(f"{n.url}/functions", headers=bearer, timeout=30).status_code
        session = httpx.get(f"{n.url}/ui/session", headers=bearer, timeout=30).json()["key_ok"]
        return invoked, listed, session

    assert answers("key-from-a-file-77") == (200, 200, True)
    (folder / "FAAS_API_KEYS.new").write_text("rotated-key-88, second-key-99\n")
    (folder / "FAAS_API_KEYS.new").rename(folder / "FAAS_API_KEYS")
    wait_for(lambda: answers("rotated-key-88") == (200, 200, True), 2, message="the rotated key in force")
    assert answers("second-key-99") == (200, 200, True)
    assert answers("key-from-a-file-77") == (401, 401, False)
    (folder / "FAAS_API_KEYS.new").write_text("line-key-1111\r\nline-key-2222\n")  # one key per line
    (folder / "FAAS_API_KEYS.new").rename(folder / "FAAS_API_KEYS")
    wait_for(lambda: answers("line-key-2222") == (200, 200, True), 2, message="a key per line in force")
    assert answers("line-key-1111") == (200, 200, True) and answers("rotated-key-88") == (401, 401, False)

    def reasons() -> list[str]:
        found: list[str] = httpx.get(f"{n.url}/readyz", timeout=10).json()["reasons"]
        return found

    (folder / "FAAS_API_KEYS.new").write_text(" , ,,,, \n")
    (folder / "FAAS_API_KEYS.new").rename(folder / "FAAS_API_KEYS")
    wait_for(
        lambda: any(r.startswith("api keys: FAAS_API_KEYS holds no key") for r in reasons()),
        5,
        message=f"the keyless file named\n{n.tail()}",
    )
    assert answers("line-key-1111") == (200, 200, True) and invoke(n, READER).status_code == 401
    (folder / "FAAS_API_KEYS").unlink()
    wait_for(
        lambda: any("no longer in the secrets folder" in r for r in reasons()), 5, message="removal named"
    )
    assert answers("line-key-2222") == (200, 200, True) and invoke(n, READER).status_code == 401
    n.stop()
    log = n.log.read_text()
    assert "API keys rotated: 2 in force" in log, log
    secrets = ("key-from-a-file-77", "rotated-key-88", "second-key-99", "line-key-1111", "line-key-2222")
    assert all(key not in log for key in secrets), log


def test_memory_limit_on_a_real_node(tmp_path: Path, nodes: Start) -> None:
    """1. `hog` (memory_mb 64, max 1) serves a light request. 2. One request grows to 200 MB while
    another light one is held by the same instance.
    Result: both get 502 InstanceCrashed naming the limit; `faas_instance_kills_total{function="hog",
    reason="memory"}` is 1; the next request runs on a fresh instance."""
    root, folder, _ = project(tmp_path)
    n = start(nodes, root, folder)
    first = invoke(n, HOG).json()["result"]["pid"]
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = pool.submit(invoke, n, HOG, {"hold": 20})
        wait_for(
            lambda: 'faas_inflight_requests{function="hog"} 1.0' in httpx.get(n.url + "/metrics").text,
            20,
            message="held request in flight",
        )
        heavy = pool.submit(invoke, n, HOG, {"mb": 200, "hold": 20})
        for r in (heavy.result(60), held.result(60)):
            assert r.status_code == 502, r.text
            err = r.json()["error"]
            assert (
                err["type"] == "InstanceCrashed"
                and "memory limit (instances.memory_mb: 64)" in err["message"]
            )
    metrics = httpx.get(n.url + "/metrics").text
    assert 'faas_instance_kills_total{function="hog",reason="memory"} 1.0' in metrics
    r = invoke(n, HOG)
    assert r.status_code == 200 and r.json()["result"]["pid"] != first and r.json()["cold_start"]


def test_a_local_test_run_reads_secrets_too(tmp_path: Path) -> None:
    """1. `faas invoke reader` (a local test run) with the secrets folder. 2. Without the secret.
    Result: 1 prints the result made with the value; 2 exits 1 naming the missing secret."""
    root, folder, value = project(tmp_path)
    r = run_cli(root, "invoke", "reader", env={"FAAS_SECRETS_DIR": str(folder)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sha256"] == sha(value)
    (folder / "api_token").unlink()
    r = run_cli(root, "invoke", "reader", env={"FAAS_SECRETS_DIR": str(folder)})
    assert r.returncode == 1 and "InstanceCrashed" in r.stderr and "secret 'api_token' is missing" in r.stderr


def test_event_replies_carry_redacted_errors(tmp_path: Path, broker: EmbeddedBroker, nodes: Start) -> None:
    """1. A node on the test broker; an event of type `secret.leak` is produced to its events topic.
    Result: the combined reply (and any dead-letter copy) says `***`, never the value."""
    root, folder, value = project(tmp_path)
    n = nodes(root, broker.bootstrap, env={"FAAS_SECRETS_DIR": str(folder)}).wait_ready(90)
    eid = new_id()
    produce(broker.bootstrap, n.events, [(b"k", b"{}", ce_headers("secret.leak", eid))])
    [reply] = consume(broker.bootstrap, n.replies, 1, 60, ids={eid})
    assert reply["value"]["ok"] is False
    assert reply["value"]["error"]["message"] == "RuntimeError: could not use ***", reply
    dead = consume(broker.bootstrap, n.deadletter, 1, 30)
    assert all(value not in str(d) for d in dead)
    assert value not in n.log.read_text()
