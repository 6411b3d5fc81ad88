"""A TCP proxy in front of a broker that can stop answering on the connections it holds.

A broker that accepts a request and never answers it (a half-dead network path, a broker stuck on one
request) is the fault no restart shows: the connection stays open, nothing fails, and every later request
on it waits behind the lost one until the client's request timeout gives the connection up.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

from framework.kafka.embedded import EmbeddedBroker, free_port

T = TypeVar("T")
FETCH = 1
"""Kafka's api key of a Fetch request."""


class AdvertisedBroker(EmbeddedBroker):
    """The embedded broker, telling its clients to connect to `advertised_port` (the proxy) instead of the
    port it listens on, so every connection after the bootstrap goes through the proxy too."""

    def __init__(self, advertised_port: int) -> None:
        super().__init__()
        self.advertised_port = advertised_port

    def command(self) -> list[str]:
        cmd = super().command()
        cmd[cmd.index("--advertised-listener-url") + 1] = f"tcp://{self.host}:{self.advertised_port}"
        return cmd


class _Link:
    """One client connection and its upstream connection; `stalled` drops what either side sends."""

    def __init__(self) -> None:
        self.stalled = False
        self.closed = False
        """Either side closed it: not a connection the node holds any more."""
        self.writers: list[asyncio.StreamWriter] = []


class StallingProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`upstream` on a loop of its own (a thread). `stall()` turns
    every connection open now into a black hole: bytes either way are read and dropped, nothing is closed.
    Connections made afterwards are forwarded as before. With `drop_fetches` set, every Fetch request is
    dropped (read, never forwarded, never answered) and the rest forwarded: a broker that stops serving
    reads."""

    def __init__(self, upstream: int, port: int | None = None) -> None:
        self.upstream = upstream
        self.port = port or free_port()
        self._links: list[_Link] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="stall-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self.drop_fetches = False

    @contextlib.contextmanager
    def running(self) -> Iterator[StallingProxy]:
        self._thread.start()
        try:
            self._server = self._call(asyncio.start_server(self._accept, "127.0.0.1", self.port))
            yield self
        finally:
            self._call(self._close())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop.close()

    def stall(self) -> int:
        """Black-hole every connection open now; returns how many there are."""

        async def mark() -> int:
            self._links = [link for link in self._links if not link.closed]
            for link in self._links:
                link.stalled = True
            return len(self._links)

        return self._call(mark())

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            up_r, up_w = await asyncio.open_connection("127.0.0.1", self.upstream)
        except OSError:
            client_w.close()
            return
        link = _Link()
        link.writers = [client_w, up_w]
        self._links.append(link)
        await asyncio.gather(self._requests(client_r, up_w, link), self._pump(up_r, client_w, link))
        link.closed = True
        for w in link.writers:
            w.close()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link) -> None:
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if not link.stalled:
                    dst.write(data)
                    await dst.drain()
        link.closed = True
        if not link.stalled:  # a black hole closes nothing; a forwarded close is passed on
            with contextlib.suppress(OSError):
                dst.close()

    async def _requests(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: _Link) -> None:
        """The client's side: Kafka requests (a 4-byte size, then the api key), each forwarded whole."""
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while True:
                head = await src.readexactly(4)
                body = await src.readexactly(int.from_bytes(head, "big"))
                if link.stalled or (self.drop_fetches and int.from_bytes(body[:2], "big") == FETCH):
                    continue
                dst.write(head + body)
                await dst.drain()
        link.closed = True
        if not link.stalled:
            with contextlib.suppress(OSError):
                dst.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self._links:
            for w in link.writers:
                w.transport.abort()  # nothing left to deliver, and the loop closes next
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
