"""Reading a request body as a JSON payload: the size limit (413), the arrival deadline, JSON validity (400).

uvicorn bounds neither how long a body may take to arrive nor the pause between its chunks: a client that
sends fewer bytes than its `Content-Length` (or stops a chunked body) would hold a request, and whatever
it queued for, for ever. A body that brings no byte for `FAAS_HTTP_BODY_TIMEOUT` seconds is answered 400.
The deadline is kept by one sweep per second over the reads in progress, not a timer per request:
`asyncio.timeout` costs about 5 us per request on this path, a dict entry about 0.2 us. Time the node stood
still (stopped, a paused VM) does not count: what the client sent meanwhile waits unread, not stalled
(`framework/run_clock.py`).

A body over the limit is still read, and thrown away, up to `LINGER_BYTES`, before the 413 goes out (nginx's
lingering close): a server that answers and closes while the client is still sending resets the
connection, and most clients (httpx, requests, `faas invoke --url`) then report the reset, "connection
reset by peer", and never the 413 waiting in their receive buffer. A body declared beyond `LINGER_BYTES`,
or one whose client waits for `100 Continue` before sending it, is refused before a byte is read. A request
answered without its body being wanted (an unknown function or route, a missing key) gets the same lingering
read (`discard`).

A stopping node gives in-flight requests its grace, then uvicorn cancels what is left and answers it with a
plain-text 500. So the node tells the reader when the grace is about to end (`drain_by`), and the requests
still waiting for their body then are answered 429 `Overloaded` ("the node is stopping") in the contract's
shape instead: the client learns to send it again, elsewhere.
"""

from __future__ import annotations

import asyncio
import contextvars

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope

from framework.errors import BadRequest, Overloaded, PayloadTooLarge
from framework.run_clock import RUN_CLOCK, keep

NULL = b"null"
SWEEP_EVERY = 1.0
"""Seconds between sweeps: a stalled body is answered within its timeout plus this."""
LINGER_BYTES = 64 * 1024 * 1024
"""Bytes of a body over the limit read and thrown away before its 413 is sent (64 MiB: about half a second
at 1 Gb/s); beyond it the connection is closed under the client."""
LINGER_IDLE = 5.0
"""Seconds `discard` waits for the next piece of a body nobody asked for (nginx's `lingering_timeout`): a
client without a key cannot hold a request longer by trickling one."""
LINGER_SECONDS = 30.0
"""Seconds such a body may take in all (nginx's `lingering_time`): a client trickling it, a byte per
FAAS_HTTP_BODY_TIMEOUT, gets its 413 then, and the connection is closed under it."""


def _waits_to_send(scope: Scope) -> bool:
    """Whether the client sends its body only after a `100 Continue` (`Expect: 100-continue`, curl's habit
    above 1 MB): then a 413 reaches it without reading anything."""
    return any(name == b"expect" and value.lower() == b"100-continue" for name, value in scope["headers"])


def _framing(scope: Scope) -> tuple[int | None, bytes | None]:
    """The `Content-Length` header as an int (None: absent or not a number) and the `Transfer-Encoding`
    header, from the raw ASGI headers (no Headers object)."""
    length = coding = None
    for name, value in scope["headers"]:
        if name == b"content-length":
            length = int(value) if value.isdigit() else None
        elif name == b"transfer-encoding":  # lines given twice are one list (`gzip` then `chunked`)
            coding = value if coding is None else coding + b", " + value
    return length, coding


def declared_length(scope: Scope) -> int | None:
    """The `Content-Length` header as an int, or None."""
    return _framing(scope)[0]


async def discard(scope: Scope, receive: Receive) -> None:
    """Read and drop the body of a request answered without it (401, 403, 404, 405), so the answer reaches
    a client still sending (the lingering read of the 413, `LINGER_BYTES` and `LINGER_SECONDS` at most).
    Nothing is read from a client that waits for `100 Continue` (it would be asked to send) or one whose
    body is declared beyond `LINGER_BYTES`; a request without a body costs one `receive`."""
    declared = declared_length(scope)
    if _waits_to_send(scope) or (declared is not None and declared > LINGER_BYTES):
        return
    size = 0
    try:
        async with asyncio.timeout(LINGER_SECONDS):
            while True:
                async with asyncio.timeout(LINGER_IDLE):
                    message = await receive()
                size += len(message.get("body", b""))
                if not message.get("more_body", False) or size > LINGER_BYTES:
                    return
    except TimeoutError:
        return


class BodyReader:
    """Reads bodies up to `limit` bytes (`FAAS_MAX_PAYLOAD_BYTES`), each chunk within `idle` seconds of
    the one before (`FAAS_HTTP_BODY_TIMEOUT`; its default lives with the settings)."""

    def __init__(self, limit: int, idle: float) -> None:
        self.limit = limit
        self.idle = idle
        self._reads: dict[asyncio.Task[object], float] = {}
        """Request task → loop time its body last made progress."""
        self._expired: dict[asyncio.Task[object], bool] = {}
        """Reads this reader cancelled: True for those the node's stop ended, False for stalled ones."""
        self._sweeper: asyncio.Task[None] | None = None
        self._stop_at: float | None = None
        """Loop time after which no body read may go on (`drain_by`)."""

    async def read_request(self, request: Request) -> bytes:
        """`read` of a Starlette request."""
        return await self.read(request.scope, request.receive)

    async def read(self, scope: Scope, receive: Receive) -> bytes:
        """The body as raw JSON bytes, validated but not re-encoded; an empty body is `null`.

        Streamed bytes are counted, so a chunked body without a length cannot slip past the limit; a body
        over it (declared, or counted) is read to its end and dropped, then refused, unless it is beyond
        `LINGER_BYTES` or its client waits for `100 Continue` (module docstring).
        """
        limit = self.limit
        declared, coding = _framing(scope)
        if coding is not None and coding.strip().lower() != b"chunked":
            # The server decodes the chunks of `gzip, chunked` and passes the gzip on: refused, not misread.
            await discard(scope, receive)  # so the 400 reaches a client still sending
            raise BadRequest(
                f"Transfer-Encoding {coding.decode('latin-1')!r} is not supported: send the body chunked or "
                "with a Content-Length, not encoded"
            )
        too_large: PayloadTooLarge | None = None
        if declared is not None and declared > limit:
            too_large = PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
            if declared > LINGER_BYTES or _waits_to_send(scope):
                raise too_large
        task: asyncio.Task[object] | None = asyncio.current_task()
        assert task is not None
        loop = task.get_loop()
        if self._stop_at is not None and loop.time() >= self._stop_at:
            raise too_large or Overloaded("the node is stopping: the request body was not read")
        reads = self._reads
        reads[task] = RUN_CLOCK.now(loop)
        if self._sweeper is None:
            self._sweeper = loop.create_task(
                self._sweep(), name="http body deadlines", context=contextvars.Context()
            )
        # The ASGI messages directly rather than `request.stream()`: this is the invoke route's hot path.
        body = b""
        chunks: list[bytes] | None = None
        size = 0
        lingered = 0.0  # loop time the body went over the limit (0: it has not)
        try:
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnect()
                chunk: bytes = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if too_large is not None or size > limit:
                        if too_large is None:
                            too_large = PayloadTooLarge(f"body is over the limit of {limit} bytes")
                        lingered = lingered or loop.time()
                        if size > LINGER_BYTES or loop.time() - lingered > LINGER_SECONDS:
                            break  # not worth reading further: the connection is closed under it
                        body, chunks = b"", None  # read to the end, kept nowhere, so the 413 gets through
                    elif not body:
                        body = chunk
                    else:  # several chunks: join once at the end
                        chunks = chunks or [body]
                        chunks.append(chunk)
                if not message.get("more_body", False):
                    break
                reads[task] = RUN_CLOCK.now(loop)
        except asyncio.CancelledError:
            stopping = self._expired.pop(task, None)
            if stopping is None:
                raise
            task.uncancel()
            if too_large is not None:  # the rest of a refused body stalled, or the node stops: refused
                raise too_large from None
            of = f" of the {declared} its Content-Length declares" if declared is not None else ""
            if stopping:
                raise Overloaded(
                    f"the node is stopping: the request body had not arrived ({size} bytes{of})"
                ) from None
            raise BadRequest(
                f"body incomplete: no byte arrived for {self.idle:g} s (FAAS_HTTP_BODY_TIMEOUT) after "
                f"{size} bytes{of}"
            ) from None
        finally:
            del reads[task]
        if too_large is not None:
            raise too_large
        if chunks is not None:
            body = b"".join(chunks)
        return _checked(body, scope)

    def drain_by(self, deadline: float) -> None:
        """The node is stopping: end the reads still in progress at loop time `deadline` with Overloaded,
        before the server cancels them, and refuse any that starts after it."""
        loop = asyncio.get_running_loop()
        self._stop_at = deadline
        loop.call_at(deadline, self._end_reads)

    def _end_reads(self) -> None:
        for task in list(self._reads):
            if task not in self._expired:
                self._expired[task] = True
                task.cancel()

    async def _sweep(self) -> None:
        """Cancel the reads that made no progress for `idle` seconds; ends when none is in progress
        (the next read starts it again), so an idle node has no timer."""
        loop = asyncio.get_running_loop()
        keep(loop)
        try:
            while self._reads:
                await asyncio.sleep(SWEEP_EVERY)
                RUN_CLOCK.sample()  # a node that stood still: what came meanwhile waits unread, not stalled
                stalled_since = RUN_CLOCK.now(loop) - self.idle
                for task, progressed in list(self._reads.items()):
                    if progressed <= stalled_since and task not in self._expired:
                        self._expired[task] = False
                        task.cancel()
        finally:
            self._sweeper = None


def _checked(body: bytes, scope: Scope) -> bytes:
    """`body` if it is JSON (`null` when empty), else BadRequest saying what is wrong."""
    if not body:
        return NULL
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        # What went wrong is looked for only now: a valid body pays for none of it.
        coding = _content_encoding(scope)
        if coding is not None:
            raise BadRequest(
                f"body is encoded (Content-Encoding: {coding}): the node reads JSON as sent, uncompressed"
            ) from None
        if not body.strip():
            raise BadRequest("body holds only whitespace: send JSON, or no body for null") from None
        try:  # orjson words bad UTF-8 as "str is not valid UTF-8: surrogates not allowed"
            body.decode()
        except UnicodeDecodeError as bad:
            raise BadRequest(f"body is not UTF-8 (byte {bad.start}): JSON must be UTF-8") from None
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    return body


def _content_encoding(scope: Scope) -> str | None:
    """The request's `Content-Encoding` when it is not `identity` (shown escaped), else None."""
    value: bytes
    for name, value in scope["headers"]:
        if name == b"content-encoding" and value.strip().lower() not in (b"", b"identity"):
            shown: str = value.decode("latin-1").encode("unicode_escape").decode("ascii")
            return shown[:100]
    return None
