"""API keys that follow their file: `FAAS_API_KEYS` in the secrets folder, rotated while the node runs.

Keys given in the environment (or `.env`) never change. Keys read from the file at start follow it: the
node calls `KeyFile.check` whenever the secrets folder changed (and on its periodic re-check), and a
rotation is in force for the next request, through the `ApiKeys` holder every check of the app shares.

Auth never turns off while a node runs: a file that becomes unreadable, holds no key or is removed leaves
the keys in force, and a file that appears on a node started without keys leaves the API open until a
restart (turning auth on under running clients is a decision for a restart, not for a file event). Each
such state is logged once, as an error, and named by `problem` (on `/readyz`) while it lasts.
"""

from __future__ import annotations

import logging

from framework.settings import Settings
from framework.sources.http.auth import ApiKeys

log = logging.getLogger("faas.http")


class KeyFile:
    """Keeps `keys` as the file `FAAS_API_KEYS` in the secrets folder says, when they came from it."""

    def __init__(self, settings: Settings, keys: ApiKeys) -> None:
        self.settings = settings
        self.keys = keys
        self.problem: str | None = None
        """Why the file is not in force, while that holds; None when all is well."""

    def check(self) -> None:
        """Put the file's keys in force if they changed; note (and log once) why not when they cannot be."""
        problem: str | None = None
        if self.keys and self.settings.keys_follow_file:
            try:
                if self.keys.replace(self.settings.keys_in_file()):
                    log.info("API keys rotated: %d in force", len(self.keys.encoded))
            except ValueError as exc:
                problem = f"{exc}: the keys in force stay"
        elif not self.keys and self._appeared():
            problem = (
                "FAAS_API_KEYS appeared in the secrets folder: the API stays open until the node restarts"
            )
        if problem is not None and problem != self.problem:
            log.error("%s", problem)
        self.problem = problem

    def _appeared(self) -> bool:
        try:
            return (self.settings.secrets_path / "FAAS_API_KEYS").exists()
        except OSError:  # a folder that cannot be searched: nothing to say of the file
            return False
