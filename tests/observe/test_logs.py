"""Node logging: formats carry the invocation tags; repeated aiokafka errors are thinned out."""

from __future__ import annotations

import logging

import orjson

from framework.observe.logs import JsonFormatter, RepeatFilter, TextFormatter


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


def test_repeat_filter_lets_one_through_per_interval() -> None:
    f = RepeatFilter(interval=60)
    passed = [f.filter(_record("aiokafka.conn", "Unable to connect to %s")) for _ in range(100)]
    assert passed.count(True) == 1
    assert f.filter(_record("aiokafka.conn", "another template %s"))
    f.interval = 0
    assert f.filter(_record("aiokafka.conn", "Unable to connect to %s"))
