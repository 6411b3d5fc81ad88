"""Verbs that call functions: `faas invoke` (locally or on a node) and `faas emit` (a CloudEvent on Kafka)."""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import click

from framework import json_exact
from framework.cli import scripting
from framework.cli.common import (
    bootstrap_option,
    check_event_type,
    code_zips,
    fail,
    load,
    looks_like_uuid,
    named,
    need_broker,
    option,
    pass_settings,
    quiet_kafka_client,
    seconds,
    utf8,
)
from framework.control.registry import Registry
from framework.errors import FaasError
from framework.settings import Settings

HTTP_TIMEOUT = 120.0
"""Seconds `invoke --url` waits for the node's answer by default (`--timeout`): longer than what a node
takes at most with its default settings, a queue wait (30 s), an instance's start (60 s) and the longest
time limit (30 s). The CLI cannot know the function's own limit: the node serves what was deployed."""
LIST_TIMEOUT = 10.0
"""Seconds `invoke NAME --url` waits for the node's `GET /functions` (a node lists from memory at once)."""


def node_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`--url`: an http or https URL naming a host. urllib fails on anything else with a traceback, and
    on other schemes (ftp://) only after the whole `--timeout`."""
    if value is None:
        return None
    if not value.isascii() or any(c.isspace() or not c.isprintable() for c in value):
        raise click.BadParameter(f"{value!r}: only printable ASCII without spaces (percent-encode the rest)")
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - parsing the port is the check (a number in 0-65535)
    except ValueError as exc:
        raise click.BadParameter(f"{value!r} is not a URL: {exc}") from None
    if parts.username is not None or parts.password is not None:  # not echoed: it may hold a password
        raise click.BadParameter(
            "credentials in the URL are not used: give the node's API key with --api-key"
        )
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(
            f"{value!r}: give an http or https URL with a host, e.g. http://127.0.0.1:8080"
        )
    return value


def key_problem(key: str) -> str | None:
    """Why `key` cannot go in an `Authorization: Bearer` header, or None. The node compares the header's
    bytes with the UTF-8 of its keys, so any UTF-8 text goes, except control characters (a line break
    would start another header)."""
    if not key.strip():
        return "it is empty"
    if any(not c.isprintable() and c != " " for c in key):
        return "it holds control characters or bytes that are not UTF-8"
    return None


def _api_key(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    problem = None if value is None else key_problem(value)
    if problem is not None:
        raise click.BadParameter(f"not a usable key: {problem}")
    return value


def _call(url: str, payload: bytes | None, key: str | None, timeout: float, late: str) -> Any:
    """POST `payload` (GET without one) to the node; its JSON answer, or exit 1 saying what went wrong
    (`late` when no whole answer came within `timeout` seconds, connecting included).

    The call runs on a thread of its own, waited for `timeout` seconds at most: urllib's timeout bounds
    each read alone, and a node trickling a header line every few seconds held the call for ever. A call
    given up on is left to the process's exit (a daemon thread)."""
    # http.client sends header text as Latin-1: this text is the key's UTF-8 bytes, as the node reads them.
    bearer = f"Bearer {key}".encode().decode("latin-1") if key else None
    headers = {"Content-Type": "application/json"} | ({"Authorization": bearer} if bearer else {})
    method = "GET" if payload is None else "POST"
    request = urllib.request.Request(url, data=payload, headers=headers, method=method)
    answer: list[bytes] = []
    problem: list[str] = []

    def fetch() -> None:
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                answer.append(response.read())
        except urllib.error.HTTPError as exc:
            problem.append(_error_text(exc.code, exc.read()))
        except (urllib.error.URLError, TimeoutError) as exc:
            problem.append(f"cannot reach {url}: {getattr(exc, 'reason', exc)}")
        except (http.client.HTTPException, OSError) as exc:  # closed mid-answer, not HTTP, a cut body
            problem.append(f"{url} broke off its answer: {type(exc).__name__}: {exc}")

    started = time.monotonic()
    call = threading.Thread(target=fetch, name="faas-call", daemon=True)
    call.start()
    call.join(min(timeout, threading.TIMEOUT_MAX))
    if call.is_alive() or (problem and time.monotonic() - started >= timeout):  # urllib's own timeout
        fail(late)
    if problem:
        fail(problem[0])
    body = answer[0]
    try:
        return json.loads(body)
    except ValueError:
        fail(f"{url} answered 200 with something that is not JSON: is it a faas node? ({body[:80]!r})")


def _error_text(status: int, body: bytes) -> str:
    """A node's error answer as a local call prints a failure, `Type: message` (the contract's error body);
    any other body as it came, or the status when there is none."""
    try:
        error = json.loads(body)["error"]
        return f"{error['type']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace") or f"HTTP {status}"


def _served_uuid(base: str, name: str, key: str | None) -> str:
    """The uuid of the productive function named `name` on the node at `base` (`GET /functions`)."""
    late = f"{base} did not list its functions within {LIST_TIMEOUT:g} s (GET /functions): is it a faas node?"
    listing = _call(f"{base}/functions", None, key, LIST_TIMEOUT, late)
    functions = listing.get("functions") if isinstance(listing, dict) else None
    for entry in functions if isinstance(functions, list) else []:
        if isinstance(entry, dict) and entry.get("name") == name and entry.get("state") == "productive":
            return str(entry.get("uuid"))
    fail(f"no productive function named {name!r} on {base}")


def _data(ctx: click.Context, param: click.Parameter, value: str | None) -> bytes:
    """`scripting.json_data`, with `@` alone (an unset shell variable after it) said as such: reading the
    path '' said "cannot read : Is a directory"."""
    if value == "@":
        raise click.BadParameter("@ names no file (the path after it is empty): give @FILE, or @- for stdin")
    return scripting.json_data(ctx, param, value)


data_option = option(
    "--data",
    callback=_data,
    help="JSON payload, @FILE holding one, or @- to read standard input.  [default: null]",
)


@click.command()
@click.argument("name_or_uuid")
@data_option
@option(
    "--url",
    callback=node_url,
    help="A running node, e.g. http://127.0.0.1:8080; without it, run once locally.",
)
@option(
    "--api-key",
    callback=_api_key,
    help="Bearer key for --url.  [default: the first of FAAS_API_KEYS]",
)
@option(
    "--timeout",
    type=float,
    callback=seconds,
    default=HTTP_TIMEOUT,
    help=f"Seconds --url waits for the node's whole answer (queue, start, run).  [default: {HTTP_TIMEOUT:g}]",
)
@pass_settings
def invoke(
    settings: Settings,
    name_or_uuid: str,
    data: bytes,
    url: str | None,
    api_key: str | None,
    timeout: float,
) -> None:
    """Invoke a function once and print its result JSON (locally: any state, as a test run)."""
    if url:
        base = url.rstrip("/")
        key = api_key or next(iter(settings.keys), None)
        if not api_key and key is not None and (problem := key_problem(key)) is not None:
            raise click.UsageError(f"invalid setting: FAAS_API_KEYS: the first key is not usable: {problem}")
        # A name is the node's to resolve: it serves what was deployed, whatever the working copy says.
        target = (
            name_or_uuid.lower() if looks_like_uuid(name_or_uuid) else _served_uuid(base, name_or_uuid, key)
        )
        late = (
            f"no answer from {base} within {timeout:g} s (--timeout): the invocation may still run there "
            "(`faas logs` shows its record)"
        )
        body = _call(f"{base}/functions/{target}/invoke", data, key, timeout, late)
        # As a local run prints it: the result alone, compact, as the instance wrote it.
        click.echo(json_exact.dumps(body.get("result") if isinstance(body, dict) else body).decode())
        return
    spec = Registry(load(settings, check_handlers=False)).find(name_or_uuid)
    if spec is None:
        fail(f"no function named {name_or_uuid!r} in {settings.manifest}")
    from framework.control.code_cache import CodeCache
    from framework.observe import logs
    from framework.runtime.pools import invoke_once

    # The code a revision would carry (the handler's top-level package, the secrets folder left out),
    # unpacked as a node unpacks it: a test run imports what a deploy would publish, not the whole project
    # (a `helpers.py` beside the manifest imports here only if it would on a node).
    code = code_zips(settings).code_of(spec)
    if isinstance(code, str):
        fail(f"{spec.name}: its code cannot be a revision's: {code}")
    zipped, sha = code
    with tempfile.TemporaryDirectory(prefix="faas-invoke-") as unpacked:
        spec = spec.model_copy(update={"code": CodeCache(Path(unpacked)).store(sha, zipped)})
        # What the handler logs and prints goes to stderr (at FAAS_LOG_LEVEL), as a node's log would show
        # it; the result alone goes to stdout, for scripts.
        try:
            with logs.configured(settings.log_level, settings.log_format):
                result = asyncio.run(invoke_once(spec, data, settings))
        except FaasError as exc:
            fail(f"{exc.type}: {exc.message}")
    click.echo(result.result.decode())


@click.command()
@click.argument("event_type", callback=lambda ctx, param, value: check_event_type(value))
@data_option
@option("--timeout", type=float, callback=seconds, default=30.0, help="Seconds.")
@bootstrap_option
@option("--key", callback=utf8, help="The event's Kafka key (UTF-8).  [default: none]")
@option("--id", "event_id", callback=named, help="The event's ce_id.  [default: a new UUID]")
@option("--source", callback=named, help="The event's ce_source.  [default: faas-client]")
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
    quiet_kafka_client()  # a failure is said in one line below
    try:
        client = EventClient(
            servers, settings=settings, source=source if source is not None else "faas-client"
        )
    except ValueError as exc:  # e.g. FAAS_REPLIES_TOPIC too long to name this host's reply topic after
        fail(str(exc))
    kafka_key = key.encode() if key is not None else None
    started = time.monotonic()
    try:
        payload = json_exact.loads(data)
        emitting = client.emit(event_type, payload, key=kafka_key, timeout=timeout, id=event_id)
        reply = asyncio.run(emitting)
    except TimeoutError:
        waited = time.monotonic() - started
        if waited < timeout:  # not our limit: a Ctrl-C during the client's start comes out this way too
            fail(f"gave up on the {event_type!r} event after {waited:.1f} s (interrupted, or {servers} hung)")
        fail(
            f"no reply to the {event_type!r} event within {timeout:g} s: no node on {servers} answered it "
            "yet (none running, or a listener still retrying it: its reply may come later; `faas logs` "
            "shows its attempts)"
        )
    except ConnectionError as exc:
        cause = exc.__cause__ or exc  # the client's own message names the broker already
        fail(f"cannot reach the Kafka broker at {servers}: {cause}")
    click.echo(json.dumps(reply))
    if not reply.get("ok"):
        sys.exit(1)
