"""EventClient against the real broker, with a plain-aiokafka responder standing in for a node."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from framework.kafka.address import topic_problem
from framework.kafka.client import EventClient, default_reply_topic
from framework.kafka.embedded import EmbeddedBroker
from framework.settings import Settings
from tests.support import new_id


def test_defaults_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAAS_EVENTS_TOPIC", "my.events")
    monkeypatch.setenv("FAAS_REPLIES_TOPIC", "my.replies")
    client = EventClient("127.0.0.1:1")
    assert client.events_topic == "my.events"
    assert client.reply_topic.startswith("my.replies.client-")
    assert EventClient("x:1", events_topic="e", reply_topic="r", settings=Settings()).reply_topic == "r"


def test_default_reply_topic_is_a_valid_topic_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("socket.gethostname", lambda: "my host/with:odd chars")
    assert default_reply_topic("faas.replies") == "faas.replies.client-my-host-with-odd-chars"
    monkeypatch.setattr("socket.gethostname", lambda: "h" * 300)  # cut to fit Kafka's 249 characters
    name = default_reply_topic("r" * 200)
    assert len(name) == 249 and name.startswith("r" * 200 + ".client-h") and topic_problem(name) is None
    monkeypatch.setattr("socket.gethostname", lambda: "")
    assert default_reply_topic("faas.replies") == "faas.replies.client-host"
    with pytest.raises(ValueError, match="leaves no room"):
        default_reply_topic("r" * 245)


def test_topics_kafka_would_refuse_are_refused_up_front() -> None:
    """A reply or events topic Kafka refuses is a ValueError naming it, not a failure at the first request."""
    with pytest.raises(ValueError, match="reply topic 'my replies'"):
        EventClient("x:1", reply_topic="my replies")
    with pytest.raises(ValueError, match=r"events topic '\.\.'"):
        EventClient("x:1", events_topic="..")


@contextlib.asynccontextmanager
async def responder(bootstrap: str, topic: str, delay: float = 0.0) -> AsyncIterator[list[dict[str, object]]]:
    """Answer every event on `topic` to its ce_replyto, echoing payload and key; yields the headers seen."""
    seen: list[dict[str, object]] = []
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        metadata_max_age_ms=200,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await consumer.start()
    await producer.start()

    async def serve() -> None:
        while True:
            for msgs in (await consumer.getmany(timeout_ms=100)).values():
                for m in msgs:
                    headers = {k: v.decode() for k, v in m.headers}
                    seen.append({**headers, "key": m.key})
                    await asyncio.sleep(delay)
                    reply = {
                        "id": headers["ce_id"],
                        "event": headers["ce_type"],
                        "ok": True,
                        "results": [{"result": orjson.loads(m.value)}],
                        "error": None,
                    }
                    await producer.send_and_wait(headers["ce_replyto"], orjson.dumps(reply), key=m.key)

    task = asyncio.create_task(serve())
    try:
        yield seen
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await producer.stop()
        await consumer.stop()


async def test_round_trip_headers_and_concurrent_clients(broker: EmbeddedBroker) -> None:
    topic = f"t.client.{new_id()[:8]}"
    async with responder(broker.bootstrap, topic) as seen:
        async with (
            EventClient(broker.bootstrap, events_topic=topic) as one,
            EventClient(broker.bootstrap, events_topic=topic) as two,
        ):
            assert one.reply_topic == two.reply_topic, "one stable reply topic per host"
            replies = await asyncio.gather(
                *(c.emit("t.ping", {"n": n}, key=b"k%d" % n) for n in range(10) for c in (one, two))
            )
        single = await one.emit("t.ping", [1], id="fixed-id", timeout=10)  # stopped client: one-shot
    assert sorted(r["results"][0]["result"]["n"] for r in replies) == sorted(list(range(10)) * 2)
    assert single["id"] == "fixed-id" and single["results"][0]["result"] == [1]
    first = seen[0]
    assert (
        first["ce_specversion"] == "1.0"
        and first["ce_type"] == "t.ping"
        and first["ce_source"] == "faas-client"
    )
    assert first["content-type"] == "application/json" and first["ce_replyto"] == one.reply_topic
    assert {h["key"] for h in seen} >= {b"k0", b"k9"}


async def test_a_fast_reply_is_not_missed_and_a_late_one_times_out(broker: EmbeddedBroker) -> None:
    topic = f"t.client.{new_id()[:8]}"
    async with responder(broker.bootstrap, topic, delay=1.0):
        client = EventClient(broker.bootstrap, events_topic=topic, reply_topic=f"t.own.{new_id()[:8]}")
        with pytest.raises(TimeoutError):
            await client.emit("t.slow", None, timeout=0.5)
        assert (await client.emit("t.slow", None, timeout=10))["ok"] is True


async def test_unreachable_broker_is_a_connection_error() -> None:
    from framework.kafka.embedded import free_port

    with pytest.raises(ConnectionError, match="cannot reach Kafka"):
        await EventClient(f"127.0.0.1:{free_port()}").emit("t", None, timeout=5)
