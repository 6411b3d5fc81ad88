"""Types shared by the layers: what a source hands the invoker, and what comes back."""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass

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
