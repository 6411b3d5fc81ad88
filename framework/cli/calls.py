"""Verbs that call functions: `faas invoke` (locally or on a node) and `faas emit` (a CloudEvent on Kafka)."""

from __future__ import annotations

import asyncio
import json
import re
import sys
import urllib.error
import urllib.request
from typing import Any

import click

from framework.cli import scripting
from framework.cli.common import fail, load, need_broker, pass_settings
from framework.control.registry import Registry
from framework.errors import FaasError
from framework.settings import Settings

HTTP_TIMEOUT = 120.0
"""Seconds `invoke --url` waits for the node: longer than a queue wait plus the 30 s time limit."""


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


@click.command()
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


@click.command()
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

    servers = need_broker(settings, bootstrap)
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
