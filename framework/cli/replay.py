"""`faas replay`: re-drive dead-lettered events after a fix (DESIGN.md section 15; `framework.kafka.replay`).

Prints the ce_id of each event replayed (or, with `--dry-run`, that would be), a progress line on stderr
every few hundred records of a long replay, then `replayed N, skipped M (reasons)`. Exit 0 with the counts,
1 when the broker cannot be reached or producing fails.
"""

from __future__ import annotations

import asyncio

import click
from aiokafka.errors import KafkaError

from framework.cli.common import bootstrap_option, duration, fail, need_broker, quiet_kafka_client
from framework.kafka.replay import Selection, replay
from framework.kafka.topic_read import BrokerUnreachable
from framework.settings import Settings


@click.command(name="replay")
@click.option("--id", "ids", multiple=True, help="Replay the event with this ce_id (repeatable).")
@click.option("--function", show_envvar=True, help="Only events whose failing function is NAME.")
@click.option("--type", "event_type", show_envvar=True, help="Only events of this CloudEvent type.")
@click.option(
    "--since",
    callback=duration,
    show_envvar=True,
    help="Only events dead-lettered within this long: 30s, 10m, 2h, 7d.  [default: all]",
)
@click.option(
    "--dry-run", is_flag=True, show_envvar=True, help="List what would be replayed; produce nothing."
)
@bootstrap_option
@click.pass_obj
def replay_command(
    settings: Settings,
    ids: tuple[str, ...],
    function: str | None,
    event_type: str | None,
    since: float | None,
    dry_run: bool,
    bootstrap: str | None,
) -> None:
    """Produce dead-lettered failed events to the events topic again (none selected: every one)."""
    servers = need_broker(settings, bootstrap)
    selection = Selection(frozenset(ids), function, event_type, since)

    def progress(stage: str, done: int, total: int | None) -> None:
        if stage == "read":
            click.echo(f"reading {settings.deadletter_topic}: {done} records", err=True)
        elif stage == "count":
            click.echo(f"reading {settings.events_topic} for replay counts: {done} records", err=True)
        else:
            click.echo(f"replaying: {done} of {total}", err=True)

    quiet_kafka_client()
    try:
        report = asyncio.run(replay(servers, settings, selection, dry_run, progress))
    except BrokerUnreachable as exc:
        fail(f"cannot reach the Kafka broker at {servers}: {exc}")
    except KafkaError as exc:
        fail(f"replay failed: {exc!r}")
    if report.topic_missing:
        click.echo(f"no dead-letter topic {settings.deadletter_topic!r}: nothing to replay", err=True)
    for event_id in report.missing:
        click.echo(f"no failed event with ce_id {event_id!r} on {settings.deadletter_topic}", err=True)
    for event_id in report.replayed:
        click.echo(event_id)
    click.echo(report.summary())
