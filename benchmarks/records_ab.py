"""`python -m benchmarks.records_ab [ROUNDS]`: what invocation records cost, as a same-run ratio.

Two nodes on one embedded broker, one with FAAS_RECORDS=true (the default: records kept, aggregated and
produced to the topic) and one with FAAS_RECORDS=false, serve the same trivial function. Direct invocations
at c=64 (4 s after a 1 s warm-up) alternate between them ROUNDS times (default 3); it prints the median
throughput of each, their ratio, and the CPU time per request of each node (its instances included) and of
the broker. Alternating rounds share the machine's noise; read the ratio, and run it more than once on a
shared machine.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx
import psutil

from benchmarks import loadgen
from benchmarks.procs import Proc
from framework.kafka.embedded import EmbeddedBroker, free_port

UUID = "11111111-0000-4000-8000-000000000001"
MANIFEST = f"""
functions:
  - {{name: echo, uuid: {UUID}, handler: functions.f:echo, state: productive}}
"""


def _cpu(pid: int) -> float:
    """CPU seconds of a process and its children."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for proc in [root, *root.children(recursive=True)]:
            times = proc.cpu_times()
            total += times.user + times.system
    except psutil.Error:
        pass
    return total


def _ready(port: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"node on port {port} not ready in {timeout} s")


async def main(rounds: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="faas-records-ab-"))
    (root / "functions").mkdir()
    (root / "functions" / "__init__.py").write_text("")
    (root / "functions" / "f.py").write_text("async def echo(payload, ctx):\n    return payload\n")
    (root / "functions.yaml").write_text(textwrap.dedent(MANIFEST).lstrip())
    broker = EmbeddedBroker(port=free_port(), log_path=root / "broker.log").start()
    nodes: dict[str, tuple[Proc, int]] = {}
    try:
        for mode in ("on", "off"):
            port = free_port()
            env = {
                "FAAS_MANIFEST": str(root / "functions.yaml"),
                "FAAS_HTTP_PORT": str(port),
                "FAAS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
                "FAAS_KAFKA_GROUP_ID": f"ab-{mode}",
                "FAAS_EVENTS_TOPIC": f"ab.events.{mode}",
                "FAAS_SCHEDULER_TOPIC": f"ab.scheduler.{mode}",
                "FAAS_INVOCATIONS_TOPIC": "ab.invocations",
                "FAAS_RECORDS": "true" if mode == "on" else "false",
                "FAAS_LOG_LEVEL": "WARNING",
                "FAAS_WATCH": "false",
            }
            args = [sys.executable, "-m", "framework", "run"]
            nodes[mode] = (Proc(f"node {mode}", args, root / f"node-{mode}.log", env, cwd=root), port)
        for _, port in nodes.values():
            _ready(port)
        rps: dict[str, list[float]] = {"on": [], "off": []}
        cpu: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
        assert broker.proc is not None
        for _ in range(rounds):
            for mode, (proc, port) in nodes.items():
                before = (_cpu(proc.pid), _cpu(broker.proc.pid))
                res = await loadgen.run(
                    "127.0.0.1",
                    port,
                    f"/functions/{UUID}/invoke",
                    body='{"n":1}',
                    connections=64,
                    duration=4.0,
                    warmup=1.0,
                )
                res.check()
                after = (_cpu(proc.pid), _cpu(broker.proc.pid))
                rps[mode].append(res.rps)
                per = [(a - b) / res.requests * 1e6 for a, b in zip(after, before, strict=True)]
                cpu[mode].append((per[0], per[1]))
        on, off = statistics.median(rps["on"]), statistics.median(rps["off"])
        print(f"direct invoke c=64: records on {on:,.0f} req/s, off {off:,.0f} req/s, ratio {on / off:.3f}")
        for mode in ("on", "off"):
            node_us = statistics.median(c[0] for c in cpu[mode])
            broker_us = statistics.median(c[1] for c in cpu[mode])
            print(f"  records {mode}: CPU per request: node {node_us:.0f} us, broker {broker_us:.0f} us")
    finally:
        for proc, _ in nodes.values():
            proc.stop()
        broker.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
