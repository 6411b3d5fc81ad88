"""The `faas` command (DESIGN.md section 6).

Every option has an environment twin: the settings' own `FAAS_*` names where one exists (`--manifest` is
`FAAS_MANIFEST`, `broker --port` is `FAAS_EMBEDDED_BROKER_PORT`), else click's `FAAS_<COMMAND>_<OPTION>`
(e.g. `FAAS_INVOKE_URL`), which is also read from `.env` (`common.TwinOption`). Exit codes: 0 ok,
1 failure, 2 usage error.

One module per group of verbs: `working_copy` (validate, ls, new), `serve` (run, broker), `calls` (invoke,
emit), `deployments` (deploy, undeploy, history, rollback), `logs`, `replay`; `common` holds what they share.
"""

from __future__ import annotations

import io
from pathlib import Path

import click
from dotenv.parser import parse_stream
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from framework import __version__
from framework.cli import calls, deployments, logs, replay, serve, working_copy
from framework.cli.common import option
from framework.settings import ENV_FILE, Settings


@click.group(context_settings={"auto_envvar_prefix": "FAAS", "show_default": True})
@option(
    "--manifest",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="FAAS_MANIFEST",
    help="The manifest.  [default: functions.yaml]",
)
@click.version_option(__version__, prog_name="faas")
@click.pass_context
def main(ctx: click.Context, manifest: Path | None) -> None:
    """A self-hosted serverless function platform: functions invoked by Kafka events, HTTP and cron."""
    problem = _dotenv_problem(Path(ENV_FILE))
    if problem is not None:
        raise click.UsageError(problem)
    try:
        ctx.obj = Settings(manifest=manifest) if manifest is not None else Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"FAAS_{'_'.join(map(str, e['loc'])).upper()}: {_message(e)}" if e["loc"] else _message(e)
            for e in exc.errors()
        )
        raise click.UsageError(f"invalid setting: {problems}") from None
    except (OSError, UnicodeDecodeError) as exc:  # the settings' `.env` (not UTF-8, unreadable)
        raise click.UsageError(f"cannot read {Path(ENV_FILE).resolve()}: {exc}") from None


def _dotenv_problem(path: Path) -> str | None:
    """Why `.env` cannot be read whole, or None. python-dotenv skips a line it cannot parse (an unclosed
    quote, a word without `=`) with a warning that names no file, and the setting on it silently keeps its
    default: a usage error instead, naming the line (not its text, which may hold a secret)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        return f"cannot read {path.resolve()}: {exc}"
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            return f"{path.resolve()}:{binding.original.line}: not a NAME=value line (an unclosed quote?)"
    return None


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
