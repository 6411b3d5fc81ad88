"""The run: set up the broker, the node, the bare server and the relay, run every case group, tear down.

Order: memory first (processes still idle), then the HTTP cases, cold starts, events; then the idle-CPU
cost of memory limits (two nodes of its own) and the in-process warm-invoke case, after the servers
stopped, on a quiet machine. A group that fails is reported
as failed with its reason; the rest of the suite carries on.
"""

from __future__ import annotations

import asyncio
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from benchmarks import loadgen, procs
from benchmarks.cases import (
    batching,
    cold,
    costs,
    deploy,
    direct,
    events,
    limits,
    memory,
    overload,
    partitions,
    producer,
    shape,
    tracing,
    warm,
)
from benchmarks.config import Profile
from benchmarks.env import Env
from benchmarks.eventload import create_topics
from benchmarks.project import fn_uuid, write_project
from benchmarks.stats import Series, describe
from framework.kafka.embedded import EmbeddedBroker, free_port

Group = Callable[[Env], Awaitable[list[Series]]]
NODE_READY_TIMEOUT = 90.0
"""Seconds for `faas run` to answer /readyz 200 (its first Kafka group join alone takes 3-5 s on Tansu)."""


async def _ceiling(env: Env) -> float:
    """The load generator's own limit, against a server that does nothing but answer."""
    port = free_port()
    canned = procs.Proc(
        "canned server", [sys.executable, "-m", "benchmarks.canned", str(port)], env.logs / "canned.log"
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                res = await loadgen.run(
                    "127.0.0.1",
                    port,
                    "/",
                    body='{"n":1}',
                    connections=64,
                    duration=min(1.0, env.profile.direct_duration),
                    warmup=0.2,
                )
                return res.rps
            except RuntimeError:
                canned.check_alive()
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)
    finally:
        canned.stop()


async def _start(env: Env, broker_error: str | None) -> None:
    p = env.project
    env.bare_port = free_port()
    handlers = {fn_uuid(n): f"functions.{m}:handle" for n, m in (("noop", "noop"), ("sleep", "sleep"))}
    env.bare = procs.start_bare(p.root, env.bare_port, handlers, env.logs)
    if broker_error is None:
        env.node_port = free_port()
        env.node = procs.start_node(
            p.root, env.node_port, env.bootstrap, env.topics, f"bench-{uuid.uuid4().hex[:8]}", env.logs
        )
        env.relay = procs.start_relay(
            env.bootstrap,
            env.topics["relay_in"],
            env.topics["relay_out"],
            f"relay-{uuid.uuid4().hex[:8]}",
            env.logs,
        )
    else:
        env.node_error = f"no broker: {broker_error}"

    async def node_ready() -> None:
        if env.node is None:
            return
        try:
            await env.node.wait_http_ready(env.node_port, "/readyz", NODE_READY_TIMEOUT)
        except Exception as exc:
            env.node_error = describe(exc)

    async def bare_ready() -> None:
        assert env.bare is not None
        try:
            await env.bare.wait_http_ready(env.bare_port, "/readyz", 30)
        except Exception as exc:
            env.bare_error = describe(exc)

    await asyncio.gather(node_ready(), bare_ready())


async def _group(name: str, fn: Group, env: Env) -> list[Series]:
    started = time.monotonic()
    try:
        return await fn(env)
    except Exception as exc:  # a bug in the group itself: still report, still carry on
        s = Series(f"{name} (group)", "-", "lower", "-")
        s.fail(describe(exc))
        return [s]
    finally:
        env.facts.setdefault("group_seconds", {})[name] = round(time.monotonic() - started, 1)


SERVED: dict[str, Group] = {
    "memory": memory.run,
    "direct": direct.run,
    "batching": batching.run,
    "overload": overload.run,
    "cold": cold.run,
    "events": events.run,
    "partitions": partitions.run,
    "deploy": deploy.run,
}
"""Groups measured against the shared broker, node, bare server and relay, in this order."""
QUIET: dict[str, Group] = {
    "costs": costs.run,
    "producer": producer.run,
    "limits": limits.run,
    "warm": warm.run,
    "tracing": tracing.run,
    "shape": shape.run,
}
"""Groups run after those servers stopped (their own processes on the shared broker, or in this process)."""
GROUPS = [*SERVED, *QUIET]


async def run_suite(
    profile: Profile, output: Path, only: list[str] | None = None
) -> tuple[dict[str, Any], list[Series]]:
    """Run every group (or those in `only`); the run's facts and every series."""
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="faas-bench-"))
    (tmp / "logs").mkdir()
    env = Env(profile, write_project(tmp / "project", profile), tmp / "logs")
    tag = uuid.uuid4().hex[:8]
    env.topics = {
        k: f"bench.{k}.{tag}"
        for k in ("events", "replies", "deadletter", "scheduler", "deployments", "relay_in", "relay_out")
    }
    meta: dict[str, Any] = {
        "profile": profile.name,
        "repeats": profile.repeats,
        "loadgen": {"name": loadgen.NAME},
        "output": str(output),
    }
    broker: EmbeddedBroker | None = None
    broker_error = None
    series: list[Series] = []
    try:
        try:
            broker = EmbeddedBroker(log_path=env.logs / "broker.log").start()
            env.bootstrap = broker.bootstrap
            env.broker_pid = broker.proc.pid if broker.proc is not None else 0
            names = [env.topics[k] for k in ("events", "replies", "relay_in", "relay_out")]
            meta["topics"] = await create_topics(env.bootstrap, names, 6)
        except Exception as exc:
            broker_error = describe(exc)
        await _start(env, broker_error)
        try:
            meta["loadgen"]["ceiling_rps_c64"] = round(await _ceiling(env))
        except Exception as exc:
            meta["loadgen"]["ceiling_error"] = describe(exc)
        for name, fn in SERVED.items():
            if only is None or name in only:
                series += await _group(name, fn, env)
        procs.stop_all((env.node, env.bare, env.relay))
        for name, fn in QUIET.items():
            if only is None or name in only:
                series += await _group(name, fn, env)
    finally:
        procs.stop_all((env.node, env.bare, env.relay))
        if broker is not None:
            broker.stop()
        failed = any(s.to_dict()["error"] for s in series)
        if failed:
            meta["logs"] = str(env.logs)  # kept for the post-mortem
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    meta["group_seconds"] = env.facts.get("group_seconds", {})
    meta["wall_s"] = round(time.monotonic() - started, 1)
    return meta, series
