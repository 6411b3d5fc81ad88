"""Dead-letter records (DESIGN.md sections 4 and 15): the copies the platform writes, and reading them back.

A dead-letter record is an exact copy of the event record (key, value and headers, in order) plus `faas_*`
headers saying why it is there:

- a record that is not a valid event (BadEvent): `faas_error` (`BadEvent: reason`, in the form of a failed
  event's) only;
- a failed event (its reply was `ok: false` after any retries): `faas_error` (`Type: message`),
  `faas_function` (the failing function, empty when no function was to blame) and `faas_attempts` (the
  attempts it made: its last `ctx.attempt`).

`classify` reads a record back for `faas replay`: only failed-event copies can be replayed. BadEvent copies
would fail the same way again, and records the platform did not write (no `faas_*` headers, a value or
headers that do not make an event, an empty `faas_error`, a `faas_attempts` that is not a count the platform
can write) are foreign. A replayed record is the
original again: `faas_*` headers removed, `faas_replayed: <n>` added (n = 1 the first time; an event
dead-lettered again after a replay carries its count on, so the next replay says n + 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from framework.control.spec import MAX_RETRY_ATTEMPTS
from framework.kafka import cloudevents

ERROR = cloudevents.ERROR_HEADER
FUNCTION = "faas_function"
ATTEMPTS = "faas_attempts"
REPLAYED = "faas_replayed"
MAX_ATTEMPTS = 1 + MAX_RETRY_ATTEMPTS
"""The most attempts a failed-event copy can say it took: a larger `faas_attempts` is no copy of ours."""
PREFIX = "faas_"
MAX_ERROR_CHARS = 65_536
"""Characters of `faas_error`: a failed event's `Type: message` is whole up to this (its reply carries the
message whole too); beyond it the text is cut and ends in `…`, so an exception text of megabytes cannot make
the copy too large to produce. A bad record's reason is short already (`cloudevents.MAX_MESSAGE`)."""

Headers = Sequence[tuple[str, bytes | None]]
Kind = Literal["failed", "bad_event", "foreign"]
EventKey = tuple[str, str]
"""(ce_source, ce_id): what names one event (CloudEvents: an id is unique within its source), the source
empty when the event has none."""


def _error(error_type: str, message: str) -> tuple[str, bytes]:
    """`faas_error`: `Type: message`, cut past MAX_ERROR_CHARS characters."""
    text = f"{error_type}: {message}"
    if len(text) > MAX_ERROR_CHARS:
        text = text[:MAX_ERROR_CHARS] + "…"
    return ERROR, text.encode(errors="replace")


def with_short_error(headers: Headers) -> list[tuple[str, bytes | None]] | None:
    """`headers` with their `faas_error` cut to `cloudevents.MAX_MESSAGE` characters (marked `…`), for a
    copy too large to produce with the whole message; None when it is that short already."""
    out = list(headers)
    for i in range(len(out) - 1, -1, -1):
        name, value = out[i]
        if name == ERROR and value is not None:
            text = value.decode(errors="replace")
            if len(text) <= cloudevents.MAX_MESSAGE:
                return None
            out[i] = (ERROR, (text[: cloudevents.MAX_MESSAGE] + "…").encode())
            return out
    return None


DEADLETTER_ERROR = "faas_deadletter_error"
"""Why a dead-letter copy is not exact (too large for the topic: `ReplyOutbox.deadletter`)."""


TRIMMED_HEADER = 65_536
"""Bytes (name and value) of one header a trimmed copy keeps at most (`trimmed`)."""
TRIMMED_TOTAL = 256 * 1024
"""Bytes of all the headers a trimmed copy keeps at most: well under a broker's smallest usual record
limit (Kafka's default `message.max.bytes` is 1 MiB)."""
TRIMMED_NAMED = 20
"""Headers left out that `faas_deadletter_error` names, at most (then how many more)."""


def trimmed(headers: Headers, why: str) -> list[tuple[str, bytes | None]]:
    """For a copy refused even without its value (its headers alone are over the broker's limit): the headers
    that fit `TRIMMED_HEADER` each and `TRIMMED_TOTAL` in all, the CloudEvents and platform ones (`ce_*`,
    `faas_*`: what a replay needs) first, then the others from the last, kept in their order; plus
    `faas_deadletter_error` saying `why` and naming the headers left out with their sizes."""
    ours = [i for i, (name, _) in enumerate(headers) if name.startswith(("ce_", PREFIX))]
    mine = set(ours)
    others = [i for i in reversed(range(len(headers))) if i not in mine]
    kept: set[int] = set()
    left: list[tuple[int, int]] = []
    total = 0
    for i in (*ours, *others):
        name, value = headers[i]
        size = len(name) + len(value or b"")
        if size > TRIMMED_HEADER or total + size > TRIMMED_TOTAL:
            left.append((i, size))
            continue
        total += size
        kept.add(i)
    named = [f"{headers[i][0][:64]!r} ({size} bytes)" for i, size in sorted(left)]
    if len(named) > TRIMMED_NAMED:
        named = [*named[:TRIMMED_NAMED], f"and {len(named) - TRIMMED_NAMED} more"]
    note = f"{why}; sent without its value and the headers {', '.join(named)}" if named else why
    return [*(headers[i] for i in sorted(kept)), (DEADLETTER_ERROR, note.encode())]


def bad_event_headers(headers: Headers, message: str) -> list[tuple[str, bytes | None]]:
    """The record's own headers, unchanged and in order, plus why it is no event."""
    return [*headers, _error("BadEvent", message)]


def failed_headers(
    headers: Headers, error_type: str, message: str, function: str | None, attempts: int
) -> list[tuple[str, bytes | None]]:
    """The event's own headers, unchanged and in order, plus why it failed."""
    return [
        *headers,
        _error(error_type, message),
        (FUNCTION, (function or "").encode()),
        (ATTEMPTS, str(attempts).encode()),
    ]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One dead-letter record read back. `event_id`, `type`, `function` are set for failed-event copies."""

    kind: Kind
    reason: str = ""
    """Why a record is not replayable (empty for a failed-event copy)."""
    event_id: str | None = None
    source: str | None = None
    type: str | None = None
    function: str | None = None
    replayed: int = 0
    """How often the copied event had been replayed already (its `faas_replayed`, 0 when none)."""

    @property
    def event(self) -> EventKey | None:
        """Which event a failed-event copy is of (None for any other record)."""
        return None if self.event_id is None else (self.source or "", self.event_id)


def _header(headers: Headers, name: str) -> bytes | None:
    """The last value of `name` (the platform appends its headers after the event's own)."""
    found = None
    for key, value in headers:
        if key == name:
            found = value if value is not None else b""
    return found


MAX_COUNT = 2**31 - 1
"""The largest attempt or replay count taken from a header; a larger one is no count (the platform never
writes one: `faas_replayed: 9...9` of 4,300 digits made `str(n + 1)` raise, and every replay fail)."""


def _count(raw: bytes | None) -> int | None:
    """A header's count, or None: not there, not a decimal number, negative or beyond MAX_COUNT."""
    if raw is None or len(raw) > 10:  # int() of a long text costs, and beyond 10 digits it is over anyway
        return None
    try:
        n = int(raw.decode())
    except (UnicodeDecodeError, ValueError):
        return None
    return n if 0 <= n <= MAX_COUNT else None


def classify(value: bytes | None, headers: Headers) -> DeadLetter:
    """What a dead-letter record is; never raises."""
    error = _header(headers, ERROR)
    if error is None:
        return DeadLetter("foreign", "no faas_error header")
    if not error:  # the platform always says why: `Type: message`
        return DeadLetter("foreign", "faas_error is empty or null")
    function, attempts = _header(headers, FUNCTION), _header(headers, ATTEMPTS)
    # The type in `faas_error` first: a record no event can carry `faas_function` and `faas_attempts` of
    # its own (copied back from a dead-letter topic), and its copy is still a BadEvent one.
    if error.startswith(b"BadEvent:") or (function is None and attempts is None):
        return DeadLetter("bad_event", "a BadEvent copy")
    tries = _count(attempts)
    if function is None or not tries or tries > MAX_ATTEMPTS:
        return DeadLetter("foreign", "faas_function or faas_attempts missing or not valid")
    # Not the platform's own header on a dead-letter copy but the event's (a replayed event carries it):
    # one its producer set to something else counts as no replay, the copy is still ours.
    count = _count(_header(headers, REPLAYED)) or 0
    # The original headers: what the event was before the platform copied it.
    event = cloudevents.parse(value, strip(headers), max_payload=len(value or b"") + 1)
    if isinstance(event, cloudevents.BadRecord):
        return DeadLetter("foreign", f"not an event: {event.message}")
    try:
        name = function.decode()
    except UnicodeDecodeError:
        return DeadLetter("foreign", "faas_function is not UTF-8")
    return DeadLetter(
        "failed", event_id=event.id, source=event.source, type=event.type, function=name, replayed=count
    )


def replayed_copy(value: bytes | None, headers: Headers) -> tuple[EventKey, int] | None:
    """((ce_source, ce_id), faas_replayed) of an events-topic record `faas replay` produced; None for any
    other. Only a record carrying `faas_replayed` is parsed, so reading a busy events topic stays cheap."""
    raw = _header(headers, REPLAYED)
    count = _count(raw) if raw is not None else None
    if not count:
        return None
    event = cloudevents.parse(value, strip(headers), max_payload=len(value or b"") + 1)
    return None if isinstance(event, cloudevents.BadRecord) else ((event.source or "", event.id), count)


def strip(headers: Headers) -> list[tuple[str, bytes | None]]:
    """`headers` without the platform's `faas_*` ones."""
    return [(k, v) for k, v in headers if not k.lower().startswith(PREFIX)]


def replay_headers(headers: Headers, replayed: int) -> list[tuple[str, bytes | None]]:
    """The original event's headers again, with `faas_replayed: <replayed>`."""
    return [*strip(headers), (REPLAYED, str(min(replayed, MAX_COUNT)).encode())]  # read back as a count
