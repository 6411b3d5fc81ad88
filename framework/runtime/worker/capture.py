"""Inside an instance: keep what each invocation logs, for its invocation record (DESIGN.md section 13).

Every line an instance logs (`ctx.log`, any logger, stdout, stderr) already travels to the node on the log
channel, tagged with the invocation the running code serves (`current_invocation`, a contextvar set per
request task and copied into the handler's thread). `CapturingSender` sits in front of that channel: the one
hook point. A line tagged with an invocation that is open here is also kept for that invocation; the server
puts the kept lines in the invocation's record (`observe/record_json.py`), which travels with its REPLY
frame, so the node has them the moment the invocation ends, with no second channel to join. An invocation
is open only when the node asked for its record (records on).

The node keeps a second `LogCapture` per instance (`runtime/handle.py`), fed by the same lines as they
arrive on the log channel, for the invocations that get no REPLY: an instance that exits or is killed
mid-invocation takes its own copy with it, and the lines it sent before are then what the node's record of
that crash keeps. That copy costs nothing per invocation that logs nothing.

A line printed by a thread the invocation did not start carries no invocation (threads start with an empty
context), so it reaches the node's log but no record. Lines logged after an invocation ended (a `def`
handler's thread still running past its time limit) are not kept either.

Caps, per invocation: the first `entries` lines and `chars` characters of message text are kept (a line that
crosses the character budget is cut there and flagged `truncated`); every line beyond those is only counted,
and one more entry, "N more log entries dropped", closes the list. So a 10 MB line or 100,000 lines cost the
record a few kilobytes; keeping a line costs a dict and a timestamp, dropping one a counter increment.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from framework.observe.record_json import utc_ms
from framework.runtime.protocol import BlockingSender, FrameKind, Header

LEVELS = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"}


def level_name(level: int) -> str:
    return LEVELS.get(level) or f"Level {level}"


def clean_text(text: str) -> str:
    """`text` as valid UTF-8: lone surrogates (bytes decoded with `surrogateescape`, binary garbage) become
    `?`. The frame encoder refuses them, which would fail the handler's `print`."""
    if text.isascii():
        return text
    return text.encode("utf-8", "replace").decode("utf-8")


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


class CapturingSender(BlockingSender):
    """The instance's log channel, keeping each LOG frame's line for its invocation on the way out."""

    def __init__(self, inner: BlockingSender, capture: LogCapture) -> None:
        self._inner = inner
        self.capture = capture

    def send(self, kind: int, header: Header, tail: bytes = b"") -> None:
        if kind == FrameKind.LOG:
            msg = header.get("msg")
            if isinstance(msg, str):
                header["msg"] = msg = clean_text(msg)
                inv = header.get("inv")
                if inv is not None:
                    self.capture.add(inv, header.get("lvl", 20), msg)
        self._inner.send(kind, header, tail)
