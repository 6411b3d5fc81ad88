"""The node's HTTP socket, bound before anything else starts, and the HTTP/1.1 protocol on it.

uvicorn binds its port when its server starts, which in a node comes after the Kafka consumer has joined
its group: a node whose port was taken then took partitions from the live nodes (two rebalances) on its
way out, and logged "serving on :0" for an ephemeral port. Binding first fails such a start before any
side effect, and tells the real port. The socket is handed to uvicorn (`Server.serve(sockets=...)`).

A request that is not valid HTTP/1.1 (a `Content-Length: abc`, a header with a control character) never
reaches the app: uvicorn's protocol answers it 400 itself, in plain text. `protocol()` is uvicorn's own
(httptools when installed, else h11) with that one answer in the contract's shape (DESIGN.md section 5:
`{"error": {"type": "BadRequest", "message"}}`).

uvicorn bounds neither the size of a request's head (request line and headers) under httptools nor the
time it may take to arrive under either parser, and the app never sees a request before its head is
complete. So one client could hold a connection for ever with a head sent a byte at a time, or with
none at all, and a head of hundreds of MiB grew the node's memory and stalled its event loop for
seconds (httptools joins a header's pieces as they come, at a cost that grows with the square of its
length). The protocol here adds both bounds, each answered with the same 400, then a lingering close
(`LINGER`), as for every 400 of the protocol:

- `HEAD_LIMIT` (64 KiB) of head: a complete head over it is refused before its request starts, and one
  still arriving once the bytes read after its first read exceed it (h11: 16 KiB, its own bound).
- `head_timeout` seconds (`FAAS_HTTP_BODY_TIMEOUT` when the node passes it, else 10) for a head to
  arrive, counted from the connection's opening or its previous answer. A connection that sent no byte
  of a new request by then is closed without an answer, as uvicorn closes an idle keep-alive one.
  A request being served is not timed here: its body and its function have their own bounds. Time the
  node stood still (stopped, a paused VM) does not count: a head sent meanwhile waits unread, and the
  timer that finds it due counts the stop first (`framework/run_clock.py`).

The cost is one timer per connection, re-armed once per `head_timeout` while the connection lives, and
four overridden parser callbacks per request (under 1 us in all, measured with `timeit` in process).
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
from typing import Any

import h11
import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol

from framework.run_clock import RUN_CLOCK, keep


class BindError(Exception):
    """The address cannot be bound; the message is uvicorn's wording for the same failure."""


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on `host`:`port` (0: a free port): IPv6 when `host` holds a colon, else IPv4
    (a name such as `localhost` binds its IPv4 address), as uvicorn's own `bind_socket`. `backlog` is
    uvicorn's default."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host.strip("[]"), port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        why = (exc.strerror or str(exc)).lower()
        raise BindError(f"error while attempting to bind on address {(host, port)!r}: {why}") from None
    sock.setblocking(False)
    return sock


HEAD_LIMIT = 64 * 1024
"""Bytes of a request's head (request line and headers) the node reads, under httptools."""
HEAD_TIMEOUT = 10.0
"""Seconds a request's head may take to arrive, unless `protocol()` is given another bound."""
LINGER = 2.0
"""Seconds a connection refused with a 400 stays open to read (and drop) what the client still sends.
Closed at once, a socket with unread bytes is reset, and the reset can reach the client before it read
the answer: a client still sending a body or a head too large lost the 400 for "connection reset". The
answer is followed by a FIN, so a client that reads it closes its side, which ends the wait sooner."""


def _bad_request(msg: str) -> bytes:
    """A 400 answer to bytes that are not an HTTP request, in the contract's body; the connection closes."""
    body = orjson.dumps({"error": {"type": "BadRequest", "message": f"not a valid HTTP/1.1 request ({msg})"}})
    head = f"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"connection: close\r\n\r\n" + body


class _ContractBadRequest:
    """Mixed into uvicorn's protocols: their one plain-text answer, in the contract's shape, and a
    lingering close after it (see `LINGER`). Bytes that do not parse after pipelined requests are answered
    after those (HTTP/1.1 answers in order): uvicorn wrote its 400 at once, then closed the connection
    under the request being served, whose answer was lost ("Cannot call write() after write_eof()" in the
    node's log) and whose invocation was cancelled as if its caller had left."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    cycle: Any
    """uvicorn's request-response cycle of the last request parsed (None before the first request)."""
    _refused = False
    """The 400 is due: what the client still sends is read and dropped until the connection closes."""
    _held: str | None = None
    """The message of a 400 due once the requests before it are answered."""

    def send_400_response(self, msg: str) -> None:
        self._refused = True
        cycle = getattr(self, "cycle", None)
        # Held only behind whole requests: bytes that break the body of the request being read refuse it
        # at once (its app would wait for the rest of a body that never parses).
        if cycle is not None and not (cycle.response_complete or cycle.disconnected or cycle.more_body):
            self._held = msg
            return
        self._refuse(msg)

    def on_response_complete(self) -> None:
        uvicorn_protocol: Any = super()
        uvicorn_protocol.on_response_complete()  # starts the next pipelined request, if any
        held = self._held
        if held is not None and self.cycle.response_complete and not self.transport.is_closing():
            self._held = None
            self._refuse(held)

    def _refuse(self, msg: str) -> None:
        self.transport.write(_bad_request(msg))
        if not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.loop.call_later(LINGER, self.transport.close)


class _HeadDeadline(_ContractBadRequest, asyncio.Protocol):
    """Mixed into either uvicorn protocol: a request's head must arrive within `head_timeout` seconds of
    the connection's opening or its previous answer (see the module's docstring)."""

    head_timeout = HEAD_TIMEOUT
    loop: asyncio.AbstractEventLoop
    cycle: Any
    """uvicorn's request-response cycle in progress (None before the first request)."""
    _waiting_since = 0.0
    """Since when the connection waits for a request's head (`RUN_CLOCK` time: a node that stood still
    meanwhile does not count that time)."""
    _head_begun = False
    """A byte of the awaited head arrived."""
    _timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        keep(self.loop)
        self._waiting_since = RUN_CLOCK.now(self.loop)
        self._timer = self.loop.call_later(self.head_timeout, self._check_head)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            self._head_begun = True
        super().data_received(data)

    def on_response_complete(self) -> None:
        self._waiting_since = RUN_CLOCK.now(self.loop)
        self._head_begun = False
        uvicorn_protocol: Any = super()
        uvicorn_protocol.on_response_complete()

    def _check_head(self) -> None:
        self._timer = None
        if self._refused or self.transport.is_closing():
            return
        RUN_CLOCK.sample()  # a stop just ended is counted: the head may wait unread (`run_clock.py`)
        now = RUN_CLOCK.now(self.loop)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            due = now + self.head_timeout  # a request being served: checked again after it
        else:
            due = self._waiting_since + self.head_timeout
            if now >= due:
                if self._head_begun:
                    self.send_400_response(f"its head did not arrive within {self.head_timeout:g} s")
                else:
                    self.transport.close()  # nothing asked: closed as an idle keep-alive connection is
                return
        self._timer = self.loop.call_at(RUN_CLOCK.at(due), self._check_head)


TOO_LARGE = f"its head is over {HEAD_LIMIT // 1024} KiB"


class _HeadTooLarge(Exception):
    """Raised from the parser's callback to stop it; uvicorn then answers its 400 (`_HeadLimit`)."""


class _HeadLimit(_HeadDeadline):
    """The httptools protocol's bound on a head's size (h11 has its own). The parser's callbacks say where
    a head begins and ends. A complete head is measured exactly when it may be over the bound (the read
    it ended in, plus the reads before, exceed it); a head still arriving is refused once the reads after
    the one it began in exceed the bound, so at most one read (256 KiB) more is taken in."""

    _in_head = False
    _head_bytes = 0
    """Bytes of the reads after the one the head began in."""
    _read = 0
    """Bytes of the read being parsed."""
    _why = ""
    """Why the parser was stopped, for uvicorn's answer to it."""

    def on_message_begin(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        uvicorn_protocol: Any = super()
        uvicorn_protocol.on_message_begin()

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_bytes + self._read > HEAD_LIMIT and self._head_size() > HEAD_LIMIT:
            self._why = TOO_LARGE
            raise _HeadTooLarge  # the request never starts
        uvicorn_protocol: Any = super()
        uvicorn_protocol.on_headers_complete()

    def _head_size(self) -> int:
        """The head's bytes as parsed: the target, and each header with its `: ` and line end."""
        headers: list[tuple[bytes, bytes]] = getattr(self, "headers", None) or []
        url: bytes = getattr(self, "url", b"")
        return len(url) + sum(len(name) + len(value) + 4 for name, value in headers)

    def data_received(self, data: bytes) -> None:
        self._read = len(data)
        continued = self._in_head
        super().data_received(data)
        if continued and self._in_head and not self._refused and not self.transport.is_closing():
            self._head_bytes += len(data)
            if self._head_bytes > HEAD_LIMIT:
                self.send_400_response(TOO_LARGE)

    def send_400_response(self, msg: str) -> None:
        # uvicorn words any callback's error "Invalid HTTP request received.": `_why` says which it was.
        super().send_400_response(self._why or msg)


class _H11HeadLimit(_HeadDeadline):
    """The h11 protocol's bound on a head's size. h11 bounds a head still arriving (16 KiB,
    `h11_max_incomplete_event_size`) but parses one that came whole in a read, whatever its size: each
    request it parses is measured here, and one over the bound is refused as h11 refuses what does not
    parse."""

    conn: Any
    """uvicorn's `h11.Connection`."""
    _why = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        parse = self.conn.next_event

        def next_event() -> object:
            event = parse()
            if isinstance(event, h11.Request):
                size = len(event.target) + sum(len(n) + len(v) + 4 for n, v in event.headers.raw_items())
                if size > HEAD_LIMIT:
                    self._why = TOO_LARGE
                    raise h11.RemoteProtocolError(TOO_LARGE)  # the request never starts
            return event

        self.conn.next_event = next_event

    def send_400_response(self, msg: str) -> None:
        super().send_400_response(self._why or msg)


def protocol(head_timeout: float = HEAD_TIMEOUT) -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol class (httptools' parser when installed: what "auto" picks) whose
    answer to a request that does not parse is the contract's 400 body, not plain text, and whose
    requests' heads are bounded in size and in time (`head_timeout` seconds)."""
    bounds = {"head_timeout": head_timeout}
    if importlib.util.find_spec("httptools") is None:
        return type("H11Protocol", (_H11HeadLimit, H11Protocol), bounds)
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return type("HttpToolsProtocol", (_HeadLimit, HttpToolsProtocol), bounds)
