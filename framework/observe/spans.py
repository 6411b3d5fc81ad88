"""The event spans a node exports, with the OpenTelemetry semantic attributes (DESIGN.md section 11).

One span per event, from the record (or request) taken to the reply handed over, named `<type> process`
(the messaging conventions' `{destination} {operation}` form, with the event type as the destination a
reader recognises). Invocation spans (`invoke <function>`) are ended by the invoker. Only called when an
exporter is configured: building attribute maps is what the no-export path saves.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from framework.observe.tracing import Exporter, Span

if TYPE_CHECKING:
    from framework.invoker import EventReply
    from framework.kafka.cloudevents import BadRecord, Event


def export_event(
    exporter: Exporter,
    span: Span,
    event: Event | BadRecord,
    reply: EventReply,
    kind: str,
    topic: str | None,
) -> None:
    """End `span`, the span of `event` answered by `reply`; `topic` is the Kafka topic (None over HTTP).
    A record that is no valid event (`BadRecord`, answered BadEvent) gets its span too, named by its type
    when it had one (`event process` otherwise): its reply carries this span as its trace parent."""
    attributes: dict[str, str | bool | int | float] = {
        "cloudevents.event_spec_version": "1.0",
        "faas.trigger": "pubsub",
        "faas.listeners": reply.listeners,
    }
    if event.id is not None:
        attributes["cloudevents.event_id"] = event.id
    if event.type is not None:
        attributes["cloudevents.event_type"] = event.type
    source, subject = getattr(event, "source", None), getattr(event, "subject", None)
    if source is not None:
        attributes["cloudevents.event_source"] = source
    if subject is not None:
        attributes["cloudevents.event_subject"] = subject
    if topic is not None:  # over HTTP (`POST /events*`) no messaging system is involved
        attributes["messaging.system"] = "kafka"
        attributes["messaging.destination.name"] = topic
        attributes["messaging.operation.type"] = "process"
    error = None if reply.error is None else f"{reply.error['type']}: {reply.error.get('message')}"
    exporter.end(f"{event.type or 'event'} process", span, kind, attributes, error)
