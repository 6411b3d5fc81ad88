"""Types shared by the layers: what a source hands the invoker, and what comes back."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

from framework.context import Trigger

# A per-process random prefix (80 bits, version 4 and variant bits included) and a counter in the last
# 48 bits: ids shaped and as unique as uuid4's, without an os.urandom syscall per id (~2 µs, and one is
# drawn per invocation and per reply on the hot path).
_ID_PREFIX = str(uuid.uuid4())[:24]
_ID_COUNTER = itertools.count(int.from_bytes(uuid.uuid4().bytes[:6]))


def new_id() -> str:
    """A fresh UUID (version 4 layout) string, for invocation and event ids."""
    return f"{_ID_PREFIX}{next(_ID_COUNTER) & 0xFFFF_FFFF_FFFF:012x}"


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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

    def frame_fields(self) -> dict[str, object]:
        """Optional request-frame header fields (`ev`, `tp`, `a`): those that differ from the default."""
        fields: dict[str, object] = {}
        if self.identity is not None:
            fields["ev"] = self.identity.as_header()
        if self.traceparent is not None:
            fields["tp"] = self.traceparent
        if self.attempt != 1:
            fields["a"] = self.attempt
        return fields


@dataclass(frozen=True, slots=True)
class InvokeResult:
    """A handler's answer. `result` is its return value as raw JSON bytes (spliced into replies as is)."""

    invocation_id: str
    result: bytes
    duration_ms: float
    """Milliseconds from the instance receiving the request to its reply."""
    cold_start: bool
    instance_id: str
