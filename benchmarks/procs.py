"""Child processes of the suite: the node (`python -m framework run`), the bare server and the relay.

Each logs to a file in the run's folder; failures carry the tail of that log. Every child gets its own
session so a stop reaches its whole process group (the node's instances included).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from pathlib import Path

import psutil

from benchmarks.httpclient import fetch

REPO = Path(__file__).resolve().parent.parent


_seen: dict[tuple[int, bool], dict[tuple[int, int], float]] = {}
"""Per (pid, children): the last CPU seconds read of each (process, thread) ever seen under it."""


def cpu_seconds(pid: int, children: bool = False) -> float:
    """CPU seconds so far of every thread of `pid` (and, with `children`, of its descendants), for
    differences between two calls: a thread or a descendant that ended since an earlier call keeps what
    that call saw of it (its last moments are lost), so the figure never goes down.

    Read from /proc/PID/task/*/schedstat, in nanoseconds: psutil's user + system times come in 10 ms ticks,
    too coarse for the short windows of `--quick` and of an idle node. Elsewhere, those ticks. Summing the
    live threads alone is not enough: a thread that ends takes its time out of the sum (a figure of the
    quick suite once came out negative that way).
    """
    seen = _seen.setdefault((pid, children), {})
    try:
        pids = [pid, *(p.pid for p in psutil.Process(pid).children(recursive=True))] if children else [pid]
    except psutil.Error:
        pids = []  # gone: what was seen of it stands
    for one in pids:
        try:
            for task in Path(f"/proc/{one}/task").iterdir():
                with contextlib.suppress(FileNotFoundError, ProcessLookupError):  # a thread that just ended
                    key = (one, int(task.name))
                    now = int((task / "schedstat").read_text().split()[0]) / 1e9
                    seen[key] = max(seen.get(key, 0.0), now)
        except OSError:
            with contextlib.suppress(psutil.Error):
                times = psutil.Process(one).cpu_times()
                seen[(one, -1)] = max(seen.get((one, -1), 0.0), times.user + times.system)
    return sum(seen.values())


def child_env(extra: Mapping[str, str | None] | None = None) -> dict[str, str]:
    """The environment of a child: ours, with the repository importable (`benchmarks` is not installed),
    then `extra` (a None value removes that variable)."""
    env = os.environ.copy()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    for name, value in (extra or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


class Proc:
    def __init__(
        self,
        name: str,
        args: list[str],
        log: Path,
        env: Mapping[str, str | None] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.log = log
        self._terminated = False
        with log.open("wb") as out:
            self.popen = subprocess.Popen(
                args,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(env),
                cwd=cwd or REPO,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.popen.returncode}:\n{self.tail()}")

    async def wait_http_ready(self, port: int, path: str, limit: float) -> None:
        deadline = time.monotonic() + limit
        last = "no answer"
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                status, body = await fetch("127.0.0.1", port, "GET", path, limit=2)
                if status == 200:
                    return
                last = f"{status} {body[:300]!r}"
            except OSError as exc:
                last = repr(exc)
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready within {limit} s (last: {last}):\n{self.tail()}")

    async def wait_log_line(self, line: str, limit: float) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            self.check_alive()
            if line in self.log.read_text(errors="replace").splitlines():
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not print {line!r} within {limit} s:\n{self.tail()}")

    def terminate(self) -> None:
        """SIGTERM, once: a second one would cut a node's drain short."""
        if self.popen.poll() is None and not self._terminated:
            self._terminated = True
            self.popen.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 15.0) -> None:
        self.terminate()
        if self.popen.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        # Whatever is left of the group (instances of a node that did not stop cleanly).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.popen.pid, signal.SIGKILL)
        if self.popen.poll() is None:
            self.popen.wait(5)


def stop_all(procs: Iterable[Proc | None], timeout: float = 15.0) -> None:
    """Stop these children side by side: each gets its SIGTERM before any is waited for, so a node that
    takes a while to leave its group does not hold up the others' stops."""
    live = [p for p in procs if p is not None]
    for proc in live:
        proc.terminate()
    for proc in live:
        proc.stop(timeout)


def start_node(
    root: Path,
    port: int,
    bootstrap: str,
    topics: dict[str, str],
    group: str,
    logs: Path,
    name: str = "node",
    extra: Mapping[str, str | None] | None = None,
) -> Proc:
    """`python -m framework run`, configured only through FAAS_* variables, as a user would start it.

    `extra` adds (or, with None, removes) variables; the log is `logs/<name>.log`."""
    env: dict[str, str | None] = {
        "FAAS_MANIFEST": str(root / "functions.yaml"),
        "FAAS_HTTP_HOST": "127.0.0.1",
        "FAAS_HTTP_PORT": str(port),
        "FAAS_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "FAAS_EVENTS_TOPIC": topics["events"],
        "FAAS_REPLIES_TOPIC": topics["replies"],
        "FAAS_DEADLETTER_TOPIC": topics["deadletter"],
        "FAAS_SCHEDULER_TOPIC": topics["scheduler"],
        "FAAS_DEPLOYMENTS_TOPIC": topics["deployments"],
        "FAAS_KAFKA_GROUP_ID": group,
        "FAAS_LOG_LEVEL": "WARNING",
        "FAAS_LOG_FORMAT": "text",
        "FAAS_SHUTDOWN_GRACE": "5",
        **(extra or {}),
    }
    log = logs / f"{name.replace(' ', '-')}.log"
    return Proc(name, [sys.executable, "-m", "framework", "run"], log, env, cwd=root)


def start_bare(root: Path, port: int, handlers: dict[str, str], logs: Path) -> Proc:
    args = [
        sys.executable,
        "-m",
        "benchmarks.bare",
        str(port),
        str(root),
        *(f"{k}={v}" for k, v in handlers.items()),
    ]
    return Proc("bare server", args, logs / "bare.log")


def start_relay(
    bootstrap: str, in_topic: str, out_topic: str, group: str, logs: Path, name: str = "relay"
) -> Proc:
    """The raw relay (`relay.py`) in consumer group `group`; the log is `logs/<name>.log`."""
    args = [sys.executable, "-m", "benchmarks.relay", bootstrap, in_topic, out_topic, group]
    return Proc(name, args, logs / f"{name.replace(' ', '-')}.log", {"PYTHONUNBUFFERED": "1"})
