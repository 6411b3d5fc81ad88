"""Cold start: request to first reply when no instance runs yet, vs starting a bare interpreter.

Each sample invokes a function that has never run (its own name and UUID in the manifest), over one
keep-alive connection, so the time is the node's: spawning the instance, importing the handler, the call.
Baselines are `python -c pass` and `python -c "import <module>"`, timed in the same run, interleaved.
"""

from __future__ import annotations

import asyncio
import sys
import time
from functools import partial

import orjson

from benchmarks.env import Env, baseline, guarded
from benchmarks.httpclient import Connection, encode_request, fetch
from benchmarks.project import HEAVY_MODULE
from benchmarks.stats import Series, percentile

CODE = {"trivial": "pass", "heavy": f"import {HEAVY_MODULE}"}
PAUSE = 0.05
"""Seconds between samples, so one start's tail (logging, reaping) does not land on the next."""


async def _interpreter(code: str) -> float:
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", code)
    if await proc.wait() != 0:
        raise RuntimeError(f"python -c {code!r} exited {proc.returncode}")
    return time.perf_counter() - started


async def _cold(env: Env, conn: Connection, name: str) -> float:
    port = env.port("node")
    raw = encode_request("POST", "127.0.0.1", port, env.invoke_path(name), b'{"n":1}')
    started = time.perf_counter()
    status, body = await asyncio.wait_for(conn.request(raw), 30)
    elapsed = time.perf_counter() - started
    if status != 200:
        raise RuntimeError(f"{name}: {status} {body[:300]!r}")
    if not orjson.loads(body).get("cold_start"):
        raise RuntimeError(f"{name}: answered without a cold start (cold_start false)")
    return elapsed


async def _preloaded(env: Env) -> bool:
    """Whether instances already have the heavy module (then the heavy case would measure nothing)."""
    status, body = await fetch(
        "127.0.0.1", env.port("node"), "POST", env.invoke_path("probe"), orjson.dumps([HEAVY_MODULE])
    )
    if status != 200:
        raise RuntimeError(f"probe: {status} {body[:300]!r}")
    return bool(orjson.loads(body)["result"][HEAVY_MODULE])


async def run(env: Env) -> list[Series]:
    p = env.profile
    groups: dict[str, tuple[Series, Series]] = {
        kind: (
            Series(f"cold start {kind} p50", "ms", "lower", f"python -c {CODE[kind]!r}"),
            Series(f"cold start {kind} p99", "ms", "lower", f"python -c {CODE[kind]!r}"),
        )
        for kind in CODE
    }
    everything = [s for pair in groups.values() for s in pair]
    preloaded = await guarded(everything, partial(_preloaded, env))
    heavy = groups["heavy"][0]
    heavy.extra["module"] = HEAVY_MODULE
    if preloaded:
        heavy.extra["warning"] = f"{HEAVY_MODULE} is already loaded in instances"
    conn = await guarded(everything, lambda: Connection.open("127.0.0.1", env.port("node")))
    names = {kind: iter(env.project.cold[kind]) for kind in CODE}
    try:
        for rep in range(-1, p.repeats):  # rep -1 is the warm-up, discarded
            count = p.cold_warmup if rep < 0 else p.cold_samples
            cold: dict[str, list[float]] = {kind: [] for kind in CODE}
            bare: dict[str, list[float]] = {kind: [] for kind in CODE}
            for _ in range(count):
                for kind, (s50, s99) in groups.items():
                    b = await baseline([s50, s99], partial(_interpreter, CODE[kind]))
                    if b is not None:
                        bare[kind].append(b)
                    if conn is not None:
                        c = await guarded([s50, s99], partial(_cold, env, conn, next(names[kind])))
                        if c is not None:
                            cold[kind].append(c)
                    await asyncio.sleep(PAUSE)
            if rep < 0:
                continue
            for kind, (s50, s99) in groups.items():
                for series, q in ((s50, 50), (s99, 99)):
                    if cold[kind]:
                        series.samples.append(percentile(cold[kind], q) * 1e3)
                    if bare[kind]:
                        series.baseline_samples.append(percentile(bare[kind], q) * 1e3)
    finally:
        if conn is not None:
            conn.close()
    warm = env.facts.get("warm_p50_ms")
    for s50, _ in groups.values():
        if warm is not None and s50.figure is not None:
            s50.extra["added_over_warm_p50_ms"] = round(s50.figure - warm, 2)
    return everything
