"""Session fixtures: one real Tansu broker on a free port for the whole run (for each test process, under
pytest-xdist), and node starters."""

from __future__ import annotations

import gc
import os
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from framework.kafka.embedded import EmbeddedBroker
from tests.support import LOGS, Node


@pytest.fixture(scope="session")
def broker() -> Iterator[EmbeddedBroker]:
    """A real broker; when it fails to start, the error carries its log."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")  # each test process has a broker of its own
    b = EmbeddedBroker(log_path=LOGS / f"broker-session-{worker}.log").start()
    yield b
    b.stop()


@pytest.fixture
def nodes() -> Iterator[Callable[..., Node]]:
    """Start `faas run` nodes (`nodes(root, bootstrap, ...)`); each is SIGKILLed at the end if still up."""
    started: list[Node] = []

    def start(*args: Any, **kw: Any) -> Node:
        n = Node(*args, **kw)
        started.append(n)
        return n

    yield start
    for n in started:
        if n.proc.poll() is None:
            n.kill()


@pytest.fixture
def broker_kills() -> Iterator[None]:
    """For a test that kills a broker under this process's own aiokafka clients: aiokafka can leave a
    connection's socket unclosed when its broker dies mid-connect (aio-libs/aiokafka#715), and with
    warnings as errors its ResourceWarning fails whichever later test the collector happens to run in. The
    garbage is collected here, at the end of the test that made it, that warning ignored. (The platform's
    own clients run in node processes, which this does not touch.)"""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
