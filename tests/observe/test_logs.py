"""Node logging: formats carry the invocation tags and every `extra` field; repeated aiokafka errors are
thinned out; `ctx.log` keeps a call's own `extra`."""

from __future__ import annotations

import logging

import orjson

from framework.observe import tracing
from framework.observe.logs import JsonFormatter, RepeatFilter, TextFormatter, TraceFilter, escape_controls
from framework.runtime.worker import redact
from framework.runtime.worker.watchdog import InvocationLog, extra_fields


def _record(name: str = "faas.instance", msg: str = "hello %s", **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.INFO, __file__, 1, msg, ("Ann",), None)
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_text_and_json_carry_tags() -> None:
    rec = _record(function="greet", invocation_id="inv-1", instance_id="i-2")
    text = TextFormatter().format(rec)
    assert "hello Ann" in text and "function=greet" in text and "invocation_id=inv-1" in text
    data = orjson.loads(JsonFormatter().format(rec))
    assert data["message"] == "hello Ann"
    assert (data["function"], data["invocation_id"], data["instance_id"]) == ("greet", "inv-1", "i-2")


def test_text_escapes_control_characters_but_keeps_line_breaks_and_tabs() -> None:
    """A line an instance forwards may hold what a handler printed: ESC and NUL are escaped, a traceback's
    line breaks and tabs are kept; the JSON format leaves the text to its encoder."""
    rec = _record(msg="\x1b[2J%s\x00\n\tline two\x9b", function="greet")
    assert TextFormatter().format(rec).endswith("\\x1b[2JAnn\\x00\n\tline two\\x9b [function=greet]")
    assert orjson.loads(JsonFormatter().format(rec))["message"] == "\x1b[2JAnn\x00\n\tline two\x9b"


def test_bidirectional_controls_and_unicode_line_breaks_are_escaped() -> None:
    """A handler's line with a right-to-left override, an isolate and a line separator (they reorder or
    break how the rest of the line shows on a terminal that honours them): each escaped, in the node's
    text log and in `faas logs` (`escape_controls`), where they went out raw; other non-ASCII text stays."""
    line = "user=bob \u202eadmin\u2066 ok\u2028forged line é"
    assert escape_controls(line) == "user=bob \\u202eadmin\\u2066 ok\\u2028forged line é"
    assert escape_controls("a\u2029b", keep_breaks=False) == "a\\u2029b"


def test_repeat_filter_lets_one_through_per_interval() -> None:
    f = RepeatFilter(interval=60)
    passed = [f.filter(_record("aiokafka.conn", "Unable to connect to %s")) for _ in range(100)]
    assert passed.count(True) == 1
    assert f.filter(_record("aiokafka.conn", "another template %s"))
    f.interval = 0
    assert f.filter(_record("aiokafka.conn", "Unable to connect to %s"))


def test_json_keeps_every_extra_field_and_the_current_span() -> None:
    """A record with arbitrary `extra` fields, logged while a span is current (as the invoker sets it).
    Result: every extra field is in the JSON line (non-JSON values as text); trace_id and span_id come
    from the span; a record's own trace_id wins over the current span's."""
    span = tracing.start()
    rec = _record(anything={"a": 1}, count=3, odd=object())
    token = tracing.current.set(span)
    try:
        assert TraceFilter().filter(rec)
        own = _record(trace_id="f" * 32, span_id="e" * 16)
        TraceFilter().filter(own)
    finally:
        tracing.current.reset(token)
    line = orjson.loads(JsonFormatter().format(rec))
    assert line["anything"] == {"a": 1} and line["count"] == 3 and "object" in line["odd"], line
    assert (line["trace_id"], line["span_id"]) == (span.trace_id, span.span_id), line
    assert orjson.loads(JsonFormatter().format(own))["trace_id"] == "f" * 32
    outside = _record()
    TraceFilter().filter(outside)
    assert "trace_id" not in orjson.loads(JsonFormatter().format(outside))


def test_ctx_log_keeps_the_calls_own_extra() -> None:
    """`ctx.log` (InvocationLog) tags records with the invocation and keeps what the call passes in
    `extra`; `extra_fields` is what an instance forwards to its node (JSON-safe)."""
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    logger = logging.getLogger("test.ctxlog")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    InvocationLog(logger, {"invocation_id": "inv-9"}).info("x", extra={"order": 42, "obj": object()})
    InvocationLog(logger, {"invocation_id": "inv-9"}).info("y")
    assert seen[0].invocation_id == "inv-9" and seen[0].order == 42  # type: ignore[attr-defined]
    fields = extra_fields(seen[0])
    assert fields["order"] == 42 and isinstance(fields["obj"], str) and "invocation_id" not in fields
    assert extra_fields(seen[1]) == {}


def test_forwarded_extra_fields_are_redacted() -> None:
    """A secret value passed in a log call's `extra` leaves the instance as `***`, like the message."""
    redact.install(["s3cr3t-value"])
    try:
        rec = _record(token="s3cr3t-value", note={"k": "s3cr3t-value"}, n=5)
        fields = extra_fields(rec)
    finally:
        redact.install([])
    assert fields == {"token": "***", "note": "{'k': '***'}", "n": 5}, fields
