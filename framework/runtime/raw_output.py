"""What an instance writes below Python's streams, read by the node: its descriptors 1 and 2 are pipes.

An instance turns what Python code prints into log lines itself (`worker/watchdog.py`, `LogStream`). Bytes
that bypass Python's streams (`os.write(1, ...)`, a C library's `printf`, a subprocess the handler runs
without capturing its output) went to the descriptors the instance inherited: the node's own stdout,
untagged, or under `faas invoke` into the result on the terminal. So the node hands each instance two pipes
as its descriptors 1 and 2 (`template.py`) and reads their other ends on its loop: each line becomes a log
record of the instance, `stdout` at INFO and `stderr` at WARNING, tagged with its function and instance,
redacted with the function's secrets (`worker/redact.Redactor`).

Trade-offs: the instance pays nothing (no thread, no code: its idle memory stays as it was), and the lines
are read whatever the instance does, its loop blocked or the process killed (what a pipe holds is read to
its end). Such a line carries no invocation (invocations run side by side, and a subprocess's bytes come
when they come), so it is in no invocation's record. A line without a newline goes out at `MAX_PARTIAL`
bytes or at the pipe's end. The node spends nothing on an instance that writes nothing there.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

MAX_PARTIAL = 64 * 1024
"""Bytes of a line without a newline kept before they go out as a line of their own."""

Emit = Callable[[str, int, str], None]
"""Called with (source: `stdout` or `stderr`, level, line) for each line."""


class RawLines(asyncio.Protocol):
    """One pipe's lines; `done` is set at its end (every writer gone)."""

    def __init__(self, source: str, level: int, emit: Emit) -> None:
        self.source = source
        self.level = level
        self._emit = emit
        self._buf = bytearray()
        self.transport: asyncio.BaseTransport | None = None
        self.done = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        end = buf.rfind(b"\n")
        if end >= 0:
            for line in bytes(buf[:end]).split(b"\n"):
                self._line(line)
            del buf[: end + 1]
        if len(buf) >= MAX_PARTIAL:
            self._line(bytes(buf))
            buf.clear()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._buf:
            self._line(bytes(self._buf))
            self._buf.clear()
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        """Stop reading (what is unread is dropped): the instance is long gone, a process it left holds
        the pipe."""
        if self.transport is not None:
            self.transport.close()

    def _line(self, raw: bytes) -> None:
        try:
            self._emit(self.source, self.level, raw.decode("utf-8", "replace"))
        except Exception:  # a bug in the emitter must not end the reading (and block the writer)
            logging.getLogger("faas.runtime").exception("a raw output line of an instance was lost")


async def read_pipe(fd: int, source: str, level: int, emit: Emit) -> RawLines:
    """Read the pipe's end `fd` (taken over: closed with the transport) on the running loop."""
    loop = asyncio.get_running_loop()
    pipe = os.fdopen(fd, "rb", buffering=0)
    try:
        _, protocol = await loop.connect_read_pipe(lambda: RawLines(source, level, emit), pipe)
    except BaseException:
        pipe.close()
        raise
    return protocol
