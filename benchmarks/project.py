"""The benchmark project written to a temporary folder: `functions.yaml` and `functions/*.py`.

Every cold-start sample gets a function of its own (fresh name and UUID, same module), so each first call
really starts an instance; their short idle timeout lets them go cold again soon after.
"""

from __future__ import annotations

import textwrap
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.config import Profile

HEAVY_MODULE = "ruamel.yaml"
"""Imported by the heavy cold-start function: ~40 ms to import, and not something instances preload."""

EVENT_TYPES = {1: "bench.e1", 3: "bench.e3", 8: "bench.e8"}
"""Event type by number of listeners."""

_NAMESPACE = uuid.UUID("6f1d2c1e-0c1b-4f43-9a43-2b7f0f6b7a11")

MODULES = {
    "noop": """
        async def handle(payload, ctx):
            return payload
    """,
    "sleep": """
        import asyncio

        async def handle(payload, ctx):
            await asyncio.sleep(0.1)
            return None
    """,
    "heavy": f"""
        import {HEAVY_MODULE}

        async def handle(payload, ctx):
            return payload
    """,
    "revision": """
        async def handle(payload, ctx):
            return ctx.revision
    """,
    "probe": """
        import sys

        async def handle(payload, ctx):
            return {name: name in sys.modules for name in payload}
    """,
}


def fn_uuid(name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, name))


@dataclass
class Project:
    root: Path
    cold: dict[str, list[str]] = field(default_factory=dict)
    """Function names for cold starts, by kind (`trivial`, `heavy`)."""

    @property
    def manifest(self) -> Path:
        return self.root / "functions.yaml"


def entry(name: str, module: str, events: list[str] | None = None, instances: str | None = None) -> str:
    lines = [
        f"  - name: {name}",
        f"    uuid: {fn_uuid(name)}",
        f"    handler: functions.{module}:handle",
        "    state: productive",
    ]
    if events:
        lines.append(f"    events: [{', '.join(events)}]")
    if instances:
        lines.append(f"    instances: {instances}")
    return "\n".join(lines)


def write_functions(root: Path, entries: list[str]) -> Project:
    """A project of `entries` (from `entry`) with every module of MODULES."""
    (root / "functions").mkdir(parents=True, exist_ok=True)
    (root / "functions" / "__init__.py").write_text("")
    for name, src in MODULES.items():
        (root / "functions" / f"{name}.py").write_text(textwrap.dedent(src).lstrip("\n"))
    project = Project(root)
    project.manifest.write_text("functions:\n" + "\n".join(entries) + "\n")
    return project


def write_project(root: Path, profile: Profile) -> Project:
    cold: dict[str, list[str]] = {}
    # One instance each: on a small machine more processes do not help a trivial async handler.
    single = "{max: 1, concurrency: 1000}"
    entries = [
        entry("noop", "noop"),
        entry("memprobe", "noop"),
        entry("probe", "probe"),
        entry("deployed", "revision"),
        entry("sleep", "sleep", instances=single),
        # cases/overload.py: capacity 40 req/s, a queue of 8, then 429 Overloaded.
        entry("overload", "sleep", instances="{max: 1, concurrency: 4, queue: 8}"),
    ]
    for i in range(1, 9):
        events = [t for n, t in EVENT_TYPES.items() if i <= n]
        entries.append(entry(f"listener-{i}", "noop", events, single))
    per_kind = profile.cold_warmup + profile.repeats * profile.cold_samples
    for kind, module in (("trivial", "noop"), ("heavy", "heavy")):
        cold[kind] = [f"cold-{kind}-{i:03d}" for i in range(per_kind)]
        entries += [entry(n, module, instances="{max: 1, idle_timeout: 1}") for n in cold[kind]]
    project = write_functions(root, entries)
    project.cold = cold
    return project
