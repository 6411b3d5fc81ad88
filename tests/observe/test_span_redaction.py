"""Secret values kept out of exported spans (framework/observe/span_redaction.py): every text of a span."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, SpanContext, StatusCode
from opentelemetry.trace.status import Status

from framework.observe.span_redaction import Lengths, RedactingExporter, redacted, unlimited
from framework.runtime.worker.redact import Redactor

SECRET = "sk_live_0123456789"
redact = Redactor([SECRET])


def context(span_id: int) -> SpanContext:
    return SpanContext(0xABC, span_id, is_remote=False)


def span_with_secrets() -> ReadableSpan:
    return ReadableSpan(
        name=f"charge {SECRET}",
        context=context(2),
        parent=context(1),
        attributes={"card": SECRET, "n": 3, "many": (f"a {SECRET}", "b"), "flag": True},
        events=[
            Event(
                "exception",
                {"exception.message": f"declined {SECRET}", "exception.stacktrace": f"line\n{SECRET!r}"},
                5,
            )
        ],
        links=[Link(context(3), {"why": f"retry of {SECRET}"})],
        status=Status(StatusCode.ERROR, f"RuntimeError: declined {SECRET}"),
        start_time=1,
        end_time=9,
    )


def test_every_text_of_a_span_is_redacted_and_the_rest_kept() -> None:
    span = redacted(span_with_secrets(), redact)
    assert SECRET not in repr(span.to_json())
    assert span.name == "charge ***" and span.status.description == "RuntimeError: declined ***"
    assert span.status.status_code is StatusCode.ERROR
    assert dict(span.attributes or {}) == {"card": "***", "n": 3, "many": ("a ***", "b"), "flag": True}
    [event] = span.events
    assert event.name == "exception" and event.timestamp == 5
    assert dict(event.attributes or {}) == {
        "exception.message": "declined ***",
        "exception.stacktrace": "line\n'***'",
    }
    assert dict(span.links[0].attributes or {}) == {"why": "retry of ***"}
    assert (span.context, span.parent, span.start_time, span.end_time) == (context(2), context(1), 1, 9)


class Collected(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def test_the_exporter_hands_on_redacted_copies() -> None:
    inner = Collected()
    exporter = RedactingExporter(inner, redact)
    assert exporter.export([span_with_secrets()]) is SpanExportResult.SUCCESS
    [span] = inner.spans
    assert SECRET not in repr(span.to_json()) and span.name == "charge ***"


def test_the_counts_of_what_the_sdk_dropped_are_kept() -> None:
    """A span over the SDK's limits says how many attributes, events and links it dropped: the copy says
    the same (it said 0)."""
    attributes = BoundedAttributes(attributes={"card": SECRET}, immutable=False)
    attributes.dropped = 2
    events: BoundedList[Event] = BoundedList.from_seq(None, [Event("e", {"m": SECRET}, 5)])
    events.dropped = 3
    links: BoundedList[Link] = BoundedList.from_seq(None, [])
    links.dropped = 4
    span = ReadableSpan(name="n", context=context(2), attributes=attributes, events=events, links=links)
    copy = redacted(span, redact)
    assert (copy.dropped_attributes, copy.dropped_events, copy.dropped_links) == (2, 3, 4)
    assert dict(copy.attributes or {}) == {"card": "***"}


def test_keys_and_bytes_are_redacted_too() -> None:
    """Attribute keys (of the span, its events and links) and bytes values hold text as much as values do:
    each is redacted, bytes that are not UTF-8 kept exactly."""
    span = ReadableSpan(
        name="n",
        context=context(2),
        attributes={
            f"k-{SECRET}": 1,
            "raw": SECRET.encode() + b"\xff\x00",
            "list": (b"x" + SECRET.encode(),),
        },
        events=[Event("e", {f"of {SECRET}": "v"}, 5)],
        links=[Link(context(3), {SECRET: True})],
    )
    copy = redacted(span, redact)
    assert dict(copy.attributes or {}) == {"k-***": 1, "raw": b"***\xff\x00", "list": (b"x***",)}
    assert dict(copy.events[0].attributes or {}) == {"of ***": "v"}
    assert dict(copy.links[0].attributes or {}) == {"***": True}


def test_keys_that_redact_to_one_are_all_kept() -> None:
    """Two attribute keys that differ only in a secret (and one that reads as the second's new name) each
    keep their value under a name of its own."""
    other = "pk_live_9876543210"
    span = ReadableSpan(
        name="n",
        context=context(2),
        attributes={f"user {SECRET}": 1, f"user {other}": 2, "user *** (2)": 3, "user ***x": 4},
    )
    copy = redacted(span, Redactor([SECRET, other]))
    assert dict(copy.attributes or {}) == {
        "user ***": 1,
        "user *** (2)": 2,
        "user *** (2) (2)": 3,
        "user ***x": 4,
    }


def test_long_values_are_cut_after_their_redaction_to_the_sdks_lengths() -> None:
    """A value cut before its redaction would leave the start of a secret; cut after it, the mask is whole:
    span attributes to the span length, events' and links' to the other."""
    span = ReadableSpan(
        name="n",
        context=context(2),
        attributes={"long": "p" * 10 + SECRET + "q" * 20, "many": ("p" * 10 + SECRET,)},
        events=[Event("e", {"m": "x" * 3 + SECRET}, 5)],
    )
    copy = redacted(span, redact, Lengths(span=14, other=5))
    assert dict(copy.attributes or {}) == {"long": "p" * 10 + "***q", "many": ("p" * 10 + "***",)}
    assert dict(copy.events[0].attributes or {}) == {"m": "xxx**"}


def test_the_sdk_limits_lose_only_their_lengths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment's value lengths are handed to the exporter and taken out of the SDK's limits; its
    other limits stay."""
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "40")
    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "50")
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "7")
    limits, lengths = unlimited()
    assert lengths == Lengths(40, 50)
    assert (limits.max_span_attribute_length, limits.max_attribute_length) == (None, None)
    assert limits.max_events == 7
