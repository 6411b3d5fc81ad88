"""The lines one invocation logged, capped, for its invocation record (DESIGN.md section 13).

Caps, per invocation: the first `entries` lines and `chars` characters of message text are kept (a line that
crosses the character budget is cut there and flagged `truncated`); every line beyond those is only counted,
and one more entry, "N more log entries dropped", closes the list. So a 10 MB line or 100,000 lines cost the
record a few kilobytes; keeping a line costs a dict and a timestamp (about 1.5 us), dropping one a counter
increment.

Two sides keep them: each instance, for the records it renders (`runtime/worker/capture.py`), and the node,
per instance, for the invocations that instance never answers because it died (`runtime/handle.py`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from framework.observe.record_json import utc_ms

LEVELS = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}


def level_name(level: int) -> str:
    return LEVELS.get(level) or f"Level {level}"


class _Kept:
    """The lines of one open invocation."""

    __slots__ = ("chars", "dropped", "entries")

    def __init__(self) -> None:
        self.entries: list[dict[str, Any]] = []
        self.chars = 0
        self.dropped = 0


class LogCapture:
    """Per-invocation log buffers with caps; `add` may run on any thread."""

    def __init__(self, entries: int, chars: int) -> None:
        self.max_entries = max(0, entries)
        self.max_chars = max(0, chars)
        self._open: dict[str, _Kept] = {}
        self._lock = threading.Lock()

    def begin(self, invocation_id: str) -> None:
        self._open[invocation_id] = _Kept()

    def __contains__(self, invocation_id: str) -> bool:
        """Whether the invocation is open."""
        return invocation_id in self._open

    def discard(self, invocation_id: str) -> None:
        """Close the invocation, dropping what it kept."""
        with self._lock:
            self._open.pop(invocation_id, None)

    def end(self, invocation_id: str) -> list[dict[str, Any]] | None:
        """Close the invocation; its kept entries (with the dropped note), or None when it logged nothing."""
        with self._lock:  # a handler's thread may be adding a line right now: the note closes the list
            kept = self._open.pop(invocation_id, None)
            if kept is None or not (kept.entries or kept.dropped):
                return None
            if kept.dropped:
                kept.entries.append(
                    {
                        "time": utc_ms(time.time()),
                        "level": "WARNING",
                        "message": f"{kept.dropped} more log entries dropped",
                    }
                )
            return kept.entries

    def add(self, invocation_id: str, level: int, message: str) -> None:
        kept = self._open.get(invocation_id)
        if kept is None:
            return
        with self._lock:
            if self._open.get(invocation_id) is not kept:  # ended meanwhile
                return
            room = self.max_chars - kept.chars
            if len(kept.entries) >= self.max_entries or room <= 0:
                kept.dropped += 1
                return
            entry: dict[str, Any] = {"time": utc_ms(time.time()), "level": level_name(level)}
            if len(message) > room:
                message = message[:room]
                entry["truncated"] = True
            entry["message"] = message
            kept.chars += len(message)
            kept.entries.append(entry)
