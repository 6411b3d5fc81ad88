"""W3C Trace Context (DESIGN.md section 11): parse a caller's `traceparent`, start spans of its trace.

A node continues the trace of what triggered it: the `traceparent` (and `tracestate`) of an HTTP request, or
the `ce_traceparent` / `traceparent` header of a Kafka record. Each event and each invocation is a span of
that trace; a missing or malformed header starts a new trace (never an error: tracing must not fail work).

Parsing is strict, as the W3C recommendation asks of a receiver: version `00` is exactly
`00-<32 hex>-<16 hex>-<2 hex>` in lower case, with neither id all zeros; a higher version (not `ff`) may
carry more fields after the flags, which are ignored. `tracestate` is passed through unchanged (at most
`MAX_TRACESTATE` characters, else dropped), never parsed.

Ids: 128-bit trace ids and 64-bit span ids from `random.getrandbits`, as OpenTelemetry's own
`RandomIdGenerator` draws them (unique, not secret: a trace id is not a credential). The whole cost without
an exporter is this parse and one `getrandbits` call per span, a few microseconds per event (`make bench`,
`tracing traceparent per event`); the OpenTelemetry SDK is only imported by `observe/otel.py`, and only
when an endpoint is configured.
"""

from __future__ import annotations

import contextvars
import math
import os
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

MAX_TRACESTATE = 512
"""Characters of `tracestate` passed on (the W3C limit for what a vendor must propagate)."""
_HEX = frozenset("0123456789abcdef")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_LOW_BITS = (1 << 64) - 1

current: contextvars.ContextVar[Span | None] = contextvars.ContextVar("faas_span", default=None)
"""The span the running code serves (node: set by the invoker per invocation; read by the log filter)."""


@dataclass(slots=True)
class Span:
    """One span of a trace: its ids, the caller's span (`parent_id`) and the trace's flags and state.

    A value: never changed once made. Not declared `frozen`, whose `__init__` costs five times a plain one
    (see `framework.types`); the event path makes two per event.

    `start_ns` (epoch nanoseconds) is when it began, for exporters; `remote_parent` says the parent came
    from outside (a caller's header) rather than from a span of this node.
    """

    trace_id: str
    span_id: str
    parent_id: str | None = None
    flags: str = "01"
    tracestate: str | None = None
    start_ns: int = 0
    remote_parent: bool = False

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    @property
    def sampled(self) -> bool:
        return int(self.flags, 16) & 1 == 1

    def child(self) -> Span:
        """A new span of this trace whose parent is this one."""
        return Span(self.trace_id, new_span_id(), self.span_id, self.flags, self.tracestate, time.time_ns())

    def sibling(self) -> Span:
        """A new span of this trace with this one's parent (a retry's attempt beside the first attempt)."""
        return Span(
            self.trace_id,
            new_span_id(),
            self.parent_id,
            self.flags,
            self.tracestate,
            time.time_ns(),
            self.remote_parent,
        )


_SAMPLERS = frozenset(
    prefix + rule for prefix in ("", "parentbased_") for rule in ("always_on", "always_off", "traceidratio")
)
"""The `OTEL_TRACES_SAMPLER` names of the SDK's own samplers (section 11; `framework` has no others)."""
_KNOWN_FLAGS = ("00", "01")
"""Trace flags by their `sampled` bit (index 0: not sampled)."""


def new_trace_id() -> str:
    while True:
        value = random.getrandbits(128)
        if value:
            return f"{value:032x}"


def new_span_id() -> str:
    while True:
        value = random.getrandbits(64)
        if value:
            return f"{value:016x}"


def _is_hex(text: str) -> bool:
    return _HEX.issuperset(text)


def parse_traceparent(header: str | None) -> tuple[str, str, str] | None:
    """`(trace_id, parent_span_id, flags)` of a valid W3C `traceparent`, else None. Never raises."""
    if not header or not isinstance(header, str):
        return None
    value = header.strip()
    if len(value) < 55 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    version, trace_id, span_id, flags = value[:2], value[3:35], value[36:52], value[53:55]
    if not (_is_hex(version) and _is_hex(trace_id) and _is_hex(span_id) and _is_hex(flags)):
        return None
    if version == "ff" or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    if version == "00" and len(value) != 55:
        return None
    if len(value) > 55 and value[55] != "-":  # a later version: more fields may follow, after a dash
        return None
    return trace_id, span_id, flags


@dataclass(frozen=True, slots=True)
class Sampler:
    """Which traces are sampled (the W3C `sampled` flag, which export honours), from the OpenTelemetry SDK's
    own variables: `OTEL_TRACES_SAMPLER` (default `parentbased_always_on`) and `OTEL_TRACES_SAMPLER_ARG`
    (the ratio of `traceidratio`, 0-1, default 1). Parent-based samplers keep a caller's decision and apply
    the rest to new traces only; the others decide every trace themselves. The ratio is the SDK's rule
    (the trace id's low 64 bits below ratio * 2**64), so every process decides a trace the same way.
    Export costs per span (`make bench`, `costs`): a ratio of 0.1 pays about a tenth of it.

    A name this node does not know is the default, `parentbased_always_on`, as the SDK takes it (so the
    node and the SDK in its instances agree, and a caller's "not sampled" is kept); `unknown` holds it for
    the warning the exporter logs."""

    parent_based: bool = True
    bound: int = 1 << 64
    """Sampled when the trace id's low 64 bits are below this."""
    unknown: str | None = None
    """The `OTEL_TRACES_SAMPLER` given when it names no sampler this node has."""
    bad_ratio: str | None = None
    """The `OTEL_TRACES_SAMPLER_ARG` given when it is not a ratio from 0 to 1 (not a number, NaN: 1 is
    used; outside the range: the nearest bound), for the exporter's warning."""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] = os.environ) -> Sampler:
        name = environ.get("OTEL_TRACES_SAMPLER", "").strip().lower() or "parentbased_always_on"
        if name not in _SAMPLERS:
            return cls(unknown=name)
        parent_based = name.startswith("parentbased_")
        rule = name.removeprefix("parentbased_")
        if rule == "always_off":
            return cls(parent_based, 0)
        if rule == "always_on":
            return cls(parent_based)
        given = environ.get("OTEL_TRACES_SAMPLER_ARG", "1")
        try:
            ratio = float(given)
        except ValueError:
            ratio = math.nan
        if math.isnan(ratio):  # NaN passes every comparison, and no bound can be made of it
            return cls(parent_based, 1 << 64, bad_ratio=given)
        clamped = min(max(ratio, 0.0), 1.0)
        return cls(parent_based, round(clamped * (1 << 64)), bad_ratio=None if clamped == ratio else given)

    def flags(self, trace_id: str, parent_flags: str | None) -> str:
        """The flags of a span of `trace_id`; `parent_flags`: a caller's, None for a new trace. Only the
        `sampled` bit is passed on: Trace Context level 1 defines no other, and its unknown bits are not
        to be propagated (a caller's `ff` continues as `01`)."""
        if parent_flags is not None and self.parent_based:
            return parent_flags if parent_flags in _KNOWN_FLAGS else _KNOWN_FLAGS[int(parent_flags, 16) & 1]
        sampled = self.bound > _LOW_BITS or int(trace_id[16:], 16) < self.bound
        return "01" if sampled else "00"


sampler = Sampler.from_environ()
"""This process's sampler (its environment is read once, at import)."""


def start(traceparent: str | None = None, tracestate: str | None = None) -> Span:
    """A new span continuing the caller's trace when `traceparent` is valid, else the root of a new trace."""
    parsed = parse_traceparent(traceparent)
    now = time.time_ns()
    if parsed is None:
        trace_id = new_trace_id()
        return Span(trace_id, new_span_id(), flags=sampler.flags(trace_id, None), start_ns=now)
    trace_id, parent_id, flags = parsed
    flags = sampler.flags(trace_id, flags)
    state = tracestate.strip() if tracestate else None
    # W3C allows printable ASCII only: anything else would not come out as it came in (HTTP headers are
    # read as latin-1, replies written as UTF-8).
    if state is not None and (len(state) > MAX_TRACESTATE or not (state.isascii() and state.isprintable())):
        state = None
    return Span(trace_id, new_span_id(), parent_id, flags, state or None, now, remote_parent=True)


def repeated(name: str, first: str, again: str) -> str:
    """The value of trace header `name` (`traceparent` or `tracestate`, any prefix) given twice. HTTP joins
    a repeated field's values with commas (RFC 9110), as W3C Trace Context asks of `tracestate`: its lists
    are joined. A `traceparent` holds one value, so two make it malformed (empty here): the trace starts
    anew, as the W3C test suite expects, rather than taking one of two callers' at random."""
    if name.endswith("traceparent"):
        return ""
    return ",".join(part for part in (first, again) if part.strip())


def from_headers(headers: list[tuple[bytes, bytes]]) -> Span:
    """`start` from raw ASGI headers (lower-case names); values that are not ASCII count as missing."""
    found: dict[bytes, str] = {}
    for name, value in headers:
        if name == b"traceparent" or name == b"tracestate":
            text = value.decode("latin-1")
            found[name] = repeated(name.decode(), found[name], text) if name in found else text
    return start(found.get(b"traceparent"), found.get(b"tracestate"))


class Exporter(Protocol):
    """Where finished spans go when OpenTelemetry export is on (`observe/otel.py`); None otherwise."""

    def end(
        self,
        name: str,
        span: Span,
        kind: str,
        attributes: dict[str, str | bool | int | float],
        error: str | None = None,
    ) -> None:
        """Record `span` as ended now. `kind`: `server`, `consumer` or `internal`; `error`: its message."""
