"""The template process (a zygote): a pre-started interpreter that forks instances on request.

The node cannot fork itself safely (its loop runs alongside aiokafka and uvicorn threads) and a fresh
interpreter per instance costs ~100 ms+ of imports. So the node starts this small, single-threaded process
once; it imports the instance code (asyncio, uvloop, orjson, logging, the framework) and then waits on a
SOCK_SEQPACKET control socket. Each message is an instance config plus four file descriptors passed with
SCM_RIGHTS: the instance's main and log sockets, and the sockets that become its descriptors 1 and 2 (read
by the node: `raw_output.py`); the template forks, and the child becomes the instance.

Lifetime: the template dies with the node (PR_SET_PDEATHSIG, and EOF on its control socket), and each
instance dies with the template (PR_SET_PDEATHSIG), so no instance outlives its node. The processes a
handler starts are in its instance's process group, and no death signal reaches them: so the template
kills an instance's group when it reaps the instance (an instance leaves on its own when the node's end of
its channel closes), and every live instance's group when the node is gone (its death signal, NODE_DIED,
or the end of the control socket). A SIGKILLed node leaves no `sleep` its handlers started behind.

Exit statuses: the template tells the node, on the control socket, each instance's pid as it forks it
(`fork ID PID`: an instance that dies importing its handler never says its pid itself) and, having reaped
it on SIGCHLD (so no zombies), its wait status (`exit PID STATUS`). The node reads them on its loop
(`Template.when_exited`), so a request held by an instance that died is told how it ended ("exited with
code 3", "was killed by signal 11 (SIGSEGV)"): only the parent can learn that, and the node is not the
instances' parent.

Before its first fork the template hides the secrets folder from itself and so from every instance
(`framework/sandbox.py`).

The secrets an instance gets travel in its start message, and every instance is a copy of the template's
memory: what the template once held of another function's secrets, freed but not overwritten, a handler
could find in its own memory (`/proc/self/mem`: a 1.6 KB secret found four times). So the message carries
the secrets apart (`config` JSON, a NUL, the secrets JSON), received into one buffer the template keeps;
the template parses only the first part, the instance the second, and the template zeroes the second once
it has forked.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import logging
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, NamedTuple

import orjson

from framework import sandbox
from framework.runtime.family import kill_family, stat_fields

log = logging.getLogger("faas.runtime")

_PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
FORK_WAIT = 2.0
"""Seconds after which an instance asked for and not forked is looked into (a fork takes milliseconds)."""
_MAX_CONFIG = 1 << 20
"""Largest instance config message, in bytes."""
_KEPT = 256
"""Exit statuses and forked pids kept unclaimed, the newest (instances the node closed or killed itself
never ask for their status)."""

ExitCallback = Callable[[int | None], None]
"""Told an instance's wait status (`os.waitpid`'s), or None when it could not be learned in time."""


def describe_exit(status: int | None) -> str:
    """How a process ended, from its wait status: `exited with code 3`, `was killed by signal 11
    (SIGSEGV)`; `exited` when the status is unknown."""
    if status is None:
        return "exited"
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        try:
            name = signal.Signals(number).name
        except ValueError:
            return f"was killed by signal {number}"
        return f"was killed by signal {number} ({name})"
    if os.WIFEXITED(status):
        return f"exited with code {os.WEXITSTATUS(status)}"
    return "exited"


def _wait_status(returncode: int) -> int:
    """A `Popen.returncode` (negative: the signal) as the wait status `describe_exit` reads."""
    return -returncode if returncode < 0 else returncode << 8


def instance_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The node's environment for its instances, without the node's secret settings (FAAS_API_KEYS,
    FAAS_KAFKA_SASL_PASSWORD, in any case, as pydantic-settings reads them): a handler would otherwise see
    them in `os.environ` and `ctx.env`, and could print them into logs and records. A function gets the
    secrets it lists, from `ctx.secrets` (section 14)."""
    from framework.settings import SECRET_VARIABLES  # here: the template process itself never needs it

    return {k: v for k, v in environ.items() if k.upper() not in SECRET_VARIABLES}


class Spawned(NamedTuple):
    """The node's ends of a new instance's channels."""

    main: socket.socket
    logs: socket.socket
    stdout: socket.socket
    """The other end of the socket that is the instance's descriptor 1."""
    stderr: socket.socket
    """The other end of the socket that is the instance's descriptor 2."""


class Template:
    """Node-side handle of the template process. Call `start` from the node's loop thread: Linux ties
    PR_SET_PDEATHSIG to the thread that started the process, so a short-lived worker thread would take the
    template (and every instance) down with it."""

    def __init__(
        self, hide: Path | None = None, keep: Sequence[Path] = (), code_path: sandbox.CodePath | None = None
    ) -> None:
        self.hide = hide
        """The folder instances must not see (the secrets folder), kept visible to the node."""
        self.code_path = code_path or sandbox.CodePath.at_start()
        """The import path the process gets, each time it starts: the node's, fixed at its start."""
        self.keep = sandbox.needed(*keep, code_path=self.code_path)
        """Folders instances need (the project, the code cache, the interpreter, the framework): never
        hidden, so `hide` is not when it holds one of them; read-only for instances where it is hidden."""
        self.kept: list[str] = []
        """The folders of `keep` there when the process started and hid the secrets folder (`sandbox.bound`),
        read-only for its instances as long as none is replaced (`sandbox.writable_in`)."""
        self.hidden: tuple[int, int] | None = None
        """The identity (`sandbox.identity`) of the folder hidden when the process started: a folder that
        appears or is replaced later is not hidden from it."""
        self.hidden_at = -math.inf
        """When `hidden` was read (`time.monotonic()`; -inf: not started)."""
        self._proc: subprocess.Popen[bytes] | None = None
        self._ctrl: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        """The loop reading exit statuses from the control socket (None: started without one)."""
        self._statuses: OrderedDict[int, int] = OrderedDict()
        """Exit statuses received and not asked for yet, by pid."""
        self._forked: OrderedDict[str, int] = OrderedDict()
        """Pids of the instances forked, by instance id, until asked for (`forked_pid`)."""
        self._waiting: dict[int, tuple[ExitCallback, asyncio.TimerHandle]] = {}
        self._unforked: dict[str, asyncio.TimerHandle] = {}
        """Instances asked for and not reported forked yet, by id: each with its FORK_WAIT timer."""
        self._live: dict[int, Callable[[], None]] = {}
        """What to call when an instance the node holds exits, by pid (`watch`)."""
        self._backlog: deque[tuple[bytes, list[socket.socket]]] = deque()
        """Spawn messages the control socket had no room for yet, each with the instance's ends of its
        sockets (kept open until sent): sent in order as the template reads (`_flush`)."""
        self.died: str | None = None
        """How this template process died under the node, e.g. `was killed by signal 9 (SIGKILL)` (None: it
        lives, or the node stopped it). Every instance dies with it, and their exit statuses with it."""

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the template process. Returns at once: it is ready in ~100 ms, requests queue meanwhile."""
        if self._ctrl is not None or self._proc is not None:  # a dead one's socket and process go first
            self.stop()
        self.died = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.hidden_at = time.monotonic()
        self.hidden = None if self.hide is None else sandbox.identity(self.hide)
        self.kept = [] if self.hidden is None else sandbox.bound(self.keep)
        env = instance_environ(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_PACKAGE_PARENT, *self.code_path.python_path])
        # -P: `-m` would put the node's working directory (often the project folder) first on the path of
        # every instance, and instances import their revision's code, never the working copy.
        args = [
            sys.executable,
            "-P",
            *([] if self.code_path.user_site is not None else ["-s"]),
            "-m",
            "framework.runtime.template",
            str(theirs.fileno()),
            str(os.getpid()),
            orjson.dumps(
                {"hide": None if self.hide is None else str(self.hide), "keep": [str(p) for p in self.keep]}
            ).decode(),
        ]
        try:
            self._proc = subprocess.Popen(args, pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL)
        except BaseException:  # no process (out of memory or descriptors): no socket left open either
            ours.close()
            raise
        finally:
            theirs.close()
        self._ctrl = ours
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        if self._loop is not None:
            ours.setblocking(False)  # as uvloop's `add_reader` leaves it anyway: a send never blocks the loop
            self._loop.add_reader(ours.fileno(), self._read_statuses, ours)

    def when_exited(self, pid: int, callback: ExitCallback, wait: float) -> None:
        """Call `callback` with the wait status of instance `pid` once the template reaped it, or with None
        after `wait` seconds (or at once, without a loop reading statuses). Call on the loop."""
        status = self._statuses.pop(pid, None)
        if status is not None or self._loop is None or self.died is not None:
            callback(status)
            return
        self._settle(pid, None)  # one callback per pid: a pid the kernel reused replaces the old one
        timer = self._loop.call_later(wait, self._settle, pid, None)
        self._waiting[pid] = (callback, timer)

    def watch(self, pid: int, gone: Callable[[], None]) -> None:
        """Call `gone` if instance `pid` exits before `unwatch(pid)`. Its channel's end is not enough: a
        process its handler forked holds the channel open after the instance itself died, and its callers
        would wait for that process, or for their time limit, to hear it crashed."""
        if pid in self._statuses and self._loop is not None:  # it died before it said hello
            self._loop.call_soon(gone)
            return
        self._live[pid] = gone

    def unwatch(self, pid: int) -> None:
        self._live.pop(pid, None)

    def forked_pid(self, instance_id: str) -> int | None:
        """The pid the instance `instance_id` was forked with, once (None: not told, or asked before)."""
        return self._forked.pop(instance_id, None)

    def _settle(self, pid: int, status: int | None) -> None:
        waiting = self._waiting.pop(pid, None)
        if waiting is not None:
            callback, timer = waiting
            timer.cancel()
            callback(status)

    def _read_statuses(self, ctrl: socket.socket) -> None:
        """The control socket is readable: `fork ID PID` and `exit PID STATUS` messages, or EOF (the
        template is gone)."""
        while True:
            try:
                message = ctrl.recv(256, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                message = b""
            if not message:
                if ctrl is self._ctrl:  # not stopped by the node: it died under it (a handler killed it?)
                    self._died()
                self._stop_reading(ctrl)
                return
            with contextlib.suppress(ValueError):
                kind, first, second = message.decode().split()
                if kind == "fork":
                    _keep(self._forked, first, int(second))
                    timer = self._unforked.pop(first, None)
                    if timer is not None:
                        timer.cancel()
                elif kind == "exit":
                    pid, status = int(first), int(second)
                    if pid in self._waiting:
                        self._settle(pid, status)
                    else:
                        _keep(self._statuses, pid, status)
                        gone = self._live.pop(pid, None)
                        if gone is not None:  # it died; its channel may not say so (`watch`)
                            gone()

    def _died(self) -> None:
        """The template's end of the control socket closed while the node held it: say so once, and how."""
        proc = self._proc
        code = None
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                code = proc.wait(0.05)  # its socket closes a moment before it can be reaped
        self.died = "ended" if code is None else describe_exit(_wait_status(code))
        log.warning(
            "the template process (pid %s) %s, and every instance of every function with it; the next "
            "call starts a new one (a handler that kills its parent process, `os.getppid()`, does this)",
            None if proc is None else proc.pid,
            self.died,
        )

    def _stop_reading(self, ctrl: socket.socket) -> None:
        """No more statuses from this template: whoever waits for one is told it is unknown."""
        if self._loop is not None and ctrl.fileno() >= 0 and not self._loop.is_closed():
            self._loop.remove_reader(ctrl.fileno())
        for pid in list(self._waiting):
            self._settle(pid, None)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def spawn(self, config: dict[str, Any]) -> Spawned:
        """Ask for one instance; returns the node's ends of its main and log sockets and of the sockets of
        its descriptors 1 and 2 (the caller owns all four; none is left open when this raises).

        Restarts the template once if it died. Failures after that surface as EOF on the main socket.
        """
        with contextlib.ExitStack() as on_failure:
            pairs: list[tuple[socket.socket, socket.socket]] = []
            for _ in range(4):  # main, log, stdout, stderr
                pair = socket.socketpair()
                pairs.append(pair)
                on_failure.callback(pair[0].close)
                on_failure.callback(pair[1].close)
            # The secrets apart, after a NUL (JSON text holds none): the template never parses them.
            shown = {key: value for key, value in config.items() if key != "secrets"}
            message = orjson.dumps(shown) + b"\0" + orjson.dumps(config.get("secrets") or {})
            sent = False
            for attempt in (1, 2):
                if not self.alive():
                    self.stop()
                    self.start()
                assert self._ctrl is not None
                try:
                    if not self._backlog:  # else behind them: spawns keep their order
                        socket.send_fds(self._ctrl, [message], [theirs.fileno() for _, theirs in pairs])
                        sent = True
                    break
                except BlockingIOError:
                    # The loop's reader made the socket non-blocking (uvloop's `add_reader` does), and the
                    # template is busy forking: a burst of cold starts (300 schedules on one minute) fills
                    # its buffer after about 160. It lives: wait for room, never stop it (that killed every
                    # instance of every function).
                    break
                except OSError as exc:
                    if attempt == 2 or exc.errno == errno.EMSGSIZE:  # that config is too large: its fault
                        raise
                    self.stop()
            if not sent:
                self._backlog.append((message, [theirs for _, theirs in pairs]))
                if len(self._backlog) == 1:  # the first queued: nobody waits for room yet
                    # Only a loop's socket is non-blocking (`start`), so only then is anything queued.
                    assert self._loop is not None and self._ctrl is not None
                    self._loop.add_writer(self._ctrl.fileno(), self._flush)
            on_failure.pop_all()  # sent or queued: our ends are the caller's
        if self._loop is not None:
            instance_id = str(config.get("instance_id"))
            self._unforked[instance_id] = self._loop.call_later(
                FORK_WAIT, self._not_forked, instance_id, self._proc
            )
        if sent:
            for _, theirs in pairs:
                theirs.close()  # the template holds copies now
        return Spawned(*(ours for ours, _ in pairs))

    def _flush(self) -> None:
        """Send what the backlog holds, in order, while the control socket takes it."""
        ctrl = self._ctrl
        while self._backlog and ctrl is not None:
            message, theirs = self._backlog[0]
            try:
                socket.send_fds(ctrl, [message], [sock.fileno() for sock in theirs])
            except BlockingIOError:
                return  # the writer calls again when there is room
            except OSError as exc:
                if exc.errno != errno.EMSGSIZE:  # the template is gone: those instances never start
                    self._drop_backlog()
                    return
                # That config alone is too large (four 64 KiB secrets): its instance never starts.
            self._backlog.popleft()
            for sock in theirs:
                sock.close()
        self._drop_backlog()

    def _drop_backlog(self) -> None:
        """Close what is still queued (its instances see their sockets end: a failed start) and stop
        waiting for room."""
        if self._loop is not None and self._ctrl is not None and not self._loop.is_closed():
            self._loop.remove_writer(self._ctrl.fileno())
        while self._backlog:
            for sock in self._backlog.popleft()[1]:
                sock.close()

    def _not_forked(self, instance_id: str, proc: subprocess.Popen[bytes] | None) -> None:
        """An instance asked for FORK_WAIT seconds ago is not forked yet: a template that was stopped (a
        handler's `os.kill(os.getppid(), SIGSTOP)`: instances are its children) is continued; otherwise
        every cold start of every function would wait out its start timeout, and fail, for ever."""
        self._unforked.pop(instance_id, None)
        if proc is None or proc is not self._proc or proc.poll() is not None:
            return
        if process_state(proc.pid) in ("T", "t"):
            log.warning("the template process (pid %d) was stopped: continued (SIGCONT)", proc.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Kill the template; its instances get SIGKILL from the kernel (PR_SET_PDEATHSIG)."""
        self._drop_backlog()
        if self._ctrl is not None:
            self._stop_reading(self._ctrl)
            self._ctrl.close()
            self._ctrl = None
        if self._proc is not None:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            self._proc.wait()
            self._proc = None


def process_state(pid: int) -> str:
    """The process's state letter in /proc (`T`: stopped, `Z`: a zombie not reaped yet), or "" when it
    cannot be read (gone, or no /proc)."""
    fields = stat_fields(pid)
    return fields[0].decode() if fields else ""


def _keep(kept: OrderedDict[Any, int], key: object, value: int) -> None:
    kept[key] = value
    while len(kept) > _KEPT:
        kept.popitem(last=False)


_instances: set[int] = set()
"""Pids of the instances forked and not reaped yet: each is its process group's id (`server.main`)."""


NODE_DIED = signal.SIGRTMIN + 2
"""The template's death signal (PR_SET_PDEATHSIG): a real-time signal nothing else sends. Not SIGHUP, which a
terminal's hang-up sends the whole process group: under `nohup` the node ignores it, and so must we."""


def _kill_instances() -> None:
    """Kill every instance with what it started (its process group and tree: `family.py`)."""
    for pid in list(_instances):  # a SIGCHLD's reap may change the set meanwhile
        kill_family(pid)


def _end_instances(_signum: int, _frame: FrameType | None) -> None:
    """The node died (NODE_DIED): kill every instance with what it started, then go."""
    _kill_instances()
    os._exit(1)


def _reaper(ctrl: socket.socket) -> Callable[[int, FrameType | None], None]:
    """The SIGCHLD handler: reap every exited instance and send the node its `PID STATUS`. Never blocks: a
    node that does not read its control socket loses statuses, not the template's loop."""

    def reap(_signum: int, _frame: FrameType | None) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            _instances.discard(pid)
            # What it started goes with it (its process group: the node does the same, but an instance
            # leaves on its own when the node dies, before our death signal comes).
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                ctrl.send(b"exit %d %d" % (pid, status), socket.MSG_DONTWAIT)

    return reap


def _warm(loop_factory: Callable[[], asyncio.AbstractEventLoop] | None) -> None:
    """Run an instance's event loop once, here, before any fork, and close it. The pages of the code that
    runs it (uvloop's: about 0.8 MB) are then the template's, mapped by every instance alike, not pages only
    the first instance maps, which count as its own (0.1-0.9 MB of an idle instance's USS, measured with
    and without: `python -m benchmarks --only memory`, and /proc/PID/smaps). Nothing of the loop is left:
    no thread, no descriptor."""
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(asyncio.sleep(0))


def _serve(ctrl: socket.socket) -> None:
    from framework.runtime.worker import server  # the preload: everything an instance needs, imported once

    signal.signal(signal.SIGCHLD, _reaper(ctrl))
    _warm(server._loop_factory)
    me = os.getpid()
    buffer = bytearray(_MAX_CONFIG)  # the only copy of a message here: its secrets are zeroed in it
    while True:
        try:
            size, fds = _received(ctrl, buffer)
        except OSError:
            return
        if not size:
            return  # the node closed the control socket (stopping, or gone)
        if len(fds) != 4:
            for fd in fds:
                os.close(fd)
            continue
        # SIGCHLD held from the fork until the pid is in `_instances`: an instance that dies at once is
        # reaped after that, not before (its pid would stay in the set, and a reused one be killed).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        split = buffer.find(b"\0", 0, size)
        try:
            config = orjson.loads(memoryview(buffer)[: split if split >= 0 else size])
            pid = os.fork()
        except (OSError, orjson.JSONDecodeError):
            pid = -1  # the node sees EOF on the instance's socket and reports the failed start
        if pid == 0:
            config["secrets"] = orjson.loads(bytes(buffer[split + 1 : size])) if split >= 0 else {}
            signal.signal(NODE_DIED, signal.SIG_DFL)  # the node is the template's parent, not ours
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            _instances.clear()
            ctrl.close()
            os.dup2(fds[2], 1)  # inheritable: a subprocess's output goes the same way
            os.dup2(fds[3], 2)
            os.close(fds[2])
            os.close(fds[3])
            server.main(config, fds[0], fds[1], me)
        if split >= 0:
            buffer[split:size] = bytes(size - split)  # the secrets gone before the next fork copies them
        if pid > 0:
            _instances.add(pid)
            with contextlib.suppress(OSError):  # before its exit status, if it dies at once
                ctrl.send(b"fork %s %d" % (str(config.get("instance_id")).encode(), pid), socket.MSG_DONTWAIT)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        for fd in fds:
            os.close(fd)


def _received(ctrl: socket.socket, buffer: bytearray) -> tuple[int, list[int]]:
    """One message into `buffer` (no other copy of it is made) and the descriptors sent with it, as
    `socket.recv_fds` takes them (at most 4)."""
    fds = array.array("i")
    size, ancillary, _, _ = ctrl.recvmsg_into([buffer], socket.CMSG_SPACE(4 * fds.itemsize))
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
    return size, list(fds)


def _left_to_the_node(_signum: int, _frame: FrameType | None) -> None:
    """SIGINT, SIGTERM and SIGHUP in the template and its instances: nothing (the node decides when they
    stop: a terminal's hang-up that a `nohup` node ignores leaves them serving)."""


def main() -> None:
    """`python -m framework.runtime.template CONTROL_FD NODE_PID` (started by `Template.start`)."""
    from framework.runtime.worker.server import die_with_parent

    ctrl_fd, parent = int(sys.argv[1]), int(sys.argv[2])
    sandboxing = orjson.loads(sys.argv[3])
    signal.signal(NODE_DIED, _end_instances)
    die_with_parent(parent, NODE_DIED)
    # A node started with descriptor 0, 1 or 2 closed: a received socket would take that number, and an
    # instance's `dup2` onto 1 and 2 would then close its own channel. Hold each one with /dev/null.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            held = os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one
            os.set_inheritable(held, True)
    # Ctrl-C and `kill -- -PGID` reach the node's whole process group, systemd's default KillMode (a
    # control group) every process of the service: the node drains, then stops us and so the instances,
    # which inherit this. Caught, not ignored (SIG_IGN): a program a handler runs gets the default actions
    # back when it execs, and a process it forks gets them from the instance (`server.main`).
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _left_to_the_node)
    if sandboxing["hide"] is not None:  # still one thread here, as a user namespace takes
        sandbox.exposed = sandbox.hide(Path(sandboxing["hide"]), [Path(p) for p in sandboxing["keep"]])
    _serve(socket.socket(fileno=ctrl_fd))
    # The node closed the control socket: stopping, or gone (a dying process's descriptors close before its
    # children get their death signal, so this comes first). Instances die with us either way (theirs is
    # SIGKILL); what they started would not.
    _kill_instances()


if __name__ == "__main__":
    main()
