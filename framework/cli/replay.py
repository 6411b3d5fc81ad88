"""`faas replay`: re-drive dead-lettered events after a fix (DESIGN.md section 15; `framework.kafka.replay`).

Prints the ce_id of each event replayed (or, with `--dry-run`, that would be), a progress line on stderr
every few hundred records of a long replay, then `replayed N, skipped M (reasons)`. Exit 0 with the counts,
1 when the broker cannot be reached or reading or producing fails. A replay whose producing failed part
way still prints the ce_ids the broker acknowledged, then says on stderr why it stopped, the ce_ids sent
and not acknowledged (they may have landed) and how many were not sent. After a replay, on stderr, a
warning for each function that failed replayed events and no longer listens to their type as a productive
function (undeployed, renamed, or its `events` changed), and for each of their types no productive
function listens to (read from the deployment log, as `faas ls` reads it): the latter run nowhere, and
their replies say ok with no results.
"""

from __future__ import annotations

import asyncio
import sys
from typing import NoReturn

import click
from aiokafka.errors import KafkaError

from framework.cli.common import (
    all_named,
    bootstrap_option,
    duration,
    fail,
    need_broker,
    option,
    quiet_kafka_client,
)
from framework.control.kafka_log import KafkaLog
from framework.control.log_state import LogState
from framework.kafka.replay import ReplayStopped, Report, Selection, replay
from framework.kafka.topic_read import BrokerUnreachable
from framework.settings import Settings


@click.command(name="replay")
@option(
    "--id", "ids", multiple=True, callback=all_named, help="Replay the event with this ce_id (repeatable)."
)
@option(
    "--function",
    "functions",
    multiple=True,
    callback=all_named,
    help="Only events whose failing function is NAME (repeatable: any of them).",
)
@option(
    "--type",
    "event_types",
    multiple=True,
    callback=all_named,
    help="Only events of this CloudEvent type (repeatable: any of them).",
)
@option(
    "--since",
    callback=duration,
    help="Only events dead-lettered within this long: 30s, 10m, 2h, 7d.  [default: all]",
)
@option("--dry-run", is_flag=True, help="List what would be replayed; produce nothing.")
@bootstrap_option
@click.pass_obj
def replay_command(
    settings: Settings,
    ids: tuple[str, ...],
    functions: tuple[str, ...],
    event_types: tuple[str, ...],
    since: float | None,
    dry_run: bool,
    bootstrap: str | None,
) -> None:
    """Produce dead-lettered failed events to the events topic again (none selected: every one)."""
    servers = need_broker(settings, bootstrap)
    selection = Selection(frozenset(ids), frozenset(functions), frozenset(event_types), since)

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
    except ReplayStopped as exc:
        stopped(exc, servers)
    except KafkaError as exc:
        fail(f"replay failed, nothing replayed: reading from the broker at {servers}: {exc}")
    if report.topic_missing:
        click.echo(f"no dead-letter topic {settings.deadletter_topic!r}: nothing to replay", err=True)
    if report.events_missing:
        fail(
            f"no events topic {settings.events_topic!r} on {servers}: nothing replayed "
            f"({len(report.replayed)} events would be): no node reads a topic that does not exist; is "
            "FAAS_EVENTS_TOPIC right?"
        )
    for event_id in report.missing:
        click.echo(f"no failed event with ce_id {event_id!r} on {settings.deadletter_topic}", err=True)
    for line in unmatched(selection, report, settings.deadletter_topic):
        click.echo(line, err=True)
    for event_id in report.replayed:
        click.echo(event_id)
    click.echo(report.summary())
    if report.replayed:
        for line in unserved(settings, servers, report):
            click.echo(line, err=True)


def unmatched(selection: Selection, report: Report, topic: str) -> list[str]:
    """A line for a `--function` or `--type` no failed event on the topic has (names and types are
    matched exactly, as the dead letters carry them: a uuid or another case selects nothing)."""
    lines = []
    asked = (("function", selection.functions, report.functions), ("type", selection.types, report.all_types))
    for what, values, seen in asked:
        for value in sorted(values - seen):
            there = ", ".join(sorted(seen)[:10]) or "none"
            lines.append(f"no failed event of {what} {value!r} on {topic} ({what}s there: {there})")
    return lines


def stopped(exc: ReplayStopped, servers: str) -> NoReturn:
    """Producing failed part way: what went out, what may have, what did not; exit 1."""
    for event_id in exc.report.replayed:
        click.echo(event_id)
    click.echo(f"replay stopped: the broker at {servers} did not take a record: {exc}", err=True)
    click.echo(f"replayed {len(exc.report.replayed)} (the ce_ids above, acknowledged)", err=True)
    if exc.unconfirmed:
        ids = " ".join(exc.unconfirmed)
        click.echo(f"{len(exc.unconfirmed)} sent, not acknowledged (they may have landed): {ids}", err=True)
    click.echo(f"{exc.unsent} not sent", err=True)
    sys.exit(1)


def unserved(settings: Settings, bootstrap: str, report: Report) -> list[str]:
    """Warnings for replayed events a function that failed them will not run again, or that nothing
    productive will run, by the deployment log's live revisions now (a replay after an undeploy reaches
    nobody, silently). Advisory: the events went out already, so a failure here is one line, not exit 1."""
    from framework.cli.deployments import LS_TIMEOUT, with_log

    async def read(log: KafkaLog) -> LogState | None:
        return None if log.missing else log.state

    try:
        state = with_log(settings, bootstrap, read, LS_TIMEOUT)
    except Exception as exc:
        return [f"(listeners not checked: {exc})"]
    if state is None:  # no log on the broker (said by `with_log`): no listener to check against
        return []
    will = "would" if report.dry_run else "will"
    listeners = {event_type: state.listeners(event_type) for event_type in report.types}
    lines = []
    for (function, event_type), n in sorted(report.failed_by.items()):
        if function not in listeners[event_type]:
            lines.append(
                f"warning: {function!r} is not a productive listener of {event_type!r} now: it {will} not "
                f"run the {_events(n)} it failed"
            )
    for event_type, n in sorted(report.types.items()):
        if not listeners[event_type]:
            lines.append(
                f"warning: no productive function listens to {event_type!r} now: {_events(n)} of it "
                f"{will} be answered with no results"
            )
    return lines


def _events(n: int) -> str:
    return f"{n} replayed event" + ("s" if n != 1 else "")
