"""Invocation records made by real instances (runtime/pool.py, handle.py, worker/server.py): the instance
renders its invocation's record and sends it as its REPLY's trailer; the node keeps it as sent, checks it
is that invocation's, and makes the record itself when no instance answered."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from framework.control.spec import FunctionSpec, InstancesSpec
from framework.errors import FunctionError, InstanceCrashed, Overloaded, Timeout
from framework.observe import tracing
from framework.observe.logs import TraceFilter
from framework.observe.records import InvocationRecords
from framework.runtime import Runtime
from framework.runtime.handle import InstanceHandle
from framework.runtime.protocol import FrameKind
from framework.settings import Settings
from framework.types import EventIdentity, Invocation
from tests.support import write_project

HANDLERS = """
import asyncio, os, time

async def hello(payload, ctx):
    ctx.log.info("hello %s", payload)
    print("printed")
    return {"ok": payload}

async def fail(payload, ctx):
    ctx.log.warning("about to fail")
    raise ValueError("no good")

async def slow(payload, ctx):
    await asyncio.sleep(5)

class BadStr(Exception):
    def __str__(self):
        raise ValueError("no")

def fail_badly(payload, ctx):
    ctx.log.warning("about to fail badly")
    raise BadStr()

async def log_deep(payload, ctx):
    deep = []
    for _ in range(1000):
        deep = [deep]
    ctx.log.info("deep %s", deep)
    ctx.log.info("after the deep one")
    return "logged"

async def die(payload, ctx):
    ctx.log.warning("last words %s", payload)
    print("printed before the exit")
    os._exit(3)

async def block(payload, ctx):
    ctx.log.info("about to block")
    time.sleep(5)  # the loop is stuck: only the node's backstop can end this

async def mixed(payload, ctx):
    ctx.log.info("started %s", payload)
    if payload == "die":
        await asyncio.sleep(0.2)  # the others are in flight by then
        os._exit(3)
    await asyncio.sleep(5)

async def log_then_wait(payload, ctx):
    ctx.log.info("waiting")
    await asyncio.sleep(5)

async def unterminated(payload, ctx):
    import sys
    sys.stdout.write(f"no newline {payload}")
    sys.stderr.write(f"err {payload}")
    return payload

import logging, queue, threading
from concurrent.futures import ThreadPoolExecutor

# A thread started at import, outside any invocation: what it prints is no invocation's line.
asked, printed = queue.Queue(), threading.Semaphore(0)

def _background():
    while True:
        print(asked.get())
        printed.release()

threading.Thread(target=_background, daemon=True).start()

async def background_prints(payload, ctx):
    asked.put("from a background thread")
    printed.acquire(timeout=5)
    return "done"

class Worker(threading.Thread):
    def run(self):
        logging.getLogger("worker").warning("from a Thread subclass")

def threads_log(payload, ctx):
    t = threading.Thread(target=print, args=(f"from a plain thread {payload}",))
    t.start()
    t.join()
    w = Worker()
    w.start()
    w.join()
    with ThreadPoolExecutor(1) as pool:
        pool.submit(print, f"from a pool {payload}").result()
    asked.put(f"from a background thread {payload}")
    printed.acquire(timeout=5)
    return "done"

async def executor_logs(payload, ctx):
    await asyncio.get_running_loop().run_in_executor(None, print, f"from the loop's executor {payload}")
    return "done"

async def forge(payload, ctx):
    # A handler runs in its instance's process: it can replace the renderer the instance uses.
    from framework.runtime.worker import server
    real = server.record_json.render
    server.record_json.render = lambda *args: real("someone-else", *args[1:])
    return "forged"
"""
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_project(tmp_path_factory.mktemp("rec"), "functions: []\n", {"rec": HANDLERS})


@pytest.fixture
async def runtime() -> AsyncIterator[tuple[Runtime, InvocationRecords]]:
    settings = Settings(queue_timeout=5, node_name="node-7")
    rt = Runtime(settings)
    records = InvocationRecords(settings)
    rt.recorder = records
    await rt.start()
    yield rt, records
    await rt.stop(0)


def spec(project: Path, attr: str, timeout: float = 10) -> FunctionSpec:
    return FunctionSpec(
        name=attr,
        uuid=str(uuid.uuid4()),
        handler=f"functions.rec:{attr}",
        timeout=timeout,
        instances=InstancesSpec(max=1),
        root=project,
        revision=4,
    )


async def test_the_instance_renders_the_record(
    project: Path, runtime: tuple[Runtime, InvocationRecords]
) -> None:
    """1. An event invocation (second attempt, with a trace) logs two lines and returns.
    Result: the record holds every field with the request's values and the node's name, the lines as its
    logs; the caller's result holds the handler's value only."""
    rt, records = runtime
    hello = spec(project, "hello")
    identity = EventIdentity("ce-5", source="s")
    inv = Invocation("inv-a", "event", "thing.done", b'"x"', identity, TP, attempt=2)
    before = time.time()
    res = await rt.invoke(hello, inv)
    assert orjson.loads(res.result) == {"ok": "x"}
    rec = records.get("inv-a")
    assert rec is not None
    logs = rec.pop("logs")
    started = rec.pop("started_at")
    assert rec == {
        "invocation_id": "inv-a",
        "function": "hello",
        "uuid": hello.uuid,
        "revision": 4,
        "trigger": "event",
        "event": "thing.done",
        "event_id": "ce-5",
        "trace_id": TP[3:35],
        "node": "node-7",
        "instance_id": res.instance_id,
        "duration_ms": round(res.duration_ms, 3),
        "cold_start": True,
        "attempt": 2,
        "ok": True,
        "error": None,
    }
    assert [(e["level"], e["message"]) for e in logs] == [("INFO", "hello x"), ("INFO", "printed")]
    assert started[:16] == time.strftime("%Y-%m-%dT%H:%M", time.gmtime(before))


async def test_failures_the_instance_answered(
    project: Path, runtime: tuple[Runtime, InvocationRecords]
) -> None:
    """1. A handler raises after logging. 2. A handler runs past its 0.3 s limit.
    Result: both records come from the instance: the error and the lines logged (the warning, then the
    instance's report of the failure); Timeout with the limit as the duration."""
    rt, records = runtime
    with pytest.raises(FunctionError):
        await rt.invoke(spec(project, "fail"), Invocation("inv-f", "direct", None, b"1"))
    with pytest.raises(Timeout):
        await rt.invoke(spec(project, "slow", timeout=0.3), Invocation("inv-s", "direct", None, b"1"))
    failed, slow = records.get("inv-f"), records.get("inv-s")
    assert failed is not None and slow is not None
    assert failed["error"]["type"] == "FunctionError" and "no good" in failed["error"]["message"]
    messages = [e["message"] for e in failed["logs"]]
    assert messages[0] == "about to fail" and messages[1].startswith("invocation inv-f failed")
    assert slow["error"]["type"] == "Timeout" and slow["duration_ms"] >= 300
    assert [r["invocation_id"] for r in records.recent(ok=False)] == ["inv-s", "inv-f"]


async def test_an_exception_with_a_broken_str_is_recorded(
    project: Path, runtime: tuple[Runtime, InvocationRecords]
) -> None:
    """1. A `def` handler logs, then raises an exception whose str() raises.
    Result: FunctionError at once; the instance's record names the exception (with the fallback text) and
    keeps the line logged and the instance's report of the failure with its traceback."""
    rt, records = runtime
    t = time.monotonic()
    with pytest.raises(FunctionError, match="BadStr"):
        await rt.invoke(spec(project, "fail_badly", timeout=3), Invocation("inv-b", "direct", None, b"1"))
    assert time.monotonic() - t < 2
    rec = records.get("inv-b")
    assert rec is not None and rec["error"] == {
        "type": "FunctionError",
        "message": "BadStr: <exception str() failed>",
    }
    [warning, failure] = rec["logs"]
    assert warning["message"] == "about to fail badly"
    assert failure["level"] == "ERROR" and failure["message"].startswith("invocation inv-b failed\nTraceback")
    assert failure["message"].endswith("BadStr: <exception str() failed>")


async def test_a_line_that_cannot_be_formatted_is_still_logged(
    project: Path, runtime: tuple[Runtime, InvocationRecords], caplog: pytest.LogCaptureFixture
) -> None:
    """1. A handler logs a 1000-level nested list (its str() overflows the stack), then another line.
    Result: the invocation succeeds; its record and the node's log (tagged with the invocation) hold a line
    saying the message could not be formatted and why, then the next line."""
    caplog.set_level(logging.INFO)
    rt, records = runtime
    res = await rt.invoke(spec(project, "log_deep"), Invocation("inv-d", "direct", None, b"1"))
    assert res.result == b'"logged"'
    rec = records.get("inv-d")
    assert rec is not None
    [fallback, after] = [e["message"] for e in rec["logs"]]
    assert fallback.startswith("log message 'deep %s' could not be formatted: RecursionError")
    assert after == "after the deep one"

    def tagged() -> list[str]:
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "faas.instance" and getattr(r, "invocation_id", None) == "inv-d"
        ]

    deadline = time.monotonic() + 10
    while len(tagged()) < 2:  # log lines travel on their own channel: they may trail the reply
        assert time.monotonic() < deadline, f"tagged lines: {tagged()}"
        await asyncio.sleep(0.01)
    assert tagged() == [fallback, after]


async def test_no_instance_answered_the_node_makes_the_record(
    project: Path, runtime: tuple[Runtime, InvocationRecords]
) -> None:
    """1. One instance, one slot, no queue: a second invocation comes while the first runs.
    Result: the second is Overloaded and its record is the node's (no instance, no logs)."""
    rt, records = runtime
    busy = spec(project, "slow", timeout=3).model_copy(
        update={"instances": InstancesSpec(max=1, concurrency=1, queue=0)}
    )
    first = asyncio.ensure_future(rt.invoke(busy, Invocation("inv-busy", "direct", None, b"1")))
    deadline = time.monotonic() + 10
    while rt.inflight() < 1:
        assert time.monotonic() < deadline, "the first invocation never started"
        await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await rt.invoke(busy, Invocation("inv-over", "direct", None, b"1"))
    first.cancel()
    rec = records.get("inv-over")
    assert rec is not None and rec["error"]["type"] == "Overloaded"
    assert rec["instance_id"] is None and rec["logs"] == [] and rec["node"] == "node-7"
    deadline = time.monotonic() + 10
    while records.get("inv-busy") is None:  # the cancelled one ends with a record too
        assert time.monotonic() < deadline, "no record of the cancelled invocation"
        await asyncio.sleep(0.01)
    cancelled = records.get("inv-busy")
    assert cancelled is not None and cancelled["error"]["type"] == "Cancelled"


async def test_a_record_posing_as_another_invocation_is_replaced(
    project: Path, runtime: tuple[Runtime, InvocationRecords]
) -> None:
    """1. A handler replaces its instance's renderer with one that names another invocation.
    2. The next invocation runs there.
    Result: the node ignores that record and makes the invocation's own (no logs): every record is the
    invocation's it claims to be."""
    rt, records = runtime
    forge = spec(project, "forge")
    await rt.invoke(forge, Invocation("inv-1", "direct", None, b"1"))
    res = await rt.invoke(forge, Invocation("inv-2", "direct", None, b"1"))
    assert res.result == b'"forged"'
    rec = records.get("inv-2")
    assert rec is not None and rec["invocation_id"] == "inv-2" and rec["ok"] is True
    assert rec["node"] == "node-7" and rec["instance_id"] == res.instance_id
    assert records.get("someone-else") is None


async def test_an_instance_that_dies_leaves_its_lines_in_the_record(
    project: Path, runtime: tuple[Runtime, InvocationRecords]
) -> None:
    """1. A handler logs a warning, prints a line, then ends its process (`os._exit`).
    2. A handler logs a line, then blocks its instance's loop past its 0.3 s limit: the node kills it.
    Result: InstanceCrashed and Timeout at once; the node's records of both (no instance answered) keep the
    lines sent before the end, as the instance would have; the next invocation of each function runs."""
    rt, records = runtime
    die, block = spec(project, "die"), spec(project, "block", timeout=0.3)
    with pytest.raises(InstanceCrashed):
        await rt.invoke(die, Invocation("inv-die", "direct", None, b'"x"'))
    with pytest.raises(Timeout):
        await rt.invoke(block, Invocation("inv-block", "direct", None, b"1"))
    deadline = time.monotonic() + 10
    while records.get("inv-die") is None or records.get("inv-block") is None:
        assert time.monotonic() < deadline, "no record of the invocations whose instance died"
        await asyncio.sleep(0.01)
    died, blocked = records.get("inv-die"), records.get("inv-block")
    assert died is not None and blocked is not None
    assert died["error"]["type"] == "InstanceCrashed" and died["instance_id"] is not None
    assert [(e["level"], e["message"]) for e in died["logs"]] == [
        ("WARNING", "last words x"),
        ("INFO", "printed before the exit"),
    ]
    assert blocked["error"]["type"] == "Timeout"
    assert blocked["logs"][0]["message"] == "about to block"
    assert all(e["time"].endswith("Z") for e in died["logs"] + blocked["logs"])
    with pytest.raises(InstanceCrashed):  # a fresh instance serves the next one
        await rt.invoke(die, Invocation("inv-die-2", "direct", None, b'"y"'))


async def test_the_node_keeps_lines_only_of_invocations_in_flight(
    project: Path, runtime: tuple[Runtime, InvocationRecords], caplog: pytest.LogCaptureFixture
) -> None:
    """1. An invocation logs two lines and returns; its lines may reach the node after its reply.
    2. Another logs a line and waits; its caller gives up.
    Result: the node kept the second's line while it ran (for a crash record), and keeps nothing of either
    once they ended: what it holds is bounded by what is in flight."""
    caplog.set_level(logging.INFO)
    rt, records = runtime
    hello, waiting = spec(project, "hello"), spec(project, "log_then_wait")
    await rt.invoke(hello, Invocation("inv-h", "direct", None, b"1"))
    inst = rt._pool(hello).instances[0]
    deadline = time.monotonic() + 10
    while sum(getattr(r, "invocation_id", None) == "inv-h" for r in caplog.records) < 2:
        assert time.monotonic() < deadline, "the lines of inv-h never reached the node"
        await asyncio.sleep(0.01)
    assert not inst.holds_lines("inv-h")
    task = asyncio.ensure_future(rt.invoke(waiting, Invocation("inv-w", "direct", None, b"1")))
    deadline = time.monotonic() + 10
    while not rt._pool(waiting).instances or not rt._pool(waiting).instances[0].holds_lines("inv-w"):
        assert time.monotonic() < deadline, "the line of the running invocation was not kept"
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not rt._pool(waiting).instances[0].holds_lines("inv-w")
    # A cancelled invocation (a chain's abort, a caller gone) still logged: its record keeps that.
    rec = records.get("inv-w")
    assert rec is not None and rec["error"]["type"] == "Cancelled", rec
    assert [e["message"] for e in rec["logs"]] == ["waiting"], rec


class _Channel:
    """A main channel that keeps what the handle sends."""

    def __init__(self) -> None:
        self.sent: list[tuple[int, dict[str, object]]] = []

    def send(self, kind: int, header: dict[str, object], tail: bytes = b"", trailer: bytes = b"") -> None:
        self.sent.append((kind, header))


async def test_a_reply_that_crosses_its_cancel_leaves_no_lines_behind(project: Path) -> None:
    """1. An invocation in flight (records on) logs a line: the node keeps it, should the instance die.
    2. Its caller gives up, and its REPLY arrives before the caller's coroutine runs again.
    Result: the caller sees the cancellation; the line waits for the record's maker alone, and once taken
    nothing of that invocation stays kept (no process here: the handle's two channels are driven by hand,
    in the order that race takes)."""
    handle = InstanceHandle(spec(project, "hello"), "INFO", lambda *_: None, lambda: None, node="node-7")
    channel = _Channel()
    handle._main = channel  # type: ignore[assignment]
    handle.ready = True
    call = asyncio.ensure_future(
        handle.call(Invocation("inv-x", "direct", None, b"1"), False, time.time(), [])
    )
    await asyncio.sleep(0)  # the request went out
    [(kind, request)] = channel.sent
    assert kind == FrameKind.REQUEST
    handle._on_log(FrameKind.LOG, {"inv": "inv-x", "lvl": logging.INFO, "msg": "working"}, b"")
    assert handle.holds_lines("inv-x")
    call.cancel()
    handle._on_frame(FrameKind.REPLY, {"id": request["id"], "ms": 1.0}, b"null")
    with pytest.raises(asyncio.CancelledError):
        await call
    # Left for the caller that wanted the record (the pool takes them for it), then nothing stays.
    taken = handle.take_lines("inv-x")
    assert taken is not None and [e["message"] for e in taken] == ["working"]
    assert not handle.holds_lines("inv-x") and handle.inflight == 0


async def test_each_invocation_a_dying_instance_held_keeps_its_own_lines(
    project: Path, runtime: tuple[Runtime, InvocationRecords]
) -> None:
    """1. Three invocations run at once on one instance, each logging a line; one of them ends the process.
    Result: all three are InstanceCrashed, and each record holds its own line and no other's."""
    rt, records = runtime
    mixed = spec(project, "mixed")
    calls = [
        rt.invoke(mixed, Invocation(f"inv-{p}", "direct", None, f'"{p}"'.encode())) for p in ("a", "b", "die")
    ]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(o, InstanceCrashed) for o in outcomes), outcomes
    deadline = time.monotonic() + 10
    while any(records.get(f"inv-{p}") is None for p in ("a", "b", "die")):
        assert time.monotonic() < deadline, "a record of the crash is missing"
        await asyncio.sleep(0.01)
    for p in ("a", "b", "die"):
        rec = records.get(f"inv-{p}")
        assert rec is not None and rec["error"]["type"] == "InstanceCrashed"
        assert [e["message"] for e in rec["logs"]] == [f"started {p}"], rec


async def test_output_without_a_newline_is_its_own_invocations(
    project: Path, runtime: tuple[Runtime, InvocationRecords]
) -> None:
    """1. An invocation writes to stdout and stderr without a newline (and no flush). 2. Another one on the
    same instance does the same.
    Result: each record holds its own two lines; neither is glued to the next invocation's output."""
    rt, records = runtime
    fn = spec(project, "unterminated")
    await rt.invoke(fn, Invocation("u-1", "direct", None, b'"one"'))
    await rt.invoke(fn, Invocation("u-2", "direct", None, b'"two"'))
    for inv, word in (("u-1", "one"), ("u-2", "two")):
        rec = records.get(inv)
        assert rec is not None
        logs = sorted((e["level"], e["message"]) for e in rec["logs"])
        assert logs == [("INFO", f"no newline {word}"), ("WARNING", f"err {word}")], rec


async def test_the_nodes_lines_of_an_instance_carry_no_stale_trace(
    project: Path, runtime: tuple[Runtime, InvocationRecords], caplog: pytest.LogCaptureFixture
) -> None:
    """1. An invocation in a trace cold-starts an instance; it has a thread the module started at import
    print (a line of no invocation, with no trace). 2. A second invocation in another trace does the same.
    Result: neither untagged line is logged by the node with the first invocation's trace (the instance's
    channels used to run in the context of the invocation that started it, for the instance's life)."""
    caplog.handler.addFilter(TraceFilter())
    caplog.set_level("INFO", "faas.instance")
    rt, _ = runtime
    fn = spec(project, "background_prints")
    first = tracing.start()
    token = tracing.current.set(first)
    try:
        await rt.invoke(fn, Invocation("t-1", "direct", None, b"1", traceparent=first.traceparent))
    finally:
        tracing.current.reset(token)
    await rt.invoke(fn, Invocation("t-2", "direct", None, b"2"))

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage() == "from a background thread"]

    deadline = time.monotonic() + 10
    while len(lines()) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110 - polls captured lines
        await asyncio.sleep(0.02)
    assert len(lines()) == 2
    assert [getattr(r, "trace_id", None) for r in lines()] == [None, None]


async def test_lines_of_threads_an_invocation_starts_are_its_own(
    project: Path, runtime: tuple[Runtime, InvocationRecords], caplog: pytest.LogCaptureFixture
) -> None:
    """1. Two invocations of a `def` handler, each printing from a `threading.Thread` it starts, logging from
    a `Thread` subclass with its own `run`, printing from a `ThreadPoolExecutor` it makes, and having a
    thread the module started at import print. 2. An `async def` handler prints through the loop's default
    executor, twice (the pool's thread started by the first call serves the second).
    Result: each record keeps its own invocation's lines from the threads it started, in order, and not the
    import-time thread's line, which reaches the node's log with no invocation; the node logs a thread's
    line with its invocation's id and trace."""
    caplog.set_level("INFO", "faas.instance")
    rt, records = runtime
    fn, ex = spec(project, "threads_log"), spec(project, "executor_logs")
    for inv, word in (("th-1", "one"), ("th-2", "two")):
        await rt.invoke(fn, Invocation(inv, "direct", None, orjson.dumps(word)))
    for inv, word in (("ex-1", "one"), ("ex-2", "two")):
        await rt.invoke(ex, Invocation(inv, "direct", None, orjson.dumps(word)))
    for inv, word in (("th-1", "one"), ("th-2", "two")):
        rec = records.get(inv)
        assert rec is not None
        assert [(e["level"], e["message"]) for e in rec["logs"]] == [
            ("INFO", f"from a plain thread {word}"),
            ("WARNING", "from a Thread subclass"),
            ("INFO", f"from a pool {word}"),
        ], rec["logs"]
    for inv, word in (("ex-1", "one"), ("ex-2", "two")):
        rec = records.get(inv)
        assert rec is not None and [e["message"] for e in rec["logs"]] == [f"from the loop's executor {word}"]

    def background() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.getMessage().startswith("from a background thread")]

    deadline = time.monotonic() + 10
    while len(background()) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110 - polls captured lines
        await asyncio.sleep(0.02)
    assert [getattr(r, "invocation_id", None) for r in background()] == [None, None]
    pool = [r for r in caplog.records if r.getMessage().startswith("from a pool")]
    assert [getattr(r, "invocation_id", None) for r in pool] == ["th-1", "th-2"]
    # A thread's lines carry its invocation's trace too.
    plain = [r for r in caplog.records if r.getMessage().startswith("from a plain thread")]
    traces = [records.get(inv)["trace_id"] for inv in ("th-1", "th-2")]  # type: ignore[index]
    assert [getattr(r, "trace_id", None) for r in plain] == traces and None not in traces
