"""Framing: frames split across reads and batched in one read come out whole, tails untouched."""

from __future__ import annotations

import asyncio

from framework.runtime.protocol import FrameKind, FrameProtocol, Header, encode


def test_roundtrip_split_and_batched() -> None:
    got: list[tuple[int, Header, bytes]] = []
    closed: list[Exception | None] = []
    proto = FrameProtocol(lambda k, h, t: got.append((k, h, t)), closed.append)
    payload = b'{"big": "' + b"x" * 100_000 + b'"}'
    frames = encode(FrameKind.REQUEST, {"id": 1, "inv": "a"}, payload) + encode(FrameKind.CANCEL, {"id": 1})
    for i in range(0, len(frames), 7001):  # odd chunk size: headers and tails cut mid-way
        proto.data_received(frames[i : i + 7001])
    assert got == [(FrameKind.REQUEST, {"id": 1, "inv": "a"}, payload), (FrameKind.CANCEL, {"id": 1}, b"")]
    proto.data_received(encode(FrameKind.REPLY, {"id": 2, "ms": 0.5}, b"null"))  # one frame in one read
    assert got[-1] == (FrameKind.REPLY, {"id": 2, "ms": 0.5}, b"null")
    proto.connection_lost(None)
    proto.connection_lost(None)
    assert closed == [None]


class _Transport:
    """Collects what `FrameProtocol.send` writes."""

    def __init__(self) -> None:
        self.written = b""

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False


async def test_a_trailer_comes_out_apart_from_the_tail() -> None:
    """1. A REPLY is sent with a result tail and a record trailer. 2. Frames with a bad `r` arrive.
    Result: the receiver gets the tail alone and the trailer as `header["r"]`; an `r` that is not a
    length inside the tail is dropped and the whole tail handed over."""
    sender = FrameProtocol(lambda k, h, t: None, lambda e: None)
    sender.transport = _Transport()  # type: ignore[assignment]
    sender._loop = asyncio.get_running_loop()
    sender.send(FrameKind.REPLY, {"id": 7, "ms": 1.0}, b'{"result": 1}', b'{"invocation_id": "i"}')
    written = sender.transport.written  # type: ignore[union-attr]
    got: list[tuple[int, Header, bytes]] = []
    receiver = FrameProtocol(lambda k, h, t: got.append((k, h, t)), lambda e: None)
    for i in range(0, len(written), 5):  # cut everywhere, trailer included
        receiver.data_received(written[i : i + 5])
    assert got == [(FrameKind.REPLY, {"id": 7, "ms": 1.0, "r": b'{"invocation_id": "i"}'}, b'{"result": 1}')]
    for bad in (100, -1, 0, "3", 2.0):
        receiver.data_received(encode(FrameKind.REPLY, {"id": 8, "r": bad}, b"tail"))
        assert got[-1] == (FrameKind.REPLY, {"id": 8}, b"tail")
    receiver.data_received(encode(FrameKind.REPLY, {"id": 9, "r": 4}, b"tail"))  # all of it is trailer
    assert got[-1] == (FrameKind.REPLY, {"id": 9, "r": b"tail"}, b"")
