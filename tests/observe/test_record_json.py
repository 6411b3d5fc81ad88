"""The record renderer shared by instances and the node (framework/observe/record_json.py)."""

from __future__ import annotations

import orjson

from framework.observe.record_json import MAX_ERROR_CHARS, error_fields, render, utc_ms


def test_utc_ms() -> None:
    assert utc_ms(0) == "1970-01-01T00:00:00.000Z"
    assert utc_ms(1_700_000_000.1234) == "2023-11-14T22:13:20.123Z"
    assert utc_ms(1_700_000_000.9999) == "2023-11-14T22:13:20.999Z"
    assert utc_ms(1_700_000_001.0) == "2023-11-14T22:13:21.000Z"  # the cached second moves on
    assert utc_ms(1_700_000_001.0004) == "2023-11-14T22:13:21.000Z"  # the cached millisecond
    assert utc_ms(1_700_000_002.0004) == "2023-11-14T22:13:22.000Z"  # same millisecond of another second
    assert utc_ms(1_700_000_001.0) == "2023-11-14T22:13:21.000Z"  # and back


def test_error_message_is_cut() -> None:
    assert error_fields("Timeout", "slow") == {"type": "Timeout", "message": "slow"}
    long = error_fields("FunctionError", "m" * 100_000)["message"]
    assert len(long) == MAX_ERROR_CHARS + 1 and long.endswith("…")


def test_render_without_trace_or_logs() -> None:
    args = ("i", "f", "u", None, "schedule", None, None, None, "n", None, 0.0, 0.0004, False, 1, None, None)
    rec = orjson.loads(render(*args))
    assert rec["trace_id"] is None and rec["logs"] == [] and rec["ok"] is True and rec["error"] is None
    assert rec["duration_ms"] == 0.0 and rec["revision"] is None and rec["instance_id"] is None
