"""The `ctx` a handler receives (DESIGN.md section 3)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Literal

from framework.run_clock import RUN_CLOCK

Trigger = Literal["event", "direct", "schedule", "warmup"]


class Secrets(Mapping[str, str]):
    """`ctx.secrets`: the function's secrets, read-only. A name the function does not list is a KeyError
    that says so (a bare `KeyError: 'name'` left the author looking for a typo in the wrong place)."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)

    def __getitem__(self, name: str) -> str:
        try:
            return self._values[name]
        except KeyError:
            listed = ", ".join(sorted(self._values)) or "none"
            raise KeyError(
                f"{name!r} is not a secret of this function: add it to its `secrets:` in functions.yaml "
                f"(listed: {listed})"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Secrets({sorted(self._values)})"  # the names only: a repr is printed and logged


@dataclass
class Context:
    """What a handler knows about the invocation it serves.

    `deadline` is in epoch seconds: the function's `timeout` after the instance received the request.
    `env` is the instance's environment (`os.environ`), so changes a handler makes stay in that instance.
    """

    invocation_id: str
    function: str
    uuid: str
    trigger: Trigger
    event: str | None
    deadline: float
    env: Mapping[str, str]
    log: logging.Logger | logging.LoggerAdapter[logging.Logger]
    instance_id: str
    cold_start: bool = False
    # The event's identity (DESIGN.md section 10): None (extensions empty) for direct and scheduled calls.
    event_id: str | None = None
    source: str | None = None
    subject: str | None = None
    time: str | None = None
    key: str | None = None
    extensions: Mapping[str, str] = field(default_factory=dict)
    # Trace context of this invocation's span (section 11): 32 and 16 lowercase hex digits.
    trace_id: str = "0" * 32
    span_id: str = "0" * 16
    traceparent: str = ""
    revision: int | None = None
    """The deployed revision this instance runs (section 12); None for a test run."""
    attempt: int = 1
    """1 for the first try, 2, 3, ... for retries (section 15)."""
    secrets: Mapping[str, str] = field(default_factory=dict)
    """The secrets the function lists, name -> value (section 14)."""
    stood: float | None = field(default=None, repr=False)
    """`RUN_CLOCK.stood` when the request arrived, in an instance: what the instance stands still after it
    (stopped, a paused VM) does not count against the limit, nor against `remaining()`. None elsewhere."""

    def remaining(self) -> float:
        """Seconds left before the time limit (never negative): `deadline` less the time now, plus, in an
        instance, what it stood still since the request arrived (`deadline` itself stays as it was set)."""
        if self.stood is None:
            return max(0.0, self.deadline - time.time())
        RUN_CLOCK.sample()  # a stop just ended is counted, though no sampler has run since (a `def` handler)
        return max(0.0, self.deadline + (RUN_CLOCK.stood - self.stood) - time.time())
