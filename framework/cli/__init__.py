"""The `faas` command (DESIGN.md section 6).

Every option has an environment twin: the settings' own `FAAS_*` names where one exists (`--manifest` is
`FAAS_MANIFEST`, `broker --port` is `FAAS_EMBEDDED_BROKER_PORT`), else click's `FAAS_<COMMAND>_<OPTION>`
(e.g. `FAAS_INVOKE_URL`). Twins are read from `.env` too, as the settings are: the command line wins, then
the environment, then `.env`. Exit codes: 0 ok, 1 failure, 2 usage error.

One module per group of verbs: `working_copy` (validate, ls, new), `serve` (run, broker), `calls` (invoke,
emit), `deployments` (deploy, undeploy, history, rollback), `logs`, `replay`; `common` holds what they share.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import click
from dotenv import dotenv_values
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from framework import __version__
from framework.cli import calls, deployments, logs, replay, serve, working_copy
from framework.settings import ENV_FILE, Settings


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
    # Runs before the verb's options are parsed, so `.env` reaches them as click's lowest source.
    ctx.default_map = twins_from(ctx, dotenv_values(ENV_FILE))
    try:
        ctx.obj = Settings(manifest=manifest) if manifest is not None else Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"FAAS_{'_'.join(map(str, e['loc'])).upper()}: {_message(e)}" if e["loc"] else _message(e)
            for e in exc.errors()
        )
        raise click.UsageError(f"invalid setting: {problems}") from None


def twins_from(ctx: click.Context, dotenv: Mapping[str, str | None]) -> dict[str, dict[str, str]]:
    """The verbs' option values `dotenv` gives through their environment twins, as a click `default_map`
    ({verb: {option: value}}); names are matched without regard to case, as the settings match them."""
    values = {name.upper(): value for name, value in dotenv.items() if value is not None}
    found: dict[str, dict[str, str]] = {}
    if not values:
        return found
    group = ctx.command
    assert isinstance(group, click.Group)
    for verb, command in group.commands.items():
        for param in command.params:
            if not isinstance(param, click.Option) or param.name is None:
                continue
            twins = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or ())
            twins = twins or [f"{ctx.auto_envvar_prefix}_{verb}_{param.name}".upper().replace("-", "_")]
            value = next((values[twin.upper()] for twin in twins if twin.upper() in values), None)
            if value is not None:
                found.setdefault(verb, {})[param.name] = value
    return found


def _message(error: ErrorDetails) -> str:
    # pydantic prefixes the text of a validator's ValueError with "Value error, ": noise on a CLI line.
    return error["msg"].removeprefix("Value error, ") if error["type"] == "value_error" else error["msg"]


for command in (
    working_copy.validate,
    working_copy.list_functions,
    working_copy.new,
    serve.run,
    serve.broker,
    calls.invoke,
    calls.emit,
    logs.logs,
    replay.replay_command,
):
    main.add_command(command)
deployments.register(main)
