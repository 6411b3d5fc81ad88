"""The broker probe (framework/kafka/probe.py) against real brokers: reachability, topics, the cluster id."""

from __future__ import annotations

import asyncio

import pytest

from framework.kafka.embedded import EmbeddedBroker
from framework.kafka.options import ensure_topics
from framework.kafka.probe import BrokerProbe
from tests.support import LOGS


@pytest.mark.usefixtures("broker_kills")
def test_a_restarted_embedded_broker_is_a_new_cluster() -> None:
    """1. Probe a broker of our own, with a topic on it.
    2. Probe it again; SIGKILL it and probe; start a new one on the same port and probe until it answers.
    Result: the first probes see the topic and no new cluster; the one during the outage fails and says
    why; the first one after the restart reports a new cluster (another id) exactly once, and the next
    does not."""
    first = EmbeddedBroker(log_path=LOGS / "broker-probe-1.log").start()
    second: EmbeddedBroker | None = None
    seen: list[tuple[set[str], bool]] = []

    async def hook(topics: set[str], new_cluster: bool) -> None:
        seen.append((topics, new_cluster))

    async def scenario() -> None:
        nonlocal second
        await ensure_topics(first.bootstrap, ["probed"], 1, {})
        probe = BrokerProbe(first.bootstrap, {}, hook)
        try:
            assert await probe.once() and await probe.once()
            before = probe.cluster_id
            assert before is not None and before.startswith("faas-embedded-")
            assert [("probed" in topics, new) for topics, new in seen] == [(True, False), (True, False)]

            first.kill()
            assert not await probe.once()
            assert probe.error is not None and len(seen) == 2

            second = EmbeddedBroker(port=first.port, log_path=LOGS / "broker-probe-2.log").start()
            deadline = asyncio.get_running_loop().time() + 20
            while not await probe.once():
                assert asyncio.get_running_loop().time() < deadline, f"no probe answered: {probe.error}"
                await asyncio.sleep(0.2)
            assert probe.cluster_id not in (None, before)
            assert seen[2] == (set(), True), "the new broker knows no topics and is another cluster"
            assert await probe.once()
            assert seen[3][1] is False, "a cluster is new once"
        finally:
            probe_client = probe._client
            if probe_client is not None:
                await probe_client.close()

    try:
        asyncio.run(scenario())
    finally:
        first.stop()
        if second is not None:
            second.stop()
