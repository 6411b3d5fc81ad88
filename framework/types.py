"""Types shared by the layers: what a source hands the invoker, and what comes back.

Treat them as values: nothing changes one after it is made (`dataclasses.replace` makes the copies retries
need). They are not declared `frozen`: a frozen dataclass's `__init__` sets each field through
`object.__setattr__`, five times the cost of a plain one (554 vs 113 ns for seven fields, `timeit`), and the
event path makes several of these per event.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from framework.context import Trigger

_POOL_BYTES = 4096
"""Random bytes drawn per `os.urandom` call: 256 ids per syscall instead of one."""


class _Pool:
    """Random bytes for ids as hex digits, refilled in blocks; emptied in a forked child so it never
    repeats a parent's."""

    hex = ""
    pos = 0


os.register_at_fork(after_in_child=lambda: setattr(_Pool, "pos", len(_Pool.hex)))


_VARIANT = {digit: "89ab"[int(digit, 16) & 3] for digit in "0123456789abcdef"}
"""The RFC 4122 variant digit (10xx) standing in for each random hex digit: a lookup, not an int()."""


def new_id() -> str:
    """A fresh random UUID (version 4) string, for invocation and event ids (DESIGN.md section 10).

    122 random bits from the OS's CSPRNG, so ids cannot be guessed from one another. The bytes come from a
    pool refilled 4 KiB at a time: about 0.5 us, a little less than `secrets.token_hex(16)` and a quarter of
    `str(uuid.uuid4())` (`python -m timeit`). Meant for one thread (the node's loop): two threads drawing at
    once could read the same 16 bytes.
    """
    pos = _Pool.pos
    if pos >= len(_Pool.hex):
        _Pool.hex, pos = os.urandom(_POOL_BYTES).hex(), 0  # one hex() per 256 ids: half the cost of one each
    _Pool.pos = pos + 32
    h = _Pool.hex[pos : pos + 32]
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


@dataclass(slots=True)
class EventIdentity:
    """Who an event is (DESIGN.md section 10): its CloudEvents attributes, as the handler sees them."""

    event_id: str | None
    source: str | None = None
    subject: str | None = None
    time: str | None = None
    key: str | None = None
    """The Kafka key decoded as UTF-8 (None for HTTP events and null keys)."""
    extensions: Mapping[str, str] = field(default_factory=dict)

    def as_header(self) -> dict[str, object]:
        return {
            "id": self.event_id,
            "src": self.source,
            "sub": self.subject,
            "time": self.time,
            "key": self.key,
            "ext": dict(self.extensions),
        }


@dataclass(slots=True)
class Invocation:
    """One request for one function. `payload` is raw JSON bytes: the node forwards it without re-encoding."""

    invocation_id: str
    trigger: Trigger
    event: str | None
    payload: bytes
    identity: EventIdentity | None = None
    """The event's identity; None for direct and scheduled invocations."""
    traceparent: str | None = None
    """W3C `traceparent` of this invocation's own span, when the source knows its trace."""
    attempt: int = 1
    """1 for the first try; retries count up (DESIGN.md section 15)."""
    tracestate: str | None = None
    """The W3C `tracestate` of the trace, passed on to the handler's own spans (section 11)."""

    def frame_fields(self) -> dict[str, object]:
        """Optional request-frame header fields (`ev`, `tp`, `ts`, `a`): those that differ from the
        default."""
        fields: dict[str, object] = {}
        if self.identity is not None:
            fields["ev"] = self.identity.as_header()
        if self.traceparent is not None:
            fields["tp"] = self.traceparent
        if self.tracestate is not None:
            fields["ts"] = self.tracestate
        if self.attempt != 1:
            fields["a"] = self.attempt
        return fields


@dataclass(slots=True)
class InvokeResult:
    """A handler's answer. `result` is its return value as raw JSON bytes (spliced into replies as is)."""

    invocation_id: str
    result: bytes
    duration_ms: float
    """Milliseconds from the instance receiving the request to its reply."""
    cold_start: bool
    instance_id: str
