"""runtime.worker.watchdog: the instance's log forwarding survives records it cannot format."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterator

import pytest

from framework.runtime.protocol import BlockingSender, FrameKind, Header
from framework.runtime.worker import redact
from framework.runtime.worker.watchdog import (
    MAX_MESSAGE,
    ForwardHandler,
    Watchdog,
    current_invocation,
    exception_text,
    failure_text,
)

TP = f"00-{'a' * 32}-{'b' * 16}-01"


class Frames(BlockingSender):
    """A log channel that keeps what is sent."""

    def __init__(self) -> None:
        self.sent: list[Header] = []

    def send(self, kind: int, header: Header, tail: bytes = b"") -> None:
        assert kind == FrameKind.LOG
        self.sent.append(header)


class BadStr(Exception):
    def __str__(self) -> str:
        raise ValueError("no")


class Unprintable:
    def __str__(self) -> str:
        raise SystemExit("not even str")


@pytest.fixture
def log() -> Iterator[tuple[logging.Logger, Frames]]:
    frames = Frames()
    logger = logging.Logger("test.forward")  # outside the hierarchy: only the handler under test sees it
    logger.addHandler(ForwardHandler(frames))
    token = current_invocation.set("inv-1")
    yield logger, frames
    current_invocation.reset(token)


def _deep(levels: int) -> list[object]:
    deep: list[object] = []
    for _ in range(levels):
        deep = [deep]
    return deep


@pytest.mark.parametrize(
    ("msg", "args", "why"),
    [
        ("deep %s", (_deep(sys.getrecursionlimit()),), "RecursionError: maximum recursion depth exceeded"),
        ("two %s %s", ("one",), "TypeError: not enough arguments for format string"),
        ("bad %s", (BadStr(),), "ValueError: no"),
        ("odd %s", (Unprintable(),), "SystemExit: not even str"),
    ],
    ids=["too-deep", "arguments", "str-raises", "str-exits"],
)
def test_a_message_that_cannot_be_formatted_is_sent_as_a_note(
    log: tuple[logging.Logger, Frames], msg: str, args: tuple[object, ...], why: str
) -> None:
    """1. A record whose message formatting raises (stack overflow, wrong arguments, a broken str(), even a
    BaseException). 2. A normal record.
    Result: the first is sent, tagged with the invocation at its level, as a line naming its format string
    and why it could not be formatted; the second as usual."""
    logger, frames = log
    logger.warning(msg, *args)
    logger.info("fine %s", 1)
    first, second = frames.sent
    assert first["inv"] == "inv-1" and first["lvl"] == logging.WARNING and first["name"] == "test.forward"
    assert first["msg"].startswith(f"log message {msg!r} could not be formatted: {why}")
    assert second["msg"] == "fine 1" and second["inv"] == "inv-1"


def test_a_message_object_that_cannot_be_printed_is_named_by_type(log: tuple[logging.Logger, Frames]) -> None:
    """1. A record whose message is an object with a broken str() and repr().
    Result: a line naming the object's type and why."""
    logger, frames = log
    logger.info(_deep(sys.getrecursionlimit()))
    [sent] = frames.sent
    assert sent["msg"].startswith("log message of type list could not be formatted: RecursionError")


def test_an_exception_with_a_broken_str_keeps_its_traceback(log: tuple[logging.Logger, Frames]) -> None:
    """1. `log.error(..., exc_info=True)` while handling an exception whose str() raises.
    Result: the line, then the traceback ending in the exception's name and the fallback text."""
    logger, frames = log
    try:
        raise BadStr()
    except BadStr:
        logger.error("invocation %s failed", "inv-1", exc_info=True)
    [sent] = frames.sent
    assert sent["msg"].startswith("invocation inv-1 failed\nTraceback (most recent call last):")
    assert sent["msg"].endswith("BadStr: <exception str() failed>")


def test_extra_values_that_cannot_be_printed_are_named_by_type(log: tuple[logging.Logger, Frames]) -> None:
    """1. A record with `extra` values whose str() raises. Result: sent, those values replaced by a note."""
    logger, frames = log
    logger.info("with extra", extra={"payload": _deep(sys.getrecursionlimit()), "odd": Unprintable(), "n": 3})
    [sent] = frames.sent
    assert sent["msg"] == "with extra"
    assert sent["x"] == {
        "payload": "<list could not be formatted>",
        "odd": "<Unprintable could not be formatted>",
        "n": 3,
    }


def test_extra_names_and_values_are_redacted(log: tuple[logging.Logger, Frames]) -> None:
    """1. A function with a secret logs with `extra` holding the secret as a value and as a name.
    Result: neither reaches the node; both are `***`."""
    logger, frames = log
    redact.install(["token_version_TWO"])
    try:
        logger.info("with extra", extra={"tok": "token_version_TWO", "token_version_TWO": "v"})
    finally:
        redact.install(())
    [sent] = frames.sent
    assert sent["x"] == {"tok": "***", "***": "v"}


def test_a_logger_named_after_a_secret_is_redacted() -> None:
    """1. A function with a secret logs through `logging.getLogger("client." + secret)`.
    Result: the record's name, which the node's log shows as its `source`, reaches the node as
    `client.***` (it went in clear)."""
    frames = Frames()
    logger = logging.Logger("client.token_version_TWO")
    logger.addHandler(ForwardHandler(frames))
    redact.install(["token_version_TWO"])
    try:
        logger.warning("hello")
    finally:
        redact.install(())
    [sent] = frames.sent
    assert sent["name"] == "client.***" and sent["msg"] == "hello"


def test_a_loop_held_up_outside_any_invocation_blames_no_function(caplog: pytest.LogCaptureFixture) -> None:
    """1. A watchdog on a loop. 2. A plain callback (no task: no invocation's code) blocks the loop 0.4 s;
    then a task named like an invocation blocks it 0.4 s.
    Result: the first report says the loop did not run while no invocation ran (the machine, not the
    function) and is not flagged `blocked` (the node counts flagged ones against the function); the second
    names the function and the invocation, is flagged, and carries the invocation's span (logged from the
    watchdog's thread, where no context variable says it)."""
    caplog.set_level(logging.WARNING, "faas.watchdog")
    loop = asyncio.new_event_loop()
    try:
        Watchdog(loop, "fn", "fn-1", {"inv-42": TP}.get).start()

        async def invocation() -> None:
            time.sleep(0.4)  # noqa: ASYNC251 - the blocking call under test

        def reports() -> int:
            return sum(r.name == "faas.watchdog" for r in caplog.records)

        async def reported(n: int) -> None:
            deadline = time.monotonic() + 10
            while reports() < n:  # the watchdog's thread reports once the loop runs again
                assert time.monotonic() < deadline, "no report"
                await asyncio.sleep(0.02)

        async def main() -> None:
            loop.call_soon(time.sleep, 0.4)
            await reported(1)
            await asyncio.create_task(invocation(), name="inv-42")
            await reported(2)

        loop.run_until_complete(main())
    finally:
        loop.close()
    found = [r for r in caplog.records if r.name == "faas.watchdog"]
    assert len(found) == 2, [r.getMessage() for r in found]
    idle, busy = found
    assert "while no invocation ran" in idle.getMessage() and not getattr(idle, "blocked", False)
    assert "function fn blocked the event loop" in busy.getMessage() and "inv-42" in busy.getMessage()
    assert getattr(busy, "blocked", False) is True
    assert getattr(busy, "traceparent", None) == TP and getattr(idle, "traceparent", None) is None


def test_a_line_naming_its_span_is_forwarded_in_that_span(log: tuple[logging.Logger, Frames]) -> None:
    """A record with a `traceparent` attribute (the watchdog's) goes with that span, not as an extra field;
    one without goes with none here (no invocation's span is set in this test)."""
    logger, frames = log
    logger.warning("blocked", extra={"traceparent": TP})
    logger.warning("plain")
    named, plain = frames.sent
    assert named["tp"] == TP and "traceparent" not in named.get("x", {})
    assert "tp" not in plain


def test_an_idle_instance_is_not_watched_until_an_invocation_wakes_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. A watchdog whose instance holds no invocation (`busy` false). 2. The loop is held up 0.4 s.
    3. An invocation comes (`wake`, `busy` true) and blocks the loop 0.4 s.
    Result: the heartbeat stopped once idle (no 20 Hz wake-ups: 1,000 idle instances took 129% of a core)
    and the idle stall is not reported (a loaded machine logged thousands of them); the invocation's is."""
    caplog.set_level(logging.WARNING, "faas.watchdog")
    loop = asyncio.new_event_loop()
    held = [False]
    try:
        dog = Watchdog(loop, "fn", "fn-1", busy=lambda: held[0])
        dog.start()

        def reports() -> int:
            return sum(r.name == "faas.watchdog" for r in caplog.records)

        async def main() -> None:
            deadline = time.monotonic() + 5
            while dog.ticking:  # its first beat finds nothing held, and stops
                assert time.monotonic() < deadline, "the heartbeat went on while idle"
                await asyncio.sleep(0.02)
            time.sleep(0.4)  # noqa: ASYNC251 - the loop held up while idle
            await asyncio.sleep(0.2)  # a look of the thread would have come meanwhile
            assert reports() == 0
            held[0] = True
            dog.wake()
            await asyncio.sleep(0)
            time.sleep(0.4)  # noqa: ASYNC251 - the invocation's stall
            while reports() < 1:
                assert time.monotonic() < deadline + 5, "no report of the invocation's stall"
                await asyncio.sleep(0.02)

        loop.run_until_complete(main())
    finally:
        loop.close()
    [found] = [r for r in caplog.records if r.name == "faas.watchdog"]
    assert "function fn blocked the event loop" in found.getMessage()  # the stall under the invocation


def test_notes_and_a_syntax_errors_text_are_cut_too() -> None:
    """An exception with a note of 1,000,000 characters; a SyntaxError whose message and source line are as
    long. Result: the traceback is bounded (the notes, and the SyntaxError's `msg` and `text`, which the
    formatter writes as they are, were whole)."""
    noted = ValueError("small")
    noted.add_note("n" * 1_000_000)
    long_line = SyntaxError("m" * 1_000_000, ("f.py", 1, 1, "t" * 1_000_000))
    for error in (noted, long_line):
        try:
            raise error
        except Exception as e:
            message, tb = failure_text(e, sys.exc_info()[2])
        assert len(message) < MAX_MESSAGE + 100 and len(tb) < 3 * MAX_MESSAGE, (len(message), len(tb))
        assert "more characters cut)" in tb


def test_a_message_cut_where_a_secret_spans_the_cut_leaks_no_part_of_it() -> None:
    """1. A function with a secret raises an exception whose message holds the secret across the
    MAX_MESSAGE-th character, after a message of MAX_MESSAGE - 5 characters. Result: the reply's message
    (`failure_text`, then redacted as the server does) is cut before the secret: not even its first 5
    characters are kept (cut at MAX_MESSAGE, they were, and redaction, which sees no whole secret, kept
    them); it says how many characters were cut."""
    secret = "token_version_TWO"
    redact.install([secret])
    try:
        error = ValueError("e" * (MAX_MESSAGE - 5) + secret + "tail")
        message, tb = failure_text(error, None)
        message, tb = redact.redact(message), redact.redact(tb)
    finally:
        redact.install(())
    assert secret[:5] not in message and secret[:5] not in tb
    assert message.endswith(f"e… ({len(secret) + len('tail')} more characters cut)")


class _Named(type):
    @property
    def __name__(cls) -> str:  # type: ignore[override]  # the oddity under test
        raise RuntimeError("name boom")


class _WeirdName(Exception, metaclass=_Named):
    pass


def test_an_exception_type_whose_name_raises_is_named_all_the_same() -> None:
    """An exception whose type's `__name__` raises (a metaclass's property). Result: its text and its
    traceback name it by the name it was created with (reading the name raised out of the server's
    handler of failures: the request was never answered)."""
    try:
        raise _WeirdName("odd")
    except _WeirdName as e:
        message, tb = failure_text(e, sys.exc_info()[2])
        assert exception_text(e) == "_WeirdName: odd"
    assert message == "_WeirdName: odd"
    assert tb.startswith("Traceback (most recent call last):") and tb.endswith("_WeirdName: odd\n")
