"""Helpers every verb module of the `faas` command shares: the settings, exits, the manifest."""

from __future__ import annotations

import sys
from typing import NoReturn

import click

from framework.control.manifest import Manifest, load_manifest
from framework.errors import ManifestError
from framework.settings import Settings

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
