"""Memory: RSS/USS of the node and of one idle instance vs the bare server and a bare `python -c` interpreter.

The instance is found as the process that appears under the node when a function that never ran is
invoked; instances are forked from a template, so most of their pages are shared and USS is the figure
that grows with each instance.
"""

from __future__ import annotations

import asyncio
import sys

import psutil

from benchmarks.env import Env, baseline, guarded
from benchmarks.httpclient import fetch
from benchmarks.stats import Series

MB = 1024 * 1024
SETTLE = 0.5
"""Seconds to let a process become idle before reading its memory."""


def _mem(pid: int) -> tuple[float, float]:
    info = psutil.Process(pid).memory_full_info()
    return info.rss / MB, info.uss / MB


def _descendants(pid: int) -> dict[int, psutil.Process]:
    return {p.pid: p for p in psutil.Process(pid).children(recursive=True)}


async def _invoke(env: Env, name: str) -> None:
    status, body = await fetch("127.0.0.1", env.port("node"), "POST", env.invoke_path(name), b'["json"]')
    if status != 200:
        raise RuntimeError(f"{name}: {status} {body[:300]!r}")


async def _instance(env: Env) -> tuple[int, dict[str, object]]:
    """Start one instance of `memprobe` and return its pid (plus what else runs under the node)."""
    node = env.node_ok()
    await _invoke(env, "probe")  # the template (and anything else started lazily) is up after this
    before = _descendants(node.pid)
    await _invoke(env, "memprobe")
    await asyncio.sleep(SETTLE)
    new = [p for pid, p in _descendants(node.pid).items() if pid not in before]
    if not new:
        raise RuntimeError("no new process under the node after invoking a function that never ran")
    inst = max(new, key=lambda p: p.create_time())
    others = {p.name(): round(p.memory_full_info().uss / MB, 1) for p in before.values()}
    # Forked from the template, an instance shows the template's command line; its parent tells them apart.
    return inst.pid, {"instance_parent_pid": inst.ppid(), "node_children_before_uss_mb": others}


async def _bare_interpreter() -> tuple[float, float]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-c", "import time; time.sleep(60)")
    try:
        await asyncio.sleep(SETTLE)
        return _mem(proc.pid)
    finally:
        proc.kill()
        await proc.wait()


async def run(env: Env) -> list[Series]:
    server = "bare Starlette+uvicorn server"
    interp = "bare python -c interpreter"
    node_rss = Series("memory node RSS", "MB", "lower", server)
    node_uss = Series("memory node USS", "MB", "lower", server)
    inst_rss = Series("memory idle instance RSS", "MB", "lower", interp)
    inst_uss = Series("memory idle instance USS", "MB", "lower", interp)
    found = await guarded([inst_rss, inst_uss], lambda: _instance(env))
    if found is not None:
        inst_uss.extra.update(found[1])

    async def read(pid: int) -> tuple[float, float]:
        return _mem(pid)

    for _ in range(env.profile.repeats):
        if (b := await baseline([node_rss, node_uss], lambda: read(env.bare_ok().pid))) is not None:
            node_rss.baseline_samples.append(b[0])
            node_uss.baseline_samples.append(b[1])
        if (r := await guarded([node_rss, node_uss], lambda: read(env.node_ok().pid))) is not None:
            node_rss.samples.append(r[0])
            node_uss.samples.append(r[1])
        if (bi := await baseline([inst_rss, inst_uss], _bare_interpreter)) is not None:
            inst_rss.baseline_samples.append(bi[0])
            inst_uss.baseline_samples.append(bi[1])
        if (
            found is not None
            and (ri := await guarded([inst_rss, inst_uss], lambda: read(found[0]))) is not None
        ):
            inst_rss.samples.append(ri[0])
            inst_uss.samples.append(ri[1])
        await asyncio.sleep(0.2)
    return [node_rss, node_uss, inst_rss, inst_uss]
