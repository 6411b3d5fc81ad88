"""`faas deploy`, `undeploy`, `history`, `rollback` and the revision cells of `faas ls` (DESIGN.md 12).

Each verb reads the deployment log to its end, then publishes (code record, acknowledged, then the
revision record) and only then edits the manifest, so a failure leaves neither a half-published revision
nor a manifest that claims what did not happen. The broker is `FAAS_KAFKA_BOOTSTRAP_SERVERS`, else the
local embedded broker when its port answers as Kafka (`common.find_broker`); with neither, deploy and
undeploy only edit the manifest and say so, `ls` shows no revisions, history and rollback exit 1. History
and rollback also exit 1 for a NAME that neither the manifest nor the log knows, as deploy does.
Everything that talks to the broker is bounded by `BROKER_TIMEOUT` seconds: exit 1 after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import click
from aiokafka.errors import KafkaError
from click.core import ParameterSource
from ruamel.yaml.error import YAMLError

from framework.cli.common import (
    broker_of,
    code_zips,
    fail,
    load,
    need_broker,
    option,
    pass_settings,
    quiet_kafka_client,
    shown,
    utf8,
)
from framework.control.code_cache import verify
from framework.control.deployment_log import PublishFailed
from framework.control.kafka_log import KafkaLog
from framework.control.log_state import LogState
from framework.control.manifest_edit import set_state
from framework.control.registry import Registry
from framework.control.revisions import Revision, author, now
from framework.control.spec import FunctionSpec, Manifest, State
from framework.control.working_copy import candidates, live_status, undeploy_of
from framework.errors import ManifestError
from framework.settings import Settings

BROKER_TIMEOUT = 20.0
"""Seconds a verb may spend reaching the broker, reading the log and publishing."""
NO_BROKER = "no Kafka broker reachable: not published"
LS_TIMEOUT = 5.0
"""Seconds `faas ls` waits for the log before it lists the manifest's states alone."""

T = TypeVar("T")


def with_log(
    settings: Settings,
    bootstrap: str,
    work: Callable[[KafkaLog], Awaitable[T]],
    timeout: float,
    create: bool = False,
) -> T:
    """Run `work` on the log read to its end; raises ConnectionError naming the broker on failure.

    Only `deploy` creates a missing log (`create`): any other verb reads it as empty and says on stderr
    that there is none, so a mistyped FAAS_DEPLOYMENTS_TOPIC is seen and leaves no stray topic behind.
    """
    quiet_kafka_client()  # a verb says what went wrong in one line of its own

    async def run() -> T:
        log = KafkaLog(LogState(on_code=verify), settings, bootstrap, follow=False, create=create)
        try:
            async with asyncio.timeout(timeout):
                await log.start()
                if log.missing:
                    click.echo(f"({no_log(settings)}: nothing was deployed through it)", err=True)
                return await work(log)
        finally:
            await log.stop()

    try:
        return asyncio.run(run())
    except PublishFailed as exc:  # the log answered: not a connection problem
        raise ConnectionError(f"not published: {'; '.join(exc.failures)}") from None
    except (KafkaError, OSError, TimeoutError) as exc:
        why = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else repr(exc)
        where = f"the Kafka broker at {bootstrap}"
        raise ConnectionError(f"cannot use the deployment log on {where}: {why}") from None


def no_log(settings: Settings) -> str:
    """What a verb says when the broker has no deployment log."""
    return f"no deployment log {settings.deployments_topic!r} on the broker"


def _targets(manifest: Manifest, names: tuple[str, ...], all_: bool) -> list[FunctionSpec]:
    registry = Registry(manifest)
    specs = [f for f in manifest.functions if f.productive] if all_ else []
    for name in names:
        spec = registry.find(name)
        if spec is None:
            fail(f"no function named {name!r} in {manifest.path}")
        elif spec not in specs:
            specs.append(spec)
    return specs


def _name_clashes(state: LogState, specs: list[FunctionSpec]) -> list[str]:
    """A refusal line ("!" first) per spec every reader of the log would refuse because another function
    holds its name when the revision is read (`LogState.refused_names`): publishing it would deploy
    nothing while saying "deployed"."""
    refused = state.refused_names([(spec.uuid, spec.name) for spec in specs])
    return [
        _clash_line(state, spec.name, holder)
        for spec in specs
        if (holder := refused.get(spec.uuid.lower())) is not None
    ]


def _clash_line(state: LogState, name: str, holder: str) -> str:
    live = state.newest(holder)
    revision = f" (revision {live.revision})" if live is not None and live.action == "deploy" else ""
    return (
        f"!{name}: not deployed: live function {holder}{revision} has the name {name!r}; undeploy or rename "
        "it first (names are unique; two functions cannot swap names in one deploy: go through a free name)"
    )


def _set_states(settings: Settings, specs: list[FunctionSpec], state: State) -> dict[str, str]:
    """Set `state` in the manifest for each of `specs`; returns why it could not be, by function name."""
    problems = {}
    for spec in specs:
        if spec.state != state:
            try:
                set_state(settings.manifest, spec.name, state)
            except (OSError, RuntimeError, LookupError, ManifestError, YAMLError) as exc:
                problems[spec.name] = f"could not set state: {state}: {exc}"  # each names the file
    return problems


Outcome = tuple[list[str], list[FunctionSpec]]
"""What a publication did: the lines to print (one starting with `!` says what failed: exit 1) and the
functions published, whose state the manifest then takes."""


def _publish_then_set(
    settings: Settings,
    specs: list[FunctionSpec],
    state: State,
    publish: Callable[[KafkaLog], Awaitable[Outcome]],
    create: bool = False,
) -> None:
    """Run `publish` on the log, then set `state` in the manifest for what it published, print its lines,
    and exit 1 naming what failed (a batch may be published in part: that part is said and kept).

    Without a broker only the manifest is edited, and each line says nothing was published. A broker
    that fails exits 1 before the manifest is touched.
    """
    bootstrap = broker_of(settings)
    if bootstrap is None:
        problems = _set_states(settings, specs, state)
        for spec in specs:
            if spec.name not in problems:
                click.echo(f"{spec.name}: {state} in {settings.manifest} ({NO_BROKER})")
        if problems:
            fail(*(f"{name}: {why}; nothing published" for name, why in problems.items()))
        return
    try:
        lines, published = with_log(settings, bootstrap, publish, BROKER_TIMEOUT, create)
    except ConnectionError as exc:
        fail(str(exc))
    _say_published(settings, lines, published, state)


def _say_published(
    settings: Settings, lines: list[str], published: list[FunctionSpec], state: State | None
) -> None:
    """After a publication: set `state` in the manifest for `published` (None: no edit), print `lines`, and
    exit 1 naming what failed (the lines starting with `!`, and the edits that could not be made)."""
    # What is published is said whatever follows: Ctrl-C from here on waits for these few lines.
    with _no_interrupt():
        problems = _set_states(settings, published, state) if state is not None else {}
        for line in lines:
            if not line.startswith("!"):
                click.echo(line)
    failed = [line[1:] for line in lines if line.startswith("!")]
    # The revision is the log's; a manifest left behind it says the old state (`faas ls`: modified).
    failed += [f"{name}: published, but {why}; set it by hand" for name, why in problems.items()]
    if failed:
        fail(*failed)


@contextlib.contextmanager
def _no_interrupt() -> Iterator[None]:
    """Hold SIGINT off (blocked) for a block that must not stop half-way (it takes milliseconds); one that
    came meanwhile is delivered at its end."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def register(main: click.Group) -> None:
    """Add the verbs to the `faas` group."""
    for command in (deploy, undeploy, history, rollback):
        main.add_command(command)


@click.command()
@click.argument("names", nargs=-1)
@option(
    "--all",
    "all_",
    is_flag=True,
    envvar="FAAS_DEPLOY_ALL",  # click would name the twin after the parameter: FAAS_DEPLOY_ALL_
    help="Every function the manifest marks productive.",
)
@option("-m", "--message", callback=utf8, help="Why: kept with the revision.")
@pass_settings
def deploy(settings: Settings, names: tuple[str, ...], all_: bool, message: str | None) -> None:
    """Validate the working copy and publish a revision of each NAME (that changed)."""
    if not names and not all_:
        raise click.UsageError("Missing argument 'NAMES...': name a function to deploy, or use --all")
    if names and all_:  # `NAME... | --all`: deploying everything when names were given is not what was said
        from_env = click.get_current_context().get_parameter_source("all_") is ParameterSource.ENVIRONMENT
        why = (
            "FAAS_DEPLOY_ALL is set, which is --all"
            if from_env
            else "--all deploys every productive function"
        )
        raise click.UsageError(f"give NAMEs or --all, not both ({why})")
    # Secrets are checked where the deploying machine has the secrets folder (a CI runner may not).
    # The candidates reuse the zips the check made: what was checked is what is published.
    code = code_zips(settings)
    manifest = load(settings, check_secrets=settings.secrets_path.is_dir(), code=code)
    specs = _targets(manifest, names, all_)
    if not specs:  # `--all` with no productive function: said, not a silent exit 0 (nor a new log topic)
        click.echo(f"nothing to deploy: no function in {settings.manifest} is productive")
        return
    found = candidates(manifest, code, message)

    async def publish(log: KafkaLog) -> Outcome:
        clashes = _name_clashes(log.state, specs)
        if clashes:
            return clashes, []  # refused before anything was published
        items = []
        for spec in specs:
            cand = found[spec.uuid]
            assert cand.revision is not None
            items.append((cand.revision, cand.code))
        try:
            results = dict(enumerate(await log.publish_all(items)))
            failures: list[str] = []
        except PublishFailed as exc:
            results, failures = exc.published, exc.failures
        lines = [
            f"{rev.function}: revision {rev.revision} deployed"
            if new
            else f"{rev.function}: unchanged, revision {rev.revision}" + _message_dropped(rev, message)
            for rev, new in (results[i] for i in sorted(results))
        ]
        return lines + [f"!not published: {why}" for why in failures], [specs[i] for i in sorted(results)]

    _publish_then_set(settings, specs, "productive", publish, create=True)


def _message_dropped(rev: Revision, message: str | None) -> str:
    """What `-m` became when nothing was published: the live revision keeps its own message (revisions are
    never edited), which may be none, when a node in watch mode published the change first."""
    if message is None or rev.message == message:
        return ""
    by = f" (published by {rev.deployed_by})" if rev.deployed_by else ""
    return f"{by}: nothing new to publish, so -m is not kept (revisions are never edited)"


@click.command()
@click.argument("names", nargs=-1, required=True)
@option("-m", "--message", callback=utf8, help="Why: kept with the revision.")
@pass_settings
def undeploy(settings: Settings, names: tuple[str, ...], message: str | None) -> None:
    """Publish an undeploy revision of each NAME and set it undeployed (even with a broken handler).

    A NAME the manifest does not hold (deployed from another folder, or since removed from the manifest) is
    looked up in the deployment log, as `history` and `rollback` do, and undeployed there: otherwise a
    function removed from the manifest while live could not be taken down."""
    manifest = load(settings, check_handlers=False) if settings.manifest.exists() else None
    registry = Registry(manifest) if manifest is not None else None
    specs: list[FunctionSpec] = []
    elsewhere: list[str] = []
    for name in names:
        spec = registry.find(name) if registry is not None else None
        if spec is None:
            elsewhere.append(name)
        elif spec not in specs:
            specs.append(spec)
    if elsewhere and broker_of(settings) is None:  # only the log could know them, and there is none
        fail(*(f"no function named {name!r} in {settings.manifest}" for name in elsewhere))

    async def publish(log: KafkaLog) -> Outcome:
        # Every NAME is found first: a mistyped one undeploys none of the others (as `deploy` publishes
        # nothing when one NAME is unknown), rather than taking some out of service and exiting 1.
        found = {name: _uuid_of(log.state, None, name) for name in elsewhere}
        unknown = ["!" + _unknown(settings, name, log.state) for name, uuid in found.items() if uuid is None]
        if unknown:
            return [*unknown, "!nothing undeployed"], []
        lines: list[str] = []
        done: list[FunctionSpec] = []
        for spec in specs:
            said = await _undeploy_one(log, spec.uuid, spec.name, spec, message)
            lines += said
            if not said[0].startswith("!"):
                done.append(spec)
        for name, uuid in found.items():
            assert uuid is not None
            lines += await _undeploy_one(log, uuid, name, None, message)
        return lines, done

    _publish_then_set(settings, specs, "undeployed", publish)


async def _undeploy_one(
    log: KafkaLog, uuid: str, name: str, spec: FunctionSpec | None, message: str | None
) -> list[str]:
    """Publish the undeploy revision of function `uuid` (`spec`: the manifest's, None for one only the log
    knows); the lines to print ("!" first when it failed)."""
    newest = log.state.newest(uuid)
    if newest is None or newest.action == "undeploy":
        return [f"{name}: not deployed" + (f", revision {newest.revision}" if newest else "")]
    try:
        rev, _ = await log.publish(undeploy_of(spec, newest, message), None)
    except PublishFailed as exc:  # the ones before it are published: said, and their state set
        return [f"!not published: {why}" for why in exc.failures]
    where = "" if spec is not None else " (in the deployment log; the manifest does not hold it)"
    return [f"{name}: revision {rev.revision} undeployed{where}"]


@click.command()
@click.argument("name")
@option("--json", "as_json", is_flag=True, help="The revision records as a JSON list.")
@pass_settings
def history(settings: Settings, name: str, as_json: bool) -> None:
    """List the kept revisions of NAME, newest first, and which one is live."""
    kept = _kept(settings, name)
    live = kept[0].revision if kept and kept[0].action == "deploy" else None
    if as_json:
        click.echo(json.dumps([{**r.to_json(), "live": r.revision == live} for r in kept], indent=2))
        return
    if not kept:
        click.echo(f"{name}: no revisions")
        return
    rows = [("REV", "ACTION", "DEPLOYED_AT", "BY", "CODE", "LIVE", "MESSAGE")]
    for r in kept:
        code = (r.code_sha256 or "-")[:12]
        message = r.message or ""
        if r.rollback_of is not None:
            message = f"{message} (rollback of {r.rollback_of})".strip()
        live_mark = "live" if r.revision == live else ""
        by, message = shown(r.deployed_by, cell=True), shown(message, cell=True)  # anyone's text
        rows.append((str(r.revision), r.action, r.deployed_at, by, code, live_mark, message))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row in rows:
        click.echo("  ".join([c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[6]]).rstrip())


@click.command()
@click.argument("name")
@option(
    "--to",
    "to",
    type=int,  # any number: one that is not kept (0, -1, ...) exits 1 naming the kept ones (section 12)
    help="Revision to go back to.  [default: the one before the live one]",
)
@option("-m", "--message", callback=utf8, help="Why: kept with the revision.")
@pass_settings
def rollback(settings: Settings, name: str, to: int | None, message: str | None) -> None:
    """Publish a new revision with the spec and code of an earlier one. A rollback to an undeploy sets the
    function `undeployed` in the manifest, as `faas undeploy` does; a rollback to a deploy leaves the
    manifest alone: marking it productive would have a watch-mode node publish the working copy over the
    rollback."""
    entry = _entry(settings, name)
    uuid, fn = (entry.uuid, entry.name) if entry is not None else (None, name)
    bootstrap = need_broker(settings)
    state: list[State] = []  # what the function is once the rollback is published

    async def publish(log: KafkaLog) -> str:
        found = _uuid_of(log.state, uuid, fn)
        if found is None:
            return "!" + _unknown(settings, fn, log.state)
        kept = log.state.kept(found)
        if not kept:
            return f"!{fn}: no revisions kept"
        newest = kept[0]
        target = next((r for r in kept if r.revision == to), None) if to is not None else None
        if to is None:
            target = next((r for r in kept[1:] if r.action == "deploy"), None)
            if target is None:
                return f"!{fn}: no earlier deployed revision is kept"
        if target is None:
            numbers = ", ".join(str(r.revision) for r in kept)
            return f"!{fn}: revision {to} is not kept (kept: {numbers})"
        if target.action == "undeploy":  # back to not being served: revision N's spec and code, undeployed
            state.append("undeployed")
            if newest.action == "undeploy":
                return f"{fn}: unchanged, revision {newest.revision} is an undeploy too"
            back = replace(
                target,
                revision=0,
                deployed_at=now(),
                deployed_by=author(),
                message=message or f"rollback to revision {target.revision}",
                rollback_of=target.revision,
            )
            rev, _ = await log.publish(back, None)
            return f"{fn}: revision {rev.revision} undeployed (rollback of revision {target.revision})"
        if target.code_sha256 not in log.state.codes:
            return f"!{fn}: revision {target.revision} lacks its code (not on the log); pick another"
        name = str(target.spec.get("name"))
        holder = log.state.holder(name, newest.uuid)
        if holder is not None:
            return _clash_line(log.state, name, holder.uuid)
        cand = Revision(
            uuid=newest.uuid,
            function=name,  # the name the revision serves: a rollback across a rename restores the old one
            revision=0,
            action="deploy",
            spec=target.spec,
            code_sha256=target.code_sha256,
            deployed_at=now(),
            deployed_by=author(),
            message=message or f"rollback to revision {target.revision}",
            rollback_of=target.revision,
        )
        rev, new = await log.publish(cand, None)
        if not new:
            return f"{fn}: unchanged, revision {rev.revision} equals revision {target.revision}"
        renamed = f", served as {name} again" if name != newest.function else ""
        return f"{fn}: revision {rev.revision} deployed (rollback of revision {target.revision}{renamed})"

    try:
        line = with_log(settings, bootstrap, publish, BROKER_TIMEOUT)
    except ConnectionError as exc:
        fail(str(exc))
    _say_published(settings, [line], [entry] if entry is not None else [], state[0] if state else None)


def _entry(settings: Settings, name: str) -> FunctionSpec | None:
    """The manifest's entry named NAME (a name or uuid); None outside a working copy, or when the manifest
    does not hold it (the log alone knows the function then)."""
    if not settings.manifest.exists():
        return None
    try:
        return Registry(load(settings, check_handlers=False)).find(name)
    except SystemExit:  # an invalid manifest (its errors are shown): the log may still know the function
        return None


def _identify(settings: Settings, name: str) -> tuple[str | None, str]:
    """(uuid, name) from the manifest when it names NAME (a name or uuid), else (None, NAME)."""
    spec = _entry(settings, name)
    return (spec.uuid, spec.name) if spec is not None else (None, name)


def _uuid_of(state: LogState, uuid: str | None, name: str) -> str | None:
    """The function's uuid: `uuid` (the manifest's), else the one the log knows by this name or uuid
    (functions deployed from another folder, or since removed from the manifest); None when neither knows
    it."""
    if uuid is not None:
        return uuid
    if name.lower() in state.revisions:
        return name.lower()
    # Several functions may have used a name over time (one at a time): the live one, else the newest.
    named = [
        rev for known in state.revisions if (rev := state.newest(known)) is not None and rev.function == name
    ]
    named.sort(key=lambda rev: (rev.action == "deploy", state.order.get(rev.key, -1)))
    return named[-1].uuid.lower() if named else None


def _renamed(state: LogState, name: str) -> Revision | None:
    """The newest revision of the function a kept revision last gave the name `name`, which it no longer
    has (renamed since); None when no kept revision had it."""
    had = [rev for known in state.revisions for rev in state.kept(known)[1:] if rev.function == name]
    if not had:
        return None
    last = max(had, key=lambda rev: state.order.get(rev.key, -1))
    return state.newest(last.uuid)


def _unknown(settings: Settings, name: str, state: LogState | None = None) -> str:
    """The refusal of a NAME neither the manifest nor the log knows; one a function had before a rename
    names the function's name now (acting on it by an old name could take down or rename what a script
    never meant)."""
    now = None if state is None else _renamed(state, name)
    if now is not None:
        return (
            f"no function is named {name!r} now: function {now.uuid} had that name, and is {now.function!r}"
        )
    return f"no function named {name!r} in {settings.manifest} or the deployment log"


def _kept(settings: Settings, name: str) -> list[Revision]:
    """The kept revisions of NAME, newest first (none for a function never deployed); exit 1 when neither
    the manifest nor the log knows NAME."""
    uuid, fn = _identify(settings, name)
    bootstrap = need_broker(settings)

    async def read(log: KafkaLog) -> list[Revision] | None:
        found = _uuid_of(log.state, uuid, fn)
        if found is None:  # reading only: a name given up in a rename shows that function's history
            renamed = _renamed(log.state, fn)
            if renamed is not None:
                click.echo(f"{fn}: renamed since, now {renamed.function}", err=True)
                found = renamed.uuid
        return None if found is None else log.state.kept(found)

    try:
        kept = with_log(settings, bootstrap, read, BROKER_TIMEOUT)
    except ConnectionError as exc:
        fail(str(exc))
    if kept is None:
        fail(_unknown(settings, name))
    return kept


@dataclass(frozen=True)
class LiveFacts:
    """What the deployment log says of one function, for `faas ls`: the log, not the manifest, decides what
    is served (a rollback edits no manifest)."""

    newest: int
    """The newest revision's number (an undeploy's too)."""
    status: dict[str, Any]
    """`revision`, `modified` and `deployed_at` as `GET /functions` gives them (`live_status`)."""
    spec: dict[str, Any] | None = None
    """The live revision's spec (what nodes serve: its events and schedules), None when undeployed."""

    @property
    def live(self) -> bool:
        """Whether the newest revision is a deploy (it has a live revision): served, else `undeployed`."""
        return self.status["revision"] is not None

    @property
    def state(self) -> str:
        """The state every node serves the function in."""
        return "productive" if self.live else "undeployed"

    @property
    def modified(self) -> bool:
        return bool(self.status["modified"])


def live_facts(settings: Settings, manifest: Manifest) -> dict[str, LiveFacts] | None:
    """The log's facts of each function of `manifest` that has a revision, by uuid; None without a broker
    (and when it cannot be reached, which is said on stderr): the log was not read."""
    bootstrap = broker_of(settings)
    if bootstrap is None:
        return None

    async def read(log: KafkaLog) -> dict[str, Revision | None]:
        return {spec.uuid: log.state.newest(spec.uuid) for spec in manifest.functions}

    try:
        newest = with_log(settings, bootstrap, read, LS_TIMEOUT)
    except ConnectionError as exc:
        click.echo(f"(revisions unknown: {exc})", err=True)
        return None
    found = candidates(manifest, code_zips(settings))
    facts = {}
    for spec in manifest.functions:
        rev = newest.get(spec.uuid)
        if rev is not None:
            status = live_status(found.get(spec.uuid), rev)
            served = rev.spec if status["revision"] is not None else None
            facts[spec.uuid] = LiveFacts(rev.revision, status, served)
    return facts
