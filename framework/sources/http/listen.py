"""The node's HTTP socket, bound before anything else starts, and the HTTP/1.1 protocol on it.

uvicorn binds its port when its server starts, which in a node comes after the Kafka consumer has joined
its group: a node whose port was taken then took partitions from the live nodes (two rebalances) on its
way out, and logged "serving on :0" for an ephemeral port. Binding first fails such a start before any
side effect, and tells the real port. The socket is handed to uvicorn (`Server.serve(sockets=...)`).

A request that is not valid HTTP/1.1 (a `Content-Length: abc`, a header with a control character) never
reaches the app: uvicorn's protocol answers it 400 itself, in plain text. `protocol()` is uvicorn's own
(httptools when installed, else h11) with that one answer in the contract's shape (DESIGN.md section 5:
`{"error": {"type": "BadRequest", "message"}}`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket

import orjson
from uvicorn.protocols.http.h11_impl import H11Protocol


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


def _bad_request(msg: str) -> bytes:
    """A 400 answer to bytes that are not an HTTP request, in the contract's body; the connection closes."""
    body = orjson.dumps({"error": {"type": "BadRequest", "message": f"not a valid HTTP/1.1 request ({msg})"}})
    head = f"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
    return head.encode() + b"connection: close\r\n\r\n" + body


class _ContractBadRequest:
    """Mixed into uvicorn's protocols: their one plain-text answer, in the contract's shape."""

    transport: asyncio.Transport

    def send_400_response(self, msg: str) -> None:
        self.transport.write(_bad_request(msg))
        self.transport.close()


def protocol() -> type[asyncio.Protocol]:
    """uvicorn's HTTP/1.1 protocol class (httptools' parser when installed: what "auto" picks) whose
    answer to a request that does not parse is the contract's 400 body, not plain text."""
    if importlib.util.find_spec("httptools") is None:
        return type("H11Protocol", (_ContractBadRequest, H11Protocol), {})
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    return type("HttpToolsProtocol", (_ContractBadRequest, HttpToolsProtocol), {})
