"""Kafka client options: TLS/SASL pass-through and the producer's idempotence against a real broker."""

from __future__ import annotations

import logging
import time

import pytest
from aiokafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError

from framework.kafka.embedded import EmbeddedBroker
from framework.kafka.options import max_request_size, reader, said, security_options, start_producer
from framework.settings import Settings
from tests.support import new_id, produce_async


def test_plaintext_has_no_security_options() -> None:
    assert security_options(Settings()) == {"security_protocol": "PLAINTEXT"}


def test_request_size_leaves_room_for_dead_letter_copies() -> None:
    assert max_request_size(Settings()) >= 2 * 1024 * 1024 * 4
    assert max_request_size(Settings(max_payload_bytes=10 * 1024 * 1024)) == 40 * 1024 * 1024


async def test_idempotence_auto_falls_back_on_the_embedded_broker(
    broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """1. `auto` against Tansu (no idempotent producer). Result: a working producer, and the log says it
    fell back to acks=all without idempotence (aiokafka has no public accessor for idempotence: the
    fallback is what the node reports). 2. `on`. Result: an error, not a silent downgrade."""
    caplog.set_level(logging.INFO, logger="faas.kafka")
    producer = await start_producer(broker.bootstrap, Settings(kafka_idempotence="auto"))
    try:
        fallbacks = [r.getMessage() for r in caplog.records if "no idempotent producer" in r.getMessage()]
        assert len(fallbacks) == 1 and "using acks=all without idempotence" in fallbacks[0], fallbacks
        meta = await producer.send_and_wait("t.kafka-config", b"{}")
        assert meta.offset >= 0
    finally:
        await producer.stop()
    with pytest.raises(KafkaError):
        await start_producer(broker.bootstrap, Settings(kafka_idempotence="on"))


async def test_reader_has_no_group_and_takes_the_security_options() -> None:
    """1. A reader built with SASL_PLAINTEXT settings. Result: no group, no auto-commit, from the earliest
    offset, and its client carries the settings' protocol, mechanism and user (aiokafka keeps them
    private: no broker with SASL here to prove it by connecting). 2. `extra` options. Result: they win."""
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT", kafka_sasl_username="svc", kafka_sasl_password="pw"
    )
    plain = reader("127.0.0.1:1", settings, "t.reader")
    late = reader("127.0.0.1:1", settings, auto_offset_reset="latest", security_protocol="PLAINTEXT")
    try:
        assert (plain._group_id, plain._enable_auto_commit, plain._auto_offset_reset) == (
            None,
            False,
            "earliest",
        )
        client = plain._client
        assert (client._security_protocol, client._sasl_mechanism, client._sasl_plain_username) == (
            "SASL_PLAINTEXT",
            "PLAIN",
            "svc",
        )
        assert late._auto_offset_reset == "latest" and late._client._security_protocol == "PLAINTEXT"
    finally:
        await plain.stop()
        await late.stop()


async def test_readers_each_read_the_whole_topic(broker: EmbeddedBroker) -> None:
    """1. Three records on a fresh topic; two readers of it at once. Result: each reads all three from
    the start (no group shares the partitions out between them)."""
    topic = f"t.reader-{new_id()}"
    await produce_async(broker.bootstrap, topic, [(None, f"{i}".encode(), []) for i in range(3)])
    readers = [reader(broker.bootstrap, Settings(), topic) for _ in range(2)]
    try:
        for r in readers:
            await r.start()
        for r in readers:
            got: list[bytes | None] = []
            deadline = time.monotonic() + 30
            while len(got) < 3 and time.monotonic() < deadline:
                for records in (await r.getmany(timeout_ms=300)).values():
                    got.extend(m.value for m in records)
            assert sorted(got, key=str) == [b"0", b"1", b"2"], got
    finally:
        for r in readers:
            await r.stop()


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (MessageSizeTooLargeError("5 bytes"), "[Error 10] MessageSizeTooLargeError: 5 bytes"),
        (KafkaTimeoutError(), "KafkaTimeoutError: no acknowledgement within the request timeout"),
        (OSError("refused"), "OSError: refused"),
        (RuntimeError(), "RuntimeError"),
    ],
)
def test_an_error_is_said_naming_its_type_once(error: BaseException, line: str) -> None:
    """aiokafka's broker errors name their type in their text; those that say nothing else get a meaning."""
    assert said(error).startswith(line) and said(error).count(type(error).__name__) == 1
