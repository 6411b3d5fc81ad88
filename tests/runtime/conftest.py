"""Fixtures for the runtime tests: one project of handlers, a started `Runtime`, spec and call helpers."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from framework.control.spec import FunctionSpec, InstancesSpec
from framework.runtime import Runtime
from framework.settings import Settings
from framework.types import Invocation, InvokeResult
from tests.support import write_project

HANDLERS = """
import asyncio, dataclasses, enum, os, threading, time

async def echo(payload, ctx):
    return {"payload": payload, "instance": ctx.instance_id, "pid": os.getpid(), "cold": ctx.cold_start,
            "trigger": ctx.trigger, "remaining": ctx.remaining(), "greeting": ctx.env.get("GREETING")}

async def sleep(payload, ctx):
    await asyncio.sleep(payload.get("sleep", 0.5))
    return {"instance": ctx.instance_id, "pid": os.getpid()}

def sync_sleep(payload, ctx):
    time.sleep(payload["sleep"])
    return {"thread": threading.current_thread().name, "instance": ctx.instance_id}

async def block(payload, ctx):
    time.sleep(payload["block"])
    return {"unblocked": os.getpid()}

async def boom(payload, ctx):
    raise ValueError(f"bad input: {payload}")

async def notjson(payload, ctx):
    return {1, 2}

async def odd_keys(payload, ctx):
    if payload == "clash":
        return {"rows": [{1: "int", "1": "text"}]}
    return {10**30: "big", -1: "small"} if payload == "big" else {(1, 2): "pair"}

async def spawn(payload, ctx):
    import subprocess
    child = subprocess.Popen(["sleep", "60"])
    if payload and payload.get("exit"):
        with open(payload["exit"], "w") as f:
            f.write(str(child.pid))
        os._exit(1)  # leaves its child behind
    return {"child": child.pid, "pid": os.getpid()}

async def stop_template(payload, ctx):
    import signal
    os.kill(os.getppid(), signal.SIGSTOP)  # the template: every instance's parent
    return os.getppid()

async def kill_template(payload, ctx):
    import signal
    os.kill(os.getppid(), signal.SIGKILL)  # the template: every instance of every function dies with it
    await asyncio.sleep(30)

async def fork_exit(payload, ctx):
    child = os.fork()
    if child == 0:  # holds every descriptor of its instance, the node's channel too
        time.sleep(60)
        os._exit(0)
    with open(payload["note"], "w") as f:
        f.write(str(child))
    await asyncio.sleep(0.2)
    os._exit(3)

async def exit1(payload, ctx):
    os._exit(1)

async def segfault(payload, ctx):
    import signal
    if payload and "sleep" in payload:
        await asyncio.sleep(payload["sleep"])
        return {"pid": os.getpid()}
    os.kill(os.getpid(), signal.SIGSEGV)

async def loop_stop(payload, ctx):
    if payload and "sleep" in payload:
        await asyncio.sleep(payload["sleep"])
        return {"pid": os.getpid()}
    asyncio.get_running_loop().stop()  # the instance's own loop: its server stops under its requests
    await asyncio.sleep(30)

async def close_channel(payload, ctx):
    with open(payload["pid_file"], "w") as f:
        f.write(str(os.getpid()))
    os.closerange(3, 4096)  # the channels to the node among them
    time.sleep(payload["block"])  # the loop held: the process stays, serving nothing

async def setenv(payload, ctx):
    if payload.get("set"):
        os.environ["FLAG"] = payload["set"]
    await asyncio.sleep(payload.get("sleep", 0))
    env = os.environ
    return {"flag": env.get("FLAG"), "instance": ctx.instance_id, "greeting": env.get("GREETING")}

async def swallow(payload, ctx):
    try:
        await asyncio.sleep(10)
    except asyncio.CancelledError:
        return "returned after the cancellation"

async def stubborn(payload, ctx):
    if payload.get("quick") is not None:
        await asyncio.sleep(payload["quick"])
        return os.getpid()
    while True:  # every cancellation swallowed: it ends only with its process
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            pass

async def escape(payload, ctx):
    with open(payload["note"], "w") as f:
        f.write(str(os.getpid()))
    os.setpgid(0, os.getpgid(os.getppid()))  # out of its own group, into its template's
    time.sleep(payload["block"])  # its loop held: only a kill ends it
    return os.getpid()

async def own_group(payload, ctx):
    import subprocess
    child = subprocess.Popen(["sleep", "300"], process_group=0)
    session = subprocess.Popen(["sleep", "300"], start_new_session=True)
    return {"child": child.pid, "session": session.pid, "pid": os.getpid()}

async def self_cancel(payload, ctx):
    inner = asyncio.ensure_future(asyncio.sleep(10))
    inner.cancel()
    await inner  # raises CancelledError in the handler: its own, not the node's

async def logs(payload, ctx):
    ctx.log.info("ctx log says %s", payload)
    print("printed", payload)
    return "ok"

class BadStr(Exception):
    def __str__(self):
        raise ValueError("no")

class MyBase(BaseException):
    pass

RAISES = {
    e.__name__: e
    for e in (BadStr, MyBase, SystemExit, KeyboardInterrupt, StopIteration, GeneratorExit, StopAsyncIteration)
}

async def raise_async(payload, ctx):
    if payload.get("sleep"):
        await asyncio.sleep(payload["sleep"])
    if payload.get("raise"):
        raise RAISES[payload["raise"]]()
    return ctx.instance_id

def raise_sync(payload, ctx):
    if payload.get("raise"):
        raise RAISES[payload["raise"]]()
    return ctx.instance_id

@dataclasses.dataclass
class Point:
    x: float
    y: float

class Level(enum.Enum):
    TOP = float("inf")

NON_FINITE = {
    "nan": {"x": float("nan")},
    "inf": float("inf"),
    "deep": [1, None, {"y": [2.5, "null", float("-inf")]}],
    "key": {float("nan"): 1},
    "tuple": (None, float("nan")),
    "dataclass": {"p": Point(1.0, float("nan"))},
    "enum": [Level.TOP],
}
FINITE = {"a": None, "s": "null", "f": [1.5, -0.0, 1e308], "t": (None,), "p": Point(0.5, 2.0), 2.5: None}

async def non_finite(payload, ctx):
    return NON_FINITE[payload] if payload else FINITE

async def nested(payload, ctx):
    value = payload["leaf"]
    for _ in range(payload["depth"]):
        value = [value]
    return value

async def big_result(payload, ctx):
    chunk = "x" * (1 << 20)
    return [chunk] * payload  # `payload` MiB of JSON out of one MiB of memory

def standard_streams(payload, ctx):
    import subprocess, sys
    done = subprocess.run(["sh", "-c", "echo from-child-$0", payload], stdout=sys.stdout, stderr=sys.stderr)
    return [sys.stdout.fileno(), sys.stderr.fileno(), sys.stdout.encoding, done.returncode]

def signal_children(payload, ctx):
    import multiprocessing, subprocess, time
    codes = []
    for stop in ("terminate", "send_signal"):  # SIGTERM, then SIGINT
        child = subprocess.Popen(["sleep", "30"])
        child.terminate() if stop == "terminate" else child.send_signal(2)
        codes.append(child.wait(timeout=10))
    forked = multiprocessing.get_context("fork").Process(target=time.sleep, args=(30,))
    forked.start()
    forked.terminate()
    forked.join(10)
    codes.append(forked.exitcode)
    return codes
"""

WARM = """
import os
from pathlib import Path

def handle(payload, ctx):
    Path("handle-called").write_text(ctx.invocation_id)
    return "handled"

async def warmup(ctx):
    Path(f"warmup-{os.getpid()}").write_text(f"{ctx.trigger} cold={ctx.cold_start}")
"""

BROKEN = """
raise RuntimeError("cannot import me")
"""

FLAKY = """
import asyncio, os
if os.path.exists(os.environ["FLAKY_FLAG"]):
    raise RuntimeError("cannot import me yet")

async def handle(payload, ctx):
    await asyncio.sleep(payload or 0)
    return os.getpid()
"""

EXITS = """
import os
os._exit(2)
"""

HANGS = """
import time
time.sleep(30)

async def handle(payload, ctx):
    return "never"
"""


@pytest.fixture(scope="session")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    modules = {"rt": HANDLERS, "warm": WARM, "broken": BROKEN, "flaky": FLAKY, "exits": EXITS, "hangs": HANGS}
    return write_project(tmp_path_factory.mktemp("rt"), "functions: []\n", modules)


SpecFactory = Callable[..., FunctionSpec]


@pytest.fixture
def spec(project: Path) -> SpecFactory:
    """`spec("echo", timeout=1, max=2, concurrency=5, ...)`: a FunctionSpec for a handler in `project`."""

    def make(
        attr: str,
        module: str = "rt",
        name: str | None = None,
        timeout: float = 10,
        env: dict[str, str] | None = None,
        root: Path | None = None,
        **instances: Any,
    ) -> FunctionSpec:
        return FunctionSpec(
            name=name or attr.replace("_", "-"),
            uuid=str(uuid.uuid4()),
            handler=f"functions.{module}:{attr}",
            timeout=timeout,
            env=env or {},
            instances=InstancesSpec(**instances),
            root=root or project,
        )

    return make


@pytest.fixture
def settings() -> Settings:
    return Settings(queue_timeout=5, log_level="INFO")


@pytest.fixture
async def runtime(settings: Settings) -> AsyncIterator[Runtime]:
    rt = Runtime(settings)
    await rt.start()
    yield rt
    await rt.stop(0)


def inv(payload: object = None, trigger: str = "direct") -> Invocation:
    return Invocation(str(uuid.uuid4()), trigger, None, orjson.dumps(payload))  # type: ignore[arg-type]


async def call(rt: Runtime, spec: FunctionSpec, payload: object = None) -> tuple[Any, InvokeResult]:
    """Invoke and decode: (result value, InvokeResult)."""
    res = await rt.invoke(spec, inv(payload))
    return orjson.loads(res.result), res


async def until(condition: Callable[[], object], timeout: float = 10, message: str = "condition") -> Any:
    """Async twin of `tests.support.wait_for`: poll without blocking the loop the runtime runs on."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout} s")
        await asyncio.sleep(0.02)


def sample(rt: Runtime, name: str, **labels: str) -> float:
    """A sample of the runtime's metrics read through the registry's public API (0 when never set)."""
    return rt.metrics.registry.get_sample_value(name, labels) or 0.0


def alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie is dead, only not reaped yet by its new parent)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
