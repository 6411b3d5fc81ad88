"""Overload: direct invocations at ten times what a function can serve, open loop.

The function `overload` has one instance, concurrency 4, queue 8 and takes 0.1 s (capacity 40 req/s).
Measured: how long a refusal (429 `Overloaded`) takes at the median, how many requests per second are
served meanwhile, and the slowest accepted request. Baselines: the bare server answering the same offered
load at once (for the refusal), the function's capacity (for the throughput), and what its queue allows
(queue / concurrency + 1 runs of 0.1 s, for the slowest accepted request).
"""

from __future__ import annotations

import asyncio
import time
from functools import partial

from benchmarks.env import Env, baseline, guarded
from benchmarks.httpclient import fetch
from benchmarks.stats import Series, percentile

CAPACITY = 4 / 0.1
"""Requests per second the `overload` function can serve: one instance, concurrency 4, 0.1 s each."""
OFFERED = 10 * CAPACITY
QUEUE_BOUND_MS = (8 / 4 + 1) * 100
"""The longest an accepted request should take: its queue's wait (8 ahead, 4 at a time) and its own run."""


async def _open_loop(port: int, path: str, seconds: float) -> list[tuple[int, float, float]]:
    """Requests at OFFERED req/s for `seconds`, each on a fresh connection, not waiting for answers to
    send the next; returns (status, latency s, finished at) per request, `finished` from the start."""
    out: list[tuple[int, float, float]] = []
    start = time.monotonic()

    async def one() -> None:
        t0 = time.monotonic()
        status, _ = await fetch("127.0.0.1", port, "POST", path, b"{}", limit=60)
        t1 = time.monotonic()
        out.append((status, t1 - t0, t1 - start))

    tasks: list[asyncio.Task[None]] = []
    sent = 0
    while (now := time.monotonic()) - start < seconds:
        due = int((now - start) * OFFERED) + 1
        tasks += [asyncio.create_task(one()) for _ in range(due - sent)]
        sent = due
        await asyncio.sleep(0.01)
    await asyncio.gather(*tasks)
    return out


async def _node(env: Env) -> tuple[float, float, float]:
    seconds = env.profile.overload_seconds
    path = env.invoke_path("overload")
    port = env.port("node")
    status, body = await fetch("127.0.0.1", port, "POST", path, b"{}", limit=30)  # a warm instance
    if status != 200:
        raise RuntimeError(f"overload warm-up: {status} {body[:300]!r}")
    out = await _open_loop(port, path, seconds)
    statuses = {s for s, _, _ in out}
    if statuses - {200, 429} or 429 not in statuses:
        raise RuntimeError(f"expected 200s and 429s, got statuses {sorted(statuses)}")
    refused = [lat for s, lat, _ in out if s == 429]
    accepted = [(lat, t) for s, lat, t in out if s == 200]
    served = sum(1 for _, t in accepted if t <= seconds) / seconds
    return percentile(refused, 50) * 1000, served, max(lat for lat, _ in accepted) * 1000


async def _bare(env: Env) -> float:
    out = await _open_loop(env.port("bare"), env.invoke_path("noop"), env.profile.overload_seconds)
    if {s for s, _, _ in out} != {200}:
        raise RuntimeError(f"bare server answered {sorted({s for s, _, _ in out})}")
    return percentile([lat for _, lat, _ in out], 50) * 1000


async def run(env: Env) -> list[Series]:
    refusal = Series("overload 429 p50", "ms", "lower", "bare server answering the same load, p50")
    served = Series("overload accepted throughput", "req/s", "higher", "the function's capacity")
    slowest = Series("overload accepted max", "ms", "lower", "what the function's queue allows")
    group = [refusal, served, slowest]
    for _ in range(env.profile.repeats):
        b = await baseline([refusal], partial(_bare, env))
        if b is not None:
            refusal.baseline_samples.append(b)
        served.baseline_samples.append(CAPACITY)
        slowest.baseline_samples.append(QUEUE_BOUND_MS)
        r = await guarded(group, partial(_node, env))
        if r is not None:
            refusal.samples.append(r[0])
            served.samples.append(r[1])
            slowest.samples.append(r[2])
    return group
