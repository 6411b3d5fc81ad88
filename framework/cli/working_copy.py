"""Verbs on the working copy: `faas validate`, `faas ls` and `faas new`."""

from __future__ import annotations

import contextlib
import re
import sys
import uuid
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource

from framework.cli import scripting
from framework.cli.common import (
    check_event_type,
    checked,
    code_zips,
    fail,
    load,
    option,
    pass_settings,
    shown,
)
from framework.control import manifest_edit
from framework.control.manifest_edit import add_function
from framework.control.registry import Registry
from framework.control.spec import NAME_PATTERN
from framework.errors import ManifestError
from framework.settings import Settings

SCAFFOLD = '''\
"""{name}: describe what this function does."""

from __future__ import annotations

from typing import Any

from framework import Context


async def handle(payload: Any, ctx: Context) -> Any:
    ctx.log.info("%s invoked (trigger %s)", ctx.function, ctx.trigger)
    return {{"function": ctx.function, "payload": payload}}
'''


GITIGNORE = """\
# Secret values (FAAS_SECRETS_DIR's default) and the node's unpacked revisions (FAAS_CACHE_DIR's).
secrets/
.faas/
"""
"""What `faas new` writes as a new project's `.gitignore`."""


@click.command()
@option("--json", "as_json", is_flag=True, help="Print the result as JSON on stdout.")
@pass_settings
def validate(settings: Settings, as_json: bool) -> None:
    """Check the manifest, import every handler and read every listed secret."""
    if as_json:
        try:
            manifest = checked(settings, check_secrets=True, code=code_zips(settings))
        except ManifestError as exc:
            click.echo(scripting.validate_report(None, exc.errors))
            sys.exit(1)
        click.echo(scripting.validate_report(manifest, []))
        return
    manifest = load(settings, check_secrets=True, code=code_zips(settings))
    click.echo(f"ok: {len(manifest.functions)} functions")


@click.command(name="ls")
@option("--json", "as_json", is_flag=True, help="Print the functions as JSON on stdout.")
@pass_settings
def list_functions(settings: Settings, as_json: bool) -> None:
    """List the functions with their schedules' next fire times."""
    from framework.cli.deployments import live_facts

    manifest = load(settings, check_handlers=False)
    facts = live_facts(settings, manifest)  # the newest revision of each, from the deployment log
    if as_json:
        click.echo(scripting.listing(manifest, facts))
        return
    rows = [("NAME", "UUID", "STATE", "EVENTS", "SCHEDULES")]
    for f in manifest.functions:
        crons: list[tuple[str, str, str | None, str]] = [
            (s.cron, s.timezone, s.timezone, "") for s in f.schedules
        ]
        crons += [(f.keep_warm, "UTC", None, "keep_warm ")] if f.keep_warm else []
        live = None if facts is None else facts.get(f.uuid)  # `productive r7`, `undeployed r8`: as served
        state, served = scripting.served_state(f, facts)
        # A schedule edited in and not deployed yet does not fire.
        live_has = scripting.in_live_revision(f, facts)
        when = [
            f"{k}{c} [{tz}] next {scripting.fires(served, c, tz) or '-'}"
            if live_has(c, zone)
            else f"{k}{c} [{tz}] not deployed"
            for c, tz, zone, k in crons
        ]
        if live is None:
            if f.productive and not served:  # productive here, never deployed: no node serves it
                state = "draft (productive here, not deployed)"
        elif not live.live:  # modified too when this copy is productive: deploying it would serve it again
            state = f"undeployed r{live.newest}" + (" (modified)" if live.modified else "")
        else:
            state = f"{'modified' if live.modified else 'productive'} r{live.newest}"
        pending = scripting.undeployed_events(f, facts)
        listed = [f"{e} (not deployed)" if e in pending else e for e in f.events]
        events = shown(",".join(listed), cell=True)  # an event type may hold control characters
        rows.append((f.name, f.uuid, state, events or "-", shown("; ".join(when), cell=True) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    for row in rows:
        click.echo("  ".join([c.ljust(w) for c, w in zip(row, widths, strict=False)] + [row[4]]))


def _enclosing_manifest(settings: Settings) -> Path | None:
    """The `functions.yaml` of a folder above this one, when the manifest is the default one (not given by
    --manifest, FAAS_MANIFEST or `.env`) and there is none here: `faas new` would start a second project
    inside that one."""
    source = click.get_current_context().find_root().get_parameter_source("manifest")
    if source is not ParameterSource.DEFAULT or settings.manifest != Path("functions.yaml"):
        return None
    if settings.manifest.exists():
        return None
    for parent in Path.cwd().resolve().parents:
        found = parent / "functions.yaml"
        if found.is_file():
            return found
    return None


@click.command()
@click.argument("name")
@option(
    "--event",
    "events",
    multiple=True,
    callback=lambda ctx, param, values: tuple(check_event_type(v) for v in values),
    help="Event type it listens to (repeatable).",
)
@pass_settings
def new(settings: Settings, name: str, events: tuple[str, ...]) -> None:
    """Scaffold functions/NAME.py and a draft manifest entry with a fresh UUID."""
    if not re.match(NAME_PATTERN, name):
        raise click.BadParameter(
            f"{name!r}: 1-63 lower-case letters, digits, '_' and '-', starting with a letter",
            param_hint="NAME",
        )
    path = settings.manifest
    folder = path.resolve().parent
    if not folder.is_dir():  # a mistyped --manifest would silently start a new project there
        fail(f"cannot create {path}: its folder {folder} does not exist")
    enclosing = _enclosing_manifest(settings)
    if enclosing is not None:  # run in `functions/` by mistake: a project in a project, zipped into its code
        fail(
            f"{folder} is inside the project of {enclosing}: run `faas new` in {enclosing.parent}, or give "
            "--manifest (or FAAS_MANIFEST) to start a project here"
        )
    # A file without `functions:` yet (empty, comments, `defaults:`) is one `new` starts, not an error.
    listed = manifest_edit.lists_functions(path)
    if listed and Registry(load(settings, check_handlers=False)).by_name(name) is not None:
        fail(f"a function named {name!r} already exists in {path}")
    module = name.replace("-", "_")
    package = folder / "functions"
    source = package / f"{module}.py"
    if source.exists():
        fail(f"{source} already exists")
    entry: dict[str, Any] = {"name": name, "uuid": str(uuid.uuid4()), "handler": f"functions.{module}:handle"}
    entry["state"] = "draft"
    if events:
        entry["events"] = list(events)
    made: list[Path] = []  # what to take back when the manifest is not written after all
    starting = not path.exists()  # a new project: it gets a `.gitignore` too, unless it has one

    def write_module() -> None:
        try:
            if not package.is_dir():
                package.mkdir()
                made.append(package)
            if not (package / "__init__.py").exists():
                made.append(package / "__init__.py")
                (package / "__init__.py").touch()
            made.append(source)
            source.write_text(SCAFFOLD.format(name=name))
        except FileExistsError:  # `functions` is a file
            raise RuntimeError(f"{package} is not a folder: the function's module goes there") from None
        except OSError as exc:
            raise RuntimeError(f"cannot write {source}: {exc.strerror}") from None

    try:
        # The module is written only once the manifest is known to take the entry (a flow-style list
        # does not): a refused `new` leaves no file behind.
        add_function(path, entry, before_write=write_module)
    except (ManifestError, RuntimeError, OSError) as exc:
        for made_path in reversed(made):
            with contextlib.suppress(OSError):
                if made_path.is_dir():
                    made_path.rmdir()
                else:
                    made_path.unlink()
        fail(str(exc))
    click.echo(f"created {source} and a draft entry {name} ({entry['uuid']}) in {path}")
    ignore = folder / ".gitignore"
    if starting and not ignore.exists():
        with contextlib.suppress(OSError):  # a convenience: the function is made either way
            ignore.write_text(GITIGNORE)
            click.echo(f"created {ignore} (secrets/ and the code cache .faas/ stay out of git)")
