"""The bootstrap list rule (kafka/address.py): every form a Kafka client takes is kept (entries stripped);
what it could not connect to is a ValueError naming the entry and what is wrong with it. The setting and
`--bootstrap` paths are tested with the settings and the CLI."""

from __future__ import annotations

import pytest

from framework.kafka.address import bootstrap_servers

BAD_BOOTSTRAP = [
    ("host:abc", "port 'abc' is not a number"),
    ("127.0.0.1:99999", "port 99999 is not between 1 and 65535"),
    ("k:0", "port 0 is not between 1 and 65535"),
    ("k:", "port '' is not a number"),
    ("[::1", "no closing ']'"),
    ("[::1]9092", "only ':port' may follow the ']'"),
    ("[kafka]:9092", "'kafka' is not an IPv6 address"),
    ("fe80::zz:9092", "an IPv6 address with a port goes in brackets"),
    ("k1:9092,,k2:9092", "an empty entry"),
    ("PLAINTEXT://k:9092", "no scheme"),
    ("my host:9092", "'my host' is not a host name"),
]


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        ("", ""),
        ("   ", ""),
        ("kafka-1:9092", "kafka-1:9092"),
        ("k1:9092, k2.example.com:19092 ,10.0.0.3:9093", "k1:9092,k2.example.com:19092,10.0.0.3:9093"),
        ("broker_a", "broker_a"),  # no port: the client's 9092
        ("[::1]:9092,[fe80::1%eth0]:1", "[::1]:9092,[fe80::1%eth0]:1"),
        ("[2001:db8::7]", "[2001:db8::7]"),
        ("::1", "::1"),  # aiokafka reads an unbracketed IPv6 address as one without a port
        ("k:65535", "k:65535"),
    ],
)
def test_bootstrap_servers_take_every_form_a_kafka_client_does(given: str, kept: str) -> None:
    assert bootstrap_servers(given) == kept


@pytest.mark.parametrize(("value", "problem"), BAD_BOOTSTRAP)
def test_what_a_client_could_not_connect_to_is_named(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match="expected host:port") as caught:
        bootstrap_servers(value)
    assert problem in str(caught.value) and (value.split(",")[0] in str(caught.value) or "empty" in problem)
