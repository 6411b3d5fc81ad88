"""aiokafka options shared by every Kafka client of the platform: security, topics, the producer.

Every client (the node's consumer, producer, admin and probe clients, the scheduler's, the EventClient)
takes its TLS/SASL options from `security_options`, so one set of `FAAS_KAFKA_*` settings covers them all.
The readers that belong to no consumer group (`faas logs`, `faas replay`, the deployment log, the
EventClient's replies) come from `reader`. Importing this module makes every consumer of the process read
a record whose header name is not UTF-8 instead of failing on it (`lenient.py`): the node's, and the CLI's
readers of the events, dead-letter, invocations and deployments topics alike.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaConnectionError, KafkaError, TopicAlreadyExistsError, for_code

from framework.kafka import lenient, security
from framework.settings import Settings
from framework.tasks import cancelled_here

log = logging.getLogger("faas.kafka")

lenient.install()

MIB = 1024 * 1024
ADMIN_TIMEOUT_MS = 10_000
"""Milliseconds an admin request (topic creation) may take."""


def security_options(settings: Settings) -> dict[str, Any]:
    """`security_protocol`, SASL and TLS keyword arguments for any aiokafka client (empty ones left out)."""
    opts: dict[str, Any] = {"security_protocol": settings.kafka_security_protocol}
    if settings.kafka_security_protocol.startswith("SASL"):
        opts["sasl_mechanism"] = settings.kafka_sasl_mechanism or "PLAIN"
        opts["sasl_plain_username"] = settings.kafka_sasl_username or None
        opts["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value() or None
    if settings.kafka_security_protocol.endswith("SSL"):
        opts["ssl_context"] = security.context(
            settings.kafka_ssl_cafile, settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile
        )
    return opts


AIOKAFKA_FETCH_WAIT_MS = 500
"""aiokafka's default `fetch_max_wait_ms`: named because a consumer's request timeout must outlast it."""
SLOW_LINK_BYTES_PER_S = 4 * 1024 * 1024
"""The slowest link a request's bytes are given time for (32 Mbit/s): aiokafka's timer runs from when a
request is queued, so a 16 MiB dead-letter copy or code record gets 4 s more than a small request."""


def request_timeout_ms(settings: Settings, largest_bytes: int = 0, fetch_wait_ms: int = 0) -> int:
    """The request timeout of a long-lived client (producers, readers, the group consumers) whose requests
    or responses may carry `largest_bytes` and whose fetches the broker may hold `fetch_wait_ms` (a fetch
    must not time out while the broker may still hold it): FAAS_KAFKA_REQUEST_TIMEOUT_MS (15 s; aiokafka's
    default is 40 s), plus the wait, plus the bytes at SLOW_LINK_BYTES_PER_S.

    A broker that keeps a connection open and stops answering on it holds every later request on that
    connection (a fetch, a commit, a rejoin) until the timeout gives it up: with aiokafka's default a node
    stayed unready for over 40 s after a broker restart, and an event waited 80 s for a fetch and a reply
    that each waited out one timeout (tests/faults/test_stalled_broker.py)."""
    return settings.kafka_request_timeout_ms + fetch_wait_ms + largest_bytes * 1000 // SLOW_LINK_BYTES_PER_S


def reader(bootstrap: str, settings: Settings, *topics: str, **extra: Any) -> AIOKafkaConsumer:
    """A consumer in no consumer group (not started): nothing to join, nothing committed, any number at once.

    It reads what it is assigned (or `topics`, every partition of them) from the earliest offset, with
    auto-commit off and the TLS/SASL options of `security_options(settings)`. `extra` (e.g.
    `auto_offset_reset="latest"`, fetch sizes, or a client's own `security_protocol`) overrides any of
    these but the group. Create it on the loop that will use it (aiokafka binds it there). Its request
    timeout (`request_timeout_ms`) covers its fetch wait and its largest fetch, unless `extra` sets one.
    """
    options: dict[str, Any] = {
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        **security_options(settings),
        **extra,
    }
    largest = options.get("fetch_max_bytes", options.get("max_partition_fetch_bytes", MIB))
    options.setdefault(
        "request_timeout_ms",
        request_timeout_ms(settings, largest, options.get("fetch_max_wait_ms", AIOKAFKA_FETCH_WAIT_MS)),
    )
    return AIOKafkaConsumer(*topics, bootstrap_servers=bootstrap, group_id=None, **options)


def max_request_size(settings: Settings) -> int:
    """Producer request limit: room for a dead-letter copy of a record a good deal over the payload limit.

    Records over FAAS_MAX_PAYLOAD_BYTES are still copied whole to the dead-letter topic, and the broker
    may have accepted records of several MiB (the conformance test sends 2 MiB), so: 16 MiB, or four times
    the payload limit if that is more.
    """
    return max(16 * MIB, 4 * settings.max_payload_bytes)


async def ensure_topics(
    bootstrap: str,
    topics: list[str],
    partitions: int,
    options: dict[str, Any],
    configs: dict[str, str] | None = None,
) -> list[str]:
    """Create the `topics` that do not exist, with `partitions` partitions each and the topic `configs`
    (e.g. `retention.ms`; none: the broker's defaults); returns those created.

    "Already exists" is fine (another node may create them at the same moment). The replication factor is
    the number of brokers, at most 3 (aiokafka's CreateTopics version cannot ask for the broker default).
    """
    # `options` may carry a client's own request timeout (an EventClient's): the admin keeps its own.
    admin = AIOKafkaAdminClient(
        **{**options, "bootstrap_servers": bootstrap, "request_timeout_ms": ADMIN_TIMEOUT_MS}
    )
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        if not missing:
            return []
        brokers = len((await admin.describe_cluster())["brokers"]) or 1
        new = [NewTopic(t, partitions, min(3, brokers), topic_configs=configs or {}) for t in missing]
        response = await admin.create_topics(new, timeout_ms=ADMIN_TIMEOUT_MS)
        created = []
        for topic, code, *rest in response.topic_errors:
            error = for_code(code)
            if code == 0:
                created.append(topic)
            elif error is not TopicAlreadyExistsError:
                raise error(f"cannot create topic {topic}: {rest[0] if rest else ''}")
        if created:
            log.info("created topics %s with %d partitions", ", ".join(created), partitions)
        return created
    finally:
        await admin.close()


async def start_producer(bootstrap: str, settings: Settings, **extra: Any) -> AIOKafkaProducer:
    """Start a producer with acks=all and the idempotence FAAS_KAFKA_IDEMPOTENCE asks for.

    `auto` tries an idempotent producer and falls back to a plain one when the broker refuses
    InitProducerId: Tansu advertises the API but answers it with an error, so feature detection by
    ApiVersions does not work and trying is the simple, reliable test. `on` fails instead of falling back.
    """
    opts: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "linger_ms": 2,
        "max_request_size": max_request_size(settings),
        **security_options(settings),
        **extra,
    }
    opts.setdefault("request_timeout_ms", request_timeout_ms(settings, opts["max_request_size"]))
    if settings.kafka_idempotence != "off":
        producer = AIOKafkaProducer(enable_idempotence=True, **opts)
        sender_log = logging.getLogger("aiokafka.producer.sender")
        level = sender_log.level
        if settings.kafka_idempotence == "auto":  # the refusal is expected here: no ERROR line for it
            sender_log.setLevel(logging.CRITICAL)
        try:
            await producer.start()
            return producer
        except KafkaError as exc:
            await producer.stop()
            if settings.kafka_idempotence == "on" or isinstance(exc, KafkaConnectionError):
                raise
            log.info("broker has no idempotent producer (%r): using acks=all without idempotence", exc)
        finally:
            sender_log.setLevel(level)
    producer = AIOKafkaProducer(**opts)
    try:
        await producer.start()
    except BaseException:
        await producer.stop()
        raise
    return producer


async def stop_quietly(
    client: AIOKafkaConsumer | AIOKafkaProducer, seconds: float | None = None
) -> Exception | None:
    """Stop `client` (within `seconds`, when given), raising nothing of its own: returns what went wrong,
    for the caller to log or not (the error that ended a read is the one to tell). A cancellation of the
    task stopping it still goes through.

    With the broker gone, aiokafka's fetcher, closing, re-raises the CancelledError of a fetch it cancelled
    while that fetch waited out its retry backoff. That is not a cancellation of the caller
    (`tasks.cancelled_here` tells them apart), and a stop must still end: it is returned as any error is."""
    try:
        async with asyncio.timeout(seconds):
            await client.stop()
    except asyncio.CancelledError as exc:
        if cancelled_here():
            raise
        return RuntimeError(f"a fetch cancelled while the client stopped: {exc!r}")
    except Exception as exc:
        return exc
    return None


_SAID = {
    "KafkaTimeoutError": "no acknowledgement within the request timeout (FAAS_KAFKA_REQUEST_TIMEOUT_MS)",
    "KafkaConnectionError": "the connection to the broker was lost",
    "RequestTimedOutError": "the broker did not answer within the request timeout",
}
"""What an aiokafka error that says nothing but its class name means, by that name."""


def said(exc: BaseException) -> str:
    """`exc` as one line that names its type once: aiokafka's broker errors already name theirs
    (`[Error 10] MessageSizeTooLargeError: ...`), and many say nothing else (then `_SAID` speaks)."""
    name, text = type(exc).__name__, str(exc)
    if text in ("", name):
        text = _SAID.get(name, "")
    if name in text:
        return text
    return f"{name}: {text}" if text else name
