"""Per-invocation log capture inside an instance (framework/runtime/worker/capture.py): caps, the dropped
note, lines of other invocations and of no invocation, text that would not encode, the binary stdout."""

from __future__ import annotations

import logging
import re
import socket
import threading
from collections.abc import Iterator

import orjson
import pytest

from framework.observe.log_capture import LogCapture
from framework.runtime.protocol import BlockingSender, FrameKind
from framework.runtime.worker import redact, watchdog
from framework.runtime.worker.capture import CapturingSender, clean_text
from framework.runtime.worker.watchdog import LogStream, current_invocation


def test_keeps_entries_then_counts_the_rest() -> None:
    cap = LogCapture(entries=3, chars=1000)
    cap.begin("a")
    for i in range(10):
        cap.add("a", logging.INFO, f"line {i}")
    logs = cap.end("a")
    assert logs is not None
    assert [e["message"] for e in logs] == ["line 0", "line 1", "line 2", "7 more log entries dropped"]
    assert [e["level"] for e in logs] == ["INFO", "INFO", "INFO", "WARNING"]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", e["time"]) for e in logs)


def test_character_cap_cuts_the_crossing_line() -> None:
    """A 10 MB line keeps exactly the character budget, flagged truncated; later lines are only counted."""
    cap = LogCapture(entries=10, chars=50)
    cap.begin("a")
    cap.add("a", logging.INFO, "x" * 30)
    cap.add("a", logging.ERROR, "y" * 10_000_000)
    cap.add("a", logging.INFO, "after")
    logs = cap.end("a")
    assert logs is not None
    assert logs[0] == {"time": logs[0]["time"], "level": "INFO", "message": "x" * 30}
    assert logs[1]["message"] == "y" * 20 and logs[1]["truncated"] is True and logs[1]["level"] == "ERROR"
    assert logs[2]["message"] == "1 more log entries dropped"
    assert sum(len(e["message"]) for e in logs[:-1]) == 50


def test_zero_caps_keep_only_the_note() -> None:
    cap = LogCapture(entries=0, chars=0)
    cap.begin("b")
    cap.add("b", logging.INFO, "hi")
    cap.add("b", logging.INFO, "ho")
    logs = cap.end("b")
    assert logs is not None and [e["message"] for e in logs] == ["2 more log entries dropped"]


def test_invocations_are_kept_apart_and_closed_ones_ignored() -> None:
    cap = LogCapture(entries=10, chars=1000)
    cap.begin("a")
    cap.begin("b")
    cap.add("a", logging.INFO, "for a")
    cap.add("b", logging.INFO, "for b")
    cap.add("nobody", logging.INFO, "not open")
    a = cap.end("a")
    cap.add("a", logging.INFO, "after a ended")
    b = cap.end("b")
    assert a is not None and [e["message"] for e in a] == ["for a"]
    assert b is not None and [e["message"] for e in b] == ["for b"]
    assert cap.end("a") is None  # ended once
    cap.begin("quiet")
    assert cap.end("quiet") is None  # logged nothing: the record's logs are empty


def test_concurrent_threads_respect_the_caps() -> None:
    cap = LogCapture(entries=10, chars=5000)
    cap.begin("a")

    def spam() -> None:
        for _ in range(2000):
            cap.add("a", logging.INFO, "z" * 3)

    threads = [threading.Thread(target=spam) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logs = cap.end("a")
    assert logs is not None and len(logs) == 11
    assert logs[-1]["message"] == "7990 more log entries dropped"


def test_clean_text_replaces_lone_surrogates() -> None:
    garbage = b"ok \xff\xfe end".decode("utf-8", "surrogateescape")
    assert clean_text(garbage) == "ok ?? end"
    assert clean_text("plain") == "plain" and clean_text("héllo ✓") == "héllo ✓"


@pytest.fixture
def channel() -> Iterator[tuple[CapturingSender, socket.socket]]:
    a, b = socket.socketpair()
    b.settimeout(5)
    yield CapturingSender(BlockingSender(a), LogCapture(entries=10, chars=1000)), b
    a.close()
    b.close()


def _frames(sock: socket.socket, n: int) -> list[dict[str, object]]:
    data = b""
    out: list[dict[str, object]] = []
    while len(out) < n:
        data += sock.recv(65536)
        while len(data) >= 4:
            size = int.from_bytes(data[:4], "big")
            if len(data) < 4 + size:
                break
            kind, hlen = data[4], int.from_bytes(data[5:9], "big")  # frame: length, kind, header length
            assert kind == FrameKind.LOG
            out.append(orjson.loads(data[9 : 9 + hlen]))
            data = data[4 + size :]
    return out


def test_sender_forwards_every_line_and_keeps_the_invocations(
    channel: tuple[CapturingSender, socket.socket],
) -> None:
    """Lines still reach the node (all of them, cleaned); only those of an open invocation are kept."""
    sender, peer = channel
    sender.capture.begin("inv-1")
    stream = LogStream(sender, "stdout", logging.INFO, 1)
    token = current_invocation.set("inv-1")
    try:
        stream.write("mine\n")
        stream.write(b"bad \xff".decode("utf-8", "surrogateescape") + "\n")
    finally:
        current_invocation.reset(token)

    def other_thread() -> None:  # a thread the invocation did not start: empty context
        stream.write("background\n")

    t = threading.Thread(target=other_thread)
    t.start()
    t.join()
    stream.buffer.write(b"raw \xff\xfe bytes\n")  # sys.stdout.buffer, outside any invocation
    frames = _frames(peer, 4)
    assert [f["msg"] for f in frames] == ["mine", "bad ?", "background", "raw \ufffd\ufffd bytes"]
    assert [f["inv"] for f in frames] == ["inv-1", "inv-1", None, None]
    kept = sender.capture.end("inv-1")
    assert kept is not None and [e["message"] for e in kept] == ["mine", "bad ?"]


def test_partial_lines_are_kept_per_invocation_and_end_with_it(
    channel: tuple[CapturingSender, socket.socket],
) -> None:
    """1. Invocation a writes a secret's halves with a flush between them, then "tail" with no newline;
    invocation b writes "b1" and ends its line. 2. a ends.
    Result: the halves go out as one line (a flush ends no line, so redaction sees it whole), b's line is
    its own and not glued to a's, and a's unfinished "tail" goes out when a ends, tagged a."""
    sender, peer = channel
    stream = LogStream(sender, "stdout", logging.INFO, 1)
    a = current_invocation.set("a")
    try:
        stream.write("sec")
        stream.flush()
        stream.write("ret\n")
        stream.write("tail")
        b = current_invocation.set("b")
        try:
            stream.write("b1\n")
        finally:
            current_invocation.reset(b)
        stream.end("a")
    finally:
        current_invocation.reset(a)
    frames = _frames(peer, 3)
    assert [(f["msg"], f["inv"]) for f in frames] == [("secret", "a"), ("b1", "b"), ("tail", "a")]


def test_a_partial_line_goes_out_at_its_bound(channel: tuple[CapturingSender, socket.socket]) -> None:
    """1. `print` of a line over MAX_PARTIAL (text and newline are two writes), then of "next".
    Result: two lines, the long one and "next": the newline after the cut ends the line sent, not an empty
    line of its own (which took an entry of the record's cap, and showed a "1 more log entries dropped")."""
    sender, peer = channel
    stream = LogStream(sender, "stdout", logging.INFO, 1)
    print("x" * (LogStream.MAX_PARTIAL + 1), file=stream)
    print("next", file=stream)
    first, second = _frames(peer, 2)
    assert first["msg"] == "x" * (LogStream.MAX_PARTIAL + 1) and first["inv"] is None
    assert second["msg"] == "next"


def test_a_long_print_of_a_function_with_secrets_is_one_line(
    channel: tuple[CapturingSender, socket.socket],
) -> None:
    """1. A function with a secret prints a line over MAX_PARTIAL in which the secret stands, then another.
    Result: the long line is one line, the secret replaced (its last characters used to be held back in
    case a secret began there, and the newline then sent them as a line of their own, an entry more)."""
    redact.install([SECRET])
    try:
        sender, peer = channel
        stream = LogStream(sender, "stdout", logging.INFO, 1)
        text = "h" * 1000 + SECRET + "h" * (LogStream.MAX_PARTIAL + 1)
        print(text, file=stream)
        print("next", file=stream)
        frames = _until_end(stream, peer)
    finally:
        redact.install(())
    assert [f["msg"] for f in frames] == [text.replace(SECRET, "***"), "next"]


SECRET = "supersecretvalue1"
LONG = LogStream.MAX_PARTIAL


def _until_end(stream: LogStream, peer: socket.socket) -> list[dict[str, object]]:
    """The frames sent until a line "END" written now."""
    stream.write("END\n")
    frames: list[dict[str, object]] = []
    while not frames or frames[-1]["msg"] != "END":
        frames += _frames(peer, 1)
    return frames[:-1]


@pytest.mark.parametrize(
    ("writes", "lines"),
    [
        (["E1 " + "w" * (LONG - 4), SECRET[:7], SECRET[7:] + " " + "y" * 40, "\n"], 1),
        (["E1 " + "w" * (LONG - 8), SECRET[:2], SECRET[2:] + " " + "y" * 40, "\n"], 1),
        (["w" * (LONG + 10) + SECRET + "x" * 5, "\n"], 1),
        (["w" * (LONG + 20) + SECRET[:5], SECRET[5:] + "x", "\n"], 2),
    ],
    ids=["halves-over-the-bound", "early-split", "one-write-ending-past-the-bound", "form-begun-at-the-end"],
)
def test_a_secret_across_a_partial_lines_bound_is_redacted(
    channel: tuple[CapturingSender, socket.socket], writes: list[str], lines: int
) -> None:
    """1. A function with a secret writes a line longer than MAX_PARTIAL, the secret where the line is cut
    (in two writes, or in one write that ends just past the bound, or one that ends in its first letters),
    then a newline.
    Result: the secret is in no line, not even in part; put together they are the text with the secret
    replaced. Each piece used to be redacted alone: `...superse` then `cretvalue1 ...`. Only a write past
    the bound that ends in the secret's first letters makes two lines (they are held back for the rest);
    one that ends in no beginning of it goes out whole, and the newline after it ends it: one line, as
    without secrets."""
    redact.install([SECRET])
    try:
        sender, peer = channel
        stream = LogStream(sender, "stdout", logging.INFO, 1)
        for text in writes:
            stream.write(text)
        frames = _until_end(stream, peer)
    finally:
        redact.install(())
    assert len(frames) == lines, [str(f["msg"])[-30:] for f in frames]
    msgs = [str(f["msg"]) for f in frames]
    assert "".join(msgs) == "".join(writes)[:-1].replace(SECRET, "***"), [m[-30:] for m in msgs]
    assert all(SECRET[:4] not in m and SECRET[-4:] not in m for m in msgs), [m[-30:] for m in msgs]


def test_a_line_longer_than_max_line_goes_out_in_pieces(
    channel: tuple[CapturingSender, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. With MAX_LINE at 3,000 characters, a function with a secret prints a line of 7,000 whose secret
    spans the first 3,000's bound, then logs a message of 7,000 through `logging`.
    Result: each goes out in pieces of MAX_LINE at most (the node holds a line whole: one `print` of
    100 MB took it to 552 MB), the printed one cut before the secret, not through it; put together, the
    pieces are the texts with the secret replaced, and the record got them as entries of the invocation."""
    monkeypatch.setattr(watchdog, "MAX_LINE", 3000)
    redact.install([SECRET])
    try:
        sender, peer = channel
        stream = LogStream(sender, "stdout", logging.INFO, 1)
        printed = "p" * 2990 + SECRET + "q" * (7000 - 2990 - len(SECRET))
        logged = "l" * 7000
        sender.capture.begin("inv-1")
        token = current_invocation.set("inv-1")
        try:
            print(printed, file=stream)
            logging.getLogger("h").addHandler(handler := watchdog.ForwardHandler(sender))
            try:
                logging.getLogger("h").warning(logged)
            finally:
                logging.getLogger("h").removeHandler(handler)
        finally:
            current_invocation.reset(token)
        frames = _frames(peer, 6)
        logs = sender.capture.end("inv-1")
    finally:
        redact.install(())
    msgs = [str(f["msg"]) for f in frames]
    lengths = [len(m) for m in msgs]
    assert lengths == [2990, 3000 - len(SECRET) + 3, 1010, 3000, 3000, 1000], lengths
    assert "".join(msgs[:3]) == printed.replace(SECRET, "***") and "".join(msgs[3:]) == logged
    assert all(f["inv"] == "inv-1" for f in frames)
    assert logs is not None  # a cap of 1,000 characters: the first piece cut, the five others counted
    assert [e["message"] for e in logs][1:] == ["5 more log entries dropped"] and logs[0]["truncated"]


def test_bytes_written_a_piece_at_a_time_are_decoded_whole_and_redacted(
    channel: tuple[CapturingSender, socket.socket],
) -> None:
    """1. With the secret `pässwörd-42` installed, invocation a writes `token=pässwörd-42\\n` to
    `sys.stdout.buffer` one byte at a time (the cuts fall inside its two-byte characters), then `h` and
    the first byte of `é` and ends. Result: the first line is `token=***` (each write was decoded on its
    own: `p\\ufffd\\ufffdssw...`, which the redaction did not match), the second `h\\ufffd` once a ended."""
    sender, peer = channel
    stream = LogStream(sender, "stdout", logging.INFO, 1)
    redact.install(["pässwörd-42"])
    a = current_invocation.set("a")
    try:
        for byte in "token=pässwörd-42\n".encode():
            stream.buffer.write(bytes([byte]))
        stream.buffer.write(b"h" + "é".encode()[:1])
        stream.end("a")
    finally:
        current_invocation.reset(a)
        redact.install([])
    assert [f["msg"] for f in _frames(peer, 2)] == ["token=***", "h\ufffd"]
    for i in range(100):  # whole lines from threads of no invocation, or of ended ones: no decoder kept
        stream.buffer.write(f"line {i}\n".encode())
    assert not stream._decoders
