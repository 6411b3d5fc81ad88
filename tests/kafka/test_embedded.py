"""The embedded broker's port check (framework/kafka/embedded.py): is what listens there a Kafka broker?"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from framework.kafka.embedded import EmbeddedBroker, free_port, speaks_kafka
from tests.support import http_server, silent_listener

SHORT = 0.5
"""Seconds a listener that is not Kafka gets here: what it would answer, it answers at once."""


@contextmanager
def echo_server() -> Iterator[int]:
    """A TCP server that sends back every byte it gets: a well-formed frame, but not Kafka's answer."""
    server = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                try:
                    while data := conn.recv(4096):
                        conn.sendall(data)
                except OSError:
                    pass

    thread = threading.Thread(target=serve, name="echo", daemon=True)
    thread.start()
    try:
        yield int(server.getsockname()[1])
    finally:
        stop.set()
        thread.join(5)
        server.close()


def test_the_embedded_broker_speaks_kafka(broker: EmbeddedBroker) -> None:
    assert speaks_kafka(broker.host, broker.port)


def test_listeners_that_are_not_kafka() -> None:
    """1. Ask a port where nothing listens, a TCP listener that never answers, a real HTTP server and an
    echo server (it sends the request back: a frame, with the wrong correlation id). Result: none is
    taken for a Kafka broker, and none keeps the check past its timeout."""
    assert not speaks_kafka("127.0.0.1", free_port(), SHORT)
    for listener in (silent_listener, http_server, echo_server):
        with listener() as port:
            started = time.monotonic()
            assert not speaks_kafka("127.0.0.1", port, SHORT), listener.__name__
            assert time.monotonic() - started < SHORT + 2, listener.__name__


def test_the_broker_gets_no_secret_setting_of_its_node(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. The node's environment holds FAAS_API_KEYS (and the SASL password in lower case). 2. Start a broker.
    Result: neither is in the broker's environment, which any process of the user (a handler) may read in
    `/proc/<pid>/environ`; other variables are."""
    monkeypatch.setenv("FAAS_API_KEYS", "key-of-the-node")
    monkeypatch.setenv("faas_kafka_sasl_password", "password-of-the-node")
    monkeypatch.setenv("OTHER_VARIABLE", "kept")
    b = EmbeddedBroker().start()
    try:
        assert b.proc is not None
        with open(f"/proc/{b.proc.pid}/environ", "rb") as f:
            names = {entry.partition(b"=")[0].decode() for entry in f.read().split(b"\0")}
    finally:
        b.stop()
    assert "OTHER_VARIABLE" in names and not {"FAAS_API_KEYS", "faas_kafka_sasl_password"} & names
