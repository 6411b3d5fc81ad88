"""Direct invoke over HTTP: requests/s and p50/p99 at concurrency 1 and 64, node vs the bare server; and
the node's c=1 p50 with a caller's `traceparent` against the same node without one (what continuing a
trace costs on this figure, export off)."""

from __future__ import annotations

import statistics
from functools import partial

from benchmarks import loadgen
from benchmarks.env import Env, baseline, guarded
from benchmarks.loadgen import LoadResult
from benchmarks.stats import Series

BARE = "bare Starlette+uvicorn, handler in-process"
BODY = '{"n":1}'
TRACED = {"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tracestate": "a=1"}


async def _load(
    env: Env, target: str, connections: int, warmup: float, headers: dict[str, str] | None = None
) -> LoadResult:
    res = await loadgen.run(
        "127.0.0.1",
        env.port(target),
        env.invoke_path("noop"),
        body=BODY,
        connections=connections,
        duration=env.profile.direct_duration,
        warmup=warmup,
        headers=headers,
    )
    return res.check()


async def run(env: Env) -> list[Series]:
    out: list[Series] = []
    for c in (1, 64):
        rps = Series(f"direct invoke c={c} throughput", "req/s", "higher", BARE)
        p50 = Series(f"direct invoke c={c} p50", "ms", "lower", BARE)
        p99 = Series(f"direct invoke c={c} p99", "ms", "lower", BARE)
        group = [rps, p50, p99]
        out += group
        for rep in range(env.profile.repeats):
            # Alternate the two so drift on a shared machine hits both alike; the first run warms up longer.
            warmup = env.profile.direct_warmup if rep == 0 else env.profile.direct_warmup / 4
            b = await baseline(group, partial(_load, env, "bare", c, warmup))
            if b is not None:
                rps.baseline_samples.append(b.rps)
                p50.baseline_samples.append(b.p50_ms)
                p99.baseline_samples.append(b.p99_ms)
            r = await guarded(group, partial(_load, env, "node", c, warmup))
            if r is not None:
                rps.samples.append(r.rps)
                p50.samples.append(r.p50_ms)
                p99.samples.append(r.p99_ms)
        if c == 1 and p50.samples:
            env.facts["warm_p50_ms"] = statistics.median(p50.samples)
    traced = Series("direct invoke c=1 p50 with traceparent", "ms", "lower", "the node, no traceparent")
    out.append(traced)
    for _ in range(env.profile.repeats):
        warmup = env.profile.direct_warmup / 4
        if (b := await baseline([traced], partial(_load, env, "node", 1, warmup))) is not None:
            traced.baseline_samples.append(b.p50_ms)
        if (r := await guarded([traced], partial(_load, env, "node", 1, warmup, TRACED))) is not None:
            traced.samples.append(r.p50_ms)
    return out
