"""Verbs that serve: `faas run` (a node) and `faas broker` (the embedded broker in the foreground)."""

from __future__ import annotations

import signal
import sys
import threading

import click

from framework.cli.common import fail, option, pass_settings, port_number, unknown_names
from framework.settings import LOG_LEVELS, Settings


@click.command()
@option("--port", type=int, callback=port_number, envvar="FAAS_EMBEDDED_BROKER_PORT", help="[default: 9092]")
@pass_settings
def broker(settings: Settings, port: int | None) -> None:
    """Run the embedded (memory-only) Kafka broker in the foreground until SIGINT or SIGTERM."""
    from framework.kafka.embedded import BrokerError, EmbeddedBroker

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    b = EmbeddedBroker(port=settings.embedded_broker_port if port is None else port, owned=True)
    try:
        b.start()
    except BrokerError as exc:
        fail(str(exc))
    click.echo(f"broker listening on {b.bootstrap} (memory only: a restart loses its topics)")
    while not stop.wait(0.5):
        if b.proc is None or b.proc.poll() is not None:
            fail(f"the broker exited:\n{b.log_tail()}")
    b.stop()


@click.command()
@option("--no-kafka", is_flag=True, help="Serve HTTP and schedules only.")
@option("--host", envvar="FAAS_HTTP_HOST", help="HTTP address.  [default: 127.0.0.1]")
@option("--port", type=int, callback=port_number, envvar="FAAS_HTTP_PORT", help="HTTP port.  [default: 8080]")
@option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    envvar="FAAS_LOG_LEVEL",
    help="[default: INFO]",
)
@option(
    "--watch/--no-watch",
    default=None,
    envvar="FAAS_WATCH",
    help="Deploy every valid edit of the working copy.  [default: on]",
)
@pass_settings
def run(
    settings: Settings,
    no_kafka: bool,
    host: str | None,
    port: int | None,
    log_level: str | None,
    watch: bool | None,
) -> None:
    """Serve: instances, HTTP, Kafka events and schedules, until SIGTERM or SIGINT."""
    from framework.node import serve

    if host is not None:
        if (
            not host.strip()
        ):  # as the setting refuses it (`Settings._host`): uvicorn would bind every interface
            raise click.BadParameter(
                "an empty host: give an address, 0.0.0.0 for every interface", param_hint="--host"
            )
        settings.http_host = host.strip()
    if port is not None:
        settings.http_port = port
    if log_level is not None:
        settings.log_level = log_level.upper()
    if watch is not None:
        settings.watch = watch

    root = click.get_current_context().find_root().command
    sys.exit(serve(settings, kafka=not no_kafka, unknown=unknown_names(root)))
