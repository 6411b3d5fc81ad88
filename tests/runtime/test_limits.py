"""instances.memory_mb and secrets in the runtime: kills over the limit, ctx.secrets, rotation, redaction."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from framework.errors import FunctionError, InstanceCrashed
from framework.observe import tracing
from framework.observe.logs import TraceFilter
from framework.runtime import Runtime
from framework.runtime.memory import resident_bytes
from framework.settings import Settings
from tests.runtime.conftest import SpecFactory, alive, call, until
from tests.support import write_project

HANDLERS = """
import asyncio, logging, os

async def grow(payload, ctx):
    payload = payload or {}
    chunks = []
    for _ in range(payload.get("mb", 0) // 10):
        chunks.append(bytearray(10 * 1024 * 1024))  # zero-filled: every page touched
        await asyncio.sleep(0.1)  # ~100 MB/s
    await asyncio.sleep(payload.get("hold", 0))
    return {"pid": os.getpid()}

async def light(payload, ctx):
    await asyncio.sleep((payload or {}).get("sleep", 0))
    return {"pid": os.getpid()}

async def secrets(payload, ctx):
    listed = dict(ctx.secrets)
    try:
        ctx.secrets["x"] = "y"
        writable = True
    except TypeError:
        writable = False
    try:
        other = ctx.secrets["unlisted"]
    except KeyError as e:
        other = None
        unlisted = str(e)
    await asyncio.sleep(payload.get("sleep", 0) if payload else 0)
    return {"secrets": listed, "writable": writable, "other": other, "unlisted": unlisted,
            "repr": repr(ctx.secrets), "pid": os.getpid(),
            "environ": any(v in str(dict(os.environ)) for v in listed.values())}

CHILD = '''
import sys, time
chunks = []
for _ in range(int(sys.argv[1]) // 10):
    chunks.append(bytearray(10 * 1024 * 1024))  # zero-filled: every page touched
    time.sleep(0.1)  # ~100 MB/s
time.sleep(float(sys.argv[2]))
'''

async def spawn(payload, ctx):
    import sys
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD, str(payload["mb"]), str(payload.get("hold", 0))
    )
    with open(payload["pidfile"], "w") as f:
        f.write(str(proc.pid))
    return {"code": await proc.wait(), "pid": os.getpid()}

async def leak(payload, ctx):
    value = ctx.secrets["token"]
    ctx.log.info("ctx.log %s", value)
    logging.getLogger("lib").warning("library %s", value)
    print("stdout", value)
    raise RuntimeError(f"failed with {value}")
"""


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = write_project(tmp_path / "proj", "functions: []\n", {"lim": HANDLERS})
    (root / "secrets").mkdir()
    (root / "secrets" / "token").write_text("tok-0123456789\n")
    (root / "secrets" / "unlisted").write_text("not-for-you\n")
    return root


@pytest.fixture
async def rt(root: Path) -> AsyncIterator[Runtime]:
    runtime = Runtime(Settings(manifest=root / "functions.yaml", queue_timeout=5))
    await runtime.start()
    yield runtime
    await runtime.stop(0)


HEAVY_IMPORT = """
BALLAST = bytearray(150 * 1024 * 1024)  # zero-filled: every page touched, at import

async def handle(payload, ctx):
    return "served"
"""


GROWING_IMPORT = """
import os, time
from pathlib import Path

Path(os.environ["PIDFILE"]).write_text(str(os.getpid()))
BALLAST = []
for _ in range(40):  # 400 MB at ~100 MB/s, then a long import
    BALLAST.append(bytearray(10 * 1024 * 1024))
    time.sleep(0.1)
time.sleep(30)

async def handle(payload, ctx):
    return "served"
"""


def kills(rt: Runtime, name: str, reason: str) -> float:
    value: float = rt.metrics.instance_kills.labels(name, reason)._value.get()
    return value


async def test_over_the_memory_limit_the_instance_is_killed(
    rt: Runtime, spec: SpecFactory, root: Path
) -> None:
    """1. `grow` has memory_mb 64 and max 1; a light request starts its instance.
    2. One request grows by 200 MB at ~100 MB/s while two light requests wait on the same instance.
    Result: all three get InstanceCrashed naming the limit; the kill is counted as `memory`; the
    instance's RSS never passed the limit by more than one sampling period of growth; the next request
    runs on a fresh instance."""
    s = spec("grow", module="lim", root=root, timeout=30, max=1, memory_mb=64)
    first, _ = await call(rt, s)
    peak = [0]

    async def sample() -> None:
        while True:
            peak[0] = max(peak[0], resident_bytes(first["pid"]) or 0)
            await asyncio.sleep(0.01)

    sampler = asyncio.ensure_future(sample())
    calls = [asyncio.ensure_future(call(rt, s, {"mb": 200, "hold": 20}))]
    calls += [asyncio.ensure_future(call(rt, s, {"hold": 20})) for _ in range(2)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    sampler.cancel()
    for r in results:
        assert isinstance(r, InstanceCrashed), r
        assert "memory" in r.message and "64" in r.message
    assert kills(rt, s.name, "memory") == 1
    assert peak[0] < (64 + 40) * 1024 * 1024, peak[0]
    value, res = await call(rt, s)
    assert value["pid"] != first["pid"] and res.cold_start


async def test_a_memory_kill_is_logged_outside_the_trace_of_the_call_that_started_the_guard(
    rt: Runtime, spec: SpecFactory, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. In trace A, call `grow` (memory_mb 64): its instance is the first with a limit, so the call
    starts the memory guard. 2. In trace B, make it grow past the limit.
    Result: the kill's warning does not carry trace A (the guard's task kept the first call's context, so
    every kill on the node, of any function, was logged in that one unrelated trace)."""
    caplog.handler.addFilter(TraceFilter())
    caplog.set_level(logging.WARNING, "faas.runtime")
    s = spec("grow", module="lim", root=root, timeout=30, max=1, memory_mb=64)
    first = tracing.start()
    token = tracing.current.set(first)
    try:
        await call(rt, s)
    finally:
        tracing.current.reset(token)
    token = tracing.current.set(tracing.start())
    try:
        with pytest.raises(InstanceCrashed, match="memory"):
            await call(rt, s, {"mb": 200, "hold": 20})
    finally:
        tracing.current.reset(token)
    killed = [r for r in caplog.records if "memory" in r.getMessage() and "64" in r.getMessage()]
    assert killed, [r.getMessage() for r in caplog.records]
    assert all(getattr(r, "trace_id", None) != first.trace_id for r in killed), killed


@pytest.mark.parametrize("export", [False, True])
async def test_an_instance_over_its_limit_after_its_import_serves_nothing(
    rt: Runtime, spec: SpecFactory, root: Path, monkeypatch: pytest.MonkeyPatch, export: bool
) -> None:
    """1. A function whose module allocates 150 MB at import, memory_mb 64. 2. Call it twice.
    Result: each call is InstanceCrashed naming the limit and saying no call can run under it (its instance
    was killed at its HELLO, before serving: it used to answer the first call and be killed after), each
    kill counted as `memory`; with OpenTelemetry export on, what it holds of that is said too."""
    if export:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    (root / "functions" / "ballast.py").write_text(HEAVY_IMPORT)
    s = spec("handle", module="ballast", root=root, timeout=30, max=1, memory_mb=64)
    for n in (1, 2):
        with pytest.raises(InstanceCrashed) as crashed:
            await call(rt, s)
        message = crashed.value.message
        assert "memory limit (instances.memory_mb: 64) before it served a call (the interpreter" in message
        assert message.endswith("): raise the limit"), message
        assert ("; OpenTelemetry export, on for this node, about 15 MB of it" in message) is export, message
        assert kills(rt, s.name, "memory") == n


async def test_an_instance_growing_while_it_imports_is_stopped_there(
    rt: Runtime, spec: SpecFactory, root: Path
) -> None:
    """1. A function whose module grows by 400 MB at ~100 MB/s while it imports, then takes 30 s more to
    import; memory_mb 64. 2. Call it.
    Result: InstanceCrashed naming the limit well before the import would have ended (the guard samples
    an instance from its fork, not from its HELLO: the instance used to sit at 400 MB until its import
    ended); its memory never passed the limit by more than a few samples of growth; the kill counted."""
    (root / "functions" / "growing.py").write_text(GROWING_IMPORT)
    pidfile = root.parent / "growing.pid"  # outside the project, which instances see read-only
    s = spec(
        "handle", module="growing", root=root, timeout=30, max=1, memory_mb=64, env={"PIDFILE": str(pidfile)}
    )
    peak = [0]

    async def sample() -> None:
        while True:
            if pidfile.exists() and pidfile.read_text():
                peak[0] = max(peak[0], resident_bytes(int(pidfile.read_text())) or 0)
            await asyncio.sleep(0.01)

    sampler = asyncio.ensure_future(sample())
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(InstanceCrashed) as crashed:
            await call(rt, s)
    finally:
        sampler.cancel()
    assert "memory limit (instances.memory_mb: 64)" in crashed.value.message
    assert loop.time() - started < 15, "killed only once its import ended"
    assert peak[0] < (64 + 60) * 1024 * 1024, peak[0]
    assert kills(rt, s.name, "memory") == 1


async def test_processes_a_handler_starts_count_toward_the_limit(
    rt: Runtime, spec: SpecFactory, root: Path, tmp_path: Path
) -> None:
    """1. `spawn` has memory_mb 64: its handler starts a Python process that grows to 150 MB, then waits.
    2. A second call starts one that allocates nothing and exits.
    Result: the first call is InstanceCrashed naming the limit and the one process the instance started, the
    kill is counted as `memory` and the child is gone with its instance; the second call succeeds."""
    s = spec("spawn", module="lim", root=root, timeout=30, max=1, memory_mb=64)
    pidfile = tmp_path / "child.pid"
    with pytest.raises(InstanceCrashed) as crashed:
        await call(rt, s, {"mb": 150, "hold": 30, "pidfile": str(pidfile)})
    message = crashed.value.message
    assert "memory limit (instances.memory_mb: 64)" in message and "in 1 process it started" in message
    assert kills(rt, s.name, "memory") == 1
    child = int(pidfile.read_text())
    await until(lambda: not alive(child), message=f"child {child} gone")
    value, _ = await call(rt, s, {"mb": 0, "pidfile": str(pidfile)})
    assert value["code"] == 0 and kills(rt, s.name, "memory") == 1


async def test_without_a_limit_nothing_is_killed(rt: Runtime, spec: SpecFactory, root: Path) -> None:
    s = spec("grow", module="lim", root=root, timeout=30, max=1)
    value, _ = await call(rt, s, {"mb": 80})
    assert value["pid"] and kills(rt, s.name, "memory") == 0


async def test_crash_and_blocked_kills_are_counted(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("exit1", max=1)
    with pytest.raises(InstanceCrashed):
        await call(runtime, s)
    assert kills(runtime, s.name, "crash") == 1
    b = spec("block", timeout=0.5, max=1)
    with pytest.raises(Exception, match="limit"):
        await call(runtime, b, {"block": 4})
    await until(lambda: kills(runtime, b.name, "timeout") == 1, message="timeout kill counted")


async def test_ctx_secrets_holds_only_the_listed_ones(rt: Runtime, spec: SpecFactory, root: Path) -> None:
    s = spec("secrets", module="lim", root=root).model_copy(update={"secrets": ("token",)})
    value, _ = await call(rt, s)
    assert value["secrets"] == {"token": "tok-0123456789"}  # trailing newline removed
    assert value["writable"] is False and value["other"] is None and value["environ"] is False
    assert value["unlisted"] == (
        "\"'unlisted' is not a secret of this function: add it to its `secrets:` in functions.yaml "
        '(listed: token)"'
    )
    assert value["repr"] == "Secrets(['token'])"  # names, never values


async def test_a_missing_secret_answers_instance_crashed(rt: Runtime, spec: SpecFactory, root: Path) -> None:
    s = spec("secrets", module="lim", root=root).model_copy(update={"secrets": ("token", "absent")})
    with pytest.raises(InstanceCrashed, match="secret 'absent' is missing") as info:
        await call(rt, s)
    assert "tok-0123456789" not in info.value.message
    assert rt.instance_count(s.name) == 0


async def test_rotation_gives_fresh_instances_and_in_flight_finish(
    rt: Runtime, spec: SpecFactory, root: Path
) -> None:
    """1. A request holds an instance for 1 s. 2. The secret file changes; the runtime re-reads.
    Result: the held request finishes with the old value; the next one runs on a new instance with the new
    value; a function without secrets keeps its pool."""
    s = spec("secrets", module="lim", root=root).model_copy(update={"secrets": ("token",)})
    plain = spec("light", module="lim", root=root)
    await call(rt, plain)
    held = asyncio.ensure_future(call(rt, s, {"sleep": 1}))
    await until(lambda: rt.inflight() == 1, message="request in flight")
    (root / "secrets" / "token").write_text("tok-rotated-42")
    assert rt.refresh_secrets() == [s.name]
    old, _ = await held
    new, _ = await call(rt, s)
    assert old["secrets"]["token"] == "tok-0123456789" and new["secrets"]["token"] == "tok-rotated-42"
    assert old["pid"] != new["pid"]
    assert rt.refresh_secrets() == []  # nothing changed since


async def test_values_are_redacted_from_logs_and_errors(
    rt: Runtime, spec: SpecFactory, root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    s = spec("leak", module="lim", root=root).model_copy(update={"secrets": ("token",)})
    with pytest.raises(FunctionError) as info:
        await call(rt, s)
    notes = "".join(getattr(info.value, "__notes__", []))
    assert info.value.message == "RuntimeError: failed with ***" and "Traceback" in notes
    assert "tok-0123456789" not in notes
    await until(lambda: "library ***" in caplog.text and "stdout ***" in caplog.text, message="logs arrived")
    assert "ctx.log ***" in caplog.text and "tok-0123456789" not in caplog.text
