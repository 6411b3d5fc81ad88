"""Types shared by the layers: what a source hands the invoker, and what comes back."""

from __future__ import annotations

from dataclasses import dataclass

from framework.context import Trigger


@dataclass(frozen=True, slots=True)
class Invocation:
    """One request for one function. `payload` is raw JSON bytes: the node forwards it without re-encoding."""

    invocation_id: str
    trigger: Trigger
    event: str | None
    payload: bytes


@dataclass(frozen=True, slots=True)
class InvokeResult:
    """A handler's answer. `result` is its return value as raw JSON bytes (spliced into replies as is)."""

    invocation_id: str
    result: bytes
    duration_ms: float
    """Milliseconds from the instance receiving the request to its reply."""
    cold_start: bool
    instance_id: str
