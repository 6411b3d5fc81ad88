"""Frames between the node and its instances.

A frame is `length (4 bytes, big-endian) | kind (1 byte) | header length (4 bytes) | header | tail`.
The header is a small orjson object; the tail is raw bytes spliced in as is. Payloads and results travel in
the tail, so the node never parses or re-encodes a handler's JSON (the hot path stays a memcpy). A header
with an integer `"r"` says the tail's last `r` bytes are a trailer (an invocation record), handed over
apart.

Each instance has two socket pairs to its node:
- the *main* channel (asyncio on both ends): HELLO / INIT_ERROR, REQUEST, REPLY, CANCEL;
- the *log* channel (blocking writes from any thread of the instance, so a watchdog can still report while
  the instance's loop is blocked): LOG records.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from enum import IntEnum
from typing import Any, cast

import orjson

Header = dict[str, Any]
FrameHandler = Callable[[int, Header, bytes], None]

_LEN = struct.Struct(">I")
_HEAD = struct.Struct(">IBI")  # frame length (bytes after these 4), kind, header length
MAX_FRAME = 256 * 1024 * 1024
"""Frames above this (bytes) are a protocol error: the channel is closed."""
MAX_RESULT = MAX_FRAME - 16 * 1024 * 1024
"""Bytes of JSON a handler may return: what a REPLY frame holds, less room for its header and the
invocation's record (which its caps keep to kilobytes). A larger result is the handler's error, answered
as one, not a frame that would break the channel and crash the instance with every request it holds."""


class FrameKind(IntEnum):
    HELLO = 1
    """instance → node, once the handler imported: `{"pid"}`, and `"threads"` (how many `def` calls it runs
    at once) for a `def` handler."""
    INIT_ERROR = 2
    """instance → node: the handler failed to import: `{"msg", "tb"}`."""
    REQUEST = 3
    """node → instance: `{"id", "inv", "t" (trigger), "e" (event), "c" (cold start)}` + raw payload JSON;
    optional `"ev"` (event identity: `{"id", "src", "sub", "time", "key", "ext"}`), `"tp"` (traceparent),
    `"ts"` (tracestate), `"a"` (attempt, default 1), `"s"` (epoch seconds the pool took it: the node wants
    its record)."""
    REPLY = 4
    """instance → node: `{"id", "ms"}` + raw result JSON, or `{"id", "ms", "err", "msg", "tb"}`; when the
    request had `"s"`, the invocation's record (JSON, with what it logged: observe/record_json.py,
    worker/capture.py) as the frame's trailer (`"r"`, see `FrameProtocol.send`). `{"id", "gone": 1}`: a
    request the node cancelled has ended (the node watches its time limit until then)."""
    CANCEL = 5
    """node → instance: `{"id"}`; the caller gave up (no answer expected, only the `gone` REPLY)."""
    LOG = 6
    """instance → node on the log channel: `{"lvl", "name", "msg", "inv", "blocked"}`; optional `"tp"` (the
    invocation's traceparent) and `"x"` (the record's own `extra` fields)."""
    HELD = 7
    """instance → node, `def` handlers only: `{"n"}`, how many of its threads still run calls whose callers
    were answered (timed out or cancelled), each time that changes (`worker/threads.py`)."""


def encode(kind: int, header: Header, tail: bytes = b"") -> bytes:
    """One frame as bytes (the tail is copied once, into the frame)."""
    head = orjson.dumps(header)
    return _HEAD.pack(5 + len(head) + len(tail), kind, len(head)) + head + tail


class FrameProtocol(asyncio.Protocol):
    """asyncio side of a channel: splits the byte stream into frames and hands each to `on_frame`.

    `on_close(exc)` runs once when the peer closes or the connection breaks (EOF = the peer process is gone).
    """

    def __init__(self, on_frame: FrameHandler, on_close: Callable[[Exception | None], None]) -> None:
        self._on_frame = on_frame
        self._on_close = on_close
        self._buf = bytearray()
        self._out: list[bytes] = []
        self._window = False
        """A frame was written this loop iteration: later ones queue until `flush`."""
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it
        self._loop: asyncio.AbstractEventLoop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        buf = self._buf
        if buf:
            buf += data
            off = self._split(buf)
            if off > 0:
                del buf[:off]
            return
        # Usually whole frames arrive in one read: parsed straight from `data`, no copy into the buffer.
        off = self._split(data)
        if 0 <= off < len(data):
            buf += memoryview(data)[off:]

    def _split(self, buf: bytes | bytearray) -> int:
        """Hand every whole frame in `buf` to `on_frame`; returns the bytes used (-1: closed)."""
        off, n = 0, len(buf)
        while n - off >= 9:
            size, kind, hlen = _HEAD.unpack_from(buf, off)
            if size > MAX_FRAME or hlen > size - 5:
                self.close()
                return -1
            end = off + 4 + size
            if end > n:
                break
            hs = off + 9
            header = orjson.loads(memoryview(buf)[hs : hs + hlen])
            trailer = header.get("r")
            if type(trailer) is int and 0 < trailer <= end - hs - hlen:
                header["r"] = bytes(buf[end - trailer : end])  # each part copied once, straight out
                end_of_tail = end - trailer
            else:
                header.pop("r", None)
                end_of_tail = end
            tail = bytes(buf[hs + hlen : end_of_tail])
            off = end
            self._on_frame(kind, header, tail)
        return off

    def eof_received(self) -> bool:
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self.closed = True
            self._on_close(exc)

    def send(self, kind: int, header: Header, tail: bytes = b"", trailer: bytes = b"") -> None:
        """Send one frame; silently dropped when the channel is already closed (the peer is gone).

        A `trailer` goes after the tail, its length in the header's `r`; the receiver hands it over apart,
        as `header["r"]` (bytes), so neither side copies the tail to join or split the two.

        The first frame of a loop iteration is written at once (no added latency for a lone request);
        frames after it in the same iteration are queued and go out together in one write at its end:
        one syscall (and one wake-up of the peer) for a burst of requests or replies, not one per frame.
        """
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if trailer:
            header["r"] = len(trailer)
        head = orjson.dumps(header)
        prefix = _HEAD.pack(5 + len(head) + len(tail) + len(trailer), kind, len(head)) + head
        if self._window:
            self._out.append(prefix)
            if tail:
                self._out.append(tail)
            if trailer:
                self._out.append(trailer)
            return
        transport.write(b"".join((prefix, tail, trailer)) if tail or trailer else prefix)
        self._window = True
        self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the queued frames now (runs by itself at the end of the loop iteration)."""
        self._window = False
        out = self._out
        if not out:
            return
        self._out = []
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.write(out[0] if len(out) == 1 else b"".join(out))

    def close(self) -> None:
        if self.transport is not None:
            self.flush()  # frames queued before the close still go out (asyncio flushes on close)
            self.transport.close()


async def connect(
    sock: socket.socket, on_frame: FrameHandler, on_close: Callable[[Exception | None], None]
) -> FrameProtocol:
    """Wrap one end of a socket pair in a `FrameProtocol` on the running loop."""
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_unix_connection(lambda: FrameProtocol(on_frame, on_close), sock=sock)
    return proto


class BlockingSender:
    """Thread-safe blocking writer of frames on one socket (the instance's log channel).

    Blocking on purpose: it must work from the watchdog thread while the instance's loop is stuck.
    Errors (the node is gone) are swallowed; the instance exits on its own when its main channel closes.
    """

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self._sock = sock
        self._lock = threading.Lock()

    def send(self, kind: int, header: Header, tail: bytes = b"") -> None:
        frame = encode(kind, header, tail)
        with self._lock, contextlib.suppress(OSError):
            self._sock.sendall(frame)
