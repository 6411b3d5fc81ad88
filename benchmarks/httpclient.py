"""A minimal HTTP/1.1 keep-alive client on raw asyncio transports (no HTTP library in the measured path).

Requests are pre-encoded bytes; responses are parsed just enough to find the status and the body
(`Content-Length` framing, which every Starlette response uses). One request in flight per connection.
"""

from __future__ import annotations

import asyncio
from typing import cast


def encode_request(
    method: str, host: str, port: int, path: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"{extra}Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class _Protocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = exc or ConnectionResetError("server closed the connection")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.closed)

    def _parse(self) -> None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0 or self.waiter is None:
            return
        head = bytes(buf[:end]).lower()
        i = head.find(b"\r\ncontent-length:")
        if i < 0:
            self.waiter.set_exception(ValueError(f"response without Content-Length: {head[:200]!r}"))
            return
        j = head.find(b"\r\n", i + 2)
        length = int(head[i + 17 : j if j >= 0 else len(head)])
        total = end + 4 + length
        if len(buf) < total:
            return
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        waiter, self.waiter = self.waiter, None
        waiter.set_result((int(head[9:12]), body))


class Connection:
    """One keep-alive connection: `await conn.request(raw)` returns `(status, body)`."""

    def __init__(self, protocol: _Protocol) -> None:
        self._p = protocol

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_connection(_Protocol, host, port)
        return cls(protocol)

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        p = self._p
        if p.closed is not None:
            raise ConnectionError(f"connection closed: {p.closed!r}")
        assert p.transport is not None and p.waiter is None, "one request at a time per connection"
        p.waiter = asyncio.get_running_loop().create_future()
        p.transport.write(raw)
        return p.waiter

    def close(self) -> None:
        if self._p.transport is not None:
            self._p.transport.close()


async def fetch(
    host: str, port: int, method: str, path: str, body: bytes = b"", limit: float = 10.0
) -> tuple[int, bytes]:
    """One request on a fresh connection (readiness checks, probes)."""
    conn = await asyncio.wait_for(Connection.open(host, port), limit)
    try:
        return await asyncio.wait_for(conn.request(encode_request(method, host, port, path, body)), limit)
    finally:
        conn.close()
