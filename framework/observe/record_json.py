"""The invocation record of DESIGN.md section 13 as JSON bytes: one renderer for the instance and the node.

An instance renders the record of every invocation it answers (it knows every field: the node sends the
time the pool took the request, `started`, and its own name in the start message) and sends the bytes with
its REPLY frame; the node keeps and produces them as they are. The node renders the records of invocations
no instance answered (crash, backstop timeout, overload, queue timeout, cancellation, no instance
available) with the same function. So the record's shape lives here only, and the node's loop, the
platform's bottleneck, never builds or serialises the records of the common path (about 9 us of node CPU
per invocation saved, `make bench`, `costs`).

Fields: `started_at` is RFC 3339 UTC with milliseconds; `duration_ms` is rounded to the microsecond; an
error message is cut at `MAX_ERROR_CHARS` (an ellipsis marks the cut).
"""

from __future__ import annotations

import time
from typing import Any

import orjson

MAX_ERROR_CHARS = 4000
"""Characters of an error message a record keeps."""

_second: tuple[int, str] = (-1, "")
"""The last whole second formatted, and its text: consecutive times rarely change second (one tuple, so
threads racing here at worst format a second twice)."""
_last: tuple[int, str] = (-1, "")
"""The last millisecond formatted, and its text: under load many invocations start in one millisecond
(a hit costs 0.15 us, a miss 0.75 us)."""


def utc_ms(t: float) -> str:
    """Epoch seconds as RFC 3339 UTC with milliseconds, e.g. `2026-12-01T21:40:00.123Z`."""
    global _second, _last
    ms = int(t * 1000)
    last, text = _last
    if ms == last:
        return text
    second, head = _second
    if ms // 1000 != second:
        second, head = ms // 1000, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000))
        _second = (second, head)
    text = f"{head}.{ms % 1000:03d}Z"
    _last = (ms, text)
    return text


def error_fields(kind: str, message: str) -> dict[str, str]:
    """A record's `error`: `{"type", "message"}`, the message cut at MAX_ERROR_CHARS."""
    if len(message) > MAX_ERROR_CHARS:
        message = message[:MAX_ERROR_CHARS] + "…"
    return {"type": kind, "message": message}


def render(
    invocation_id: str,
    function: str,
    uuid: str,
    revision: int | None,
    trigger: str,
    event: str | None,
    event_id: str | None,
    traceparent: str | None,
    node: str,
    instance_id: str | None,
    started: float,
    duration_ms: float,
    cold: bool,
    attempt: int,
    error: dict[str, str] | None,
    logs: list[Any] | None,
) -> bytes:
    """The record (section 13) as JSON bytes; `started` is epoch seconds, `error` from `error_fields`."""
    return orjson.dumps(
        {
            "invocation_id": invocation_id,
            "function": function,
            "uuid": uuid,
            "revision": revision,
            "trigger": trigger,
            "event": event,
            "event_id": event_id,
            "trace_id": traceparent[3:35] if traceparent else None,
            "node": node,
            "instance_id": instance_id,
            "started_at": utc_ms(started),
            "duration_ms": round(duration_ms, 3),
            "cold_start": cold,
            "attempt": attempt,
            "ok": error is None,
            "error": error,
            "logs": logs or [],
        }
    )
