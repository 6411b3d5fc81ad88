"""Warm invoke overhead: the node → instance round trip (`Runtime.invoke`, in this process) vs calling the
handler directly with `await handle(payload, ctx)`, at concurrency 1 (per-call latency) and 64 (cost per
call = wall time / calls).

`warm invoke c=1 p50, against a raw round trip` compares the same round trip with the least any
process-per-function design pays: a uvloop protocol here writing the payload to a socket pair and waiting
for it to come back from a forked process that echoes it with a uvloop protocol of its own (two processes,
two wake-ups, no work). The difference is what the platform itself adds to a call.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from benchmarks.env import Env, baseline, guarded
from benchmarks.project import fn_uuid
from benchmarks.stats import Series, percentile
from framework.context import Context
from framework.control.spec import FunctionSpec
from framework.observe.metrics import Metrics
from framework.runtime.pools import Runtime
from framework.settings import Settings
from framework.types import Invocation

PAYLOAD = b'{"n":1}'
INPROC = "in-process await handle(payload, ctx)"
Call = Callable[[], Awaitable[Any]]


def _handler(env: Env) -> Callable[[Any, Context], Awaitable[Any]]:
    # Loaded by path: the repository's own `functions` package would shadow the project's on sys.path.
    path = env.project.root / "functions" / "noop.py"
    spec = importlib.util.spec_from_file_location("bench_warm_noop", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn: Callable[[Any, Context], Awaitable[Any]] = module.handle
    return fn


async def _sequential(call: Call, n: int) -> tuple[float, float]:
    """p50 and p99 of `n` calls one after another, in microseconds."""
    lat = []
    now = time.perf_counter
    for _ in range(n):
        t0 = now()
        await call()
        lat.append(now() - t0)
    return percentile(lat, 50) * 1e6, percentile(lat, 99) * 1e6


async def _concurrent(call: Call, n: int, workers: int = 64) -> float:
    """Wall time per call, in microseconds, of `n` calls made by `workers` concurrent callers."""

    async def worker(count: int) -> None:
        for _ in range(count):
            await call()

    started = time.perf_counter()
    await asyncio.gather(*(worker(n // workers) for _ in range(workers)))
    return (time.perf_counter() - started) / (n // workers * workers) * 1e6


RAW_TIMEOUT = 60.0
"""Seconds the raw round trips of one repetition may take in all."""


class _Echo(asyncio.Protocol):
    """Either end of the raw round trip: the echoing end writes back what it reads; the calling end hands
    what it reads to the waiting call."""

    def __init__(self, echo: bool) -> None:
        self.echo = echo
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[bytes] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.echo:
            assert self.transport is not None
            self.transport.write(data)
        elif self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.echo:
            asyncio.get_running_loop().stop()
        elif self.waiter is not None and not self.waiter.done():  # the echoing process is gone
            self.waiter.set_exception(ConnectionError(f"the echoing process closed its end ({exc!r})"))


def _echo_forever(sock: socket.socket) -> None:
    """The forked echoing process: a uvloop loop serving `sock` until it closes."""
    import uvloop

    loop = uvloop.new_event_loop()
    loop.run_until_complete(loop.create_unix_connection(lambda: _Echo(True), sock=sock))
    loop.run_forever()


async def _raw_round_trip(n: int) -> tuple[float, float]:
    """p50 and p99 (us) of `n` round trips of the payload to a forked echoing process."""
    ours, theirs = socket.socketpair()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            ours.close()
            _echo_forever(theirs)
        finally:
            os._exit(0)
    theirs.close()
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_unix_connection(lambda: _Echo(False), sock=ours)
    try:

        async def call() -> bytes:
            proto.waiter = loop.create_future()
            transport.write(PAYLOAD)
            return await proto.waiter

        async with asyncio.timeout(RAW_TIMEOUT):  # a stuck echo fails the baseline, not the suite
            await _sequential(call, min(n, 100))  # warm-up
            return await _sequential(call, n)
    finally:
        transport.close()
        await asyncio.to_thread(os.waitpid, pid, 0)


async def run(env: Env) -> list[Series]:
    raw = Series(
        "warm invoke c=1 p50, against a raw round trip",
        "us",
        "lower",
        "uvloop socket pair round trip to a forked echoing process",
    )
    p50 = Series("warm invoke c=1 p50", "us", "lower", INPROC)
    p99 = Series("warm invoke c=1 p99", "us", "lower", INPROC)
    per_call = Series("warm invoke c=64 cost per call", "us", "lower", INPROC)
    every = [p50, p99, per_call, raw]
    handle = _handler(env)
    ctx = Context(
        str(uuid.uuid4()),
        "noop",
        fn_uuid("noop"),
        "direct",
        None,
        time.time() + 3600,
        {},
        logging.getLogger("bench"),
        "in-process",
    )
    spec = FunctionSpec(
        name="noop",
        uuid=fn_uuid("noop"),
        handler="functions.noop:handle",
        state="productive",
        root=env.project.root,
    )
    runtime = Runtime(Settings(manifest=env.project.manifest, log_level="WARNING"), Metrics())

    def remote() -> Awaitable[Any]:
        return runtime.invoke(spec, Invocation(str(uuid.uuid4()), "direct", None, PAYLOAD))

    def local() -> Awaitable[Any]:
        return handle({"n": 1}, ctx)

    n = env.profile.warm_calls
    await guarded(every, runtime.start)
    try:
        warm = None if p50.error else await guarded(every, partial(_concurrent, remote, n))  # warm-up
        remote_ok = warm is not None
        await baseline(every, partial(_concurrent, local, n))
        for _ in range(env.profile.repeats):
            b = await baseline([p50, p99], partial(_sequential, local, n))
            if b is not None:
                p50.baseline_samples.append(b[0])
                p99.baseline_samples.append(b[1])
            if remote_ok and (r := await guarded([p50, p99], partial(_sequential, remote, n))) is not None:
                p50.samples.append(r[0])
                p99.samples.append(r[1])
                raw.samples.append(r[0])
            if (e := await baseline([raw], partial(_raw_round_trip, n))) is not None:
                raw.baseline_samples.append(e[0])
            bc = await baseline([per_call], partial(_concurrent, local, n))
            if bc is not None:
                per_call.baseline_samples.append(bc)
            if remote_ok and (rc := await guarded([per_call], partial(_concurrent, remote, n))) is not None:
                per_call.samples.append(rc)
    finally:
        await runtime.stop(1.0)
    return every
