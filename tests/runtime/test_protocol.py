"""Framing: frames split across reads and batched in one read come out whole, tails untouched."""

from __future__ import annotations

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
