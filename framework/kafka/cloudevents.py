"""Kafka record ↔ CloudEvent mapping (CloudEvents 1.0 Kafka protocol binding, DESIGN.md section 4).

Hand-written rather than the `cloudevents` SDK: the SDK decodes every header, parses the JSON data into
Python objects and builds a validated event object, so the payload would have to be encoded again before it
reaches the invoker. Here the binary-mode value is validated once with orjson and passed on as the very
bytes that came off the wire. Measured with `python -m timeit` per record (binary mode, 80 B payload, five
headers): cloudevents 2.2 `from_binary` + re-encode ≈ 15 µs, this ≈ 5 µs (orjson validation ≈ 1 µs of it).

Choices where the binding leaves room:

- a binary-mode record without `ce_specversion` is taken as 1.0 (only a present, different value is bad);
- header names are matched case-insensitively; a core attribute (`ce_specversion`, `ce_type`, `ce_id`,
  `ce_source`, `ce_subject`, `ce_time`, `ce_replyto`, `content-type`) that is not UTF-8, or that is given
  twice with different values, makes the record bad;
- every other `ce_*` header is an extension, handed to the handler as `ctx.extensions` (section 3). An
  extension that is not UTF-8, is over `MAX_EXTENSION_BYTES`, or whose name is not 1-128 lower-case
  letters and digits (the CloudEvents naming rule: names *should* keep to 20, so a longer one is still an
  attribute) is dropped with a warning (`Event.dropped`): the event is still served. Structured mode:
  other top-level attributes are extensions, scalars as strings;
- the trace context is `ce_traceparent` (distributed-tracing extension) or else a plain `traceparent`
  header, each with its own `tracestate`; over HTTP (`transport_first`) the transport's `traceparent` header
  comes first (section 11). When both are given, the first valid one is taken (`observe/tracing.py`
  validates); when only one is, it is passed on as it is (a malformed one starts a new trace there). A
  trace header given twice counts as HTTP reads a repeated field (`tracing.repeated`): `tracestate` lists
  joined, two `traceparent`s malformed;
- `ce_time` is passed on as the string it is: a malformed time never fails an event;
- structured mode accepts `data` (any JSON, missing = null) or `data_base64` (bytes that must be JSON), not
  both: the JSON event format forbids it, and taking one would drop the other's data without a word.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import orjson

from framework import json_exact
from framework.kafka.address import topic_problem
from framework.observe.tracing import parse_traceparent, repeated
from framework.types import EventIdentity, new_id

SPECVERSION = "1.0"
STRUCTURED = "application/cloudevents+json"
BATCH = "application/cloudevents-batch+json"
JSON = b"application/json"
REPLY_TYPE = b"faas.reply"
REPLY_SOURCE = b"faas"
ERROR_HEADER = "faas_error"
MAX_MESSAGE = 500
"""Characters of a bad record's reason kept: its BadEvent reply's message and its copy's `faas_error`."""

MAX_EXTENSION_BYTES = 4096
"""Largest extension value (bytes) passed to a handler; larger ones are dropped with a warning."""

_EXT_NAME = re.compile(r"[a-z0-9]{1,128}")
CORE = frozenset(("specversion", "type", "id", "source", "subject", "time", "replyto"))
"""Attributes with a place of their own; every other one is an extension."""
_TRACE, _ATTRIBUTE = "trace", "attribute"
_TRACE_NAMES = ("traceparent", "tracestate")
_ROLES = {**{f"ce_{name}": _ATTRIBUTE for name in CORE}, "content-type": _ATTRIBUTE} | dict.fromkeys(
    _TRACE_NAMES, _TRACE
)
"""Binary-mode headers with a place of their own, by lower-case name; other `ce_*` ones are extensions."""
_STRUCTURED_OWN = CORE | {"data", "data_base64", "datacontenttype"}
_STRING_ATTRIBUTES = ("source", "subject", "time", "datacontenttype", "dataschema")
"""Structured-mode attributes that must be strings when present (a wrong type makes the event bad)."""

Headers = Sequence[tuple[str, bytes | None]]


@dataclass(slots=True)
class Event:
    """A valid event. `payload` is raw JSON bytes: the record value itself in binary mode."""

    type: str
    id: str
    payload: bytes
    source: str | None = None
    replyto: str | None = None
    subject: str | None = None
    time: str | None = None
    extensions: dict[str, str] = field(default_factory=dict)
    traceparent: str | None = None
    tracestate: str | None = None
    dropped: list[str] = field(default_factory=list)
    """Why extensions were left out (each worth a warning); the event is served all the same."""

    def identity(self, key: bytes | None = None) -> EventIdentity:
        """What the handler sees of this event (section 10); `key` is the Kafka key (None over HTTP)."""
        text_key = None
        if key is not None:
            text_key = key.decode(errors="replace")
        return EventIdentity(self.id, self.source, self.subject, self.time, text_key, self.extensions)


@dataclass(slots=True)
class BadRecord:
    """A record that is not a valid event; `id`, `type` and `replyto` are set when they were readable, and
    the trace context as a valid event's would be taken (its BadEvent reply continues that trace)."""

    message: str
    id: str | None = None
    type: str | None = None
    replyto: str | None = None
    traceparent: str | None = None
    tracestate: str | None = None


class _Bad(Exception):
    pass


def parse(
    value: bytes | None,
    headers: Headers,
    max_payload: int,
    transport_first: bool = False,
    own_topics: frozenset[str] = frozenset(),
    reply_topic: bool = True,
) -> Event | BadRecord:
    """Map one Kafka record to an Event, or say why it is not one. Never raises.

    `max_payload` is FAAS_MAX_PAYLOAD_BYTES: a larger record value is bad in either mode. `transport_first`:
    a plain `traceparent` header (the HTTP hop's, over HTTP) comes before the event's own extension.
    `own_topics`: topics a reply may not be sent to (`Settings.not_for_replies`): an event naming one as its
    `replyto` is bad, and its BadEvent reply goes to the default replies topic. Without `reply_topic` (over
    HTTP, where the reply is the response) `replyto` is neither read nor checked: there it is usually a URL.
    """
    attrs: dict[str, str] = {}
    extensions: dict[str, str] = {}
    dropped: list[str] = []
    trace: dict[str, str] = {}
    bad_header: str | None = None
    for name, raw in headers:
        if raw is None:
            continue
        lname = name if name in _ROLES else name.lower()  # producers mostly send the lower-case names
        role = _ROLES.get(lname)
        if role is None:
            if not lname.startswith("ce_"):
                continue  # not ours (a producer's own header)
            ext = lname[3:]
            if not _EXT_NAME.fullmatch(ext):
                dropped.append(f"extension header {name!r}: the name is not 1-128 lower-case letters/digits")
            elif len(raw) > MAX_EXTENSION_BYTES:
                dropped.append(f"extension header {name}: {len(raw)} bytes, over {MAX_EXTENSION_BYTES}")
            else:
                try:
                    text = raw.decode()
                except UnicodeDecodeError:
                    dropped.append(f"extension header {name} is not UTF-8")
                else:
                    if ext in extensions and ext in _TRACE_NAMES:
                        text = repeated(ext, extensions[ext], text)
                    extensions[ext] = text
            continue
        if role is _TRACE:
            text = raw.decode("latin-1")
            trace[lname] = repeated(lname, trace[lname], text) if lname in trace else text
            continue
        try:
            text = raw.decode()
        except UnicodeDecodeError:
            bad_header = bad_header or f"header {name} is not UTF-8"
            continue
        if attrs.setdefault(lname, text) != text:  # which one is the event's? neither is taken
            bad_header = bad_header or f"header {name} is given twice, with different values"
    media = attrs.get("content-type", "").partition(";")[0].strip().lower()  # `; charset=utf-8` aside
    if media == STRUCTURED:
        return _structured(value, bad_header, max_payload, trace, transport_first, own_topics, reply_topic)
    event_id = attrs.get("ce_id") or None
    event_type = attrs.get("ce_type") or None
    traceparent, tracestate = _trace(extensions, trace, transport_first)
    if extensions.get("traceparent") == "":  # given twice (`repeated`): not the handler's to see either
        del extensions["traceparent"]
        dropped.append("extension header ce_traceparent is given twice (a new trace is started)")
    try:
        replyto = _replyto(attrs.get("ce_replyto"), own_topics) if reply_topic else None
    except _Bad as exc:
        return BadRecord(str(exc), event_id, event_type, None, traceparent, tracestate)
    try:
        if bad_header:
            raise _Bad(bad_header)
        if attrs.get("ce_specversion", SPECVERSION) != SPECVERSION:
            raise _Bad(f"unsupported ce_specversion {attrs['ce_specversion']!r} (want {SPECVERSION})")
        if media == BATCH:
            raise _Bad(f"batch mode ({BATCH}) is not supported: send one event per message")
        if media.startswith("application/cloudevents"):  # +xml, +avro, +protobuf: formats not read here
            raise _Bad(f"structured mode in {media!r} is not supported: send {STRUCTURED} or binary mode")
        if event_type is None:
            raise _Bad("empty ce_type header" if "ce_type" in attrs else "missing ce_type header")
        if event_id is None:
            raise _Bad("empty ce_id header" if "ce_id" in attrs else "missing ce_id header")
        _check_json(value, max_payload)
    except _Bad as exc:
        return BadRecord(str(exc)[:MAX_MESSAGE], event_id, event_type, replyto, traceparent, tracestate)
    assert value is not None  # _check_json rejects empty values
    return Event(
        event_type,
        event_id,
        value,
        attrs.get("ce_source"),
        replyto,
        attrs.get("ce_subject"),
        attrs.get("ce_time"),
        extensions,
        traceparent,
        tracestate,
        dropped,
    )


def _trace(
    extensions: dict[str, str], plain: dict[str, str], transport_first: bool = False
) -> tuple[str | None, str | None]:
    """`(traceparent, tracestate)`: the distributed-tracing extension's, else the plain headers' (the other
    way round with `transport_first`), each traceparent with its own tracestate. When both traceparents are
    given, the first valid one wins: one malformed copy does not cost the trace the other carries."""
    first, second = (plain, extensions) if transport_first else (extensions, plain)
    chosen, other = first.get("traceparent"), second.get("traceparent")
    if not chosen or (other and parse_traceparent(chosen) is None and parse_traceparent(other) is not None):
        first, chosen = second, other
    return (chosen or None), (first.get("tracestate") if chosen else None) or None


def _required_problem(name: str, value: object) -> str:
    """Why a required string attribute of a structured event is unusable."""
    if value is None:
        return f"missing {name!r}"
    if not isinstance(value, str):
        return f"{name!r} must be a string, got {type(value).__name__}"
    return f"{name!r} is empty"


def _structured(
    value: bytes | None,
    bad_header: str | None,
    max_payload: int,
    trace: dict[str, str],
    transport_first: bool = False,
    own_topics: frozenset[str] = frozenset(),
    reply_topic: bool = True,
) -> Event | BadRecord:
    plain = _trace({}, trace)  # the envelope's attributes, when it has any, count as _trace says
    try:
        doc = _check_json(value, max_payload, exact=True)
    except _Bad as exc:
        return BadRecord(f"structured mode: {exc}", None, None, None, *plain)
    if not isinstance(doc, dict):
        return BadRecord("structured mode: the value is not a JSON object", None, None, None, *plain)
    extensions, dropped = _structured_extensions(doc)
    traceparent, tracestate = _trace(extensions, trace, transport_first)
    event_id, event_type = doc.get("id"), doc.get("type")
    event_id = event_id if isinstance(event_id, str) and event_id else None
    event_type = event_type if isinstance(event_type, str) and event_type else None
    try:
        replyto = _replyto(doc.get("replyto"), own_topics) if reply_topic else None
    except _Bad as exc:
        return BadRecord(str(exc), event_id, event_type, None, traceparent, tracestate)
    bad = BadRecord("", event_id, event_type, replyto, traceparent, tracestate)
    if bad_header:
        return _with(bad, bad_header)
    if doc.get("specversion") != SPECVERSION:
        got = doc.get("specversion")
        return _with(bad, f"structured mode: specversion must be {SPECVERSION!r}, got {got!r}")
    if event_type is None:
        return _with(bad, f"structured mode: {_required_problem('type', doc.get('type'))}")
    if event_id is None:
        return _with(bad, f"structured mode: {_required_problem('id', doc.get('id'))}")
    for name in _STRING_ATTRIBUTES:
        if doc.get(name) is not None and not isinstance(doc[name], str):
            return _with(bad, f"structured mode: {name!r} must be a string, got {type(doc[name]).__name__}")
    source = doc.get("source")
    if "data_base64" in doc:
        if doc.get("data") is not None:  # `"data": null` beside it is taken as absent (serializers write it)
            return _with(bad, "structured mode: both 'data' and 'data_base64' are given (one at most)")
        try:
            payload = base64.b64decode(doc["data_base64"], validate=True)
            _check_json(payload, max_payload)
        except (_Bad, binascii.Error, TypeError, ValueError) as exc:
            problem = str(exc).replace("record value", "decoded data")
            return _with(bad, f"structured mode: bad data_base64: {problem}")
    else:
        # The data is embedded in the envelope, so here (and only here) it is encoded again.
        payload = json_exact.dumps(doc.get("data"))
    return Event(
        event_type,
        event_id,
        payload,
        source if isinstance(source, str) else None,
        replyto,
        _text(doc.get("subject")),
        _text(doc.get("time")),
        extensions,
        traceparent,
        tracestate,
        dropped,
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _structured_extensions(doc: dict[str, object]) -> tuple[dict[str, str], list[str]]:
    """Top-level attributes other than the core ones, as strings (`true`/`false` for booleans)."""
    extensions: dict[str, str] = {}
    dropped: list[str] = []
    for name, raw in doc.items():
        if name in _STRUCTURED_OWN or raw is None:
            continue
        if isinstance(raw, bool):
            text = "true" if raw else "false"
        elif isinstance(raw, str | int | float):
            text = str(raw)
        else:
            dropped.append(f"extension {name!r}: a {type(raw).__name__} is not an attribute value")
            continue
        if not _EXT_NAME.fullmatch(name):
            dropped.append(f"extension {name!r}: the name is not 1-128 lower-case letters/digits")
        elif len(text.encode()) > MAX_EXTENSION_BYTES:
            dropped.append(f"extension {name}: over {MAX_EXTENSION_BYTES} bytes")
        else:
            extensions[name] = text
    return extensions, dropped


def _check_json(value: bytes | None, max_payload: int, exact: bool = False) -> object:
    """The value of a record's JSON; `exact` (an envelope whose data is encoded again) keeps integers
    beyond 64 bits exact (`json_exact.py`), which a check alone need not."""
    if not value:
        raise _Bad("empty record value (want a JSON payload)")
    if len(value) > max_payload:
        raise _Bad(f"record value of {len(value)} bytes is over FAAS_MAX_PAYLOAD_BYTES ({max_payload})")
    try:
        return json_exact.loads(value) if exact else orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        try:
            value.decode()
        except UnicodeDecodeError:
            raise _Bad("record value is not UTF-8") from None
        raise _Bad(f"record value is not JSON: {exc}") from None


def _replyto(value: object, own_topics: frozenset[str]) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or topic_problem(value) is not None:
        raise _Bad(f"invalid reply topic {value!r}")
    if value in own_topics:
        raise _Bad(
            f"reply topic {value!r} is one of the platform's own topics; replies may not be sent there"
        )
    return value


SHOWN_REASONS = 3
"""Reasons of dropped attributes named in the one warning of an event (`dropped_warning`)."""
SHOWN_CHARS = 200
"""Characters of an id, a type or a reason shown in that warning: each may be as long as a header."""


def _shown(text: str | None) -> str:
    text = str(text)
    return text if len(text) <= SHOWN_CHARS else f"{text[:SHOWN_CHARS]}... ({len(text):,} characters)"


def dropped_warning(event_id: str | None, event_type: str | None, dropped: Sequence[str]) -> str:
    """The one warning line for what an event dropped (`Event.dropped`): its first reasons, how many
    there were, each text shortened. One line per event, whatever it carries: a record of 1,800 bad
    headers made 1,800 lines, each with an id and a type of up to a header's size (72 MB of log for one
    64 KB request)."""
    shown = "; ".join(_shown(why) for why in dropped[:SHOWN_REASONS])
    more = f" (and {len(dropped) - SHOWN_REASONS:,} more)" if len(dropped) > SHOWN_REASONS else ""
    return (
        f"event {_shown(event_id)} ({_shown(event_type)}): {len(dropped):,} attribute(s) dropped, the event "
        f"is served without them: {shown}{more}"
    )


def unreadable(exc: Exception) -> BadRecord:
    """The bad record of one `parse` failed on with `exc` (a bug: it returns BadRecord for any input), so
    the record is answered BadEvent and copied to the dead-letter topic rather than lost."""
    return BadRecord(f"the record could not be read: {type(exc).__name__}: {exc}"[:MAX_MESSAGE], None, None)


def _with(bad: BadRecord, message: str) -> BadRecord:
    return replace(bad, message=message[:MAX_MESSAGE])


def reply_headers(
    correlation_id: str | None, traceparent: str | None = None, tracestate: str | None = None
) -> list[tuple[str, bytes]]:
    """Headers of a combined reply (binary mode); `correlation_id` is the event's ce_id when known,
    `traceparent` the event's span (section 11), `tracestate` the caller's, passed on with the trace as
    W3C Trace Context asks (the distributed-tracing extension's `tracestate` attribute)."""
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_type", REPLY_TYPE),
        ("ce_id", new_id().encode()),
        ("ce_source", REPLY_SOURCE),
        ("content-type", JSON),
    ]
    if correlation_id is not None:
        headers.append(("ce_correlationid", correlation_id.encode()))
    if traceparent is not None:
        headers.append(("ce_traceparent", traceparent.encode()))
        if tracestate is not None:
            headers.append(("ce_tracestate", tracestate.encode()))
    return headers


def event_headers(
    type_: str,
    id_: str,
    *,
    source: str = "faas-client",
    replyto: str | None = None,
    traceparent: str | None = None,
) -> list[tuple[str, bytes]]:
    """Binary-mode headers of an outgoing event (used by the EventClient)."""
    headers = [
        ("ce_specversion", b"1.0"),
        ("ce_type", type_.encode()),
        ("ce_id", id_.encode()),
        ("ce_source", source.encode()),
        ("content-type", JSON),
    ]
    if replyto:
        headers.append(("ce_replyto", replyto.encode()))
    if traceparent:
        headers.append(("ce_traceparent", traceparent.encode()))
    return headers
