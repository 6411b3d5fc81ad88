"""What every case gets: the profile, the project, and the processes under test (or why one is missing)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.config import Profile
from benchmarks.procs import Proc
from benchmarks.project import Project, fn_uuid
from benchmarks.stats import Series, describe

T = TypeVar("T")


@dataclass
class Env:
    profile: Profile
    project: Project
    logs: Path
    bootstrap: str = ""
    broker_pid: int = 0
    """The embedded broker's process (0: none), for cases that read its CPU time."""
    topics: dict[str, str] = field(default_factory=dict)
    node: Proc | None = None
    node_port: int = 0
    node_error: str | None = None
    bare: Proc | None = None
    bare_port: int = 0
    bare_error: str | None = None
    relay: Proc | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    """Figures one case hands to a later one (e.g. the warm p50 the cold-start case compares to)."""

    def node_ok(self) -> Proc:
        """The node, or the reason it is not there (raised, so the case records it as its failure)."""
        if self.node is None:
            raise RuntimeError(self.node_error or "node not started")
        self.node.check_alive()
        return self.node

    def bare_ok(self) -> Proc:
        if self.bare is None:
            raise RuntimeError(self.bare_error or "bare server not started")
        self.bare.check_alive()
        return self.bare

    def port(self, target: str) -> int:
        """HTTP port of `node` or `bare`, raising the reason when that server is not up."""
        if target == "node":
            self.node_ok()
            return self.node_port
        self.bare_ok()
        return self.bare_port

    @staticmethod
    def invoke_path(name: str) -> str:
        return f"/functions/{fn_uuid(name)}/invoke"


async def guarded(series: list[Series], call: Callable[[], Awaitable[T]]) -> T | None:
    """Run one measurement of the platform; a failure marks `series` failed instead of ending the suite.

    Once they failed, later repetitions are skipped: the first reason is the one worth reporting.
    """
    if series and all(s.error is not None for s in series):
        return None
    try:
        return await call()
    except Exception as exc:
        for s in series:
            s.fail(describe(exc))
        return None


async def baseline(series: list[Series], call: Callable[[], Awaitable[T]]) -> T | None:
    """Like `guarded`, for a baseline measurement (its failure leaves the platform's figures standing)."""
    if series and all(s.baseline_error is not None for s in series):
        return None
    try:
        return await call()
    except Exception as exc:
        for s in series:
            s.fail_baseline(describe(exc))
        return None
