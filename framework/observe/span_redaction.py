"""Secret values kept out of the spans an instance exports (DESIGN.md section 14), imported only when export
is on.

A handler's own spans carry what it gives them, and what the SDK records for it: an exception that leaves
a span becomes its status description and an `exception` event holding the message and the traceback. Such
text leaves the instance as surely as a log line does, so it passes the same `redact` (`worker/redact.py`)
first: the name, every string attribute (in sequences and mappings too), the events' and links' attributes
and the status description of each span, copied (a finished span is read-only) just before export. A
function without secrets pays nothing: its instance exports without this.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, Status

Redact = Callable[[str], str]


def _value(value: Any, redact: Redact) -> Any:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {key: _value(item, redact) for key, item in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return tuple(_value(item, redact) for item in value)
    return value


def _attributes(attributes: Mapping[str, Any] | None, redact: Redact) -> dict[str, Any] | None:
    if not attributes:
        return None
    return {key: _value(value, redact) for key, value in attributes.items()}


def _counted(items: list[Any], dropped: int) -> BoundedList[Any]:
    """`items`, carrying the count of those the SDK dropped over its limits (exported with the span)."""
    bounded: BoundedList[Any] = BoundedList.from_seq(None, items)
    bounded.dropped = dropped
    return bounded


def redacted(span: ReadableSpan, redact: Redact) -> ReadableSpan:
    """A copy of `span` with `redact` applied to every text it holds; the counts of what the SDK dropped
    over its limits (attributes, events, links) are kept."""
    status = span.status
    if status.description:
        status = Status(status.status_code, redact(status.description))
    attributes = BoundedAttributes(attributes=_attributes(span.attributes, redact), immutable=False)
    attributes.dropped = span.dropped_attributes
    events = [Event(redact(e.name), _attributes(e.attributes, redact), e.timestamp) for e in span.events]
    links = [Link(link.context, _attributes(link.attributes, redact)) for link in span.links]
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

    def __init__(self, exporter: SpanExporter, redact: Redact) -> None:
        self.exporter = exporter
        self.redact = redact

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return self.exporter.export([redacted(span, self.redact) for span in spans])

    def shutdown(self) -> None:
        self.exporter.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.exporter.force_flush(timeout_millis)
