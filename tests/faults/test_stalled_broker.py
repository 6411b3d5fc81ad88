"""Scenario: the broker stops answering on the connections a node holds, and answers new ones."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from framework.kafka.options import max_request_size, request_timeout_ms
from framework.settings import Settings
from tests.faults.stall_proxy import AdvertisedBroker, StallingProxy
from tests.support import Node, ce_headers, consume, new_id, produce

pytestmark = pytest.mark.faults

TIMEOUT = 5_000
"""FAAS_KAFKA_REQUEST_TIMEOUT_MS of the node: the lowest it takes (a group of one node), far shorter than
the default, so the test takes 20 s, not 40."""


def reply_within(node: Node, bootstrap: str, eid: str, timeout: float) -> float:
    """Produce one `fault.tick` event `eid`; seconds until its reply is on the replies topic."""
    started = time.monotonic()
    produce(bootstrap, node.events, [(b"k", b"{}", ce_headers("fault.tick", eid))])
    replies = consume(bootstrap, node.replies, 100_000, timeout=timeout, ids={eid})
    assert any(r["value"]["id"] == eid for r in replies), f"no reply to {eid} in {timeout} s\n{node.tail()}"
    return time.monotonic() - started


def test_connections_that_stop_answering_are_given_up(project: Path, nodes: Callable[..., Node]) -> None:
    """1. A broker advertises a proxy's port, so every connection of a node goes through the proxy; the node
       answers an event.
    2. The proxy black-holes every connection open now (requests read, never answered, nothing closed):
       the node's fetch, commit, heartbeat and reply connections. New connections pass.
    3. An event is produced on a new connection.
    Result: the node answers it once its clients give the silent connections up: within the consumer's and
    the reply producer's request timeouts (`options.request_timeout_ms`, here 5.5 s and 9 s) and a margin,
    not aiokafka's 40 s default twice over; the node never exits."""
    proxy = StallingProxy(upstream=0)
    broker = AdvertisedBroker(advertised_port=proxy.port)
    proxy.upstream = broker.port
    broker.start()
    try:
        with proxy.running():
            bootstrap = f"127.0.0.1:{proxy.port}"
            node = nodes(project, bootstrap, env={"FAAS_KAFKA_REQUEST_TIMEOUT_MS": str(TIMEOUT)}).wait_ready()
            reply_within(node, bootstrap, new_id(), 30)
            assert proxy.stall() >= 3, "the node holds its connections through the proxy"
            settings = Settings(kafka_request_timeout_ms=TIMEOUT)
            bound = 2 * request_timeout_ms(settings, max_request_size(settings)) / 1000 + 15
            took = reply_within(node, bootstrap, new_id(), bound)
            print(f"answered {took:.1f} s after the stall")
            assert node.proc.poll() is None
            # 5 s is under the session timeout (6 s here) plus the broker's rebalance delay: said at start.
            assert "FAAS_KAFKA_REQUEST_TIMEOUT_MS=5000 is not above FAAS_KAFKA_SESSION_TIMEOUT_MS=6000" in (
                node.log.read_text()
            )
    finally:
        broker.stop()
