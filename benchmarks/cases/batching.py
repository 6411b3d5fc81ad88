"""Batching: wall time of 1,000 concurrent 100 ms sleeps on one instance (ideal 0.1 s) vs the bare server."""

from __future__ import annotations

from functools import partial

from benchmarks import loadgen
from benchmarks.env import Env, baseline, guarded
from benchmarks.stats import Series


async def _burst(env: Env, target: str, warmup: bool) -> float:
    n = env.profile.batch_requests
    # One connection per request, all opened before the clock starts: every sleep is in flight at once.
    res = await loadgen.run(
        "127.0.0.1",
        env.port(target),
        env.invoke_path("sleep"),
        connections=n,
        count=n,
        warmup=1.0 if warmup else 0.0,
    )
    return res.check().elapsed


async def run(env: Env) -> list[Series]:
    n = env.profile.batch_requests
    wall = Series(
        f"batching {n} x 100 ms sleeps, wall time",
        "s",
        "lower",
        "bare Starlette+uvicorn, same client",
        extra={"ideal_s": 0.1, "instances": "{max: 1, concurrency: 1000}"},
    )
    for rep in range(env.profile.repeats):
        b = await baseline([wall], partial(_burst, env, "bare", rep == 0))
        if b is not None:
            wall.baseline_samples.append(b)
        r = await guarded([wall], partial(_burst, env, "node", rep == 0))
        if r is not None:
            wall.samples.append(r)
    return [wall]
