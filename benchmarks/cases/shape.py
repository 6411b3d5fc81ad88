"""What the event path's per-event scheduling costs: the most a batch path through it could save.

The node runs each event as a job of its key's chain (`sources/kafka/keyed.py`, a task per chain) through
coroutine layers (source, invoker, pool, instance handle) down to a future the instance's REPLY frame
resolves. A batch path would run the same events as a loop over the fetch, each event's next step a plain
callback. Both shapes are run here, in this process, over the same events with no work at the bottom (the
"instance" answers every request sent in a loop iteration at the next one), so the figures are the
scheduling alone:

- `event scheduling per event, 64 keys`: the real `KeyedRunner` with 64 keys, each job nine coroutine
  frames deep (`_handle`, `_answer`, `Invoker.event`, `call`, `_attempt`, `Runtime.invoke`,
  `FunctionPool._recorded`, `InstanceHandle.call`, and the chain's own), one contextvar set per event, as
  the node's are; against a loop over the same events with one callback per step (the batch shape).
- `event scheduling per event, unique keys`: the same with a key per event (a chain task per event).

Compare the difference with the node's CPU per event (`events 1 listener(s) CPU per event`): it bounds what
running the same per-event work in loops instead of coroutines could save.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

from benchmarks.env import Env, baseline, guarded
from benchmarks.stats import Series
from framework import heap
from framework.sources.kafka.keyed import KeyedRunner

KEYS = 64
HELD = 1000
"""Events held at once, as FAAS_MAX_INFLIGHT_EVENTS (default) bounds the node's."""
LAYERS = 8
"""Coroutine frames between the chain's job and the awaited future (the node's, listed above)."""
HANDOVER: contextvars.ContextVar[object] = contextvars.ContextVar("bench_handover")

Answer = Callable[[bytes], None]


class _Instance:
    """Answers, at the next loop iteration, every request sent in this one (as a REPLY frame would)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.sent: list[Answer] = []
        self._armed = False

    def send(self, answer: Answer) -> None:
        self.sent.append(answer)
        if not self._armed:
            self._armed = True
            self.loop.call_soon(self._reply)

    def _reply(self) -> None:
        self._armed = False
        sent, self.sent = self.sent, []
        for answer in sent:
            answer(b"null")


async def _layer(instance: _Instance, depth: int) -> bytes:
    if depth == 0:
        fut: asyncio.Future[bytes] = instance.loop.create_future()
        instance.send(fut.set_result)
        return await fut
    return await _layer(instance, depth - 1)


async def _today(count: int, keys: int | None) -> float:
    """Microseconds per event through `KeyedRunner` chains and `LAYERS` coroutine frames."""
    instance = _Instance()
    runner: KeyedRunner[int] = KeyedRunner(limit=HELD)
    done = asyncio.get_running_loop().create_future()
    left = count
    taken = 0

    async def job() -> None:
        nonlocal left
        HANDOVER.set(object())
        await _layer(instance, LAYERS)
        left -= 1
        if left == 0:
            done.set_result(None)

    def take() -> None:  # what the poll loop does with its room
        nonlocal taken
        while runner.room > 0 and taken < count:
            runner.submit(0, None if keys is None else b"k%d" % (taken % keys), job)
            taken += 1

    runner.on_release = take
    started = time.perf_counter()
    take()
    await done
    return (time.perf_counter() - started) / count * 1e6


async def _batch(count: int, keys: int | None) -> float:
    """Microseconds per event of the same events as a loop with callbacks: no task, no coroutine per event."""
    instance = _Instance()
    done = asyncio.get_running_loop().create_future()
    left = count
    taken = 0
    chains: dict[Any, deque[int]] = {}

    def step(key: Any) -> None:
        chains[key].popleft()
        instance.send(lambda result: finished(key))

    def finished(key: Any) -> None:
        nonlocal left
        left -= 1
        if chains[key]:
            step(key)
        else:
            del chains[key]
        if left == 0:
            done.set_result(None)
        elif count - left + HELD > taken:
            take()

    def take() -> None:  # the fetch, grouped by key, at most HELD events held
        nonlocal taken
        fresh = []
        while taken < count and taken - (count - left) < HELD:
            key: Any = object() if keys is None else taken % keys
            chain = chains.get(key)
            if chain is None:
                chain = chains[key] = deque()
                fresh.append(key)
            chain.append(taken)
            taken += 1
        for key in fresh:
            step(key)

    started = time.perf_counter()
    take()
    await done
    return (time.perf_counter() - started) / count * 1e6


async def run(env: Env) -> list[Series]:
    base = "a loop over the same events with a callback per step (the batch shape)"
    shapes: dict[str, int | None] = {f"{KEYS} keys": KEYS, "unique keys": None}
    every = {name: Series(f"event scheduling per event, {name}", "us", "lower", base) for name in shapes}
    count = env.profile.warm_calls * 10
    heap.settle()  # the node's collector settings (`framework/heap.py`): young garbage is what this makes
    for name, keys in shapes.items():  # warm-up
        await guarded([every[name]], partial(_today, count, keys))
        await baseline([every[name]], partial(_batch, count, keys))
    for _ in range(env.profile.repeats):
        for name, keys in shapes.items():
            series = every[name]
            r = await guarded([series], partial(_today, count, keys))
            if r is not None:
                series.samples.append(r)
            b = await baseline([series], partial(_batch, count, keys))
            if b is not None:
                series.baseline_samples.append(b)
    return list(every.values())
