"""The tick log (framework/sources/schedule/ticklog.py): records parsed on their own, then written and read
back on the real broker, broken records in the topic, and a broker that cannot be reached."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from framework.kafka.embedded import EmbeddedBroker, free_port
from framework.kafka.options import ensure_topics
from framework.kafka.topic_read import Record
from framework.settings import Settings
from framework.sources.schedule.ticklog import MESSAGE_CHARS, TOPIC_CONFIGS, TickLog, newest, parse
from tests.support import consume_raw

UUID = "dddddddd-0000-4000-8000-0000000000b1"


def record(key: bytes | None, value: bytes | None, timestamp: int = 0, offset: int = 0) -> Record:
    return ConsumerRecord("t", 0, offset, timestamp, 0, key, value, None, 0, 0, [])


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        (f"{UUID}:0".encode(), b"not json", "not JSON"),
        (f"{UUID}:0".encode(), b'{"tick": "12", "node": "n"}', "not {"),
        (f"{UUID}:0".encode(), b'{"tick": 12}', "not {"),
        (f"{UUID}:0".encode(), b'{"tick": true, "node": "n"}', "not {"),
        (f"{UUID}:0".encode(), b'{"tick": -1, "node": "n"}', "not {"),
        (f"{UUID}:0".encode(), b'{"tick": 253402300800, "node": "n"}', "not {"),
        (f"{UUID}:0".encode(), b"[12]", "not {"),
        (f"{UUID}:0".encode(), b'{"tick": 12, "node": "n", "group": 7}', "not {"),
        (None, b'{"tick": 12, "node": "n"}', "not <function uuid>"),
        (UUID.encode(), b'{"tick": 12, "node": "n"}', "not <function uuid>"),
        (f"{UUID}:x".encode(), b'{"tick": 12, "node": "n"}', "not <function uuid>"),
        (b"\xff:0", b'{"tick": 12, "node": "n"}', "not UTF-8"),
    ],
)
def test_parse_names_what_is_wrong(key: bytes | None, value: bytes, why: str) -> None:
    reason = parse(record(key, value))
    assert isinstance(reason, str) and why in reason


GOOD = {"at": "2026-12-07T10:00:00+01:00", "ok": True, "duration_ms": 3, "error": None}


@pytest.mark.parametrize(
    "last",
    [
        "ok",
        {"at": "2026-12-07T10:00:00+01:00", "ok": True, "duration_ms": 3},
        {**GOOD, "extra": 1},
        {**GOOD, "at": "at ten"},
        {**GOOD, "at": "2026-12-07T10:00:00+01:00" * 4},
        {**GOOD, "ok": 1},
        {**GOOD, "duration_ms": -1},
        {**GOOD, "duration_ms": "3"},
        {**GOOD, "duration_ms": True},
        {**GOOD, "error": {"type": "FunctionError", "message": "ok but failed"}},
        {**GOOD, "ok": False},
        {**GOOD, "ok": False, "error": {"type": "FunctionError"}},
        {**GOOD, "ok": False, "error": {"type": 7, "message": "m"}},
        {**GOOD, "ok": False, "error": {"type": "T" * 201, "message": "m"}},
    ],
)
def test_parse_refuses_a_result_that_is_not_one(last: object) -> None:
    value = orjson.dumps({"tick": 12, "node": "n", "last": last})
    reason = parse(record(f"{UUID}:s0123456789ab".encode(), value))
    assert isinstance(reason, str) and 'its "last" is not' in reason


def test_parse_takes_a_result_and_cuts_a_long_message() -> None:
    key = f"{UUID}:s0123456789ab"
    assert parse(record(key.encode(), orjson.dumps({"tick": 12, "node": "n", "last": GOOD}))) == (
        key,
        12,
        None,
        GOOD,
    )
    failed = {**GOOD, "ok": False, "error": {"type": "Timeout", "message": "m" * 5_000}}
    parsed = parse(record(key.encode(), orjson.dumps({"tick": 12, "node": "n", "last": failed})))
    assert not isinstance(parsed, str) and parsed.last is not None
    assert parsed.last["error"]["message"] == "m" * (MESSAGE_CHARS - 3) + "..."


def test_newest_takes_the_greatest_tick_per_key_and_skips_old_and_broken(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Records out of order (two leaders overlapping), one stamped before `since`, one broken.
    Result: the greatest tick per key among the recent ones; one warning naming the broken record."""
    good = [
        record(b"a:0", b'{"tick": 12, "node": "n1"}', 2_000, 1),
        record(b"a:0", b'{"tick": 11, "node": "n2"}', 2_000, 2),
        record(b"b:1", b'{"tick": 99, "node": "n1"}', 500, 3),
        record(b"b:1", b'{"tick": 5, "node": "n1"}', 2_000, 4),
        record(b"a:0", b"garbage", 2_000, 5),
    ]
    assert newest(good, 1_000, "faas") == {"a:0": 12, "b:1": 5}
    assert "1 record(s) skipped" in caplog.text and "offset 5: its value is not JSON" in caplog.text


def test_newest_counts_its_own_groups_ticks_and_those_of_none() -> None:
    """Two groups share a broker and the topic, each firing its own schedules. Result: a group's newest
    tick is its own leader's (or one written without a group, before groups were named); the other
    group's newer ticks do not hide the ticks this one missed."""
    records = [
        record(b"a:0", b'{"tick": 10, "node": "n0"}', 2_000, 1),
        record(b"a:0", b'{"tick": 20, "node": "n1", "group": "g1"}', 2_000, 2),
        record(b"a:0", b'{"tick": 40, "node": "n2", "group": "g2"}', 2_000, 3),
        record(b"b:0", b'{"tick": 50, "node": "n2", "group": "g2"}', 2_000, 4),
    ]
    assert newest(records, 1_000, "g1") == {"a:0": 20}
    assert newest(records, 1_000, "g2") == {"a:0": 40, "b:0": 50}
    assert newest(records, 1_000, "g3") == {"a:0": 10}


def settings_for(tag: str) -> Settings:
    return Settings(scheduler_topic=f"t.ticks.{tag}", node_name=f"node-{tag}")


async def test_ticks_written_are_read_back(broker: EmbeddedBroker) -> None:
    """1. A topic as the election creates it. 2. Record ticks: 10, 12, then 11 (older) for one schedule,
    5 for another; stop (which writes what is pending). 3. Read from a minute ago with another TickLog.
    Result: {first: 12, second: 5}; each value names the tick and this node."""
    tag = uuid.uuid4().hex[:8]
    settings = settings_for(tag)
    await ensure_topics(broker.bootstrap, [settings.scheduler_topic], 1, {}, TOPIC_CONFIGS)
    log = TickLog(settings, broker.bootstrap)
    log.start()
    first, second = f"{UUID}:0", f"{UUID}:1"
    for key, tick in ((first, 10), (first, 12), (first, 11), (second, 5)):
        log.record(key, tick)
    await log.stop()
    assert await TickLog(settings, broker.bootstrap).newest(time.time() - 60) == {first: 12, second: 5}
    raw = await consume_raw(broker.bootstrap, settings.scheduler_topic, 10, 3)
    assert all(r.partition == 0 for r in raw)
    assert {r.key.decode(): orjson.loads(r.value)["tick"] for r in raw} == {first: 12, second: 5}
    assert {orjson.loads(r.value)["node"] for r in raw} == {f"node-{tag}"}
    assert {orjson.loads(r.value)["group"] for r in raw} == {settings.kafka_group_id}


async def test_results_are_written_after_their_ticks(broker: EmbeddedBroker) -> None:
    """1. Record a tick and then its result (failed), and a newer tick and an older result of another
    schedule; stop. 2. Read the topic raw.
    Result: each tick record, then each result record (the tick's record again with `last`, as given);
    the catch-up's newest ticks are those of either kind."""
    tag = uuid.uuid4().hex[:8]
    settings = settings_for(tag)
    await ensure_topics(broker.bootstrap, [settings.scheduler_topic], 1, {}, TOPIC_CONFIGS)
    log = TickLog(settings, broker.bootstrap)
    log.start()
    first, second = f"{UUID}:s0123456789ab", f"{UUID}:s0123456789ac"
    failed = {**GOOD, "ok": False, "error": {"type": "FunctionError", "message": "x" * 100}}
    log.record(first, 10)
    log.result(first, 10, failed)
    log.record(second, 30)
    log.result(second, 20, GOOD)
    log.result(second, 19, {**GOOD, "duration_ms": 9})  # older than the pending one: adds nothing
    await log.stop()
    raw = await consume_raw(broker.bootstrap, settings.scheduler_topic, 10, 4)
    values = [(r.key.decode(), orjson.loads(r.value)) for r in raw]
    assert [(key, value["tick"], "last" in value) for key, value in values] == [
        (first, 10, False),
        (second, 30, False),
        (first, 10, True),
        (second, 20, True),
    ]
    assert values[2][1]["last"] == failed and values[3][1]["last"] == GOOD
    assert await TickLog(settings, broker.bootstrap).newest(time.time() - 60) == {first: 10, second: 30}


async def test_broken_records_in_the_topic_are_skipped_with_a_warning(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A scheduler topic holding a good tick record, then records that are not tick records (not JSON,
    wrong fields, a key that names no schedule), then another good one. 2. Read it.
    Result: the good ticks; the broken records named in a warning; no exception."""
    tag = uuid.uuid4().hex[:8]
    settings = settings_for(tag)
    topic = settings.scheduler_topic
    await ensure_topics(broker.bootstrap, [topic], 1, {}, TOPIC_CONFIGS)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap)
    await producer.start()
    try:
        for key, value in (
            (f"{UUID}:0", b'{"tick": 100, "node": "a"}'),
            (f"{UUID}:0", b"\x00\x01 not json"),
            (f"{UUID}:0", b'{"tick": 999999}'),
            ("hello", b'{"tick": 5, "node": "a"}'),
            (f"{UUID}:1", b'{"tick": 7, "node": "b"}'),
        ):
            await (await producer.send(topic, value, key.encode(), partition=0))
    finally:
        await producer.stop()
    assert await TickLog(settings, broker.bootstrap).newest(time.time() - 60) == {
        f"{UUID}:0": 100,
        f"{UUID}:1": 7,
    }
    assert "3 record(s) skipped" in caplog.text and "not JSON" in caplog.text


async def test_records_before_the_window_are_not_read(broker: EmbeddedBroker) -> None:
    """1. A tick record stamped two hours ago, then one stamped now, for two schedules. 2. Read the last ten
    minutes. Result: only the recent one (the embedded broker answers no time lookup: a search finds it)."""
    tag = uuid.uuid4().hex[:8]
    settings = settings_for(tag)
    topic = settings.scheduler_topic
    await ensure_topics(broker.bootstrap, [topic], 1, {}, TOPIC_CONFIGS)
    now_ms = int(time.time() * 1000)
    producer = AIOKafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=0)
    await producer.start()
    try:
        old = await producer.send(
            topic, b'{"tick": 1, "node": "a"}', b"old:0", partition=0, timestamp_ms=now_ms - 7_200_000
        )
        await old
        await (
            await producer.send(
                topic, b'{"tick": 2, "node": "a"}', b"new:0", partition=0, timestamp_ms=now_ms
            )
        )
    finally:
        await producer.stop()
    assert await TickLog(settings, broker.bootstrap).newest(time.time() - 600) == {"new:0": 2}


async def test_missing_or_empty_topic_reads_nothing(broker: EmbeddedBroker) -> None:
    tag = uuid.uuid4().hex[:8]
    settings = settings_for(tag)
    assert await TickLog(settings, broker.bootstrap).newest(time.time() - 600) == {}
    await ensure_topics(broker.bootstrap, [settings.scheduler_topic], 1, {}, TOPIC_CONFIGS)
    started = time.monotonic()
    assert await TickLog(settings, broker.bootstrap).newest(time.time() - 600) == {}
    assert time.monotonic() - started < 0.5, "an empty topic is read without waiting for fetches"


async def test_a_broker_that_cannot_be_reached_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    """1. A tick log whose broker is a port nobody listens on. 2. Record a tick; stop.
    Result: a warning that it cannot write, one that the tick was not written at stop; stop returns."""
    log = TickLog(settings_for("nobody"), f"127.0.0.1:{free_port()}")
    log.start()
    log.record(f"{UUID}:0", 12)
    started = time.monotonic()
    await log.stop()
    assert time.monotonic() - started < 10
    assert "cannot write" in caplog.text and "1 tick(s) not written at stop" in caplog.text
