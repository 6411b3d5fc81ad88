"""A record the CloudEvents parser fails on (a bug: `parse` answers any input with an event or a BadRecord)
is still answered and kept, as a bad record is, never skipped."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiokafka import ConsumerRecord

from framework.kafka import cloudevents
from framework.observe.metrics import Metrics
from framework.settings import Settings
from framework.sources.kafka.source import KafkaSource


class Outbox:
    """The outbox's two calls `_answer` makes, recorded."""

    def __init__(self) -> None:
        self.copies: list[tuple[bytes | None, bytes | None, dict[str, bytes | None]]] = []
        self.replies: list[Any] = []

    async def deadletter(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes | None]], why: str = ""
    ) -> None:
        self.copies.append((key, value, dict(headers)))

    async def reply_later(self, part: Any, record: Any, event: Any, reply: Any) -> None:
        self.replies.append(reply)


async def test_a_record_the_parser_fails_on_is_dead_lettered_and_answered_badevent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1. The parser raises on a record (as it did for structured data nested deeper than 254 levels).
    Result: the record is copied to the dead-letter topic as it came, with the reason, and answered
    BadEvent naming the error; it was logged and skipped, with no reply and no copy."""

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("Recursion limit reached")

    monkeypatch.setattr(cloudevents, "parse", broken)
    no_export = SimpleNamespace(exporter=None)  # the invoker: not reached by a bad record
    source = KafkaSource(Settings(), cast(Any, no_export), Metrics(), "127.0.0.1:1")
    outbox = Outbox()
    source.outbox = cast(Any, outbox)
    record = ConsumerRecord("faas.events", 2, 0, 0, 0, b"k", b"{}", None, 1, 2, [("ce_id", b"e1")])
    await source._answer(cast(Any, None), record)
    [(key, value, headers)] = outbox.copies
    assert (key, value, headers["ce_id"]) == (b"k", b"{}", b"e1")
    reason = "the record could not be read: TypeError: Recursion limit reached"
    assert headers["faas_error"] == b"BadEvent: " + reason.encode(), headers
    [reply] = outbox.replies
    assert reply.error["type"] == "BadEvent" and reply.error["message"] == reason, reply.error
