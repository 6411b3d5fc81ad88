"""Helpers every verb module of the `faas` command shares: the settings, exits, the manifest, the broker."""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click
from dotenv import dotenv_values

from framework.control.manifest import load_manifest
from framework.control.spec import Manifest, event_type
from framework.errors import ManifestError
from framework.kafka.address import bootstrap_servers
from framework.kafka.embedded import port_open, speaks_kafka
from framework.observe.logs import escape_controls
from framework.settings import ENV_FILE, Settings

if TYPE_CHECKING:
    from framework.control.working_copy import CodeZips

pass_settings = click.make_pass_decorator(Settings)

F = TypeVar("F", bound=Callable[..., Any])
_DOTENV = "faas.dotenv"
"""`ctx.meta` key of the `.env` values, read once per command (upper-cased names)."""


class TwinOption(click.Option):
    """An option whose own environment twin (click's `FAAS_<COMMAND>_<OPTION>`) is also read from `.env`,
    below the environment, as the settings are. A twin set in the environment, even empty, decides alone
    (as for a setting: pydantic reads an empty variable as empty). A twin that is a setting's own name
    (`envvar=`) is left to the settings, which read `.env` themselves. Going through click's own reading,
    a `.env` value is split for repeatable options and parsed for flags exactly as a variable would be,
    and never shown in `--help`."""

    def resolve_envvar_value(self, ctx: click.Context) -> str | None:
        value = super().resolve_envvar_value(ctx)
        if value is not None or self.envvar or not self.allow_from_autoenv or not self.name:
            return value
        if ctx.auto_envvar_prefix is None:
            return None
        twin = f"{ctx.auto_envvar_prefix}_{self.name.upper()}"
        if twin in os.environ:
            return None
        dotenv = ctx.meta.get(_DOTENV)
        if dotenv is None:  # names compared in upper case, as the settings compare them
            dotenv = ctx.meta[_DOTENV] = {k.upper(): v for k, v in dotenv_values(ENV_FILE).items()}
        return dotenv.get(twin) or None


def option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """`click.option`, making a `TwinOption` that `--help` shows with its twin (`show_envvar`, default on):
    every option of the `faas` command is one."""
    attrs.setdefault("show_envvar", True)
    return click.option(*decls, cls=TwinOption, **attrs)


def unknown_names(root: click.Command) -> list[str]:
    """A line for each `FAAS_*` name set in the environment or `.env` that is no setting and no option's
    twin of any verb under `root`, with the name it was likely meant to be (a misspelt one is otherwise
    read by nobody, silently: `FAAS_HTTP_PROT=9000` serves on 8080)."""
    known = {f"FAAS_{name.upper()}" for name in Settings.model_fields}

    def walk(command: click.Command, prefix: str) -> None:
        for param in command.params:
            if isinstance(param, click.Option) and param.name:
                known.add(f"{prefix}_{param.name.upper()}")
                known.update([param.envvar] if isinstance(param.envvar, str) else param.envvar or [])
        for name, sub in getattr(command, "commands", {}).items():
            walk(sub, f"{prefix}_{name.upper().replace('-', '_')}")

    walk(root, "FAAS")
    given = {*os.environ, *(k for k in dotenv_values(ENV_FILE) if k)}
    unknown = sorted(n for n in {g.upper() for g in given} if n.startswith("FAAS_") and n not in known)
    said = []
    for name in unknown:
        close = difflib.get_close_matches(name, known, n=1)
        meant = f" (did you mean {close[0]}?)" if close else ""
        said.append(f"{name} is set but is no setting: ignored{meant}")
    return said


ANSWER_TIMEOUT = 2.0
"""Seconds what listens on the embedded broker's port has to answer as Kafka (a broker answers in
milliseconds; a listener that is not Kafka is either quick to say something else or silent until then)."""


DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd])\s*$")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
UUID_FORM = re.compile(r"[0-9a-fA-F-]{36}")


def looks_like_uuid(text: str) -> bool:
    """Whether `text` is shaped as a function's uuid (verbs then take it as one, not as a name)."""
    return UUID_FORM.fullmatch(text) is not None


def shown(text: str, cell: bool = False) -> str:
    """Text from outside (a handler's log line, a deployer's message, an event type) for a terminal, its
    control characters escaped (`escape_controls`); a table `cell` escapes tabs and line breaks too."""
    return escape_controls(text, keep_breaks=not cell)


def fail(*lines: str) -> NoReturn:
    """Print `lines` on stderr and exit 1."""
    for line in lines:
        click.echo(line, err=True)
    sys.exit(1)


def quiet_kafka_client() -> None:
    """aiokafka reports connection trouble through logging; a verb says it in one line of its own."""
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL + 1)


def code_zips(settings: Settings) -> CodeZips:
    """A look at the working copy's code, under FAAS_MAX_CODE_BYTES, FAAS_SECRETS_DIR left out."""
    from framework.control.working_copy import CodeZips

    return CodeZips(settings.max_code_bytes, settings.secrets_path)


def checked(
    settings: Settings,
    check_handlers: bool = True,
    check_secrets: bool = False,
    code: CodeZips | None = None,
) -> Manifest:
    """The manifest (ManifestError with its errors); `check_secrets`: listed secrets must be readable;
    `code` (`code_zips`): every function's code must be deployable (FAAS_MAX_CODE_BYTES), zipped into it,
    so candidates made from the same `code` need no second zip."""
    secrets = settings.secrets_path if check_secrets else None
    return load_manifest(
        settings.manifest, check_handlers=check_handlers, secrets_dir=secrets, check_code=code
    )


def load(
    settings: Settings,
    check_handlers: bool = True,
    check_secrets: bool = False,
    code: CodeZips | None = None,
) -> Manifest:
    """`checked`, or exit 1 with the manifest's errors."""
    try:
        return checked(settings, check_handlers, check_secrets, code)
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


# ---- option checks: a bad value is a usage error (exit 2) naming the option, never a traceback later ----


def _bootstrap(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return bootstrap_servers(value) or None  # empty: not given (the embedded broker)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


bootstrap_option = option(
    "--bootstrap",
    envvar="FAAS_KAFKA_BOOTSTRAP_SERVERS",
    callback=_bootstrap,
    help="Kafka host:port list.  [default: the local embedded broker]",
)
"""`--bootstrap`, checked by the rule FAAS_KAFKA_BOOTSTRAP_SERVERS follows (`kafka/address.py`)."""


def duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """`--since`: `30s`, `10m`, `2h`, `7d` as seconds (None when not given). Any length is a duration;
    one reaching before 1970 means "from the start" (`cutoff_ms`)."""
    if value is None:
        return None
    match = DURATION.match(value)
    if match is None:
        raise click.BadParameter(f"{value!r} is not a duration such as 30s, 10m, 2h or 7d")
    return float(match.group(1)) * UNITS[match.group(2)]


def cutoff_ms(since: float, now: float) -> int:
    """Epoch milliseconds `since` seconds before `now`, never before the epoch (Kafka refuses negative
    timestamps; a huge duration may be infinite as a float)."""
    return int(max(0.0, now - since) * 1000)


def seconds(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A timeout: finite and over 0 (click's FloatRange lets `nan` and `inf` through)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"{value:g} is not a number of seconds over 0")
    return value


def port_number(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
    """A TCP port, 0-65535 (0: any free one)."""
    if value is not None and not 0 <= value <= 65535:
        from_env = ctx.get_parameter_source(param.name or "") is click.core.ParameterSource.ENVIRONMENT
        hint = param.envvar if from_env and isinstance(param.envvar, str) else "/".join(param.opts)
        raise click.BadParameter(f"{value} is not a port (0-65535)", param_hint=hint)
    return value


def utf8(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Text sent as UTF-8. Bytes in the command line that are not UTF-8 reach Python as lone surrogates,
    which no encoder takes."""
    if value is not None:
        _require_utf8(value)
    return value


def named(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """`utf8`, and not empty: an attribute a CloudEvent must not leave empty (`--id`, `--source`), which an
    unset shell variable would otherwise turn into the default without a word."""
    if value is not None and not value:
        raise click.BadParameter("is empty: give a value, or leave the option out for the default")
    return utf8(ctx, param, value)


def all_named(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[str, ...]:
    """`named` for a repeatable option: an empty value (an unset shell variable) is a usage error, not a
    filter that quietly selects nothing."""
    for value in values:
        named(ctx, param, value)
    return values


def _require_utf8(text: str) -> None:
    try:
        text.encode()
    except UnicodeEncodeError:
        raise click.BadParameter(f"{text!r} is not valid UTF-8") from None


def check_event_type(value: str) -> str:
    """A CloudEvent type as the CLI takes one (`emit TYPE`, `new --event`): non-blank UTF-8 text."""
    try:
        event_type(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    _require_utf8(value)
    return value
