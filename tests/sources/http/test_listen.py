"""The node's HTTP socket and protocol (framework/sources/http/listen.py), without a node."""

from __future__ import annotations

import importlib.util
import socket
from typing import Any

import orjson
import pytest
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
    fake = type("Fake", (), {"transport": transport})()
    cls.send_400_response(fake, "Invalid HTTP request received.")
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
