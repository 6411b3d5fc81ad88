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
    from framework.kafka.cloudevents import Event


def export_event(
    exporter: Exporter, span: Span, event: Event, reply: EventReply, kind: str, topic: str | None
) -> None:
    """End `span`, the span of `event` answered by `reply`; `topic` is the Kafka topic (None over HTTP)."""
    attributes: dict[str, str | bool | int | float] = {
        "cloudevents.event_id": event.id,
        "cloudevents.event_type": event.type,
        "cloudevents.event_spec_version": "1.0",
        "faas.trigger": "pubsub",
        "faas.listeners": len(reply.results) + (reply.error is not None),
    }
    if event.source is not None:
        attributes["cloudevents.event_source"] = event.source
    if event.subject is not None:
        attributes["cloudevents.event_subject"] = event.subject
    if topic is not None:  # over HTTP (`POST /events*`) no messaging system is involved
        attributes["messaging.system"] = "kafka"
        attributes["messaging.destination.name"] = topic
        attributes["messaging.operation.type"] = "process"
    error = None if reply.error is None else f"{reply.error['type']}: {reply.error.get('message')}"
    exporter.end(f"{event.type} process", span, kind, attributes, error)
