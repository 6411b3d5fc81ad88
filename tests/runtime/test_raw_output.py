"""Output below Python's streams (framework/runtime/raw_output.py): `os.write` to descriptors 1 and 2 and a
subprocess's output reach the node's log as lines of the instance, never the node's own stdout."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import orjson
import pytest

from framework.control.spec import FunctionSpec
from framework.runtime.pools import Runtime
from framework.runtime.raw_output import LINES_PER_TURN, MAX_PARTIAL, RawLines
from framework.runtime.template import Template
from framework.runtime.worker.redact import Redactor
from framework.settings import Settings
from framework.types import Invocation
from tests.runtime.conftest import until
from tests.support import run_cli, write_project

RAW = """
import os, subprocess, sys

os.write(1, b"raw at import\\n")

async def handle(payload, ctx):
    os.write(1, b"fd1 in call\\n")
    os.write(2, b"fd2 in call\\n")
    subprocess.run([sys.executable, "-c", "print('child out')"], check=True)
    e = "d\\u00e9j\\u00e0 vu\\n".encode()
    os.write(1, e[:2])  # a UTF-8 character split between two writes
    os.write(1, e[2:])
    os.write(1, b"no newline yet")
    return {"r": payload}

async def colours(payload, ctx):
    print("\\x1b[31mred\\x1b[0m and a NUL \\x00 here", flush=True)
    os.write(2, b"raw \\x1b[2J clear\\n")
    return 1

async def big(payload, ctx):
    view = memoryview(b"x" * 200_000 + b"\\n")
    while view:  # the loop blocked meanwhile: only the node reads the pipe
        view = view[os.write(2, view):]
    return "done"
"""


def project(tmp_path: Path) -> Path:
    u = str(uuid.uuid4())
    manifest = f"functions:\n  - name: raw\n    uuid: {u}\n    handler: functions.raw:handle\n"
    return write_project(tmp_path, manifest, {"raw": RAW})


def spec(tmp_path: Path, attr: str) -> FunctionSpec:
    """A function of `project(tmp_path)` running `functions.raw:<attr>`."""
    root = project(tmp_path)
    return FunctionSpec(name=attr, uuid=str(uuid.uuid4()), handler=f"functions.raw:{attr}", root=root)


@contextlib.asynccontextmanager
async def started() -> AsyncIterator[Runtime]:
    runtime = Runtime(Settings(log_level="INFO"))
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.stop(1)


async def test_raw_output_becomes_lines_of_the_instance(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A handler module writes to descriptor 1 at import; its handler writes to 1 and 2 with `os.write`,
    runs a subprocess that prints, writes a UTF-8 character in two parts, and ends with text and no newline.
    2. The function is no longer served: its instance is closed and exits.
    Result: the result is the handler's alone; after 1, each line is a log record of the instance (its
    function and instance id, no invocation): `stdout` at INFO, `stderr` at WARNING, the split character
    whole; after 2, the unfinished line too, read at the pipe's end."""
    caplog.set_level(logging.INFO)
    fn = spec(tmp_path, "handle")
    async with started() as runtime:
        res = await runtime.invoke(fn, Invocation("inv-raw", "direct", None, b"7"))
        assert orjson.loads(res.result) == {"r": 7}

        def lines() -> dict[str, tuple[int, str, object, object, object]]:
            return {
                r.getMessage(): (
                    r.levelno,
                    getattr(r, "source", ""),
                    getattr(r, "function", None),
                    getattr(r, "instance_id", None),
                    getattr(r, "invocation_id", None),
                )
                for r in caplog.records
                if r.name == "faas.instance"
            }

        want = {
            "raw at import": (logging.INFO, "stdout"),
            "fd1 in call": (logging.INFO, "stdout"),
            "fd2 in call": (logging.WARNING, "stderr"),
            "child out": (logging.INFO, "stdout"),
            "d\u00e9j\u00e0 vu": (logging.INFO, "stdout"),
        }
        await until(lambda: want.keys() <= lines().keys(), message=f"the lines {list(want)}")
        got = lines()
        for text, (level, source) in want.items():
            assert got[text] == (level, source, fn.name, res.instance_id, None), (text, got[text])
        assert "no newline yet" not in got
        runtime.apply([])
        await until(lambda: "no newline yet" in lines(), message="the unfinished line as the instance exits")
        assert lines()["no newline yet"] == (logging.INFO, "stdout", fn.name, res.instance_id, None)


async def test_a_line_longer_than_a_pipe_holds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A handler writes 200,000 bytes and a newline to descriptor 2 from its blocked event loop. Result: it
    returns (the node reads the socket meanwhile); the bytes reach the node's log as WARNING lines of at
    most MAX_PARTIAL each, 200,000 `x` in all."""
    caplog.set_level(logging.INFO)
    async with started() as runtime:
        res = await runtime.invoke(spec(tmp_path, "big"), Invocation("inv-big", "direct", None, b"null"))
        assert orjson.loads(res.result) == "done"

        def xs() -> list[logging.LogRecord]:
            return [r for r in caplog.records if r.name == "faas.instance" and r.getMessage().startswith("x")]

        await until(lambda: sum(len(r.getMessage()) for r in xs()) >= 200_000, message="every byte")
        assert sum(len(r.getMessage()) for r in xs()) == 200_000
        assert all(r.levelno == logging.WARNING and len(r.getMessage()) <= MAX_PARTIAL for r in xs())


def test_faas_invoke_prints_the_result_alone(tmp_path: Path) -> None:
    """`faas invoke raw` of a handler writing to descriptor 1 (itself and through a subprocess), ending with
    text and no newline. Result: stdout is the result JSON alone (a script can parse it); the raw lines
    are on stderr, in the log, the unfinished one too: the run waits for the pipes' end."""
    root = project(tmp_path)
    r = run_cli(root, "invoke", "raw", "--data", "5")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"r": 5} and r.stdout.count("\n") == 1, r.stdout
    for line in ("raw at import", "fd1 in call", "fd2 in call", "child out", "no newline yet"):
        assert line in r.stderr, (line, r.stderr)


def test_control_characters_a_handler_prints_are_escaped_in_the_text_log(tmp_path: Path) -> None:
    """`faas invoke colours` of a handler printing colour codes and a NUL, and writing a screen clear to
    descriptor 2. Result: the log (text format, for a terminal) shows them escaped (`\\x1b`), none raw:
    a handler cannot drive the operator's terminal."""
    manifest = (
        f"functions:\n  - name: colours\n    uuid: {uuid.uuid4()}\n    handler: functions.raw:colours\n"
    )
    root = write_project(tmp_path, manifest, {"raw": RAW})
    r = run_cli(root, "invoke", "colours", env={"FAAS_LOG_FORMAT": "text"})
    assert r.returncode == 0, r.stderr
    assert "\\x1b[31mred\\x1b[0m and a NUL \\x00 here" in r.stderr, r.stderr
    assert "raw \\x1b[2J clear" in r.stderr, r.stderr
    assert "\x1b" not in r.stderr and "\x00" not in r.stderr, r.stderr


class Transport:
    """Stands in for the loop's transport: records pauses and resumes."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")

    def close(self) -> None:
        self.calls.append("close")


async def test_a_flood_is_logged_a_turn_at_a_time() -> None:
    """1. One read brings 1,000 lines. 2. The loop turns. 3. The socket ends with a partial line.
    Result: 1 logs LINES_PER_TURN lines and pauses reading (the writer waits, not the loop); 2 logs the rest
    over the next turns, then resumes reading; 3 logs the partial line and sets `done`."""
    got: list[str] = []
    lines = RawLines("stdout", logging.INFO, lambda source, level, text: got.append(text))
    transport = Transport()
    lines.connection_made(transport)  # type: ignore[arg-type]
    lines.data_received(b"".join(b"line %d\n" % i for i in range(1000)))
    assert len(got) == LINES_PER_TURN and transport.calls == ["pause"]
    await until(lambda: len(got) == 1000, message="every line")
    assert got == [f"line {i}" for i in range(1000)]
    await until(lambda: transport.calls == ["pause", "resume"], message="reading resumed")
    lines.data_received(b"partial")
    lines.connection_lost(None)
    await asyncio.wait_for(lines.done, 5)
    assert got[-1] == "partial" and len(got) == 1001


SECRET = "supersecretvalue1 \u00e9t\u00e9"


@pytest.mark.parametrize(
    "chunks",
    [
        [b"B2 " + b"z" * (MAX_PARTIAL - 8) + SECRET.encode() + b" tail\n"],  # one read, one long line
        [b"B2 " + b"z" * (MAX_PARTIAL - 8) + SECRET.encode()[:9], SECRET.encode()[9:] + b" tail", b"\n"],
        [b"q" * (MAX_PARTIAL - 1) + "\u00e9".encode() + b"r" * 99, b"\n"],  # a character on the bound
    ],
    ids=["whole-line", "partial-line-in-reads", "utf8-on-the-bound"],
)
async def test_long_raw_lines_are_cut_around_secrets_and_characters(chunks: list[bytes]) -> None:
    """1. A function with a secret (non-ASCII) writes below Python's streams a line longer than
    MAX_PARTIAL with the secret on the bound: in one read, or in reads that split it; or a two-byte
    character on the bound. 2. The node redacts each piece, as it does.
    Result: the pieces put together are the line, the secret replaced; no piece holds part of it (each
    piece used to be cut at MAX_PARTIAL exactly and redacted alone); no character is split in two."""
    secrets = Redactor([SECRET])
    got: list[str] = []
    lines = RawLines("stdout", logging.INFO, lambda source, level, text: got.append(text), secrets)
    lines.connection_made(Transport())  # type: ignore[arg-type]
    for chunk in chunks:
        lines.data_received(chunk)
    lines.connection_lost(None)
    await asyncio.wait_for(lines.done, 5)
    text = b"".join(chunks)[:-1].decode()
    assert len(got) == 2 and "".join(got) == text.replace(SECRET, "***"), [g[-30:] for g in got]
    assert all(SECRET[:4] not in g and SECRET[-4:] not in g and "\ufffd" not in g for g in got)


def test_a_failed_spawn_leaves_no_descriptor_open(monkeypatch: pytest.MonkeyPatch) -> None:
    """`Template.spawn` whose template cannot be started (out of descriptors, say) raises, and every socket
    it made for the instance is closed: ten failures leave as many descriptors open as before."""
    template = Template()

    def refuse() -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(template, "start", refuse)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(10):
        with pytest.raises(OSError, match="Too many open files"):
            template.spawn({"function": "f"})
    assert len(os.listdir("/proc/self/fd")) == before
