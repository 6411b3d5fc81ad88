"""Secrets (DESIGN.md section 14): values are files in `FAAS_SECRETS_DIR`, one file per secret.

That is the layout Docker (`/run/secrets/<name>`) and Kubernetes (a mounted Secret) give, so the same
project runs with a `secrets/` folder in development and a mount in production. A value is the file's text
with its trailing newline removed (`echo value > secrets/name` works).

Refused, each with an error naming the secret and the folder (never the value): a missing file, a folder
where a file is expected, anything else that is not a regular file (a FIFO, a socket, a device: opening a
FIFO for reading would block the node's loop until a writer came, so the file is opened non-blocking and
its type checked before anything is read), a file over `MAX_BYTES` (64 KiB), text that is not UTF-8, and
a value shorter than `MIN_CHARS` (4), not counting whitespace around it: instances replace every value by
`***` in what they log, and a value of one to three characters (or of blanks: an indent) would turn
ordinary words of every log line into stars.

Files are read when needed (a pool starts, the folder changed, a readiness check), never cached here:
the files are small, and reading them again is what makes a rotated value visible.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from framework.control.spec import FunctionSpec
    from framework.settings import Settings

MAX_BYTES = 64 * 1024
"""Largest secret file, in bytes."""
MIN_CHARS = 4
"""Shortest secret value, in characters (after the trailing newline is removed)."""
NAME = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
"""A secret's name, which is also its file name."""


class SecretError(Exception):
    """A secret that cannot be used; the message names it and where it was looked for, never its value."""


def folder(manifest: Path, secrets_dir: Path) -> Path:
    """`FAAS_SECRETS_DIR` as an absolute path: relative ones start at the manifest's folder, the folder of the
    file `manifest` resolves to now (a symlinked manifest re-pointed: the new target's). Callers that keep the
    result look it up again to follow a re-point (`Runtime`, `SecretsWatcher` given a function)."""
    return (manifest.resolve().parent / secrets_dir).resolve()


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a secret file, or None when it can."""
    if not NAME.match(name):
        return f"secret name {name!r} must match [A-Za-z0-9_.-]{{1,128}}"
    if name in (".", ".."):
        return f"secret name {name!r} is not a file name"
    return None


class SecretStore:
    """Reads secret values from one folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def folder_problem(self) -> str | None:
        """Why the folder itself is unusable (missing, not a folder, not readable), or None."""
        where = f"the secrets folder {self.path} (FAAS_SECRETS_DIR)"
        try:
            if not self.path.is_dir():
                return f"{where} does not exist" if not self.path.exists() else f"{where} is not a folder"
            next(iter(self.path.iterdir()), None)
        except OSError as exc:
            return f"{where} is not readable: {exc.strerror or exc}"
        return None

    def read(self, name: str) -> str:
        """The value of secret `name`; raises SecretError saying why it cannot be used."""
        problem = name_problem(name)
        if problem is not None:
            raise SecretError(problem)
        problem = self.folder_problem()
        if problem is not None:
            raise SecretError(f"secret {name!r}: {problem}")
        path = self.path / name
        where = f"secret {name!r} ({path})"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once instead of blocking
        except FileNotFoundError:  # also a link to nowhere
            raise SecretError(f"secret {name!r} is missing: no file {name} in {self.path}") from None
        except OSError as exc:
            raise SecretError(f"{where} is not readable: {exc.strerror or exc}") from None
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise SecretError(f"{where} is a folder, not a file")
            if not stat.S_ISREG(mode):
                raise SecretError(f"{where} is not a regular file (a FIFO, socket or device)")
            with os.fdopen(fd, "rb", closefd=False) as f:
                raw = f.read(MAX_BYTES + 1)
        except OSError as exc:
            raise SecretError(f"{where} is not readable: {exc.strerror or exc}") from None
        finally:
            os.close(fd)
        if len(raw) > MAX_BYTES:
            raise SecretError(f"{where} is over {MAX_BYTES // 1024} KiB")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise SecretError(f"{where} is not UTF-8 text") from None
        # One trailing newline (`echo value > name`, or CRLF from an editor) goes; anything else is the value.
        value = value[:-2] if value.endswith("\r\n") else value.removesuffix("\n")
        if len(value) < MIN_CHARS:
            raise SecretError(
                f"{where} holds {len(value)} character(s): values under {MIN_CHARS} characters are "
                "refused, since redacting them would garble the logs"
            )
        if len(value.strip()) < MIN_CHARS:  # four spaces would star the indent of every traceback line
            raise SecretError(
                f"{where} holds {len(value.strip())} character(s) besides the whitespace around them: "
                f"values under {MIN_CHARS} such characters are refused, since redacting them would garble "
                "the logs"
            )
        return value

    def values(self, names: Iterable[str]) -> dict[str, str]:
        """name -> value for each of `names`; raises the SecretError of the first that cannot be used."""
        return {name: self.read(name) for name in names}

    def problems(self, names: Iterable[str]) -> dict[str, str]:
        """name -> why it cannot be used, for each of `names` that cannot."""
        found: dict[str, str] = {}
        for name in dict.fromkeys(names):
            try:
                self.read(name)
            except SecretError as exc:
                found[name] = str(exc)
        return found


def readiness_reasons(functions: Iterable[FunctionSpec], store: SecretStore) -> list[str]:
    """One `/readyz` reason per productive function and secret it lists that this node cannot read."""
    reasons = []
    for spec in functions:
        if spec.productive and spec.secrets:
            for problem in store.problems(spec.secrets).values():
                reasons.append(f"function {spec.name}: {problem}")
    return reasons


def folder_setting_problem(settings: Settings) -> str | None:
    """Why a `FAAS_SECRETS_DIR` the user set is unusable (missing, not a folder, not readable), or None.

    Only a folder set explicitly must exist: the default `secrets` may be absent while no function lists a
    secret, and a function that does is checked at its own item of the manifest.
    """
    if "secrets_dir" not in settings.model_fields_set:
        return None
    return SecretStore(settings.secrets_path).folder_problem()
