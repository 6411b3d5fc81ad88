"""Inside an instance: forward logs and stdio to the node, and watch the event loop for blocking code.

Everything here writes through the instance's log channel with blocking sends, so it works from any thread,
including while the loop is blocked (which is exactly when the watchdog has something to say).

Forwarding never loses a record to its formatting: a message that cannot be formatted (a `str()` that raises
or overflows the stack, arguments that do not match the format) is sent as a line saying so and why, tagged
as usual, so it reaches the node's log and the invocation's record; a field of `extra` likewise. The cost is
a `try` block, free until something raises.
"""

from __future__ import annotations

import asyncio
import codecs
import errno
import io
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable, MutableMapping
from contextvars import ContextVar
from types import TracebackType
from typing import TYPE_CHECKING, Any

from framework import sandbox
from framework.errors import type_name
from framework.observe.logs import STANDARD
from framework.run_clock import RUN_CLOCK
from framework.runtime.protocol import BlockingSender, FrameKind
from framework.runtime.worker.redact import installed, redact

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

current_invocation: ContextVar[str | None] = ContextVar("faas_invocation", default=None)
"""The invocation the running code serves (set per request task; copied into handler threads)."""
current_traceparent: ContextVar[str | None] = ContextVar("faas_traceparent", default=None)
"""The `traceparent` of that invocation's span: its log records carry `trace_id` and `span_id`."""
_OWN = STANDARD | {"invocation_id", "blocked", "trace_id", "span_id", "traceparent"}
_NUMBERS = (int, float, bool)


MAX_MESSAGE = 65_536
"""Characters of an exception's message kept in what an instance answers and logs of a failure (the reply's
message, each message in its traceback); past it the message is cut, and says how many characters were cut.
A handler raising a 100 MB message had it sent whole to its caller and logged as 100 lines of 1 MiB; at
300 MB, formatting and logging it on the loop ran past the time limit and the instance was killed. The same
as a dead letter's `faas_error` keeps (`kafka/deadletter.MAX_ERROR_CHARS`), which the reply's message
feeds; an invocation record keeps 4,000 of it (`observe/record_json.MAX_ERROR_CHARS`)."""


def cut_text(text: str, limit: int = MAX_MESSAGE) -> str:
    """`text`, or its first `limit` characters at most and a note of how many were cut. Cut where no form of
    an installed secret spans the cut (`Redactor.cut`), so that redacting the result redacts every secret
    the whole text held there; cut at `limit` only when forms overlap back to the start (as `pieces`)."""
    if len(text) <= limit:
        return text
    at = installed().cut(text, limit)
    if at <= 0:
        at = limit
    return f"{text[:at]}… ({len(text) - at:,} more characters cut)"


def exception_text(e: BaseException, limit: int | None = None) -> str:
    """`Type: message` of an exception, even one whose `str()` raises (then a fallback, as tracebacks do) or
    whose type's `__name__` does (`type_name`); the message cut at `limit` characters (`cut_text`), if
    given."""
    try:
        text = str(e)
    except BaseException:  # its own code: SystemExit or anything else may come out of it
        text = "<exception str() failed>"
    if limit is not None:
        text = cut_text(text, limit)
    return f"{type_name(type(e))}: {text}"


READ_ONLY = (
    " (the folders of code, the project's included, are read-only for functions on a node with a secrets "
    "folder: write under /tmp or tempfile's folder)"
)
"""Said after a failure to write a read-only file system in an instance that sees the code read-only
(`sandbox.py`): the message alone would not say why."""


def failure_text(e: BaseException, tb: TracebackType | None) -> tuple[str, str]:
    """`Type: message` of `e` and its traceback `tb` as `traceback.format_exception` writes it, each
    message in both cut at MAX_MESSAGE characters (`cut_text`): `str()` is called once per exception of the
    chain and a huge message is never copied whole. Neither is redacted. Whatever `e` is (its `str()`, its
    type's name, its chain raising), both come back: the traceback then as far as it can be formatted."""
    try:
        te = traceback.TracebackException(type(e), e, tb)  # `str()` of each exception of the chain, once
    except BaseException as exc:  # an attribute of the chain that raises (`__cause__`, `__traceback__`)
        message = exception_text(e, MAX_MESSAGE)
        try:
            stack = "".join(traceback.format_tb(tb))
        except BaseException:
            stack = ""
        why = exception_text(exc, MAX_MESSAGE)
        return (
            message,
            f"Traceback (most recent call last):\n{stack}{message}\n(its chain could not be read: {why})\n",
        )
    message = f"{type_name(type(e))}: {cut_text(str(te))}"
    if isinstance(e, OSError) and e.errno == errno.EROFS and sandbox.isolating():
        message += READ_ONLY
    _cut_messages(te)
    try:
        return message, "".join(te.format())
    except BaseException as exc:
        return (
            message,
            f"(its traceback could not be formatted: {exception_text(exc, MAX_MESSAGE)})\n{message}\n",
        )


def _cut_messages(top: traceback.TracebackException) -> None:
    """Cut the message, notes and (a SyntaxError's) `msg` and `text` of each exception of `top`'s chain
    (causes, contexts, a group's members) as `cut_text` does; one whose type's name cannot be read is
    written under the name `type_name` finds."""
    stack, seen = [top], set()
    while stack:
        te = stack.pop()
        if id(te) in seen:
            continue
        seen.add(id(te))
        # `_str` is the message `format` writes (CPython 3.11-3.13); `str(te)` is its public read. Notes
        # and a SyntaxError's `msg` and `text` are written as they are: cut too (a new list, not the
        # exception's own).
        te.__dict__["_str"] = cut_text(str(te))
        notes = te.__dict__.get("__notes__")
        if isinstance(notes, list | tuple):
            te.__dict__["__notes__"] = [cut_text(n) if isinstance(n, str) else n for n in notes]
        for field in ("msg", "text"):
            if isinstance(te.__dict__.get(field), str):
                te.__dict__[field] = cut_text(te.__dict__[field])
        kind = te.exc_type
        if kind is not None:
            try:
                names: tuple[object, object] = (kind.__qualname__, kind.__module__)  # what `format` reads
            except BaseException:  # a metaclass's property
                names = (None, None)
            if type(names[0]) is not str:
                te.__dict__["exc_type"] = None  # then `format` writes the message alone: the name goes in it
                te.__dict__["_str"] = f"{type_name(kind)}: {te}"
        stack.extend(t for t in (te.__cause__, te.__context__, *(te.exceptions or ())) if t is not None)


def message_text(record: logging.LogRecord) -> str:
    """The record's message with its traceback, if any; a message that cannot be formatted becomes a line
    naming its format string (or type) and why."""
    try:
        msg = record.getMessage()
    except BaseException as e:  # user code runs in there (`__str__`), it may raise anything
        what = repr(record.msg) if type(record.msg) is str else f"of type {type(record.msg).__name__}"
        msg = f"log message {what} could not be formatted: {exception_text(e)}"
    if record.exc_info:
        try:
            msg += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        except BaseException as e:
            msg += f"\n(its traceback could not be formatted: {exception_text(e)})"
    return msg


def extra_fields(record: logging.LogRecord) -> dict[str, object]:
    """The fields a caller passed in `extra`, JSON-safe (anything else as its `str()`, or a note when that
    raises), text and names redacted (secrets), for the node."""
    out: dict[str, object] = {}
    for key, value in record.__dict__.items():
        if key not in _OWN and value is not None:
            key = redact(key)  # a name is text too: `extra={token: ...}` must not log the token
            if isinstance(value, _NUMBERS):
                out[key] = value
                continue
            try:
                text = str(value)
            except BaseException:
                text = f"<{type(value).__name__} could not be formatted>"
            out[key] = redact(text)
    return out


class InvocationLog(logging.LoggerAdapter[logging.Logger]):
    """`ctx.log`: tags records with the invocation and keeps the call's own `extra` beside the tags
    (the stock adapter replaces a call's `extra` with its own)."""

    def process(
        self, msg: object, kwargs: MutableMapping[str, Any]
    ) -> tuple[object, MutableMapping[str, Any]]:
        own = kwargs.get("extra")
        kwargs["extra"] = {**own, **(self.extra or {})} if own else self.extra
        return msg, kwargs


BLOCK_THRESHOLD = 0.1
"""Seconds the loop may be blocked before the watchdog reports it."""
BEAT = 0.05
"""Seconds between the loop's heartbeats and the thread's checks (the watchdog's resolution): a 20 Hz
timer on the loop and a thread waking 20 times a second while the instance holds an invocation, nothing
while it is idle, and one attribute check per request."""


MAX_LINE = 1024 * 1024
"""Characters (not bytes) of one log line (a `print`, a log record's message) at most; a longer one goes
out in pieces of this size, each an entry of its own. The node holds a line whole on its loop, at about
five times its size in memory: one `print` of 100 MB took a node to 552 MB and held its loop 8.8 s."""


def pieces(line: str) -> list[str]:
    """`line` (longer than MAX_LINE) cut in pieces of MAX_LINE characters at most, each cut where no
    installed secret's form spans it (so each piece is redacted as its line would have been)."""
    cut = installed().cut
    out: list[str] = []
    start = 0
    while len(line) - start > MAX_LINE:
        at = cut(line, start + MAX_LINE)
        if at <= start:  # forms overlapping back past the piece's start: cut as asked
            at = start + MAX_LINE
        out.append(line[start:at])
        start = at
    out.append(line[start:])
    return out


def send_line(sender: BlockingSender, header: dict[str, object], text: str) -> None:
    """Send `text` redacted as the `msg` of LOG frames of `header`: one frame, or one per piece (`pieces`)
    when it is longer than MAX_LINE."""
    if len(text) <= MAX_LINE:
        header["msg"] = redact(text)
        sender.send(FrameKind.LOG, header)
        return
    for piece in pieces(text):
        header["msg"] = redact(piece)
        sender.send(FrameKind.LOG, header)


class ForwardHandler(logging.Handler):
    """Root handler of an instance: every record goes to the node, tagged with the invocation."""

    def __init__(self, sender: BlockingSender) -> None:
        super().__init__()
        self._sender = sender

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = message_text(record)
            inv = getattr(record, "invocation_id", None) or current_invocation.get()
            header: dict[str, object] = {
                "lvl": record.levelno,
                "name": redact(record.name),  # `getLogger("client." + token)` names it
                "msg": "",
                "inv": inv,
                "blocked": bool(getattr(record, "blocked", False)),
            }
            # A line logged by another thread about an invocation (the watchdog's) names its span itself.
            tp = getattr(record, "traceparent", None) or current_traceparent.get()
            if tp is not None:
                header["tp"] = tp
            extra = extra_fields(record)
            if extra:
                header["x"] = extra
            send_line(self._sender, header, msg)
        except Exception:
            self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        # The default prints to sys.stderr, which is forwarded through this very handler: avoid the loop.
        traceback.print_exc(file=sys.__stderr__)


class LogStream(io.TextIOBase):
    """Stands in for sys.stdout / sys.stderr: each complete line becomes a log record at `level`.

    A line is complete at its newline, when the invocation that wrote it ends (`end`: its record gets what
    it wrote without a newline, the next invocation does not), or in pieces past `MAX_PARTIAL` characters
    (a line longer than `MAX_LINE` is sent in pieces of that size all the same),
    each cut where no secret's form spans the cut (`Redactor.cut`). Partial lines are kept per invocation
    (`current_invocation`), since invocations run side by side. A `flush` ends no line: a line written in
    parts goes out whole, so a secret among its parts is redacted (section 14).
    Lines of no invocation (a thread started outside any invocation, at import) go out at their newline or
    when the instance stops."""

    MAX_PARTIAL = 64 * 1024
    """Characters of a line without a newline kept before they go out as a line of their own."""
    encoding = "utf-8"
    """What code that checks a text stream's encoding before writing to it (`click`, `rich`) finds."""
    errors = "replace"
    """As `buffer` decodes bytes: a bad byte becomes U+FFFD."""

    def __init__(self, sender: BlockingSender, name: str, level: int, fd: int) -> None:
        self._sender = sender
        self._name = name
        self._level = level
        self._fd = fd
        self._partial: dict[str | None, str] = {}
        """The unfinished line of each invocation (None: of code serving none)."""
        self._decoders: dict[str | None, codecs.IncrementalDecoder] = {}
        """A UTF-8 decoder per invocation writing bytes (`buffer`): a character split across two writes
        (`shutil.copyfileobj`, a byte at a time) is decoded whole, and so is a secret holding it."""
        self._cut: set[str | None] = set()
        """Invocations whose last write went out at MAX_PARTIAL: a newline written next ends that line, not
        an empty one (`print` writes its text and its newline apart)."""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        """The process's own descriptor (1 or 2), for code that needs one (`subprocess.run(...,
        stdout=sys.stdout)`, `faulthandler.enable()`): what is written there bypasses this stream, so it
        reaches the node as the instance's raw output (`runtime/raw_output.py`), tagged with the function
        and instance but not with an invocation."""
        return self._fd

    @property
    def buffer(self) -> BinaryLines:
        """`sys.stdout.buffer`: bytes written there become lines too (UTF-8, bad bytes replaced)."""
        return BinaryLines(self)

    def write(self, s: str) -> int:
        inv = current_invocation.get()
        with self._lock:
            text = self._partial.pop(inv, "") + s
            if self._cut and inv in self._cut:
                self._cut.discard(inv)
                if text.startswith("\n"):
                    text = text[1:]
            secrets = installed()
            if "\n" in text:
                *lines, rest = text.split("\n")
            elif len(text) > self.MAX_PARTIAL + secrets.hold:
                # What may begin a secret's form stays: its rest may come in the next write. Only that:
                # a tail held back would go out as a line of its own at the newline `print` writes next.
                at = secrets.cut(text, secrets.open_at(text))
                lines, rest = [text[:at]], text[at:]
                if not rest:
                    self._cut.add(inv)
            elif not text:
                return len(s)
            else:
                self._partial[inv] = text
                return len(s)
            if rest:
                self._partial[inv] = rest
        for line in lines:
            self._emit(line, inv)
        return len(s)

    def write_bytes(self, data: bytes) -> None:
        """Bytes written to `buffer`: UTF-8, a bad byte U+FFFD; a character cut at the end waits for its
        rest (the invocation's next write, or its end)."""
        inv = current_invocation.get()
        with self._lock:
            decoder = self._decoders.pop(inv, None) or _utf8("replace")
            text = decoder.decode(data)
            if decoder.getstate()[0]:  # kept only while it holds part of a character (not one per thread)
                self._decoders[inv] = decoder
        if text:
            self.write(text)

    def flush(self) -> None:
        """Nothing to do: lines go out as they end (see the class)."""

    def end(self, inv: str | None) -> None:
        """Send what `inv` wrote after its last newline, as a line of its own (its invocation ended)."""
        if inv not in self._partial and inv not in self._cut and inv not in self._decoders:  # no lock taken
            return
        with self._lock:
            decoder = self._decoders.pop(inv, None)
            tail = "" if decoder is None else decoder.decode(b"", final=True)  # a character cut short: U+FFFD
            self._cut.discard(inv)
            line = self._partial.pop(inv, "") + tail
        if line:
            self._emit(line, inv)

    def close_lines(self) -> None:
        """Send every unfinished line (the instance stops)."""
        for inv in {*self._partial, *self._decoders}:
            self.end(inv)

    def _emit(self, line: str, inv: str | None) -> None:
        header: dict[str, object] = {
            "lvl": self._level,
            "name": self._name,
            "msg": "",
            "inv": inv,
            "blocked": False,
        }
        tp = current_traceparent.get()
        if tp is not None:
            header["tp"] = tp
        send_line(self._sender, header, line)


def _streams() -> list[LogStream]:
    return [stream for stream in (sys.stdout, sys.stderr) if isinstance(stream, LogStream)]


def end_lines(inv: str) -> None:
    """The invocation `inv` ended: its unfinished stdout and stderr lines go out (and into its record)."""
    for stream in _streams():
        stream.end(inv)


def close_lines() -> None:
    """The instance stops: every unfinished stdout and stderr line goes out."""
    for stream in _streams():
        stream.close_lines()


_utf8 = codecs.getincrementaldecoder("utf-8")


class BinaryLines(io.RawIOBase):
    """The binary side of a `LogStream`: a handler writing raw (even garbage) bytes to stdout still logs."""

    def __init__(self, text: LogStream) -> None:
        self._text = text

    def writable(self) -> bool:
        return True

    def write(self, b: ReadableBuffer) -> int:
        data = bytes(b)
        self._text.write_bytes(data)
        return len(data)

    def flush(self) -> None:
        self._text.flush()


class Watchdog:
    """Notices when the loop is blocked for more than `BLOCK_THRESHOLD` seconds.

    The loop bumps a heartbeat every `BEAT` seconds; a daemon thread checks it. Once per blocking episode it
    logs a WARNING (flagged `blocked`, which the node counts) naming the function, the invocation whose task
    was running, and the loop thread's stack.

    A heartbeat tells when the loop last ran only to within a beat, so the thread reports a stall once the
    beat is `BLOCK_THRESHOLD + BEAT` old (never a shorter one): a block of 100 to 150 ms can go unreported.
    Timing each step of each request exactly would report those too, at 0.4 to 0.6 us a step on every
    invocation's path (a coroutine wrapper timing each `send`): left out.

    It watches only while the instance holds an invocation or a thread runs an abandoned call (`busy`; `wake`
    when one starts): a stall then holds requests up, and an idle instance has none to hold. Idle, both the
    heartbeat and the thread sleep: 1,000 idle warm instances took 129% of a core for their 20 Hz wake-ups,
    and on a loaded machine logged thousands of "did not run" warnings about loops that had nothing to run.

    The thread is also what samples the instance's `RUN_CLOCK` (the clock its time limits are kept in) while
    it holds an invocation; a gap counted as a stop (the process was stopped, or not scheduled) is said in a
    line of its own, not reported as a block (`_stood`).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        function: str,
        instance_id: str,
        traceparent_of: Callable[[str], str | None] = lambda inv: None,
        busy: Callable[[], bool] = lambda: True,
    ) -> None:
        self._loop = loop
        self._busy = busy
        self._awake = threading.Event()
        """Set while the heartbeat runs (an invocation is held); the thread waits for it otherwise."""
        self.ticking = False
        self._traceparent_of = traceparent_of
        """The span of a running invocation, by id: the warning is that invocation's log line, but is
        logged from this thread, where its context variables are not set."""
        self._function = function
        self._instance_id = instance_id
        self._beat = time.monotonic()
        self._loop_thread = threading.get_ident()
        self._log = logging.getLogger("faas.watchdog")

    def start(self) -> None:
        threading.Thread(target=self._watch, name="faas-watchdog", daemon=True).start()
        self.wake()

    def wake(self) -> None:
        """Watch from now on, if not already (call on the loop, when an invocation starts)."""
        if self.ticking:
            return
        self.ticking = True
        self._beat = time.monotonic()  # before the thread looks: a stale beat would read as a stall
        RUN_CLOCK.restart()  # its sampler slept: the gap since says nothing of a stop
        self._awake.set()
        self._loop.call_later(BEAT, self._tick)

    def _tick(self) -> None:
        self._beat = time.monotonic()
        if self._busy():
            self._loop.call_later(BEAT, self._tick)
        else:  # idle: sleep until `wake`
            self.ticking = False
            self._awake.clear()

    def _watch(self) -> None:
        reported = False
        stood = RUN_CLOCK.stood
        while True:
            self._awake.wait()
            time.sleep(BEAT)
            if self._loop.is_closed():  # the instance is ending (a last flush may take a while)
                return
            if not self._awake.is_set():  # it went idle meanwhile: its last beat says nothing
                reported = False
                continue
            RUN_CLOCK.sample()  # the sampler of the clock the time limits are kept in
            if RUN_CLOCK.stood != stood:  # the process stood still (here or by the loop's count)
                self._stood(RUN_CLOCK.stood - stood)
                stood = RUN_CLOCK.stood
                reported = False
                continue
            blocked = time.monotonic() - self._beat > BLOCK_THRESHOLD + BEAT
            if blocked and not reported:
                reported = True
                self._report()
            elif not blocked:
                reported = False

    def _stood(self, seconds: float) -> None:
        """Say that the instance did not run for `seconds` (`RUN_CLOCK` counted them), without the `blocked`
        flag: a stopped process is not a function blocking its loop, but a call holding the GIL while it
        waits looks the same from here, and that one is the function's."""
        task = asyncio.current_task(self._loop)
        inv = task.get_name() if task is not None else None
        self._log.warning(
            "instance %s (function %s) did not run for %.1f s%s: the process was stopped (a frozen node or "
            "VM, SIGSTOP) or not scheduled, or a call held the GIL while it waited; time limits leave that "
            "time out",
            self._instance_id,
            self._function,
            seconds,
            f" in invocation {inv}" if inv is not None else "",
            extra={"invocation_id": inv, "traceparent": self._traceparent_of(inv)}
            if inv is not None
            else None,
        )

    def _report(self) -> None:
        task = asyncio.current_task(self._loop)  # read from this thread: the task running on the loop
        inv = task.get_name() if task is not None else None
        frame = sys._current_frames().get(self._loop_thread)
        stack = "".join(traceback.format_stack(frame)).rstrip() if frame is not None else "(no stack)"
        if inv is None:  # no request's code ran: the loop was held up, not blocked by the function
            self._log.warning(
                "the event loop of instance %s (function %s) did not run for over %d ms while no invocation "
                "ran: the machine may be overloaded, or the process was paused. Stack:\n%s",
                self._instance_id,
                self._function,
                BLOCK_THRESHOLD * 1000,
                stack,
            )
            return
        self._log.warning(
            "function %s blocked the event loop of instance %s for over %d ms in invocation %s; every other "
            "request this instance holds is stalled meanwhile (use `await`, or a `def` handler). Stack:\n%s",
            self._function,
            self._instance_id,
            BLOCK_THRESHOLD * 1000,
            inv,
            stack,
            extra={"invocation_id": inv, "blocked": True, "traceparent": self._traceparent_of(inv)},
        )
