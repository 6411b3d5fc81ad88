"""The event baseline: a raw aiokafka relay in its own process, with no platform in between.

It consumes the events topic in a consumer group, produces each record's exact bytes (key, value, headers)
to the reply topic, and commits once the broker acknowledged the batch: the same at-least-once shape as
the node, minus the functions. It runs on uvloop with the node's consumer options, read from the same
environment (the same fetch wait, which shapes latency on Tansu), so the two differ only in the work
between fetch and produce.
`python -m benchmarks.relay BOOTSTRAP IN_TOPIC OUT_TOPIC GROUP`; it prints
`ready` once it owns partitions.
"""

from __future__ import annotations

import asyncio
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from framework.settings import Settings
from framework.sources.kafka.source import consumer_options


async def relay(bootstrap: str, in_topic: str, out_topic: str, group: str) -> None:
    options = consumer_options(Settings())
    consumer = AIOKafkaConsumer(in_topic, bootstrap_servers=bootstrap, group_id=group, **options)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")  # as durable as the node's replies
    await producer.start()
    await consumer.start()
    announced = False
    try:
        while True:
            batch = await consumer.getmany(timeout_ms=100)
            if not announced and consumer.assignment():
                print("ready", flush=True)
                announced = True
            sends = [
                await producer.send(out_topic, m.value, m.key, headers=list(m.headers))
                for msgs in batch.values()
                for m in msgs
            ]
            if sends:
                await asyncio.gather(*sends)
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


def main() -> None:
    import uvloop

    bootstrap, in_topic, out_topic, group = sys.argv[1:5]
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(relay(bootstrap, in_topic, out_topic, group))


if __name__ == "__main__":
    main()
