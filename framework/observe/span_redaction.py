"""Secret values kept out of the spans an instance exports (DESIGN.md section 14), imported only when export
is on.

A handler's own spans carry what it gives them, and what the SDK records for it: an exception that leaves
a span becomes its status description and an `exception` event holding the message and the traceback. Such
text leaves the instance as surely as a log line does, so it passes the same `redact` (`worker/redact.py`)
first: the name, every attribute's key (keys that become one are told apart) and its value (text, and
bytes as UTF-8, in sequences and mappings too), the events' and links' attributes and the status
description of each span, copied (a finished span is read-only) just before export. A function without
secrets pays nothing: its instance exports without this.

The SDK cuts a long text value to `OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT` (or
`OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT`) as it is set, and a secret cut in two is no longer one to find. So an
instance with secrets records values whole (`unlimited`) and they are cut here, after the redaction, to
the same lengths (`Lengths`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, Status

Redact = Callable[[str], str]


class Lengths(NamedTuple):
    """The longest text value of a span's attributes and of its events' and links' (None: no limit)."""

    span: int | None
    other: int | None


WHOLE = Lengths(None, None)


def unlimited() -> tuple[SpanLimits, Lengths]:
    """The SDK's span limits (from the environment) without their value lengths, and those lengths."""
    limits = SpanLimits()
    lengths = Lengths(limits.max_span_attribute_length, limits.max_attribute_length)
    limits.max_span_attribute_length = limits.max_attribute_length = None
    return limits, lengths


def _value(value: Any, redact: Redact, cut: int | None) -> Any:
    if isinstance(value, str):
        return redact(value)[:cut]
    if isinstance(value, bytes):  # bytes the SDK keeps as they are (`surrogateescape`: any bytes, exactly)
        return redact(value.decode("utf-8", "surrogateescape")).encode("utf-8", "surrogateescape")
    if isinstance(value, Mapping):
        return _keyed(value, redact, cut)
    if isinstance(value, Sequence):
        return tuple(_value(item, redact, cut) for item in value)
    return value


def _keyed(items: Mapping[str, Any], redact: Redact, cut: int | None) -> dict[str, Any]:
    """`items` with keys and values redacted. Two keys that differ only in their secrets redact to one: the
    second and later get ` (2)`, ` (3)`, ... rather than replace the first."""
    out: dict[str, Any] = {}
    for key, value in items.items():
        name = redact(key)
        if name in out:
            name = next(f"{name} ({n})" for n in range(2, len(out) + 3) if f"{name} ({n})" not in out)
        out[name] = _value(value, redact, cut)
    return out


def _attributes(
    attributes: Mapping[str, Any] | None, redact: Redact, cut: int | None
) -> dict[str, Any] | None:
    if not attributes:
        return None
    return _keyed(attributes, redact, cut)


def _counted(items: list[Any], dropped: int) -> BoundedList[Any]:
    """`items`, carrying the count of those the SDK dropped over its limits (exported with the span)."""
    bounded: BoundedList[Any] = BoundedList.from_seq(None, items)
    bounded.dropped = dropped
    return bounded


def redacted(span: ReadableSpan, redact: Redact, lengths: Lengths = WHOLE) -> ReadableSpan:
    """A copy of `span` with `redact` applied to every text it holds, text values then cut to `lengths`;
    the counts of what the SDK dropped over its limits (attributes, events, links) are kept."""
    status = span.status
    if status.description:
        status = Status(status.status_code, redact(status.description))
    own = _attributes(span.attributes, redact, lengths.span)
    attributes = BoundedAttributes(attributes=own, immutable=False)
    attributes.dropped = span.dropped_attributes
    cut = lengths.other
    events = [Event(redact(e.name), _attributes(e.attributes, redact, cut), e.timestamp) for e in span.events]
    links = [Link(link.context, _attributes(link.attributes, redact, cut)) for link in span.links]
    return ReadableSpan(
        name=redact(span.name),
        context=span.context,
        parent=span.parent,
        resource=span.resource,
        attributes=attributes,
        events=_counted(events, span.dropped_events),
        links=_counted(links, span.dropped_links),
        kind=span.kind,
        status=status,
        start_time=span.start_time,
        end_time=span.end_time,
        instrumentation_scope=span.instrumentation_scope,
    )


class RedactingExporter(SpanExporter):
    """`exporter`, given each span through `redacted`."""

    def __init__(self, exporter: SpanExporter, redact: Redact, lengths: Lengths | None = None) -> None:
        self.exporter = exporter
        self.redact = redact
        self.lengths = WHOLE if lengths is None else lengths

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.exporter.export([redacted(span, self.redact, self.lengths) for span in spans])

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)
