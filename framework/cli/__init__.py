"""The `faas` command (DESIGN.md section 6).

Every option has an environment twin: the settings' own `FAAS_*` names where one exists (`--manifest` is
`FAAS_MANIFEST`, `broker --port` is `FAAS_EMBEDDED_BROKER_PORT`), else click's `FAAS_<COMMAND>_<OPTION>`
(e.g. `FAAS_INVOKE_URL`). Exit codes: 0 ok, 1 failure, 2 usage error.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import sys
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any, NoReturn

import click
from pydantic import ValidationError

from framework import __version__
from framework.cli import scripting
from framework.control.cron import next_fire
from framework.control.manifest import NAME_PATTERN, Manifest, load_manifest
from framework.control.manifest_edit import add_function
from framework.control.registry import Registry
from framework.errors import FaasError, ManifestError
from framework.settings import Settings

HTTP_TIMEOUT = 120.0
"""Seconds `invoke --url` waits for the node: longer than a queue wait plus the 30 s time limit."""

SCAFFOLD = '''\
"""{name}: describe what this function does."""

from __future__ import annotations

from typing import Any

from framework import Context


async def handle(payload: Any, ctx: Context) -> Any:
    ctx.log.info("%s invoked (trigger %s)", ctx.function, ctx.trigger)
    return {{"function": ctx.function, "payload": payload}}
'''

pass_settings = click.make_pass_decorator(Settings)


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


@click.group(context_settings={"auto_envvar_prefix": "FAAS", "show_default": True})
@click.option(
    "--manifest",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="FAAS_MANIFEST",
    show_envvar=True,
    help="The manifest.  [default: functions.yaml]",
)
@click.version_option(__version__, prog_name="faas")
@click.pass_context
def main(ctx: click.Context, manifest: Path | None) -> None:
    """A self-hosted serverless function platform: functions invoked by Kafka events, HTTP and cron."""
    try:
        ctx.obj = Settings(manifest=manifest) if manifest is not None else Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"FAAS_{'_'.join(map(str, e['loc'])).upper()}: {e['msg']}" if e["loc"] else e["msg"]
            for e in exc.errors()
        )
        raise click.UsageError(f"invalid setting: {problems}") from None


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@pass_settings
def validate(settings: Settings, as_json: bool) -> None:
    """Check the manifest, import every handler and read every listed secret."""
    if as_json:
        try:
            manifest = load_manifest(
                settings.manifest, check_handlers=True, secrets_dir=settings.secrets_path
            )
        except ManifestError as exc:
            click.echo(scripting.validate_report(None, exc.errors))
            sys.exit(1)
        click.echo(scripting.validate_report(manifest, []))
        return
    manifest = load(settings, check_secrets=True)
    click.echo(f"ok: {len(manifest.functions)} functions")


@main.command(name="ls")
@click.option("--json", "as_json", is_flag=True, help="Print the functions as JSON on stdout.")
@pass_settings
def list_functions(settings: Settings, as_json: bool) -> None:
    """List the functions with their schedules' next fire times."""
    from framework.cli.deployments import revision_cells

    if as_json:
        click.echo(scripting.listing(load(settings, check_handlers=False)))
        return
    rows = [("NAME", "UUID", "STATE", "EVENTS", "SCHEDULES")]
    manifest = load(settings, check_handlers=False)
    cells = revision_cells(settings, manifest)  # `productive r7` / `modified r7` from the deployment log
    for f in manifest.functions:
        crons = [(s.cron, s.timezone, "") for s in f.schedules]
        crons += [(f.keep_warm, "UTC", "keep_warm ")] if f.keep_warm else []
        when = [f"{k}{c} [{tz}] next {next_fire(c, tz).isoformat(timespec='seconds')}" for c, tz, k in crons]
        state = cells.get(f.uuid, f.state)
        rows.append((f.name, f.uuid, state, ",".join(f.events) or "-", "; ".join(when) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join([c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[4]]))


@main.command()
@click.argument("name")
@click.option(
    "--event", "events", show_envvar=True, multiple=True, help="Event type it listens to (repeatable)."
)
@pass_settings
def new(settings: Settings, name: str, events: tuple[str, ...]) -> None:
    """Scaffold functions/NAME.py and a draft manifest entry with a fresh UUID."""
    if not re.match(NAME_PATTERN, name):
        fail(f"invalid name {name!r}: lower-case letters, digits, '_' and '-', starting with a letter")
    path = settings.manifest
    if path.exists() and Registry(load(settings, check_handlers=False)).by_name(name) is not None:
        fail(f"a function named {name!r} already exists in {path}")
    module = name.replace("-", "_")
    package = path.resolve().parent / "functions"
    source = package / f"{module}.py"
    if source.exists():
        fail(f"{source} already exists")
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").touch()
    source.write_text(SCAFFOLD.format(name=name))
    entry: dict[str, Any] = {"name": name, "uuid": str(uuid.uuid4()), "handler": f"functions.{module}:handle"}
    entry["state"] = "draft"
    if events:
        entry["events"] = list(events)
    try:
        add_function(path, entry)
    except (ManifestError, RuntimeError) as exc:
        source.unlink()
        fail(str(exc))
    click.echo(f"created {source} and a draft entry {name} ({entry['uuid']}) in {path}")


@main.command()
@click.option(
    "--port", type=int, envvar="FAAS_EMBEDDED_BROKER_PORT", show_envvar=True, help="[default: 9092]"
)
@pass_settings
def broker(settings: Settings, port: int | None) -> None:
    """Run the embedded (memory-only) Kafka broker in the foreground until SIGINT or SIGTERM."""
    from framework.kafka.embedded import BrokerError, EmbeddedBroker

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    b = EmbeddedBroker(port=settings.embedded_broker_port if port is None else port)
    try:
        b.start()
    except BrokerError as exc:
        fail(str(exc))
    click.echo(f"broker listening on {b.bootstrap} (memory only: a restart loses its topics)")
    while not stop.wait(0.5):
        if b.proc is None or b.proc.poll() is not None:
            fail(f"the broker exited:\n{b.log_tail()}")
    b.stop()


@main.command()
@click.option("--no-kafka", is_flag=True, show_envvar=True, help="Serve HTTP and schedules only.")
@click.option("--host", envvar="FAAS_HTTP_HOST", show_envvar=True, help="HTTP address.  [default: 127.0.0.1]")
@click.option(
    "--port", type=int, envvar="FAAS_HTTP_PORT", show_envvar=True, help="HTTP port.  [default: 8080]"
)
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"], case_sensitive=False),
    envvar="FAAS_LOG_LEVEL",
    show_envvar=True,
    help="[default: INFO]",
)
@click.option(
    "--watch/--no-watch",
    default=None,
    envvar="FAAS_WATCH",
    show_envvar=True,
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
        settings.http_host = host
    if port is not None:
        if not 0 <= port <= 65535:
            raise click.BadParameter(f"{port} is not a port (0-65535)", param_hint="--port")
        settings.http_port = port
    if log_level is not None:
        settings.log_level = log_level.upper()
    if watch is not None:
        settings.watch = watch

    sys.exit(serve(settings, kafka=not no_kafka))


def _post(url: str, payload: bytes, key: str | None) -> Any:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {key}"} if key else {})
    request = urllib.request.Request(url, data=payload, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        fail(exc.read().decode(errors="replace") or f"HTTP {exc.code}")
    except (urllib.error.URLError, TimeoutError) as exc:
        fail(f"cannot reach {url}: {getattr(exc, 'reason', exc)}")


data_option = click.option(
    "--data",
    callback=scripting.json_data,
    show_envvar=True,
    help="JSON payload, @FILE holding one, or @- to read standard input.  [default: null]",
)


@main.command()
@click.argument("name_or_uuid")
@data_option
@click.option(
    "--url",
    show_envvar=True,
    help="A running node, e.g. http://127.0.0.1:8080; without it, run once locally.",
)
@click.option(
    "--api-key", show_envvar=True, help="Bearer key for --url.  [default: the first of FAAS_API_KEYS]"
)
@pass_settings
def invoke(settings: Settings, name_or_uuid: str, data: bytes, url: str | None, api_key: str | None) -> None:
    """Invoke a function once and print its result JSON (locally: any state, as a test run)."""
    is_uuid = re.fullmatch(r"[0-9a-fA-F-]{36}", name_or_uuid) is not None
    spec = None
    if not (url and is_uuid):
        spec = Registry(load(settings, check_handlers=False)).find(name_or_uuid)
        if spec is None:
            fail(f"no function named {name_or_uuid!r} in {settings.manifest}")
    if url:
        target = spec.uuid if spec is not None else name_or_uuid.lower()
        key = api_key or next(iter(settings.keys), None)
        body = _post(f"{url.rstrip('/')}/functions/{target}/invoke", data, key)
        click.echo(json.dumps(body.get("result") if isinstance(body, dict) else body))
        return
    from framework.runtime.pools import invoke_once

    assert spec is not None
    try:
        result = asyncio.run(invoke_once(spec, data, settings))
    except FaasError as exc:
        fail(f"{exc.type}: {exc.message}")
    click.echo(result.result.decode())


@main.command()
@click.argument("event_type")
@data_option
@click.option(
    "--timeout", show_envvar=True, type=click.FloatRange(min=0, min_open=True), default=30.0, help="Seconds."
)
@click.option(
    "--bootstrap",
    envvar="FAAS_KAFKA_BOOTSTRAP_SERVERS",
    show_envvar=True,
    help="Kafka host:port list.  [default: the local embedded broker]",
)
@click.option("--key", show_envvar=True, help="The event's Kafka key (UTF-8).  [default: none]")
@click.option("--id", "event_id", show_envvar=True, help="The event's ce_id.  [default: a new UUID]")
@click.option("--source", show_envvar=True, help="The event's ce_source.  [default: faas-client]")
@pass_settings
def emit(
    settings: Settings,
    event_type: str,
    data: bytes,
    timeout: float,
    bootstrap: str | None,
    key: str | None,
    event_id: str | None,
    source: str | None,
) -> None:
    """Produce a CloudEvent of EVENT_TYPE, wait for its combined reply and print it (exit 1 unless ok)."""
    from framework.kafka.client import EventClient

    servers = bootstrap or settings.kafka_bootstrap_servers or f"127.0.0.1:{settings.embedded_broker_port}"
    client = EventClient(servers, settings=settings, source=source or "faas-client")
    kafka_key = key.encode() if key is not None else None
    try:
        reply = asyncio.run(
            client.emit(event_type, json.loads(data), key=kafka_key, timeout=timeout, id=event_id or None)
        )
    except TimeoutError:
        fail(f"no reply to the {event_type!r} event within {timeout:g} s (is a node running on {servers}?)")
    except ConnectionError as exc:
        fail(f"cannot reach the Kafka broker at {servers}: {exc}")
    click.echo(json.dumps(reply))
    if not reply.get("ok"):
        sys.exit(1)


from framework.cli import deployments as _deployments  # noqa: E402  (the verbs use the helpers above)

_deployments.register(main)

from framework.cli.logs import logs as _logs  # noqa: E402 - verb groups register after the group exists
from framework.cli.replay import replay_command  # noqa: E402  (verb groups register themselves here)

main.add_command(_logs)
main.add_command(replay_command)
