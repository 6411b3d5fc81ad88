"""Node logging: `text` for a terminal, `json` (one object a line) for collectors.

Records from instances carry `function`, `invocation_id` and `instance_id` in their `extra`; both formats
print them. The JSON format keeps every field a caller passes in `extra` (anything not a standard
`LogRecord` attribute), values that are not JSON as their `str()`. Records logged while the node serves an
invocation, and records an instance forwards, carry `trace_id` and `span_id` (section 11).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Iterator

import orjson

from framework.observe import tracing

TAGS = ("function", "invocation_id", "instance_id", "trigger", "event", "trace_id")
STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
"""Attributes every LogRecord has: anything else on a record came from a caller's `extra`."""
_SKIPPED = STANDARD | {"color_message"}
"""Left out of JSON lines: uvicorn's `color_message` repeats `message` with terminal colour codes."""


_C1 = tuple(range(0x80, 0xA0))
_BIDI_AND_BREAKS = (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C, 0x2028, 0x2029)
"""Bidirectional embeddings, overrides, isolates and marks (which reorder how the rest of a line shows: text
others wrote could make a line read as something else), and the line and paragraph separators."""
_ONE_LINE = {c: f"\\x{c:02x}" for c in (*range(32), 127, *_C1)} | {c: f"\\u{c:04x}" for c in _BIDI_AND_BREAKS}
_KEEP_BREAKS = {c: text for c, text in _ONE_LINE.items() if c not in (9, 10)}


def escape_controls(text: str, keep_breaks: bool = True) -> str:
    """Text others wrote (a handler's log line, a deployer's message), made safe for a terminal: its
    control characters escaped (`\\x1b`). Written raw, they would drive the reader's terminal (colours,
    cursor moves, a cleared screen) or cut the line for `grep`. Tabs and line breaks are kept unless
    `keep_breaks` is false (a table cell: one row, one line)."""
    return text.translate(_KEEP_BREAKS if keep_breaks else _ONE_LINE)


class TextFormatter(logging.Formatter):
    """`time level logger: message [tags]`, control characters escaped (instances forward what their
    handlers print, and this format is read on a terminal)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        tags = " ".join(f"{k}={getattr(record, k)}" for k in TAGS if getattr(record, k, None) is not None)
        return escape_controls(f"{line} [{tags}]" if tags else line)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{record.msecs:03.0f}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _SKIPPED and key not in out and value is not None:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = record.stack_info
        return orjson.dumps(out, default=str).decode()


class TraceFilter(logging.Filter):
    """Tags a record with the trace and span of the invocation being served, unless it has its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        span = tracing.current.get()
        if span is not None and getattr(record, "trace_id", None) is None:
            record.trace_id = span.trace_id
            record.span_id = span.span_id
        return True


class RepeatFilter(logging.Filter):
    """Lets one record per logger and message template through every `interval` seconds (default 10).

    During a broker outage aiokafka logs the same connection error about a hundred times a second.
    """

    def __init__(self, interval: float = 10.0) -> None:
        super().__init__()
        self.interval = interval
        self._last: dict[tuple[str, object], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.msg)
        now = time.monotonic()
        if now - self._last.get(key, -self.interval) < self.interval:
            return False
        if len(self._last) > 1000:  # templates are few; this only bounds the map against odd callers
            self._last.clear()
        self._last[key] = now
        return True


class _AiokafkaRepeats(RepeatFilter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith("aiokafka") or super().filter(record)


@contextlib.contextmanager
def configured(level: str = "INFO", fmt: str = "text") -> Iterator[None]:
    """`configure` for the duration of a block, then the logging setup as it was (a CLI command run in the
    process of a caller, as `click`'s test runner runs it, must not leave its setup behind)."""
    names = ("", "aiokafka", "uvicorn.access", "watchfiles")
    saved = [(logging.getLogger(n), logging.getLogger(n).level) for n in names]
    handlers = logging.getLogger().handlers[:]
    configure(level, fmt)
    try:
        yield
    finally:
        logging.getLogger().handlers[:] = handlers
        for logger, was in saved:
            logger.setLevel(was)


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Route every log record (ours, uvicorn's, aiokafka's) to stderr in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if fmt == "text" else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiokafka logs every lost connection at ERROR with a traceback; our own code reports outages.
    aiokafka = logging.getLogger("aiokafka")
    aiokafka.setLevel(max(logging.getLevelName(level), logging.WARNING))
    if not any(isinstance(f, RepeatFilter) for f in handler.filters):
        handler.addFilter(_AiokafkaRepeats())
    handler.addFilter(TraceFilter())
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)
    logging.getLogger("watchfiles").setLevel(logging.WARNING)  # "N changes detected" on every edit
