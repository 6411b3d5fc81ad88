"""The `ctx` a handler receives (DESIGN.md section 3)."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Trigger = Literal["event", "direct", "schedule", "warmup"]


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
    extra: dict[str, object] = field(default_factory=dict)

    def remaining(self) -> float:
        """Seconds left before the time limit (never negative)."""
        return max(0.0, self.deadline - time.time())
