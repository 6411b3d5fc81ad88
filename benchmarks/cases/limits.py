"""Memory limits: CPU of an idle node holding 20 live instances, with `memory_mb` on each vs none.

The node samples the resident memory of every instance of a limited function every 0.1 s
(runtime/memory.py); this case puts a number on that. Two `faas run --no-kafka` nodes serve the same 20
functions (one instance each, no idle timeout within the run), one with `instances.memory_mb` set on all
of them and one without; each function is invoked once so that 20 instances live, then the nodes' own CPU
time (the node process only, every thread: the sampling runs there) is read over an idle window,
alternating between the two nodes. Figure and baseline are percent of one core. CPU time comes from
`/proc/PID/task/*/schedstat` (nanoseconds; the 10 ms ticks of `cpu_times` cannot tell 0.1 % apart in a
short window), else from psutil.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from benchmarks import procs
from benchmarks.env import Env, baseline, guarded
from benchmarks.httpclient import fetch
from benchmarks.project import fn_uuid
from benchmarks.stats import Series
from framework.kafka.embedded import free_port

INSTANCES = 20
LIMIT_MB = 256
MODULE = "async def handle(payload, ctx):\n    return payload\n"


def _project(root: Path, limit: int | None) -> Path:
    (root / "functions").mkdir(parents=True, exist_ok=True)
    (root / "functions" / "__init__.py").write_text("")
    (root / "functions" / "idle.py").write_text(MODULE)
    memory = f", memory_mb: {limit}" if limit else ""
    entries = [
        f"  - name: idle-{i:02d}\n    uuid: {fn_uuid(f'idle-{i:02d}')}\n    handler: functions.idle:handle\n"
        f"    state: productive\n    instances: {{max: 1, idle_timeout: 3600{memory}}}"
        for i in range(INSTANCES)
    ]
    (root / "functions.yaml").write_text("functions:\n" + "\n".join(entries) + "\n")
    return root


def _start(root: Path, logs: Path, tag: str) -> tuple[procs.Proc, int]:
    port = free_port()
    env = {
        "FAAS_MANIFEST": str(root / "functions.yaml"),
        "FAAS_HTTP_PORT": str(port),
        "FAAS_LOG_LEVEL": "WARNING",
        "FAAS_LOG_FORMAT": "text",
        "FAAS_WATCH": "false",
    }
    args = [sys.executable, "-m", "framework", "run", "--no-kafka"]
    return procs.Proc(f"node ({tag})", args, logs / f"limits-{tag}.log", env, cwd=root), port


async def _warm(proc: procs.Proc, port: int) -> int:
    """Start one instance of each function (all at once); returns how many."""
    await proc.wait_http_ready(port, "/readyz", 60)

    async def one(i: int) -> None:
        path = f"/functions/{fn_uuid(f'idle-{i:02d}')}/invoke"
        status, body = await fetch("127.0.0.1", port, "POST", path, b"1")
        if status != 200:
            raise RuntimeError(f"idle-{i:02d}: {status} {body[:300]!r}")

    await asyncio.gather(*(one(i) for i in range(INSTANCES)))
    return INSTANCES


async def _cpu(proc: procs.Proc, window: float) -> float:
    """Percent of one core the node process used over `window` seconds."""
    proc.check_alive()
    before = procs.cpu_seconds(proc.pid)
    await asyncio.sleep(window)
    return 100 * (procs.cpu_seconds(proc.pid) - before) / window


async def run(env: Env) -> list[Series]:
    on = Series(f"idle node CPU, {INSTANCES} instances, memory limits on", "%", "lower", "memory limits off")
    window = 0.5 if env.profile.name == "quick" else 5.0
    base = env.logs.parent
    with_limit, at_on = _start(_project(base / "limits-on", LIMIT_MB), env.logs, "limits on")
    without, at_off = _start(_project(base / "limits-off", None), env.logs, "limits off")
    try:
        warmed = await asyncio.gather(
            guarded([on], lambda: _warm(with_limit, at_on)), baseline([on], lambda: _warm(without, at_off))
        )
        if None in warmed:
            return [on]
        await asyncio.sleep(0.5)  # let the start-up work (imports, logging) settle
        for _ in range(env.profile.repeats):
            if (v := await guarded([on], lambda: _cpu(with_limit, window))) is not None:
                on.samples.append(v)
            if (b := await baseline([on], lambda: _cpu(without, window))) is not None:
                on.baseline_samples.append(b)
        on.extra.update(window_s=window, instances=INSTANCES, memory_mb=LIMIT_MB)
    finally:
        procs.stop_all((with_limit, without))
    return [on]
