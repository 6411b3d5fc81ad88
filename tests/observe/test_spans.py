"""observe.spans: the attributes of an event's span (DESIGN.md section 11)."""

from __future__ import annotations

from framework.invoker import EventReply
from framework.kafka.cloudevents import Event
from framework.observe import tracing
from framework.observe.spans import export_event


class Ended:
    def __init__(self) -> None:
        self.spans: list[tuple[str, str, dict[str, str | bool | int | float], str | None]] = []

    def end(
        self,
        name: str,
        span: tracing.Span,
        kind: str,
        attributes: dict[str, str | bool | int | float],
        error: str | None = None,
    ) -> None:
        self.spans.append((name, kind, attributes, error))


def test_listeners_counts_every_listener_not_the_finished_ones() -> None:
    """An event of three listeners whose first failed and aborted the chain: `faas.listeners` is 3 (it
    said 1: the finished ones and the failure)."""
    ended = Ended()
    event = Event("t.fail", "e-1", b"{}", source="s")
    reply = EventReply("e-1", "t.fail", error={"type": "FunctionError", "message": "boom"}, listeners=3)
    export_event(ended, tracing.start(), event, reply, "consumer", "faas.events")
    [(name, kind, attributes, error)] = ended.spans
    assert (name, kind, error) == ("t.fail process", "consumer", "FunctionError: boom")
    assert attributes["faas.listeners"] == 3 and attributes["messaging.destination.name"] == "faas.events"
