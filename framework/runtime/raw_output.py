"""What an instance writes below Python's streams, read by the node: its descriptors 1 and 2 are sockets.

An instance turns what Python code prints into log lines itself (`worker/watchdog.py`, `LogStream`). Bytes
that bypass Python's streams (`os.write(1, ...)`, a C library's `printf`, a subprocess the handler runs
without capturing its output) went to the descriptors the instance inherited: the node's own stdout,
untagged, or under `faas invoke` into the result on the terminal. So the node hands each instance two
stream sockets as its descriptors 1 and 2 (`template.py`) and reads their other ends on its loop: each line
becomes a log record of the instance, `stdout` at INFO and `stderr` at WARNING, tagged with its function and
instance, redacted here with the function's secrets (`worker/redact.Redactor`). Sockets, not pipes: the loop's
transport owns a socket outright (a pipe's descriptor would be closed twice, once by uvloop and once by its
file object, and the second close could hit a file another thread just opened).

Trade-offs: the instance pays nothing (no thread, no code: its idle memory stays as it was), and the lines
are read whatever the instance does, its loop blocked or the process killed (what a socket holds is read to
its end). Such a line carries no invocation (invocations run side by side, and a subprocess's bytes come
when they come), so it is in no invocation's record. A line goes out at its newline, at the end, or in
pieces of about `MAX_PARTIAL` bytes (a longer line is cut, whatever the reads brought at once), each cut
where no form of a secret spans it (`Redactor.cut`: every piece is redacted on its own) and on a UTF-8
character's boundary. The node spends nothing on an instance that writes nothing there, and at most
`LINES_PER_TURN` lines per loop iteration on one that floods: reading then pauses until the next
iteration, so the writer waits (its socket buffer full), not the node's other work.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import Callable

from framework.runtime.worker.redact import Redactor

MAX_PARTIAL = 64 * 1024
"""Bytes of a line without a newline kept before they go out as a line of their own."""
LINES_PER_TURN = 200
"""Lines logged per loop iteration, at most, from one socket (about 17 us each: a few ms per turn)."""

Emit = Callable[[str, int, str], None]
"""Called with (source: `stdout` or `stderr`, level, line) for each line, redacted."""

log = logging.getLogger("faas.runtime")


class RawLines(asyncio.Protocol):
    """One socket's lines; `done` is set at its end (every writer gone, or `close`)."""

    def __init__(self, source: str, level: int, emit: Emit, redactor: Redactor | None = None) -> None:
        self.source = source
        self.level = level
        self._emit = emit
        self._redactor = redactor or Redactor(())
        """The instance's secrets: each line is redacted with them, and a long one cut where none spans the
        cut (each piece is redacted on its own)."""
        self._buf = bytearray()
        self._lines: deque[bytes] = deque()
        self._paused = False
        self._ended = False
        self.transport: asyncio.Transport | None = None
        self._loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = self._loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        end = buf.rfind(b"\n")
        if end >= 0:
            for line in bytes(buf[:end]).split(b"\n"):
                self._add(line)
            del buf[: end + 1]
        # An unfinished line goes out in pieces once long, keeping back what a secret may begin in.
        while len(buf) > MAX_PARTIAL + self._redactor.bytes_hold:
            at = self._cut(buf)
            self._lines.append(bytes(buf[:at]))
            del buf[:at]
        self._turn()

    def _add(self, line: bytes) -> None:
        """Queue a line, in pieces of MAX_PARTIAL bytes at most when longer (whatever the reads brought at
        once)."""
        while len(line) > MAX_PARTIAL:
            at = self._cut(line)
            self._lines.append(line[:at])
            line = line[at:]
        self._lines.append(line)

    def _cut(self, data: bytes | bytearray) -> int:
        """Where a piece of `data` (longer than MAX_PARTIAL) ends: at MAX_PARTIAL or before, where no
        secret's form spans it and no UTF-8 character is split."""
        at = self._redactor.cut(data, MAX_PARTIAL)
        start = at
        while at > start - 3 and at > 1 and data[at] & 0xC0 == 0x80:  # a continuation byte: step back
            at -= 1
        return at if at > 0 else MAX_PARTIAL

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self._buf:
            self._add(bytes(self._buf))
            self._buf.clear()
        self._ended = True
        self._turn()

    def close(self) -> None:
        """Stop reading (what is unread is dropped): the instance is long gone, a process it left holds
        the socket."""
        if self.transport is not None:
            self.transport.close()

    def _turn(self) -> None:
        """Log up to LINES_PER_TURN lines; pause reading and come back next iteration if more are left."""
        lines = self._lines
        for _ in range(min(len(lines), LINES_PER_TURN)):
            self._line(lines.popleft())
        if lines:
            if not self._paused and not self._ended and self.transport is not None:
                self._paused = True
                self.transport.pause_reading()
            self._loop.call_soon(self._turn)
            return
        if self._paused and not self._ended and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        if self._ended and not self.done.done():
            self.done.set_result(None)

    def _line(self, raw: bytes) -> None:
        try:
            self._emit(self.source, self.level, self._redactor(raw.decode("utf-8", "replace")))
        except Exception:  # a bug in the emitter must not end the reading (and block the writer)
            log.exception("a raw output line of an instance was lost")


async def read_socket(
    sock: socket.socket, source: str, level: int, emit: Emit, redactor: Redactor | None = None
) -> RawLines:
    """Read `sock` (taken over: closed with the transport) on the running loop, its lines redacted with
    `redactor`'s secrets."""
    loop = asyncio.get_running_loop()
    try:
        _, protocol = await loop.create_unix_connection(
            lambda: RawLines(source, level, emit, redactor), sock=sock
        )
    except BaseException:
        sock.close()
        raise
    return protocol
