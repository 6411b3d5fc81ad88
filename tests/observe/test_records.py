"""Invocation records in the node's process (framework/observe/records.py, sender.py): the record's
fields, the in-memory ring and its filters, and producing to a real broker: acknowledged, buffered,
dropped, counted."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaConsumer
from prometheus_client.parser import text_string_to_metric_families

from framework.control.spec import FunctionSpec
from framework.errors import Overloaded, Timeout
from framework.kafka.embedded import EmbeddedBroker, free_port
from framework.observe.metrics import Metrics
from framework.observe.record_json import MAX_ERROR_CHARS
from framework.observe.records import InvocationRecords, error_of
from framework.settings import Settings
from framework.types import EventIdentity, Invocation, new_id

ECHO = FunctionSpec(name="echo", uuid="7e7e7e7e-0000-4000-8000-00000000000a", handler="f:h", revision=3)
OTHER = FunctionSpec(name="other", uuid="7e7e7e7e-0000-4000-8000-00000000000b", handler="f:h")
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def make(settings: Settings | None = None) -> tuple[InvocationRecords, Metrics]:
    metrics = Metrics()
    return InvocationRecords(settings or Settings(node_name="n1"), metrics), metrics


def finish(
    records: InvocationRecords,
    spec: FunctionSpec = ECHO,
    error: BaseException | None = None,
    trigger: str = "direct",
    **kw: object,
) -> str:
    inv = Invocation(new_id(), trigger, kw.pop("event", None), b"null", **kw)  # type: ignore[arg-type]
    records.finish(spec, inv, time.time(), 1.5, False, "echo-1", error)
    return inv.invocation_id


def metric(metrics: Metrics, name: str) -> float:
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"no metric {name}")


def test_record_fields() -> None:
    """A record the node makes (no instance answered): every field of section 13, no logs."""
    records, _ = make()
    identity = EventIdentity("ce-1", source="src")
    inv = Invocation("inv-1", "event", "thing.happened", b"{}", identity=identity, traceparent=TP, attempt=2)
    records.finish(ECHO, inv, 1_700_000_000.25, 12.3456, True, "echo-1", Timeout("too slow"))
    rec = records.get("inv-1")
    assert rec == {
        "invocation_id": "inv-1",
        "function": "echo",
        "uuid": ECHO.uuid,
        "revision": 3,
        "trigger": "event",
        "event": "thing.happened",
        "event_id": "ce-1",
        "trace_id": "0af7651916cd43dd8448eb211c80319c",
        "node": "n1",
        "instance_id": "echo-1",
        "started_at": "2023-11-14T22:13:20.250Z",
        "duration_ms": 12.346,
        "cold_start": True,
        "attempt": 2,
        "ok": False,
        "error": {"type": "Timeout", "message": "too slow"},
        "logs": [],
    }


def test_a_record_an_instance_rendered_is_kept_as_sent() -> None:
    """1. An instance's record (bytes) is kept for an invocation that succeeded, one for a failure.
    Result: GET-style reads return them parsed, unchanged; the ok filter and the stats use what the pool
    said, not a parse of the bytes."""
    records, _ = make()
    body = {"invocation_id": "inv-9", "function": "echo", "ok": True, "logs": [{"message": "hi"}]}
    inv = Invocation("inv-9", "direct", None, b"{}")
    records.keep(ECHO, inv, time.time(), 2.0, True, orjson.dumps(body))
    bad = Invocation("inv-10", "direct", None, b"{}")  # the bytes say ok, the pool says failed
    records.keep(ECHO, bad, time.time(), 3.0, False, orjson.dumps({"invocation_id": "inv-10", "ok": True}))
    assert records.get("inv-9") == body
    assert [r["invocation_id"] for r in records.recent(ok=False)] == ["inv-10"]
    assert [r["invocation_id"] for r in records.recent(ok=True)] == ["inv-9"]
    stats = records.function_stats(ECHO.uuid, "echo")
    assert stats["count"] == 2 and stats["failures"] == 1


def test_a_record_that_is_not_json_does_not_break_reads() -> None:
    records, _ = make()
    records.keep(ECHO, Invocation("inv-11", "event", "e", b"{}"), time.time(), 1.0, True, b'{"invocation_id"')
    rec = records.get("inv-11")
    assert rec is not None and rec["invocation_id"] == "inv-11" and rec["function"] == "echo"
    assert rec["ok"] is True and "not JSON" in rec["unreadable"]
    assert records.recent(trigger="event") == [rec]


def test_errors() -> None:
    assert error_of(Timeout("too slow")) == {"type": "Timeout", "message": "too slow"}
    cancelled = error_of(asyncio.CancelledError())
    assert cancelled["type"] == "Cancelled" and "caller hung up" in cancelled["message"], cancelled
    assert error_of(RuntimeError("x")) == {"type": "FunctionError", "message": "RuntimeError('x')"}
    long = error_of(Overloaded("m" * 100_000))["message"]
    assert len(long) == MAX_ERROR_CHARS + 1 and long.endswith("…")


def test_default_node_name_is_host_and_port() -> None:
    records, _ = make(Settings(http_port=8123))
    assert re.fullmatch(r".+:8123", records.node)


def test_recent_newest_first_with_filters_and_the_ring_bound() -> None:
    records, _ = make(Settings(recent_invocations=5))
    ids = [finish(records) for _ in range(3)]
    failed = finish(records, error=Timeout("t"))
    other = finish(records, OTHER, trigger="schedule")
    newest = [r["invocation_id"] for r in records.recent()]
    assert newest == [other, failed, *reversed(ids)]
    assert [r["invocation_id"] for r in records.recent(function="echo")] == [failed, *reversed(ids)]
    assert [r["invocation_id"] for r in records.recent(function=OTHER.uuid)] == [other]
    assert [r["invocation_id"] for r in records.recent(function=OTHER.uuid.upper())] == [other]
    assert [r["invocation_id"] for r in records.recent(ok=False)] == [failed]
    assert [r["invocation_id"] for r in records.recent(trigger="schedule")] == [other]
    assert len(records.recent(limit=2)) == 2 and records.recent(limit=0) == []
    pushed = finish(records)  # a sixth: the oldest leaves the ring and the index
    assert records.get(ids[0]) is None and records.get(pushed) is not None
    assert len(records.recent(limit=100)) == 5


def test_nothing_kept_when_recent_is_zero_but_stats_still_count() -> None:
    records, _ = make(Settings(recent_invocations=0))
    finish(records)
    finish(records, error=Timeout("t"))
    assert records.recent() == []
    stats = records.function_stats(ECHO.uuid, "echo")
    assert stats["count"] == 2 and stats["failures"] == 1


def test_without_kafka_nothing_is_made_for_the_topic() -> None:
    records, metrics = make()
    finish(records)
    assert metric(metrics, "faas_invocation_records_total") == 0


async def read_topic(
    bootstrap: str, topic: str, want: int, timeout: float = 30
) -> list[tuple[bytes, dict[str, Any]]]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        metadata_max_age_ms=500,
    )
    await consumer.start()
    out: list[tuple[bytes, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < deadline:
            for messages in (await consumer.getmany(timeout_ms=300)).values():
                out.extend((m.key, orjson.loads(m.value)) for m in messages)
    finally:
        await consumer.stop()
    return out


async def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met within {timeout} s"
        await asyncio.sleep(0.05)


async def sent_and_on_the_topic(
    metrics: Metrics, sent: int, bootstrap: str, topic: str, made: list[str]
) -> None:
    """Wait until the node counts `sent` records acknowledged; then the topic holds the records `made`
    (by invocation id) and none was dropped."""
    counted = "faas_invocation_records_sent_total"
    await wait_until(lambda: metric(metrics, counted) == sent, 60, f"{sent} sent")
    got = await read_topic(bootstrap, topic, len(made))
    assert sorted(v["invocation_id"] for _, v in got) == sorted(made)
    assert metric(metrics, "faas_invocation_records_dropped_total") == 0


async def test_records_reach_the_topic_keyed_by_uuid(broker: EmbeddedBroker) -> None:
    """1. 300 records of two functions are made on a node producing to the real broker.
    Result: all acknowledged (sent = made = 300, dropped 0), each on the topic once, keyed by its function's
    uuid, one function's records in the order they were made."""
    topic = f"t.inv.unit.{new_id()[:8]}"
    records, metrics = make(Settings(invocations_topic=topic, node_name="n1"))
    records.send_to(broker.bootstrap)
    try:
        made = [finish(records, ECHO if i % 3 else OTHER) for i in range(300)]
        await wait_until(lambda: metric(metrics, "faas_invocation_records_sent_total") == 300, 30, "all sent")
        got = await read_topic(broker.bootstrap, topic, 300)
    finally:
        await records.stop(1)
    assert sorted(v["invocation_id"] for _, v in got) == sorted(made)
    assert all(k == v["uuid"].encode() for k, v in got)
    echo_order = [v["invocation_id"] for _, v in got if v["function"] == "echo"]
    assert echo_order == [i for n, i in enumerate(made) if n % 3]
    assert metric(metrics, "faas_invocation_records_total") == 300
    assert metric(metrics, "faas_invocation_records_dropped_total") == 0


async def test_unreachable_broker_buffers_then_drops_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    """1. A node whose broker is unreachable makes 25 records with a buffer of 10.
    2. It stops.
    Result: making a record never waits (25 in well under a second); 15 dropped at once (buffer full), the
    other 10 at shutdown; sent + dropped = made. The log says both: the drops at shutdown too, though a
    warning came seconds before (warnings come at most every 30 s, and the counters end with the node)."""
    records, metrics = make(Settings(records_buffer=10, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}"))
    records.send_to(f"127.0.0.1:{free_port()}")
    t0 = time.perf_counter()
    for _ in range(25):
        finish(records)
    assert time.perf_counter() - t0 < 0.5
    assert metric(metrics, "faas_invocation_records_dropped_total") == 15
    assert "the record buffer is full" in caplog.text
    await records.stop(0.5)
    assert metric(metrics, "faas_invocation_records_dropped_total") == 25
    assert metric(metrics, "faas_invocation_records_sent_total") == 0
    assert metric(metrics, "faas_invocation_records_total") == 25
    assert (
        "at shutdown (25 made, 0 sent, 25 dropped in all) (24 dropped since the last warning" in caplog.text
    )


@pytest.mark.usefixtures("broker_kills")
async def test_records_wait_for_a_broker_that_comes_up(tmp_path: Path) -> None:
    """1. Records are made while no broker listens on the port.
    2. A broker starts there.
    Result: the buffered records are sent once it is up; none dropped."""
    port = free_port()
    topic = f"t.inv.late.{new_id()[:8]}"
    records, metrics = make(Settings(invocations_topic=topic))
    records.send_to(f"127.0.0.1:{port}")
    made = [finish(records) for _ in range(20)]
    await asyncio.sleep(0)  # the sender's first attempt fails meanwhile (nothing listens)
    late = EmbeddedBroker(port=port, log_path=tmp_path / "broker.log").start()
    try:
        await sent_and_on_the_topic(metrics, 20, late.bootstrap, topic, made)
    finally:
        await records.stop(1)
        late.stop()


@pytest.mark.usefixtures("broker_kills")
async def test_records_made_in_an_outage_land_on_the_broker_that_comes_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A sender on a broker of its own sends 5 records.
    2. The broker is SIGKILLed; 30 records are made; the sender's next round finds no metadata (logged).
    3. A new, empty broker starts on the same port.
    Result: the 30 wait in the buffer (none sent or dropped meanwhile) and then reach the new broker's
    topic, where a reader finds them: they are not sent along the lost broker's partition list."""
    port = free_port()
    topic = f"t.inv.back.{new_id()[:8]}"
    first = EmbeddedBroker(port=port, log_path=tmp_path / "first.log").start()
    second: EmbeddedBroker | None = None
    records, metrics = make(Settings(invocations_topic=topic))
    records.send_to(first.bootstrap)
    try:
        for _ in range(5):
            finish(records)
        await wait_until(lambda: metric(metrics, "faas_invocation_records_sent_total") == 5, 30, "5 sent")
        first.kill()
        made = [finish(records) for _ in range(30)]
        await wait_until(lambda: "invocation records wait" in caplog.text, 30, "a round without metadata")
        assert "buffered 30)" in caplog.text, caplog.text  # the round's records counted once (60 before)
        assert metric(metrics, "faas_invocation_records_sent_total") == 5
        assert metric(metrics, "faas_invocation_records_dropped_total") == 0
        second = EmbeddedBroker(port=port, log_path=tmp_path / "second.log").start()
        await sent_and_on_the_topic(metrics, 35, second.bootstrap, topic, made)
    finally:
        await records.stop(1)
        first.stop()
        if second is not None:
            second.stop()


@pytest.mark.parametrize("buffer", [0])
async def test_a_zero_buffer_drops_everything_counted(buffer: int) -> None:
    records, metrics = make(Settings(records_buffer=buffer))
    records.send_to(f"127.0.0.1:{free_port()}")
    finish(records)
    finish(records)
    await records.stop(0)
    assert metric(metrics, "faas_invocation_records_dropped_total") == 2
    assert len(records.recent()) == 2  # memory keeps them regardless


async def test_a_record_made_after_the_stop_is_counted_dropped() -> None:
    """1. A node producing records (broker unreachable) makes one and stops.
    2. One more is made after the stop (the record of an invocation whose instance died during the stop).
    Result: both are counted dropped (sent + dropped = made still holds); the second stays in memory."""
    records, metrics = make(Settings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}"))
    records.send_to(f"127.0.0.1:{free_port()}")
    finish(records)
    await records.stop(0)
    assert metric(metrics, "faas_invocation_records_dropped_total") == 1
    late = finish(records)
    assert metric(metrics, "faas_invocation_records_total") == 2
    assert metric(metrics, "faas_invocation_records_dropped_total") == 2
    assert metric(metrics, "faas_invocation_records_sent_total") == 0
    assert records.get(late) is not None


async def test_a_second_signal_cuts_the_flush_short() -> None:
    """1. A node producing records (broker unreachable) makes three and starts its stop with a 5 s grace.
    2. A second signal (`hurry`) while the stop waits for the buffer to drain.
    Result: the stop ends at once; the three are counted dropped (sent + dropped = made)."""
    records, metrics = make(Settings(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}"))
    records.send_to(f"127.0.0.1:{free_port()}")
    for _ in range(3):
        finish(records)
    stopping = asyncio.ensure_future(records.stop(5))
    await asyncio.sleep(0)  # one loop turn: the stop is in its wait for the buffer (no broker takes it)
    assert not stopping.done()
    started = time.perf_counter()
    records.hurry()
    await asyncio.wait_for(stopping, 3)
    assert time.perf_counter() - started < 1
    assert metric(metrics, "faas_invocation_records_dropped_total") == 3
    assert metric(metrics, "faas_invocation_records_total") == 3
