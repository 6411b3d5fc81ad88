"""The node's HTTP socket and protocol (framework/sources/http/listen.py), without a node."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import uvicorn
from starlette.types import Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from framework.sources.http import listen


class _Transport:
    def __init__(self) -> None:
        self.written = b""
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return False  # as a TLS transport: closed at once


@pytest.mark.parametrize("httptools", [True, False], ids=["httptools", "h11"])
def test_both_protocols_answer_what_does_not_parse_in_the_contract_shape(
    monkeypatch: pytest.MonkeyPatch, httptools: bool
) -> None:
    """With httptools installed or not (h11), the protocol's 400 is JSON `BadRequest` and closes."""
    if not httptools:
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda n, *a: None if n == "httptools" else real(n, *a)
        )
    cls: Any = listen.protocol()
    assert issubclass(cls, H11Protocol) is not httptools
    transport = _Transport()
    fake = cls.__new__(cls)  # no connection: only its answer is used
    fake.transport = transport
    fake.send_400_response("Invalid HTTP request received.")
    head, _, body = transport.written.partition(b"\r\n\r\n")
    assert (
        head.startswith(b"HTTP/1.1 400 ") and b"content-type: application/json" in head and transport.closed
    )
    assert orjson.loads(body) == {
        "error": {
            "type": "BadRequest",
            "message": "not a valid HTTP/1.1 request (Invalid HTTP request received.)",
        }
    }


def test_a_taken_port_is_a_bind_error_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(listen.BindError, match=rf"\('127.0.0.1', {port}\): address already in use"):
            listen.bind("127.0.0.1", port)
    sock = listen.bind("127.0.0.1", 0)
    try:
        assert sock.getsockname()[1] != 0
    finally:
        sock.close()


HEAD_TIMEOUT = 1.0


def _parser(monkeypatch: pytest.MonkeyPatch, httptools: bool) -> None:
    """Make `listen.protocol()` pick h11 when `httptools` is False, as on a machine without it."""
    if not httptools:
        real = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util, "find_spec", lambda n, *a: None if n == "httptools" else real(n, *a)
        )


async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers `pause` seconds (the query string) after the request's head came, then `ok`."""
    if scope["type"] != "http":
        return
    if scope["method"] == "POST":  # its body read whole first
        while (await receive()).get("more_body"):
            pass
    await asyncio.sleep(float(scope["query_string"] or 0))
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=[True, False], ids=["httptools", "h11"])
async def server(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[int]:
    """A real uvicorn server with the node's protocol (head timeout `HEAD_TIMEOUT`) on a free port."""
    _parser(monkeypatch, request.param)
    cls = listen.protocol(HEAD_TIMEOUT)
    config = uvicorn.Config(_app, lifespan="off", log_config=None, access_log=False, http=cls)
    sock = listen.bind("127.0.0.1", 0)
    served = uvicorn.Server(config)
    task = asyncio.create_task(served.serve(sockets=[sock]))
    deadline = time.monotonic() + 10
    while not served.started and time.monotonic() < deadline:  # noqa: ASYNC110 - uvicorn's only signal
        await asyncio.sleep(0.01)
    assert served.started, "the server did not start within 10 s"
    try:
        yield sock.getsockname()[1]
    finally:
        served.should_exit = True
        await task


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (fails after 5 s)."""
    return await asyncio.wait_for(reader.read(), 5)


async def test_a_head_that_does_not_arrive_in_time_is_answered_400_and_closed(server: int) -> None:
    """1. A connection sends half a request head, then a byte every 0.05 s (never a pause as long as
    the head timeout) for 0.8 times it, then nothing. 2. Meanwhile another connection sends nothing.
    3. Then a connection asks a request answered after 1.2 times the head timeout, then another.
    Result: 1 is answered 400 BadRequest in the contract's shape once the head timeout is up, counted
    from the connection's opening (a bound on pauses would answer at 1.8 times it), and closed; before,
    uvicorn waited for the head for ever, whatever its pace. 2 is closed without an answer. 3 gets both
    answers: a request being served is not timed by the head's bound."""
    idle_reader, idle = await asyncio.open_connection("127.0.0.1", server)
    idle_answer = asyncio.create_task(_answer(idle_reader))
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    started = time.monotonic()
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")
    answered = asyncio.create_task(_answer(reader))
    while time.monotonic() - started < HEAD_TIMEOUT * 0.8:
        writer.write(b"X")
        await asyncio.sleep(0.05)  # the drip itself: one byte per 0.05 s
    answer = await answered
    took = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert orjson.loads(body)["error"] == {
        "type": "BadRequest",
        "message": f"not a valid HTTP/1.1 request (its head did not arrive within {HEAD_TIMEOUT:g} s)",
    }
    assert HEAD_TIMEOUT - 0.05 < took < HEAD_TIMEOUT * 1.7, took
    writer.close()
    assert await idle_answer == b""
    idle.close()
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    for pause in (HEAD_TIMEOUT * 1.2, 0):
        writer.write(f"GET /?{pause} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200 ") and await reader.readexactly(2) == b"ok", head
    writer.close()


async def test_a_head_over_its_limit_is_answered_400_at_once(server: int) -> None:
    """1. A request whose one header grows to 2 MiB, sent in 64 KiB writes. 2. A request with 12 KiB of
    headers, and one with 100 KiB, each sent in one write.
    Result: 1 is answered 400 BadRequest in the contract's shape and closed, before the rest is read
    (before, httptools read a head of any size, and one of 200 MiB grew the node's memory and stalled its
    loop for seconds), and the client reads the answer although it was still sending; of 2, the first is
    served and the second refused (400) under either parser."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
    answered = asyncio.create_task(_answer(reader))
    sent = 0
    with contextlib.suppress(ConnectionError):  # closed by the server while this writes: answered first
        while sent < 2 * 1024 * 1024 and not answered.done():
            writer.write(b"a" * 65536)
            await writer.drain()
            await asyncio.sleep(0)  # the reading task's turn
            sent += 65536
    answer = await answered
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert orjson.loads(body)["error"]["type"] == "BadRequest", body
    assert sent < 2 * 1024 * 1024, sent
    writer.close()
    for size, status in ((12 * 1024, b"200"), (100 * 1024, b"400")):  # each head in a single write
        reader, writer = await asyncio.open_connection("127.0.0.1", server)
        headers = b"".join(b"X-%d: %s\r\n" % (i, b"a" * 1000) for i in range(size // 1024))
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n" + headers + b"Connection: close\r\n\r\n")
        answer = await _answer(reader)
        assert answer.startswith(b"HTTP/1.1 " + status), (size, answer[:300])
        assert (status == b"200") is (b"its head is over 64 KiB" not in answer), answer[-200:]
        writer.close()


async def test_bytes_that_do_not_parse_after_pipelined_requests_are_answered_after_them(server: int) -> None:
    """1. One write holding a request answered after 0.5 s, a request answered at once, and bytes that are
    not a request. Result: both requests are answered 200, in order, then the 400 BadRequest, then the
    connection closes. (Under httptools the 400 went out at once and the connection was shut under the
    first request: its answer was lost, and the node logged "Cannot call write() after write_eof()".)"""
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    writer.write(
        b"GET /?0.5 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /?0 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GARBAGE / HTTP/1.1\r\n\x01\r\n\r\n"
    )
    answers = []
    for _ in range(3):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
        answers.append((head.split(b" ")[1], await reader.readexactly(length)))
    assert await _answer(reader) == b""  # closed
    writer.close()
    assert answers[:2] == [(b"200", b"ok"), (b"200", b"ok")], answers
    status, body = answers[2]
    assert status == b"400" and orjson.loads(body)["error"]["type"] == "BadRequest", answers


async def test_bytes_that_break_the_body_being_read_are_answered_at_once(server: int) -> None:
    """1. A chunked request whose second chunk's size is not a number. Result: one answer, 400 BadRequest,
    at once, then the connection closes. (Held as if it followed a whole request, the 400 waited behind an
    app waiting for the rest of a body that never parses.)"""
    reader, writer = await asyncio.open_connection("127.0.0.1", server)
    t = time.monotonic()
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\nZZZ\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 400 ") and time.monotonic() - t < 1, head
    length = int(re.search(rb"content-length: (\d+)", head, re.IGNORECASE)[1])  # type: ignore[index]
    assert orjson.loads(await reader.readexactly(length))["error"]["type"] == "BadRequest"
    assert await _answer(reader) == b""  # nothing more: closed
    writer.close()
