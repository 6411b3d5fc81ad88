"""Helpers every verb module of the `faas` command shares: the settings, exits, the manifest, the broker."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import NoReturn

import click

from framework.control.manifest import Manifest, load_manifest
from framework.errors import ManifestError
from framework.kafka.embedded import port_open, speaks_kafka
from framework.settings import Settings

pass_settings = click.make_pass_decorator(Settings)

ANSWER_TIMEOUT = 2.0
"""Seconds what listens on the embedded broker's port has to answer as Kafka (a broker answers in
milliseconds; a listener that is not Kafka is either quick to say something else or silent until then)."""


def fail(*lines: str) -> NoReturn:
    """Print `lines` on stderr and exit 1."""
    for line in lines:
        click.echo(line, err=True)
    sys.exit(1)


def load(settings: Settings, check_handlers: bool = True, check_secrets: bool = False) -> Manifest:
    """The manifest, or exit 1 with its errors; `check_secrets`: listed secrets must be readable."""
    secrets = settings.secrets_path if check_secrets else None
    try:
        return load_manifest(settings.manifest, check_handlers=check_handlers, secrets_dir=secrets)
    except ManifestError as exc:
        fail(*exc.errors)


@dataclass(frozen=True)
class Broker:
    """Where a verb finds Kafka (`find_broker`)."""

    bootstrap: str | None
    """The bootstrap servers; None: no broker here."""
    missing: str = ""
    """Why there is none, as the one line a verb that needs a broker exits with."""


def find_broker(settings: Settings, given: str | None = None) -> Broker:
    """The broker every verb uses: `given` (a `--bootstrap` option) or FAAS_KAFKA_BOOTSTRAP_SERVERS as they
    are, else FAAS_EMBEDDED_BROKER_PORT on this host if what listens there answers a Kafka ApiVersions
    request within `ANSWER_TIMEOUT` (one round trip). Nothing listening there, or a listener that is not
    Kafka (an HTTP server, a silent port), is no broker; `missing` says which."""
    if given or settings.kafka_bootstrap_servers:
        return Broker(given or settings.kafka_bootstrap_servers)
    port = settings.embedded_broker_port
    if speaks_kafka("127.0.0.1", port, ANSWER_TIMEOUT):
        return Broker(f"127.0.0.1:{port}")
    if port_open("127.0.0.1", port):
        return Broker(
            None,
            f"port {port} (FAAS_EMBEDDED_BROKER_PORT) is taken by something that is not a Kafka broker: set "
            "FAAS_KAFKA_BOOTSTRAP_SERVERS to your Kafka cluster, or FAAS_EMBEDDED_BROKER_PORT to the port "
            "of the broker `faas run` uses",
        )
    return Broker(
        None,
        f"no Kafka broker reachable (nothing listens on port {port}, FAAS_EMBEDDED_BROKER_PORT): set "
        "FAAS_KAFKA_BOOTSTRAP_SERVERS or start `faas run`",
    )


def broker_of(settings: Settings) -> str | None:
    """For verbs that also work without a broker: its bootstrap servers, or None (`find_broker`)."""
    return find_broker(settings).bootstrap


def need_broker(settings: Settings, given: str | None = None) -> str:
    """For verbs that need a broker: its bootstrap servers, or exit 1 with one line saying why there is
    none (`find_broker`)."""
    broker = find_broker(settings, given)
    if broker.bootstrap is None:
        fail(broker.missing)
    return broker.bootstrap
