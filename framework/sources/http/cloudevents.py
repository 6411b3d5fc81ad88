"""`POST /events`: a CloudEvents HTTP sink (DESIGN.md section 11), the binding Knative Eventing, Dapr and
Argo Events deliver with.

Binary mode: `ce-*` headers (percent-decoded, as the HTTP binding asks) and the body as the data; structured
mode: `Content-Type: application/cloudevents+json` and the event as the body. Both are mapped onto the Kafka
binding's header names (`ce-type` → `ce_type`) and read by the one codec (`framework/kafka/cloudevents.py`),
so an event means the same over HTTP as over Kafka: same attributes, extensions, limits and trace context.
The trace context is the HTTP hop's `traceparent` / `tracestate` headers (section 11), else the event's own
`ce-traceparent` extension (structured mode: its `traceparent` attribute), whichever valid one comes first.

The answer is the combined reply of section 4 as a binary-mode CloudEvent: `ce-specversion: 1.0`,
`ce-type: faas.reply`, a new `ce-id`, `ce-source: faas`, `ce-correlationid` (the event's id) and
`traceparent` (the event's span); the body is the reply JSON. Status 200 when `ok`, else the failing
error's status; 400 `BadRequest` for a body that is not JSON or an event missing its type or id.

Checks run in the contract's order: auth (the middleware), body size (413), JSON (400), then the event.
The data must be JSON (handlers take JSON payloads); an empty body is `null`. `ce-replyto` is ignored: the
reply is the response.
"""

from __future__ import annotations

import asyncio
import logging
import string
from typing import TYPE_CHECKING
from urllib.parse import quote, unquote_to_bytes

from starlette.requests import Request
from starlette.responses import Response

from framework.errors import BadRequest, FaasError, status_of
from framework.invoker import EventReply
from framework.kafka import cloudevents
from framework.observe import tracing
from framework.observe.spans import export_event
from framework.observe.tracing import Exporter
from framework.sources.http.body import BodyReader
from framework.sources.http.responses import JSONResponse, error_response
from framework.types import new_id

if TYPE_CHECKING:
    from framework.sources.http.app import Invoker
    from framework.sources.http.stopping import InflightRequests

log = logging.getLogger("faas.http")

_PASSED = (b"content-type", b"traceparent", b"tracestate")
_SAFE = "".join(c for c in string.printable if 0x21 <= ord(c) <= 0x7E and c not in '"%')


def kafka_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[str, bytes | None]]:
    """ASGI request headers as Kafka-binding headers: `ce-x` → `ce_x` (percent-decoded), plus
    `content-type`, `traceparent` and `tracestate`; every other header is left out."""
    out: list[tuple[str, bytes | None]] = []
    for name, value in raw:
        if name.startswith(b"ce-"):
            decoded = unquote_to_bytes(value) if b"%" in value else value
            out.append(("ce_" + name[3:].decode("latin-1"), decoded))
        elif name in _PASSED:
            out.append((name.decode("latin-1"), value))
    return out


def header_value(value: str) -> str:
    """A `ce-*` header value as the HTTP binding writes it: printable ASCII other than space, `"` and `%`
    as is, everything else percent-encoded as UTF-8."""
    return quote(value, safe=_SAFE, errors="replace")


def response_headers(reply: EventReply) -> dict[str, str]:
    """The binary-mode CloudEvent headers of a combined reply."""
    headers = {"ce-specversion": "1.0", "ce-type": "faas.reply", "ce-id": new_id(), "ce-source": "faas"}
    if reply.id is not None:
        headers["ce-correlationid"] = header_value(reply.id)
    if reply.traceparent is not None:
        headers["traceparent"] = reply.traceparent
    return headers


def reply_response(reply: EventReply) -> Response:
    return JSONResponse(
        reply.to_json(), 200 if reply.ok else status_of(reply.error_type), headers=response_headers(reply)
    )


async def receive(
    invoker: Invoker, request: Request, reader: BodyReader, inflight: InflightRequests
) -> Response:
    """Serve one CloudEvent delivered over HTTP. A delivery refused (400 bad, 413 too large, 429 from a
    stopping node) is answered in the trace it came with, as an event is (section 11); one a stopping node
    cut (`inflight`, `stopping.py`) gets a combined reply failed with InstanceCrashed."""
    headers = kafka_headers(request.scope["headers"])
    try:
        body = await reader.read_request(request)
    except FaasError as exc:  # the body is what is wrong: the trace context the headers alone give
        return _refused(exc, _parse(b"null", headers, reader.limit), invoker.exporter)
    event = _parse(body, headers, reader.limit)
    if isinstance(event, cloudevents.BadRecord):
        return _refused(BadRequest(event.message.replace("ce_", "ce-")), event, invoker.exporter)
    if event.dropped:
        log.warning("%s", cloudevents.dropped_warning(event.id, event.type, event.dropped))
    span = tracing.start(event.traceparent, event.tracestate)
    try:
        with inflight.retries_end_on_stop():
            reply = await invoker.event(event.type, event.id, event.payload, event.identity(), span)
    except asyncio.CancelledError:
        cut = inflight.error()
        if cut is None:
            raise
        reply = EventReply.failed(event.id, event.type, cut).in_trace(span)  # answered in its trace too
    if invoker.exporter is not None:
        export_event(invoker.exporter, span, event, reply, "server", None)
    return reply_response(reply)


def _parse(
    body: bytes, headers: list[tuple[str, bytes | None]], limit: int
) -> cloudevents.Event | cloudevents.BadRecord:
    """The event of an HTTP delivery: the hop's trace context first; `replyto` ignored (the reply is the
    response, and an HTTP event's `replyto` is usually a URL, no topic)."""
    return cloudevents.parse(body, headers, limit, transport_first=True, reply_topic=False)


def _refused(
    exc: FaasError, event: cloudevents.Event | cloudevents.BadRecord, exporter: Exporter | None
) -> Response:
    """The answer to a delivery refused before any listener ran, in its own span (exported: the answer
    names it as its trace parent)."""
    span = tracing.start(event.traceparent, event.tracestate)
    if exporter is not None:
        export_event(exporter, span, event, EventReply.failed(event.id, event.type, exc), "server", None)
    return error_response(exc, headers={"traceparent": span.traceparent})


def typed_event(
    event_type: str, event_id: str, headers: list[tuple[str, bytes | None]], payload: bytes
) -> tuple[cloudevents.Event, tracing.Span]:
    """`POST /events/{type}`: the event (identity from optional `ce-*` headers, `headers` as
    `kafka_headers` gives them, `event_id` from `typed_event_id`) and its span.

    The optional `ce-*` headers are read as in binary mode; when they do not form a valid event (a wrong
    `ce-specversion`, say) they are ignored rather than refused, as this route always did.
    """
    own = [(n, v) for n, v in headers if n.lower() not in ("ce_type", "ce_id", "content-type")]
    own += [("ce_type", event_type.encode()), ("ce_id", event_id.encode())]
    event = _parse(payload, own, len(payload))
    if isinstance(event, cloudevents.BadRecord):
        return cloudevents.Event(event_type, event_id, payload), tracing.start(
            event.traceparent, event.tracestate
        )
    if event.dropped:
        log.warning("%s", cloudevents.dropped_warning(event_id, event_type, event.dropped))
    return event, tracing.start(event.traceparent, event.tracestate)


def typed_event_id(headers: list[tuple[str, bytes | None]]) -> str | None:
    """The optional `ce-id` of `POST /events/{type}`, decoded as `POST /events` decodes it (percent-decoded
    UTF-8): None when absent or empty (a new id is made). BadRequest when it is not UTF-8."""
    given = {value for name, value in headers if name.lower() == "ce_id" and value}
    if len(given) > 1:
        raise BadRequest("header ce-id is given twice, with different values")
    for value in given:
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise BadRequest("header ce-id is not UTF-8") from None
    return None
