"""`ReplyOutbox.deadletter` when the broker refuses a copy for its size: a sender that refuses records over a
byte limit stands in for the broker (the size rule is all that is under test)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, cast

from framework.kafka.cloudevents import MAX_MESSAGE
from framework.kafka.deadletter import failed_headers
from framework.observe.metrics import Metrics
from framework.settings import Settings
from framework.sources.kafka.outbox import ReplyOutbox
from framework.sources.kafka.replies import PermanentSendError


class _SizedSender:
    """Acknowledges a record of at most `limit` bytes (value and header values); refuses a larger one for
    good, as a broker does a record over its topic's `max.message.bytes`."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.sent: list[tuple[bytes | None, list[tuple[str, bytes | None]]]] = []

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Sequence[tuple[str, bytes | None]]
    ) -> None:
        size = len(value or b"") + sum(len(v or b"") for _, v in headers)
        if size > self.limit:
            raise PermanentSendError(f"MessageSizeTooLargeError: {size} bytes")
        self.sent.append((value, list(headers)))


def _copy(limit: int, value: bytes, message: str) -> tuple[bytes | None, dict[str, bytes | None]]:
    sender = _SizedSender(limit)
    outbox = ReplyOutbox(Settings(), Metrics(), cast(Any, sender), lambda: None)
    headers = failed_headers([("ce_id", b"e1")], "FunctionError", message, "f", 1)
    asyncio.run(outbox.deadletter(b"k", value, headers, "failed"))
    assert len(sender.sent) == 1, sender.sent
    sent_value, sent_headers = sender.sent[0]
    return sent_value, dict(sent_headers)


def test_a_copy_too_large_for_its_whole_error_keeps_its_value_with_the_error_cut() -> None:
    """1. A failed event of 10,000 bytes whose error message is 20,000 characters, to a broker taking 12,000
       bytes a record. 2. The same with a limit of 5,000 (the value alone does not fit). 3. A limit of 40,000.
    Result: 1 keeps the value (the event stays replayable) with `faas_error` cut to MAX_MESSAGE characters
    and marked; 2 sends the copy without its value, saying why; 3 sends everything whole."""
    value, message = b"v" * 10_000, "m" * 20_000
    sent_value, headers = _copy(12_000, value, message)
    error = (headers["faas_error"] or b"").decode()
    assert sent_value == value and len(error) == MAX_MESSAGE + 1 and error.endswith("…"), error[-20:]
    assert "faas_deadletter_error" not in headers
    sent_value, headers = _copy(5_000, value, message)
    assert sent_value is None and b"MessageSizeTooLargeError" in (headers["faas_deadletter_error"] or b"")
    sent_value, headers = _copy(40_000, value, message)
    assert sent_value == value and headers["faas_error"] == f"FunctionError: {message}".encode()


class _KeyedSender(_SizedSender):
    """Counts the key and the header names too, as a broker's record size does."""

    def __init__(self, limit: int) -> None:
        super().__init__(limit)
        self.keys: list[bytes | None] = []

    async def send(
        self, topic: str, value: bytes | None, key: bytes | None, headers: Sequence[tuple[str, bytes | None]]
    ) -> None:
        size = len(value or b"") + len(key or b"") + sum(len(n) + len(v or b"") for n, v in headers)
        if size > self.limit:
            raise PermanentSendError(f"MessageSizeTooLargeError: {size} bytes")
        self.sent.append((value, list(headers)))
        self.keys.append(key)


def _stripped(limit: int, key: bytes, headers: list[tuple[str, bytes | None]]) -> _KeyedSender:
    sender = _KeyedSender(limit)
    outbox = ReplyOutbox(Settings(), Metrics(), cast(Any, sender), lambda: None)
    marked = failed_headers(headers, "FunctionError", "boom", "f", 2)
    asyncio.run(outbox.deadletter(key, b"v" * 100, marked, "failed"))
    return sender


OURS = ["faas_error", "faas_function", "faas_attempts", "faas_deadletter_error"]


def test_a_copy_whose_headers_alone_are_too_large_keeps_ours_and_names_what_it_left_out() -> None:
    """1. A failed event with a 200,000-byte header `x-big` among small ones, to a broker taking 10,000
    bytes a record (the copy is refused whole, and without its value). 2. The same with a key of 20,000
    bytes. Result: 1 is sent without its value and `x-big`, every other header kept in order, ours too
    (`faas_error`, `faas_function`, `faas_attempts`: still replayable), `faas_deadletter_error` naming
    `x-big` and its size; 2 the same, without its key. (The copy raised, and the event was skipped without
    its reply: answered zero times.)"""
    headers: list[tuple[str, bytes | None]] = [("ce_id", b"e1"), ("x-big", b"b" * 200_000), ("ce_type", b"t")]
    sender = _stripped(10_000, b"k", headers)
    [(value, sent)] = sender.sent
    assert value is None and sender.keys == [b"k"]
    assert [name for name, _ in sent] == ["ce_id", "ce_type", *OURS], sent
    why = dict(sent)["faas_deadletter_error"] or b""
    assert b"MessageSizeTooLargeError" in why and b"'x-big' (200005 bytes)" in why, why
    sender = _stripped(10_000, b"k" * 20_000, headers)
    assert sender.keys == [None] and [n for n, _ in sender.sent[0][1]] == ["ce_id", "ce_type", *OURS]


def test_a_copy_refused_however_small_is_given_up_and_the_event_still_answered() -> None:
    """A broker taking 10 bytes a record: no copy fits. Result: `deadletter` returns (no copy, nothing
    counted) instead of raising, so the event's reply still goes out."""
    assert _stripped(10, b"k", [("ce_id", b"e1")]).sent == []


def test_a_trimmed_copy_keeps_the_events_and_our_headers_first_and_names_a_few_left_out() -> None:
    """3,000 headers of 1,000 bytes after `ce_id` and before ours. Result: `ce_id` and ours kept whatever
    the others' bulk, the headers kept within 256 KiB, and the note names 20 left out, then how many more
    (it named every one: 44 KB for 3,000)."""
    from framework.kafka.deadletter import TRIMMED_TOTAL, trimmed

    many: list[tuple[str, bytes | None]] = [(f"x-{i}", b"h" * 1000) for i in range(3000)]
    headers = failed_headers([("ce_id", b"e1"), *many], "FunctionError", "boom", "f", 2)
    kept = trimmed(headers, "too large")
    names = [name for name, _ in kept]
    assert names[0] == "ce_id" and names[-4:] == OURS, names[-5:]
    assert sum(len(n) + len(v or b"") for n, v in kept[:-1]) <= TRIMMED_TOTAL
    note = (kept[-1][1] or b"").decode()
    assert note.startswith("too large; sent without its value and the headers 'x-0' (1003 bytes)"), note[:80]
    assert note.endswith(f"and {3000 - (len(kept) - 5) - 20} more") and len(note) < 1000, note[-80:]
