"""Is the Kafka broker reachable? A small metadata probe behind the node's `/readyz`.

aiokafka retries quietly while the broker is away, so the node asks for itself: every `INTERVAL` seconds
it fetches cluster metadata with a client of its own. `/readyz` turns 503 once no probe has succeeded for
`STALE_AFTER` seconds, well within the 10 s the contract allows.

Each probe also reads the cluster's id. A broker that answers at the same address with another id is
another cluster (for the memory-only embedded broker, which draws a new id at each start: the same
broker restarted, with none of its topics, logs or groups): offsets held from before mean nothing there.
Topics missing from the metadata cannot say this alone: a producer may create them again before a
probe looks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.metadata import MetadataRequest

from framework.tasks import within

log = logging.getLogger("faas.kafka")

INTERVAL = 2.0
"""Seconds between probes."""
TIMEOUT = 2.5
"""Seconds one probe may take."""
STALE_AFTER = 5.0
"""Seconds without a successful probe after which the broker counts as unreachable."""


async def ask_metadata(client: AIOKafkaClient, topics: list[str] | None) -> Any:
    """A metadata response for `topics` (None: all, []: none, the cluster's id only), asked on `client`'s
    own connection: a request of our own, since aiokafka's cluster metadata drops the cluster id."""
    node = client.get_random_node()
    if node is None:
        raise KafkaError("no broker known")
    return await client.send(node, MetadataRequest(topics))


def cluster_id_in(response: Any) -> str | None:
    """The cluster id a metadata response carries (None from a broker older than Kafka 1.0)."""
    found = getattr(response, "cluster_id", None)
    return found if isinstance(found, str) else None


class BrokerProbe:
    """Probe the cluster; `on_metadata(topics, new_cluster)` runs after each success: `new_cluster` is
    True when the cluster id differs from the one the last successful probe read (never on the first)."""

    def __init__(
        self,
        bootstrap: str,
        options: dict[str, Any],
        on_metadata: Callable[[set[str], bool], Awaitable[None]] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.options = options
        self.on_metadata = on_metadata
        self.last_ok = time.monotonic()  # optimistic at start: the join reason covers the first seconds
        self.error: str | None = None
        self.cluster_id: str | None = None
        """The id the last successful probe read (None before one, or from a broker older than Kafka 1.0)."""
        self._client: AIOKafkaClient | None = None

    def unreachable_for(self) -> float | None:
        """Seconds since the last successful probe, once that is over STALE_AFTER; else None."""
        age = time.monotonic() - self.last_ok
        return age if age > STALE_AFTER else None

    async def once(self) -> bool:
        try:
            topics, cluster_id = await within(self._metadata(), TIMEOUT)
        except (KafkaError, OSError, TimeoutError) as exc:
            if self.error is None:
                log.warning("kafka broker unreachable: %r", exc)
            self.error = repr(exc)
            return False
        new_cluster = None not in (self.cluster_id, cluster_id) and cluster_id != self.cluster_id
        if new_cluster:
            log.warning(
                "kafka cluster id %s became %s: a new or restarted cluster", self.cluster_id, cluster_id
            )
        self.cluster_id = cluster_id or self.cluster_id
        if self.on_metadata is not None:  # before counting as reachable: readiness implies it ran
            try:
                await self.on_metadata(topics, new_cluster)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("kafka probe hook failed: %r", exc)
        if self.error is not None:
            log.info("kafka broker reachable again")
        self.error = None
        self.last_ok = time.monotonic()
        return True

    async def _metadata(self) -> tuple[set[str], str | None]:
        """The cluster's topics and its id."""
        if self._client is None:
            client = AIOKafkaClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=int(TIMEOUT * 1000), **self.options
            )
            try:
                await client.bootstrap()
            except BaseException:
                await client.close()
                raise
            self._client = client
        response = await ask_metadata(self._client, None)
        topics = {str(t[1]) for t in response.topics if t[0] == 0}
        return topics, cluster_id_in(response)

    async def run(self) -> None:
        """Probe every INTERVAL seconds until cancelled."""
        try:
            while True:
                try:
                    await self.once()
                except Exception:  # a bug in the hook must not end the probe
                    log.exception("kafka probe failed")
                await asyncio.sleep(INTERVAL)
        finally:
            await self.close()

    async def close(self) -> None:
        """Close the probe's client (a later probe opens another)."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()
