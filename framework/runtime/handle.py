"""Node-side handle of one instance process.

Starts it through the template, sends requests and matches replies, enforces the backstop deadline (a
request not answered `GRACE` seconds after its time limit means the instance's loop is stuck: it is killed;
time this node stood still does not count, `run_clock.py`),
forwards its logs into the node's log, and notices its death (EOF on its socket) at once. An instance that
died on its own stops taking requests at once; the ones it held are answered once the template has told how
it ended (exit code or signal, `EXIT_STATUS_WAIT` at most), so the caller's error says it.

With records on, the lines an invocation in flight logs are also kept here (`lines_of`), capped as the
instance caps them: an instance that dies mid-invocation takes its own copy with it, and those lines are
what tells why. They travel on the log channel, which may be read after the main channel's EOF, so a crash's
lines are read once the log channel has closed too (`LINES_WAIT` at most).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from framework.control.spec import FunctionSpec
from framework.errors import FunctionError, InstanceCrashed, Timeout, from_name
from framework.observe.log_capture import LogCapture
from framework.observe.logs import STANDARD
from framework.run_clock import RUN_CLOCK, keep
from framework.runtime.family import kill_family, parent_of
from framework.runtime.protocol import FrameKind, FrameProtocol, Header, connect
from framework.runtime.raw_output import RawLines, read_socket
from framework.runtime.template import Template, describe_exit, process_state
from framework.runtime.worker.redact import shared
from framework.types import Invocation

GRACE = 1.0
"""Seconds an instance gets, past a request's time limit, to answer it before the node kills the instance."""
START_TIMEOUT = 60.0
"""Seconds an instance may take to import its handler and report ready."""
CLOSE_GRACE = 2.0
"""Seconds a closed (idle or retired) instance gets to exit on its own before SIGKILL."""
LINES_WAIT = 2.0
"""Seconds, at most, the record of an invocation a dead instance held waits for the rest of its lines
(the log channel's EOF)."""
EXIT_STATUS_WAIT = 0.5
"""Seconds, at most, the requests of an instance that died on its own wait for its exit status before
they are answered without it (the template sends it within a millisecond or so of the exit)."""

log = logging.getLogger("faas.runtime")
instance_log = logging.getLogger("faas.instance")

ExitCallback = Callable[["InstanceHandle", "str | None"], None]
"""Called once when the instance is gone, with a crash reason (`exit`, `blocked`, `start`, `memory`) or
None."""


@dataclass(slots=True)
class _Pending:
    fut: asyncio.Future[tuple[bytes, float]]
    deadline: float
    """When the request's time limit passes, in `RUN_CLOCK` time (the loop's, less what this node stood
    still)."""
    answered: list[tuple[bytes, float, bool]] | None = None
    """Where the record the instance rendered goes, with its duration (ms) and success (the caller's list),
    if the caller asked for one."""
    invocation_id: str = ""

    @property
    def wants_record(self) -> bool:
        """The caller makes this invocation's record: its lines are worth keeping should the instance die."""
        return self.answered is not None


class InstanceHandle:
    """One instance process of one function, as the node sees it.

    `load` (requests routed here: waiting for the start or in flight) is kept by the pool. `warm` marks an
    instance started by a warm-up, whose waiting requests are not cold starts.
    """

    def __init__(
        self,
        spec: FunctionSpec,
        log_level: str,
        on_exit: ExitCallback,
        on_blocked: Callable[[], None],
        warm: bool = False,
        secrets: Mapping[str, str] | None = None,
        log_caps: tuple[int, int] = (10, 5000),
        node: str | None = None,
    ) -> None:
        self.log_caps = log_caps
        """Log entries and characters an invocation's record keeps (FAAS_LOG_ENTRIES, FAAS_LOG_CHARS)."""
        self.node = node
        """The node's name, which the records the instance renders carry (None: records are off)."""
        self._lines = LogCapture(*log_caps) if node is not None else None
        """Lines of the invocations in flight here that logged, for the records of those the instance
        never answers (`lines_of`)."""
        self.id = f"{spec.name}-{uuid.uuid4().hex[:8]}"
        self._secrets = dict(secrets or {})
        """The values of the secrets the function lists; they reach the process in its start message only."""
        self.raw: list[RawLines] = []
        """The sockets of its descriptors 1 and 2 (`raw_output.py`); `done` at their end."""
        self.spec = spec
        self.warm = warm
        self.load = 0
        self.last_used = time.monotonic()
        self.pid = 0
        self.template: Template | None = None
        """The template it was forked from (set by `start`)."""
        self.ready = False
        self.ready_at = 0.0
        """Loop time it turned ready (0 before): a request queued before then waited for its start."""
        self.threads: int | None = None
        """The calls a `def` handler's instance runs at once, said by its HELLO (None: `async def`)."""
        self.held = 0
        """Of those, how many threads still run calls whose callers were answered (a HELD frame): the pool
        routes no call to them."""
        self.on_room: Callable[[], None] | None = None
        """Called when `held` falls (a thread is free again) or a request the node cancelled has ended."""
        self.dead = False
        self._status_due = False
        """Died on its own, its exit status not in yet: its process group is killed once it is (`_exited`),
        so the status is its own end, not the node's kill."""
        self.exited = asyncio.Event()
        """Set when the process is gone (its log channel closed)."""
        self.on_gone: Callable[[InstanceHandle], None] | None = None
        """Called when the process is gone (after `on_exit`, which fires as soon as it stops serving)."""
        # Kept: `asyncio.get_running_loop()` costs a getpid() system call per call on Python 3.11.
        self._loop = asyncio.get_running_loop()
        keep(self._loop)  # the clock its time limits are kept in (`run_clock.py`)
        self.started: asyncio.Future[None] = self._loop.create_future()
        self.started.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved: no warning
        self._log_level = log_level
        self._on_exit = on_exit
        self._on_blocked = on_blocked
        # Requests sent, in send order = deadline order (one timeout per spec): one timer armed at the
        # earliest backstop deadline watches them all, cheaper than a timer per request.
        self._pending: dict[int, _Pending] = {}
        self._abandoned: dict[int, float] = {}
        """Requests the node cancelled (a caller that gave up, a chain's abort) that the instance has not
        said ended, with their deadlines: one that runs on past its limit gets the instance killed, as a
        request past its limit does (a handler can swallow the cancellation)."""
        self._recording: dict[str, _Pending] = {}
        """The requests of `_pending` whose caller wants a record, by invocation id: a line's invocation is
        looked up here (a scan of `_pending` was O(requests in flight) per line of a finished one)."""
        self._sweeper: asyncio.TimerHandle | None = None
        self._seq = 0
        self._main: FrameProtocol | None = None
        self._logs: FrameProtocol | None = None
        self._extra = {"function": spec.name, "instance_id": self.id}
        name, uuid_ = orjson.dumps(spec.name), orjson.dumps(spec.uuid)
        self._record_head = b',"function":' + name + b',"uuid":' + uuid_ + b","
        """What follows the invocation id in the records this instance must send (`_record_of`)."""

    def __repr__(self) -> str:
        return f"<InstanceHandle {self.id} pid={self.pid} load={self.load}>"

    async def start(self, template: Template) -> None:
        """Fork the instance and wait for it to import its handler; failures land in `started` too."""
        self.template = template
        config = {
            "function": self.spec.name,
            "uuid": self.spec.uuid,
            "handler": self.spec.handler,
            "root": str(self.spec.root.resolve()),
            "code": str((self.spec.code or self.spec.root).resolve()),
            "revision": self.spec.revision,
            "env": self.spec.env,
            "timeout": self.spec.timeout,
            "concurrency": self.spec.instances.concurrency,
            "instance_id": self.id,
            "log_level": self._log_level,
            "secrets": self._secrets,
            "log_entries": self.log_caps[0],
            "log_chars": self.log_caps[1],
            "node": self.node,
        }
        try:
            code = self.spec.code
            if code is not None and not code.is_dir():  # this node's disk refused it (full, read-only)
                raise FileNotFoundError(
                    f"the code of its revision {self.spec.revision} is not unpacked on this node ({code}): "
                    "see the node's log"
                )
            main, logs, stdout, stderr = template.spawn(config)
            unused = [main, logs, stdout, stderr]  # each until its transport takes it over
            try:
                secrets = shared(tuple(self._secrets.values()))
                self.raw.append(await read_socket(stdout, "stdout", logging.INFO, self._raw_line, secrets))
                unused.remove(stdout)
                self.raw.append(await read_socket(stderr, "stderr", logging.WARNING, self._raw_line, secrets))
                unused.remove(stderr)
                self._logs = await connect(logs, self._on_log, self._on_logs_closed)
                unused.remove(logs)
                self._main = await connect(main, self._on_frame, self._on_main_closed)
                unused.remove(main)
            finally:
                for sock in unused:
                    sock.close()
            async with asyncio.timeout(START_TIMEOUT):
                await asyncio.shield(self.started)
        except BaseException as e:
            if not self.started.done():
                if isinstance(e, TimeoutError):
                    msg = (
                        f"instance {self.id} of function {self.spec.name} did not start within "
                        f"{START_TIMEOUT:g} s (importing its handler, running its warmup hook): killed"
                    )
                    log.warning("%s (pid %s)", msg, self.known_pid() or "unknown", extra=self._extra)
                else:
                    msg = f"instance {self.id} of {self.spec.name} failed to start: {type(e).__name__}: {e}"
                self.started.set_exception(InstanceCrashed(msg))
            self._die(None if isinstance(e, FunctionError) else "start", hard=True)
            raise

    async def call(
        self,
        inv: Invocation,
        cold: bool,
        started: float | None = None,
        answered: list[tuple[bytes, float, bool]] | None = None,
    ) -> tuple[bytes, float]:
        """Run one request; returns (raw result JSON, duration ms). Raises the request's error.

        With `answered`, the instance renders the request's invocation record (`started`: epoch seconds,
        when the pool took it) and, once it replies, (record JSON, duration ms, ok) is appended there."""
        if not self.ready:
            await asyncio.shield(self.started)
        if self.dead or self._main is None:
            raise InstanceCrashed(f"instance {self.id} of function {self.spec.name} is gone")
        loop = self._loop
        self._seq = rid = self._seq + 1
        fut: asyncio.Future[tuple[bytes, float]] = loop.create_future()
        deadline = RUN_CLOCK.now(loop) + self.spec.timeout
        self._pending[rid] = pending = _Pending(fut, deadline, answered, inv.invocation_id)
        if answered is not None:
            self._recording[inv.invocation_id] = pending
        if self._sweeper is None:
            self._sweeper = loop.call_at(RUN_CLOCK.at(deadline + GRACE), self._late)
        header = {"id": rid, "inv": inv.invocation_id, "t": inv.trigger, "e": inv.event, "c": cold}
        if inv.identity is not None or inv.traceparent is not None or inv.attempt != 1:
            header.update(inv.frame_fields())
        if answered is not None:
            header["s"] = started
        self._main.send(FrameKind.REQUEST, header, inv.payload)
        try:
            return await fut
        except asyncio.CancelledError:
            if self._recording.get(inv.invocation_id) is pending:  # ids repeat only in odd cases: its own
                del self._recording[inv.invocation_id]
            if self._pending.pop(rid, None) is not None and not self.dead:  # gave up: the instance stops it
                self._main.send(FrameKind.CANCEL, {"id": rid})
                self._abandoned[rid] = deadline
                if self._sweeper is None:
                    self._sweeper = loop.call_at(RUN_CLOCK.at(deadline + GRACE), self._late)
            if self._lines is not None and not self.dead and answered is None:  # nobody takes them
                self._lines.discard(inv.invocation_id)  # also when its REPLY came as it was cancelled
            raise

    def known_pid(self) -> int:
        """The instance's pid: said by its HELLO or, before that (while it imports its handler), by the
        template that forked it; 0 while neither has."""
        if not self.pid and self.template is not None:
            self.pid = self.template.forked_pid(self.id) or 0
        return self.pid

    @property
    def inflight(self) -> int:
        return len(self._pending)

    @property
    def overdue(self) -> bool:
        """Whether a request it holds (or was told to stop) is past its time limit, unanswered: the instance
        is killed `GRACE` after that unless it answers, so no new request should go there meanwhile (one
        got "another request ran past its time limit")."""
        if not self._pending and not self._abandoned:  # an idle instance: no clock read
            return False
        now = RUN_CLOCK.now(self._loop)
        first = next(iter(self._pending.values()), None)  # in send order, which is deadline order
        return (first is not None and first.deadline <= now) or any(
            d <= now for d in self._abandoned.values()
        )

    def close(self) -> None:
        """Graceful stop (idle or retired): the instance exits when its main channel closes."""
        if not self.dead:
            self._die(None, hard=False)
            asyncio.get_running_loop().call_later(CLOSE_GRACE, self._kill)

    def kill(self) -> None:
        """Hard stop: SIGKILL now; requests it still holds are answered InstanceCrashed."""
        self._die(None, hard=True)

    def kill_for(self, reason: str, message: str) -> None:
        """SIGKILL now for `reason` (e.g. `memory`); requests it holds get InstanceCrashed(`message`)."""
        log.warning("%s", message, extra=self._extra)
        self._die(reason, hard=True, message=message)

    def kill_group(self) -> None:
        """SIGKILL what is left of the instance's process group: the processes its handlers started, once
        the instance itself exited on its own (`close`)."""
        self._kill()

    def close_logs(self) -> None:
        """Close the log channel and the output sockets (normally they close by themselves when the process
        exits)."""
        if self._logs is not None:
            self._logs.close()
        self._close_outputs()

    def _close_outputs(self) -> None:
        for output in self.raw:
            output.close()

    # ---- channel callbacks ----

    def _on_frame(self, kind: int, header: Header, tail: bytes) -> None:
        if kind == FrameKind.REPLY:
            pending = self._pending.pop(header["id"], None)
            if pending is None:  # cancelled meanwhile: this says it ended (`gone`), or crossed the CANCEL
                if self._abandoned.pop(header["id"], None) is not None and self.on_room is not None:
                    self.on_room()  # no longer `overdue` for it: requests queued meanwhile may come
                return
            if self._recording.get(pending.invocation_id) is pending:
                del self._recording[pending.invocation_id]
            if pending.fut.done():
                return  # cancelled meanwhile
            if self._lines is not None and pending.invocation_id in self._lines:
                self._lines.discard(pending.invocation_id)  # the instance's record has them
            err = header.get("err")
            record: bytes | None = header.get("r")  # the frame's trailer
            if record is not None and pending.answered is not None:
                if self._record_of(record, pending.invocation_id):
                    pending.answered.append((record, header["ms"], err is None))
                else:  # the pool makes the record itself: a handler cannot pose as another invocation
                    log.warning(
                        "instance %s sent a record that is not invocation %s's: ignored",
                        self.id,
                        pending.invocation_id,
                        extra=self._extra,
                    )
            if err is None:
                pending.fut.set_result((tail, header["ms"]))
            else:
                exc = from_name(err, header["msg"])
                if header.get("tb"):
                    exc.add_note(header["tb"])
                pending.fut.set_exception(exc)
        elif kind == FrameKind.HELD:
            freed = header["n"] < self.held
            self.held = header["n"]
            if freed and self.on_room is not None:
                self.on_room()
        elif kind == FrameKind.HELLO:
            self.pid = header["pid"]
            self.threads = header.get("threads")
            if self.template is not None:
                self.template.forked_pid(self.id)  # told by the instance itself
                self.template.watch(self.pid, lambda: self._on_main_closed(None))
            if "exposed" in header:
                _exposed_once(header["exposed"])
            if self.spec.instances.memory_mb is not None:
                from framework.runtime.memory import check_at_start  # memory.py imports this module

                over = check_at_start(self)
                if over is not None:  # before it serves anything: its callers are told why
                    self.kill_for("memory", over)
                    return
            self.ready, self.ready_at = True, self._loop.time()
            if not self.started.done():
                self.started.set_result(None)
        elif kind == FrameKind.INIT_ERROR and not self.started.done():
            exc = FunctionError(header["msg"])
            exc.add_note(header.get("tb", ""))
            self.started.set_exception(exc)
            instance_log.error("%s\n%s", header["msg"], header.get("tb", ""), extra=self._extra)
            self._die(None, hard=False)  # not a crash; gone before the waiting requests resume

    def _record_of(self, record: bytes, invocation_id: str) -> bool:
        """Whether `record` is what `record_json.render` makes for this invocation of this function: its
        first three fields are checked (render's key order is fixed), not the whole, which would cost a
        parse per invocation on the node's loop."""
        head = b'{"invocation_id":' + orjson.dumps(invocation_id) + self._record_head
        return record.startswith(head) and record.endswith(b"}")

    def _on_main_closed(self, exc: Exception | None) -> None:
        if not self.dead:
            crashed = self.ready or not self.started.done()
            self._die("exit" if crashed else None, hard=False)
            if not self._status_due:  # else once its status is in (`_exited`)
                self._kill()  # what its handlers started goes with it

    def _on_log(self, kind: int, header: Header, tail: bytes) -> None:
        if kind != FrameKind.LOG:
            return
        extra = {**self._extra, "invocation_id": header.get("inv"), "source": header.get("name")}
        tp = header.get("tp")
        if tp is not None:
            extra["trace_id"], extra["span_id"] = tp[3:35], tp[36:52]
        own = header.get("x")
        if own:  # the handler's own `extra` fields; those that would clash with LogRecord's are left out
            extra = {**{k: v for k, v in own.items() if k not in STANDARD}, **extra}
        instance_log.log(header.get("lvl", logging.INFO), header.get("msg", ""), extra=extra)
        inv = header.get("inv")
        if self._lines is not None and type(inv) is str:
            self._keep_line(self._lines, inv, header.get("lvl", logging.INFO), header.get("msg", ""))
        if header.get("blocked"):
            self._on_blocked()

    def _raw_line(self, source: str, level: int, text: str) -> None:
        """A line the instance wrote below Python's streams (`raw_output.py`): no invocation's, redacted by
        its reader, since it never passed through the instance's own redaction."""
        extra = {**self._extra, "invocation_id": None, "source": source}
        instance_log.log(level, text, extra=extra)

    def _keep_line(self, lines: LogCapture, inv: str, level: object, msg: object) -> None:
        """Keep a line of invocation `inv` if it is in flight here and wants a record (a line that trails
        its invocation's REPLY is not kept: the instance's record has it already)."""
        if inv not in lines:
            if self.dead or inv not in self._recording:
                return
            lines.begin(inv)
        lines.add(inv, level if type(level) is int else logging.INFO, msg if type(msg) is str else str(msg))

    def holds_lines(self, invocation_id: str) -> bool:
        """Whether lines of this invocation are kept here: with records on, while it is in flight and has
        logged, and from its instance's death until they are taken (`take_lines`, `lines_of`)."""
        return self._lines is not None and invocation_id in self._lines

    def take_lines(self, invocation_id: str) -> list[dict[str, Any]] | None:
        """The kept lines of an invocation (what `LogCapture.end` gives), no longer kept here; complete for
        a dead instance once `exited` is set."""
        return self._lines.end(invocation_id) if self._lines is not None else None

    async def lines_of(self, invocation_id: str) -> list[dict[str, Any]] | None:
        """`take_lines` once the log channel closed (at most LINES_WAIT seconds)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(LINES_WAIT):
                await self.exited.wait()
        return self.take_lines(invocation_id)

    def _on_logs_closed(self, exc: Exception | None) -> None:
        self.exited.set()
        # A process it started in a session of its own may hold its outputs on: read them a while, no longer.
        if not all(output.done.done() for output in self.raw):
            self._loop.call_later(LINES_WAIT, self._close_outputs)
        if self.on_gone is not None:
            self.on_gone(self)

    def _late(self) -> None:
        """Kill the instance if its oldest request is GRACE past its time limit, unanswered (loop stuck)."""
        self._sweeper = None
        first = next(iter(self._pending.values()), None)
        deadlines = list(self._abandoned.values())  # cancel order is not deadline order: all of them
        if first is not None:
            deadlines.append(first.deadline)
        if self.dead or not deadlines:
            return
        deadline = min(deadlines)
        loop = self._loop
        if not RUN_CLOCK.passed(loop, deadline + GRACE):  # not yet, or this node stood still meanwhile
            self._sweeper = loop.call_at(RUN_CLOCK.at(deadline + GRACE), self._late)
            return
        log.warning(
            "instance %s (pid %s) of function %s did not cut off a request%s %.1f s past its %g s limit: "
            "killing it",
            self.id,
            self.pid,
            self.spec.name,
            ""
            if first is not None and first.deadline == deadline
            else " it was told to stop (its caller gave up, or its event's chain aborted)",
            GRACE,
            self.spec.timeout,
            extra=self._extra,
        )
        self._die("blocked", hard=True, late=RUN_CLOCK.now(loop))

    # ---- death ----

    def _die(
        self, reason: str | None, hard: bool, late: float | None = None, message: str | None = None
    ) -> None:
        """Mark dead and answer every request held: Timeout for those past their limit at `late`, else
        InstanceCrashed (with `message` when given). An instance that exited on its own (`reason` "exit")
        has them answered once its exit status is known (`_answer`). Runs once."""
        if self.dead:
            return
        self.dead = True
        self.ready = False
        if self._sweeper is not None:
            self._sweeper.cancel()
        lines = self._lines
        for pending in self._pending.values():
            if lines is not None and pending.wants_record and pending.invocation_id not in lines:
                lines.begin(pending.invocation_id)  # lines still on their way are its record's
        self._recording.clear()
        self._abandoned.clear()
        self.known_pid()  # one that died before its HELLO: the template knows its pid
        if self.template is not None and self.pid:
            self.template.unwatch(self.pid)
        if reason == "exit" and message is None and self.template is not None and self.pid:
            self._status_due = True
            self.template.when_exited(self.pid, self._exited, EXIT_STATUS_WAIT)
        else:
            self._answer(reason, late, message)
        if hard:
            self._kill()
        if self._main is not None:
            self._main.close()
        self._on_exit(self, reason)

    def _exited(self, status: int | None) -> None:
        """The instance died on its own and `status` tells how (None: unknown)."""
        # An instance that closed its channel may still be ending (its loop stopped: the runner cancels its
        # tasks, then it exits with code 1). Still there after the wait: it closed the channel and stayed.
        stayed = status is None and self._running()
        if self._status_due:
            self._status_due = False
            self._kill()  # what its handlers started goes with it
        how = describe_exit(status)
        if status is None and self.template is not None and self.template.died is not None:
            # Its status died with the template; it may still be exiting (`stayed` would blame it).
            how = f"exited: the template process it was forked from {self.template.died}"
        elif stayed:
            how = "closed its connection to the node and did not exit (killed)"
        log.warning(
            "instance %s (pid %s) of function %s %s with %d request(s) in flight",
            self.id,
            self.pid,
            self.spec.name,
            how,
            len(self._pending),
            extra=self._extra,
        )
        starting = "" if self.started.done() else " while starting"
        self._answer("exit", None, f"instance {self.id} of function {self.spec.name} {how}{starting}")

    def _answer(self, reason: str | None, late: float | None, message: str | None) -> None:
        """Answer what the dead instance held (see `_die`)."""
        if not self.started.done():
            starting = f"instance {self.id} of function {self.spec.name} exited while starting"
            self.started.set_exception(InstanceCrashed(message or starting))
        for pending in self._pending.values():
            if pending.fut.done():
                continue
            if late is not None and late >= pending.deadline:
                pending.fut.set_exception(
                    Timeout(
                        f"function {self.spec.name} ran past its "
                        f"{self.spec.timeout:g} s limit (instance killed)"
                    )
                )
            elif message is not None:
                pending.fut.set_exception(InstanceCrashed(message))
            else:
                pending.fut.set_exception(
                    InstanceCrashed(
                        f"instance {self.id} of function {self.spec.name} "
                        + (
                            "was killed: another request ran past its time limit without stopping (a "
                            "blocked event loop, or a handler that ignores its cancellation)"
                            if reason == "blocked"
                            else "exited"
                        )
                    )
                )
        self._pending.clear()

    def _running(self) -> bool:
        """Whether the instance's process is still running: there, and not a zombie its template has not
        reaped yet (an ended process stays one until then)."""
        return bool(self.pid) and process_state(self.pid) not in ("", "Z", "X")  # "": gone, or no /proc

    def _kill(self) -> None:
        """SIGKILL the instance and what its handlers started (`family.py`): while it lives, its process tree
        too (a process that left its group, or an instance a handler moved out of it); once it is gone, its
        process group (its children may not be)."""
        if self.pid:
            # Still running, and still a child of its template: not reaped, so the pid is its own (a pid
            # reaped and reused by the template's next fork would pass the parent check alone).
            template = self.template
            if template is not None and not self.exited.is_set() and parent_of(self.pid) == template.pid:
                kill_family(self.pid)
            else:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)
        if self._logs is not None and self.pid == 0:
            self._logs.close()


_exposures_told: set[str] = set()


def _exposed_once(why: str) -> None:
    """An instance's HELLO said it can read the secrets folder (`framework/sandbox.py`): logged once per
    reason."""
    if why not in _exposures_told:
        _exposures_told.add(why)
        log.warning("%s; a function can then read secrets it does not list", why)
