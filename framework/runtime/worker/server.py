"""The instance: a child process that imports one handler once and serves many requests at once.

Forked by the template (see template.py) with two sockets to the node. `async def` handlers run on the
instance's own loop (uvloop when installed); `def` handlers run in a small thread pool. Each request gets
its own task, its own deadline (`timeout` seconds from when the instance received it, less any time the
process stood still: stopped, or a paused VM, `run_clock.py`) and its own reply.

Every request the node does not cancel gets a reply, whatever the handler does: anything it raises (a
BaseException too, SystemExit and KeyboardInterrupt included, or an exception whose `str()` raises) is a
FunctionError, so one bad request never leaves the node waiting for a limit and then killing an instance
that serves others. Only `asyncio.CancelledError` is told apart: the node's cancel, the time limit, or the
handler's own. What the reply says of a failure is bounded: the message and the traceback are formatted
once (`failure_text`), each exception's message cut at `MAX_MESSAGE` characters where no secret spans the
cut, then redacted. A result must be JSON: orjson writes NaN and infinities as `null`, so a body containing
`null` (and only such a body: the common path pays one substring search) is checked for them; datetimes and
dataclasses are written by `json_exact`'s Python code, never orjson's native code, which crashed the
instance on a broken one (a `utcoffset()` that raises, a slot never set): that is a FunctionError too.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import ctypes
import dataclasses
import enum
import functools
import importlib
import inspect
import logging
import math
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

import orjson

from framework import heap, json_exact, sandbox
from framework.context import Context, Secrets
from framework.errors import type_name
from framework.observe import otel, record_json, tracing
from framework.observe.log_capture import LogCapture
from framework.run_clock import RUN_CLOCK
from framework.runtime.family import kill_descendants
from framework.runtime.protocol import MAX_RESULT, BlockingSender, FrameKind, FrameProtocol, Header, connect
from framework.runtime.worker import redact, thread_context
from framework.runtime.worker.capture import CapturingSender, clean_text
from framework.runtime.worker.threads import HandlerThreads
from framework.runtime.worker.watchdog import (
    ForwardHandler,
    InvocationLog,
    LogStream,
    Watchdog,
    close_lines,
    current_invocation,
    current_traceparent,
    end_lines,
    failure_text,
)

try:
    import uvloop

    _loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
except ImportError:  # pragma: no cover - uvloop is an optional speed-up
    _loop_factory = None

PR_SET_PDEATHSIG = 1
MAX_THREADS = 64
"""Threads for `def` handlers per instance (fewer when `concurrency` is lower). The HELLO says how many, and
the node sends an instance no more `def` calls than that (`pool.py`): a call waiting here for a thread
would spend its time limit waiting. Made only as calls need them (`ThreadPoolExecutor`)."""

_DUMPS_OPTS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """Have the kernel send this process `sig` when its parent dies (Linux), so instances never outlive
    their node."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _hold_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)


def _release_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)


def _default_stop_signals() -> None:
    """In a process forked from an instance: SIGTERM ends it, SIGINT raises KeyboardInterrupt (Python's);
    then the signals held across the fork arrive."""
    with contextlib.suppress(ValueError):  # not the main thread: nothing to restore there
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    _release_stop_signals()


def main(config: Header, main_fd: int, log_fd: int, parent: int) -> NoReturn:
    """Entry point in the forked child; never returns. `config` is built by `handle.InstanceHandle`."""
    code = 1
    try:
        die_with_parent(parent)
        # A process group of its own: the node's kill (`killpg`) then takes the processes its handlers
        # started too, which would otherwise outlive it (a child in a new session of its own still can).
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)
        # The template reaps its children on SIGCHLD; handlers that run subprocesses need the default.
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        # SIGTERM and SIGINT stay the template's (the node decides when an instance stops), but a process a
        # handler forks without exec (multiprocessing) gets the defaults back, so terminate() stops it.
        # Held (blocked) across the fork: one sent at once would otherwise meet the inherited handler.
        os.register_at_fork(
            before=_hold_stop_signals,
            after_in_parent=_release_stop_signals,
            after_in_child=_default_stop_signals,
        )
        isolated = sandbox.isolate()  # still one thread: a user namespace of its own (`framework/sandbox.py`)
        if isolated is not None:
            sandbox.exposed = f"instances can read each other's memory: {isolated}"
        code = _main(config, main_fd, log_fd)
    except BaseException:
        traceback.print_exc()
    finally:
        # What its handlers started in groups of their own goes with it (its own group goes by the
        # template's reap, and by the node's kill); a crash skips this, the node's kill does not.
        with contextlib.suppress(BaseException):
            kill_descendants(os.getpid())
        os._exit(code)


def _main(config: Header, main_fd: int, log_fd: int) -> int:
    # Before anything can log: every value of the function's secrets is `***` in what leaves the process.
    redact.install(config.get("secrets", {}).values())
    # Lines are redacted before they reach the sender, so what an invocation's record keeps is too.
    capture = LogCapture(config.get("log_entries", 10), config.get("log_chars", 5000))
    sender = CapturingSender(BlockingSender(socket.socket(fileno=log_fd)), capture)
    root = logging.getLogger()
    root.handlers[:] = [ForwardHandler(sender)]
    root.setLevel(config.get("log_level", "INFO"))
    sys.stdout = LogStream(sender, "stdout", logging.INFO, 1)
    sys.stderr = LogStream(sender, "stderr", logging.WARNING, 2)
    os.environ.update(config["env"])
    thread_context.install()  # before the handler's module is imported: its threads log as their invocation
    # The revision's code (FAAS_CACHE_DIR/<sha256>) and never the working copy (DESIGN.md section 12): a
    # module the handler's package imports from beside it is not deployed, so it fails here as in
    # `faas validate` (`control/handler_check.py`). The project folder only for a function with no revision.
    sys.path.insert(0, str(config.get("code") or config["root"]))
    with contextlib.suppress(OSError):
        os.chdir(config["root"])
    if otel.enabled():  # after the fork: the provider's export thread must be this process's own
        secret = redact.installed().pattern is not None  # installed above: a rotation starts new instances
        otel.setup_instance(config["function"], config["instance_id"], redact.redact if secret else None)
    try:
        with asyncio.Runner(loop_factory=_loop_factory) as runner:
            server = Server(config, capture)
            try:
                return runner.run(server.serve(socket.socket(fileno=main_fd)))
            except BaseException:
                # The loop stopped under the server (a handler called `loop.stop()`) or the server failed:
                # the runner now cancels the requests still running. They are this instance's crash, not
                # their handlers' errors: left unanswered, the node answers them `InstanceCrashed`.
                server.dying = True
                raise
    finally:
        close_lines()
        otel.shutdown()


def load_handler(handler: str) -> tuple[Callable[..., Any], Callable[..., Any] | None]:
    """Import `module:attr` (`attr` may be dotted, `module:obj.method`, as `faas validate` checks it);
    returns the handler and the module's optional `warmup` hook."""
    module_name, _, attr = handler.partition(":")
    module = importlib.import_module(module_name)
    fn = functools.reduce(getattr, attr.split("."), module)
    if not callable(fn):
        raise TypeError(f"{handler} is not callable")
    hook = getattr(module, "warmup", None)
    return fn, hook if callable(hook) else None


def _is_async(fn: Callable[..., Any] | None) -> bool:
    # Other callables run in the thread pool; an awaitable they return is awaited on the loop.
    return inspect.iscoroutinefunction(fn)


class Server:
    """Serves requests from the node on the main channel until it closes."""

    def __init__(self, config: Header, capture: LogCapture | None = None) -> None:
        self.capture = capture or LogCapture(0, 0)
        self.function: str = config["function"]
        self.uuid: str = config["uuid"]
        self.instance_id: str = config["instance_id"]
        self.timeout: float = config["timeout"]
        self.handler: str = config["handler"]
        self.revision: int | None = config.get("revision")
        self.node: str = config.get("node") or ""
        """The node's name, for the invocation records this instance renders."""
        # Read-only, and only the secrets the function lists (the node sends no others).
        self.secrets = Secrets(config.get("secrets", {}))
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.spans: dict[str, str] = {}
        """The traceparent of each running invocation, by id (for the watchdog's line about one)."""
        self.log = logging.getLogger(f"function.{self.function}")
        self.threads = HandlerThreads(
            max(1, min(MAX_THREADS, config.get("concurrency", MAX_THREADS))),
            f"handler-{self.function}",
            self._all_stuck,
            self._held,
        )

        self.expired: set[int] = set()
        """Requests cancelled for running past their limit (answered Timeout)."""
        self.cancelled: set[int] = set()
        """Requests the node cancelled (answered by nobody)."""
        # Deadlines of running requests (`RUN_CLOCK` time: time the process stood still does not count), in
        # arrival order = deadline order (one timeout for all), checked by one timer armed at the earliest:
        # cheaper than a timer per request.
        self.deadlines: dict[int, float] = {}
        self.sweeper: asyncio.TimerHandle | None = None
        self.conn: FrameProtocol | None = None
        self.closed: asyncio.Future[None] | None = None
        self.dying = False
        """The instance is ending under its requests (see `_main`): a cancelled request sends no reply."""

    async def serve(self, sock: socket.socket) -> int:
        self.loop = loop = asyncio.get_running_loop()  # kept: asking costs a getpid() per call on 3.11
        self.closed = loop.create_future()
        self.conn = conn = await connect(sock, self.on_frame, self.on_close)
        try:
            self.fn, self.hook = load_handler(self.handler)
        except BaseException as e:
            message, tb = failure_text(e, sys.exc_info()[2])
            conn.send(
                FrameKind.INIT_ERROR,
                {
                    "msg": redact.redact(
                        f"handler {self.handler!r} of function {self.function} failed to import: {message}"
                    ),
                    "tb": redact.redact(tb),
                },
            )
            conn.close()
            return 1
        self.fn_async, self.hook_async = _is_async(self.fn), _is_async(self.hook)
        heap.settle(collect=False)  # the handler is imported: what exists now lives as long as we do
        # Busy while it holds a request or a thread runs an abandoned call: the watchdog samples `RUN_CLOCK`,
        # which that call's limit is kept in (`threads.py`), only while busy.
        self.watchdog = Watchdog(
            loop,
            self.function,
            self.instance_id,
            self.spans.get,
            lambda: bool(self.tasks) or self.threads.held > 0,
        )
        self.watchdog.start()
        hello: Header = {"pid": os.getpid()}
        if not self.fn_async:
            hello["threads"] = self.threads.size
        if sandbox.exposed is not None:
            hello["exposed"] = sandbox.exposed
        conn.send(FrameKind.HELLO, hello)
        await self.closed
        return 0

    def _held(self, count: int) -> None:
        """Tell the node how many threads abandoned calls hold (`threads.py`): it sends no call beyond the
        threads free."""
        if self.conn is not None and not self.dying:
            self.conn.send(FrameKind.HELD, {"n": count})

    def _all_stuck(self, stuck: int) -> None:
        """Every handler thread runs a call past its time limit: leave, so the node starts a fresh instance
        (`threads.py`). Closing the main channel first (the answers already given go out with it) makes the
        node answer what this instance still held `InstanceCrashed`, as for any instance that exits."""
        if self.closed is None or self.closed.done():  # leaving already (the node closed the channel)
            return
        self.log.error(
            "all %d handler threads of instance %s are stuck in calls that ran past the %g s limit (a def "
            "handler cannot be interrupted): the instance exits and the node starts a fresh one",
            stuck,
            self.instance_id,
            self.timeout,
        )
        if self.conn is not None:
            self.conn.close()
        self.closed.set_result(None)

    def on_close(self, exc: Exception | None) -> None:
        # The node closed the channel (idle, retired, stopping, or gone): leave at once.
        if self.closed is not None and not self.closed.done():
            self.closed.set_result(None)

    def on_frame(self, kind: int, header: Header, tail: bytes) -> None:
        if kind == FrameKind.REQUEST:
            rid: int = header["id"]
            loop = self.loop
            self.tasks[rid] = loop.create_task(self.run(rid, header, tail), name=header["inv"])
            if not self.watchdog.ticking:
                self.watchdog.wake()
            self.deadlines[rid] = deadline = RUN_CLOCK.now(loop) + self.timeout
            if self.sweeper is None:
                self.sweeper = loop.call_at(RUN_CLOCK.at(deadline), self._sweep)
        elif kind == FrameKind.CANCEL:
            rid = header["id"]
            running = self.tasks.pop(rid, None)  # popped here too: a task cancelled before it began never
            self.deadlines.pop(rid, None)  # runs its own `finally`
            if running is not None:
                self.cancelled.add(rid)
                running.cancel()
                # The node watches its time limit until told it ended: a handler that swallows the
                # cancellation and runs on past its limit gets the instance killed, as at a timeout.
                running.add_done_callback(functools.partial(self._stopped, rid))

    def _stopped(self, rid: int, _task: asyncio.Task[None]) -> None:
        """A request the node cancelled has ended (or never began): tell the node (a REPLY with `gone`)."""
        if self.conn is not None and not self.dying:
            self.conn.send(FrameKind.REPLY, {"id": rid, "gone": 1})

    async def run(self, rid: int, header: Header, tail: bytes) -> None:
        t0 = time.perf_counter()
        deadline = time.time() + self.timeout
        inv: str = header["inv"]
        current_invocation.set(inv)
        started: float | None = header.get("s")  # set when the node wants the invocation's record
        if started is not None:
            self.capture.begin(inv)
        # A request without one (an older node) still gets a span of a trace of its own.
        tp: str = header.get("tp") or tracing.start().traceparent
        current_traceparent.set(tp)
        self.spans[inv] = tp
        reply: Header = {"id": rid}
        body = b""
        try:
            with otel.invocation_context(tp, header.get("ts")):
                body = await self._call(rid, header, tail, inv, deadline, tp)
            limit = self.deadlines.get(rid)
            if rid in self.expired:  # it caught the cancellation at its limit and returned all the same
                body = b""
                reply.update(
                    err="Timeout",
                    msg=f"function {self.function} ran past its {self.timeout:g} s limit (it went on after "
                    "the cancellation at the limit; what it returned then is dropped)",
                )
            elif (
                limit is not None and RUN_CLOCK.now(self.loop) >= limit and RUN_CLOCK.passed(self.loop, limit)
            ):
                # Past the limit with no cancellation: the handler held the loop (a blocking call in an
                # `async def`), so the sweep could not run before it returned. Late is late all the same.
                # (Sampled only then: a stop just ended is counted first, and the common path pays nothing.)
                body = b""
                reply.update(
                    err="Timeout",
                    msg=f"function {self.function} ran past its {self.timeout:g} s limit (it blocked its "
                    "instance's event loop, so it could not be cancelled at the limit)",
                )
        except asyncio.CancelledError as e:
            if rid in self.cancelled or self.dying:
                if started is not None:
                    self.capture.end(inv)
                return  # cancelled by the node (the caller is gone), or the instance is ending: no reply
            if rid in self.expired:
                reply.update(
                    err="Timeout", msg=f"function {self.function} ran past its {self.timeout:g} s limit"
                )
            else:  # the handler's own CancelledError (e.g. an awaited task of its own was cancelled)
                _, tb = failure_text(e, sys.exc_info()[2])
                reply.update(
                    err="FunctionError",
                    msg=f"function {self.function} raised CancelledError",
                    tb=redact.redact(tb),
                )
                self._log_failure(inv, tb)
        except _NotJson as e:
            reply.update(err="FunctionError", msg=redact.redact(str(e)))
        except BaseException as e:  # not only Exception: whatever the handler raises, the caller gets a reply
            if type(e) is GeneratorExit and asyncio.current_task(self.loop) is not self.tasks.get(rid):
                raise  # this coroutine is being closed (collected, or its loop shut), not stepped: no reply
            # Formatted once, each message cut (`failure_text`): a message of 300 MB formatted, redacted and
            # logged whole held the loop past the time limit. Cut where no secret spans the cut, so the
            # redaction of what is kept misses none.
            message, tb = failure_text(e, sys.exc_info()[2])
            reply.update(err="FunctionError", msg=redact.redact(message), tb=redact.redact(tb))
            self._log_failure(inv, tb)
        finally:
            end_lines(inv)  # what it printed without a newline is its log, not the next invocation's
            self.spans.pop(inv, None)
            self.tasks.pop(rid, None)
            self.deadlines.pop(rid, None)
            self.expired.discard(rid)
            self.cancelled.discard(rid)
        ms = (time.perf_counter() - t0) * 1000
        if reply.get("err") == "Timeout":  # its timer counts from the frame's arrival, before t0
            ms = max(ms, self.timeout * 1000)
        reply["ms"] = ms
        for text in ("msg", "tb"):  # an error text with lone surrogates would not encode
            if text in reply:
                reply[text] = clean_text(reply[text])
        record = b""
        if started is not None:
            try:
                record = self._record(header, inv, started, ms, reply, tp)
            except Exception:  # the reply must still go: the node then makes the record itself
                self.capture.end(inv)
                self.log.exception("invocation %s: its record could not be made", inv)
        assert self.conn is not None
        self.conn.send(FrameKind.REPLY, reply, body, record)

    def _log_failure(self, inv: str, tb: str) -> None:
        """Log that invocation `inv` failed, with its traceback `tb` as formatted for the reply (the log
        redacts it): formatted again from the exception (`exc_info`), its messages would be whole."""
        self.log.error("invocation %s failed\n%s", inv, tb.rstrip(), extra={"invocation_id": inv})

    def _record(self, header: Header, inv: str, started: float, ms: float, reply: Header, tp: str) -> bytes:
        """The invocation's record (DESIGN.md section 13), with what it logged; sent after the result."""
        ev: Header | None = header.get("ev")
        err: str | None = reply.get("err")
        return record_json.render(
            inv,
            self.function,
            self.uuid,
            self.revision,
            header["t"],
            header["e"],
            None if ev is None else ev["id"],
            tp,  # the request's, or the trace this instance started for it when it came without one
            self.node,
            self.instance_id,
            started,
            ms,
            header["c"],
            header.get("a", 1),
            None if err is None else record_json.error_fields(err, reply["msg"]),
            self.capture.end(inv),
        )

    async def _call(self, rid: int, header: Header, tail: bytes, inv: str, deadline: float, tp: str) -> bytes:
        trigger = header["t"]
        log = InvocationLog(self.log, {"invocation_id": inv})
        ctx = Context(
            invocation_id=inv,
            function=self.function,
            uuid=self.uuid,
            trigger=trigger,
            event=header["e"],
            deadline=deadline,
            env=os.environ,
            log=log,
            instance_id=self.instance_id,
            cold_start=header["c"],
            attempt=header.get("a", 1),
            revision=self.revision,
            secrets=self.secrets,
            stood=RUN_CLOCK.stood,
        )
        ev: Header | None = header.get("ev")
        if ev is not None:
            ctx.event_id, ctx.source, ctx.subject = ev["id"], ev["src"], ev["sub"]
            ctx.time, ctx.key, ctx.extensions = ev["time"], ev["key"], ev["ext"]
        ctx.traceparent, ctx.trace_id, ctx.span_id = tp, tp[3:35], tp[36:52]
        args: tuple[Any, ...]
        if trigger == "warmup":
            fn, is_async, args = self.hook, self.hook_async, (ctx,)
        else:
            fn, is_async, args = self.fn, self.fn_async, (json_exact.loads(tail), ctx)
        if fn is None:
            return b"null"
        if is_async:
            result = await fn(*args)
        else:
            call = functools.partial(contextvars.copy_context().run, _in_thread, fn, *args)
            limit = self.deadlines.get(rid, RUN_CLOCK.now(self.loop) + self.timeout)
            result = await self.threads.run(call, limit)
        if inspect.isawaitable(result):
            result = await result
        try:
            body = json_exact.dumps(result, option=_DUMPS_OPTS)
        except orjson.JSONEncodeError as e:
            raise _NotJson(
                f"function {self.function} returned a value that is not JSON: {type_name(type(result))} ({e})"
            ) from None
        if len(body) > MAX_RESULT:
            raise _NotJson(
                f"function {self.function} returned {len(body):,} bytes of JSON, "
                f"over the {MAX_RESULT:,} bytes a result may hold"
            )
        # orjson writes NaN and infinities as `null`: only a body with `null` in it can hide one, so only such
        # a body pays for a walk of the value; any other pays one substring search (`find`: `in` on bytes
        # first tries its operand as an int, which costs twice as much).
        if body.find(b"null") != -1:
            bad = _non_finite(result)
            if bad is not None:
                raise _NotJson(
                    f"function {self.function} returned a value that is not JSON: {type_name(type(result))} "
                    f"({bad!r} is not a JSON number)"
                )
        return body

    def _sweep(self) -> None:
        """Cancel every request past its time limit (remembering why: it is answered Timeout)."""
        loop = asyncio.get_running_loop()
        self.sweeper = None
        RUN_CLOCK.sample()  # a stop just ended is counted before anything is cut off for it
        now = RUN_CLOCK.now(loop) + 0.001  # timers may fire a hair early
        due: list[int] = []
        for rid, deadline in self.deadlines.items():
            if deadline > now:
                self.sweeper = loop.call_at(RUN_CLOCK.at(deadline), self._sweep)
                break
            due.append(rid)
        for rid in due:
            del self.deadlines[rid]
            task = self.tasks.get(rid)
            if task is not None:
                self.expired.add(rid)
                task.cancel()


class _NotJson(Exception):
    """The handler's return value cannot be its result: not JSON, or larger than a reply holds."""


def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Call a `def` handler (in the pool). asyncio refuses StopIteration as a future's exception, and the
    await would then never end: it leaves as a RuntimeError, as it does from a coroutine."""
    try:
        return fn(*args)
    except StopIteration as e:
        raise RuntimeError("handler raised StopIteration") from e


def _non_finite(value: object) -> float | None:
    """The first NaN or infinity in `value` wherever orjson would write it (dict keys and values, lists,
    tuples, dataclasses, enums, numpy), or None. Only called on values orjson encoded, so they hold no cycle
    and the walk ends; its own stack, not recursion, so depth costs no Python frames."""
    numpy = sys.modules.get("numpy")  # a numpy value implies numpy is imported; never import it here
    stack = [value]
    pop, extend = stack.pop, stack.extend
    while stack:
        v = pop()
        if type(v) in _LEAVES:  # most of a value: skipped with one set lookup
            continue
        if isinstance(v, float):  # numpy's float64 too
            if not math.isfinite(v):
                return v
        elif isinstance(v, dict):
            extend(v)
            extend(v.values())
        elif isinstance(v, list | tuple):
            extend(v)
        elif isinstance(v, enum.Enum):
            stack.append(v.value)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            fields = getattr(v, "__dict__", None)  # orjson writes `__dict__`, else the declared fields
            extend(
                fields.values() if fields is not None else (getattr(v, f.name) for f in dataclasses.fields(v))
            )
        elif numpy is not None and isinstance(v, numpy.ndarray | numpy.floating) and v.dtype.kind == "f":
            bad = numpy.asarray(v)[~numpy.isfinite(v)]
            if bad.size:
                return float(bad.flat[0])
    return None


_LEAVES = frozenset({str, int, bool, type(None)})
"""Types that hold no float: the walk skips them first."""
