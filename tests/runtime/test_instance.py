"""Inside an instance: environment, thread pool, warm-up, watchdog, logs; and reloads, test runs, orphans."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import orjson
import pytest

from framework.runtime import Runtime, invoke_once
from framework.types import Invocation
from tests.runtime.conftest import WARM, SpecFactory, alive, call, sample, until
from tests.runtime.conftest import inv as _inv
from tests.support import wait_for, write_project


async def test_integers_beyond_64_bits_reach_the_handler_and_come_back_exact(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A payload with integers orjson alone would read as floats (30 digits, 2**64, -2**63 - 1), echoed.
    Result: the handler gets and returns them exact (the result's JSON holds the same digits)."""
    raw = b'{"a":123456789012345678901234567890,"b":[18446744073709551616,-9223372036854775809]}'
    res = await runtime.invoke(spec("echo"), Invocation("big-ints", "direct", None, raw))
    assert json.loads(res.result)["payload"] == {
        "a": 123456789012345678901234567890,
        "b": [2**64, -(2**63) - 1],
    }


async def test_stdout_and_stderr_have_descriptors_for_programs(runtime: Runtime, spec: SpecFactory) -> None:
    """1. A `def` handler runs a program with `stdout=sys.stdout, stderr=sys.stderr` and returns both
    streams' `fileno()` and stdout's `encoding`. Result: 1, 2 and utf-8, and the program ran (exit 0)."""
    value, _ = await call(runtime, spec("standard_streams"), "x")
    assert value == [1, 2, "utf-8", 0]


async def test_a_handlers_subprocesses_stop_on_sigterm_and_sigint(
    runtime: Runtime, spec: SpecFactory
) -> None:
    """1. A `def` handler starts `sleep 30` and terminates it, then starts another and sends it SIGINT,
    then forks a `multiprocessing` process (no exec) and terminates it.
    Result: each ends by its signal (-15, -2, -15) at once. The template and instances do not stop on
    either signal (the node drains first), but a program a handler runs, and a process it forks, get the
    default actions back: an ignored signal (SIG_IGN) would have been inherited by the program, and the
    instance's own handler by the forked process, and each wait would have run out."""
    value, _ = await call(runtime, spec("signal_children", timeout=30), None)
    assert value == [-signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM]


async def test_env_change_stays_in_its_instance(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("setenv", max=2, concurrency=1, env={"GREETING": "hej"})
    (a, _), (b, _) = await asyncio.gather(
        call(runtime, s, {"set": "x", "sleep": 0.3}), call(runtime, s, {"sleep": 0.3})
    )
    assert a["instance"] != b["instance"]
    assert a["flag"] == "x" and b["flag"] is None
    assert a["greeting"] == b["greeting"] == "hej"


async def test_context(runtime: Runtime, spec: SpecFactory) -> None:
    value, res = await call(runtime, spec("echo", timeout=5, env={"GREETING": "hi"}), [1, "two"])
    assert value["payload"] == [1, "two"] and value["trigger"] == "direct" and value["greeting"] == "hi"
    assert 4 < value["remaining"] <= 5 and value["instance"] == res.instance_id and res.duration_ms > 0


async def test_sync_handlers_overlap_in_threads(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("sync_sleep", max=1, concurrency=10)
    await call(runtime, s, {"sleep": 0})  # start it first: time only the calls
    t = time.monotonic()
    results = await asyncio.gather(*(call(runtime, s, {"sleep": 0.5}) for _ in range(6)))
    assert time.monotonic() - t < 1.5, "sync sleeps ran one after another"
    assert len({v["instance"] for v, _ in results}) == 1 and len({v["thread"] for v, _ in results}) == 6


async def test_warmup_calls_hook_never_handle(runtime: Runtime, spec: SpecFactory, tmp_path: Path) -> None:
    root = write_project(tmp_path, "functions: []\n", {"warm": WARM})
    s = spec("handle", module="warm", name="warm", root=root, max=2)
    assert await runtime.warmup(s) == 1
    [marker] = root.glob("warmup-*")
    # The warm-up that started the instance waited for it: its own cold start (section 3).
    assert marker.read_text() == "warmup cold=True" and not (root / "handle-called").exists()
    assert await runtime.warmup(s) == 1
    assert marker.read_text() == "warmup cold=False"
    res = await runtime.invoke(s, _inv())
    assert not res.cold_start  # the instance a warm-up started is not a cold start for requests
    assert (root / "handle-called").exists()
    assert sample(runtime, "faas_cold_starts_total", function="warm") == 0


async def test_warmup_without_hook_is_a_noop(runtime: Runtime, spec: SpecFactory) -> None:
    s = spec("boom")
    assert await runtime.warmup(s) == 1
    assert await runtime.warmup(s) == 1


async def test_watchdog_reports_blocked_loop(
    runtime: Runtime, spec: SpecFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    s = spec("block", name="blocker", timeout=5)
    res = await runtime.invoke(s, inv := _inv({"block": 0.3}))
    assert set(orjson.loads(res.result)) == {"unblocked"}

    def warned() -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == "faas.instance"
            and r.levelno == logging.WARNING
            and getattr(r, "invocation_id", None) == inv.invocation_id
        ]

    [record] = await until(warned, message="blocked-loop warning")
    msg = record.getMessage()
    assert (
        "blocker" in msg and inv.invocation_id in msg and "time.sleep" in msg
    )  # the stack names the culprit
    assert record.function == "blocker" and record.instance_id == res.instance_id
    assert sample(runtime, "faas_blocked_loop_total", function="blocker") == 1


async def test_logs_and_prints_reach_node_log(
    runtime: Runtime, spec: SpecFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    res = await runtime.invoke(spec("logs"), inv := _inv("hi"))

    def tagged(text: str) -> list[logging.LogRecord]:
        return [
            r
            for r in caplog.records
            if r.name == "faas.instance"
            and text in r.getMessage()
            and getattr(r, "invocation_id", None) == inv.invocation_id
            and getattr(r, "instance_id", None) == res.instance_id
            and getattr(r, "function", None) == "logs"
        ]

    await until(lambda: tagged("ctx log says hi"), message="ctx.log record")
    await until(lambda: tagged("printed hi"), message="print record")


async def test_apply_retires_changed_function_after_inflight(runtime: Runtime, spec: SpecFactory) -> None:
    old = spec("setenv", name="svc", env={"GREETING": "v1"})
    _, first = await call(runtime, old, {})
    slow = asyncio.ensure_future(call(runtime, old, {"sleep": 1}))
    await until(lambda: runtime.inflight() == 1)
    new = old.model_copy(update={"env": {"GREETING": "v2"}})
    runtime.apply([new])
    value, res = await call(runtime, new, {})
    assert value["greeting"] == "v2" and res.instance_id != first.instance_id and res.cold_start
    old_value, _ = await slow  # the retired instance finished what it held
    assert old_value["greeting"] == "v1" and old_value["instance"] == first.instance_id
    await until(lambda: first.instance_id not in runtime.instance_ids("svc"), message="old instance stopped")
    assert runtime.instance_ids("svc") == [res.instance_id]
    runtime.apply([])
    await until(lambda: runtime.instance_count("svc") == 0, message="vanished function stopped")


async def test_invoke_once_runs_a_draft(spec: SpecFactory) -> None:
    s = spec("echo")
    assert s.state == "draft"
    res = await invoke_once(s, b'{"a": 1}')
    value = orjson.loads(res.result)
    assert value["payload"] == {"a": 1} and res.cold_start
    await until(lambda: not alive(value["pid"]), message="test-run instance stopped")


def test_instances_die_with_the_node(project: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio, uuid
        from pathlib import Path
        from framework.control.spec import FunctionSpec
        from framework.runtime import Runtime
        from framework.settings import Settings
        from framework.types import Invocation

        async def main():
            rt = Runtime(Settings())
            await rt.start()
            spec = FunctionSpec(name="echo", uuid=str(uuid.uuid4()), handler="functions.rt:echo",
                                root=Path({str(project)!r}))
            res = await rt.invoke(spec, Invocation("x", "direct", None, b"null"))
            print(res.result.decode(), flush=True)
            await asyncio.Event().wait()

        asyncio.run(main())
    """)
    node = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, cwd=Path(__file__).parents[2]
    )
    try:
        assert node.stdout is not None
        pid = orjson.loads(node.stdout.readline())["pid"]
        assert alive(pid)
        os.kill(node.pid, signal.SIGKILL)
        node.wait(10)
        wait_for(lambda: not alive(pid), timeout=10, message="instance gone after its node was SIGKILLed")
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        if node.stdout is not None:
            node.stdout.close()


async def test_a_dotted_handler_attribute_is_followed(
    runtime: Runtime, spec: SpecFactory, tmp_path: Path
) -> None:
    """`functions.obj:Greeter.handle` (the manifest and `faas validate` take a dotted attribute): the
    instance follows the dots, as the check does, instead of answering AttributeError."""
    module = (
        "class Greeter:\n    @staticmethod\n"
        "    async def handle(payload, ctx):\n        return ['hi', payload]\n"
    )
    root = write_project(tmp_path, "functions: []\n", {"obj": module})
    s = spec("Greeter.handle", module="obj", name="dotted", root=root)
    value, _ = await call(runtime, s, 7)
    assert value == ["hi", 7]
