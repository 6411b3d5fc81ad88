"""The working copy (the manifest and handler files on disk) as candidate revisions, and the `modified` check.

Zips are built, and their sha256 computed, once per top-level package per look (`CodeZips`): an edit of
a package of 1,000 functions zips and hashes it once, not 1,000 times. A function whose code cannot be zipped
(unreadable, over FAAS_MAX_CODE_BYTES) has an error instead of a candidate: it cannot be deployed, and
counts as modified.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from framework.control.revisions import (
    CodeRefused,
    Revision,
    author,
    code_zip,
    now,
    sha256,
    spec_of,
)
from framework.control.snapshot import top_level
from framework.control.spec import FunctionSpec, Manifest


@dataclass(frozen=True)
class Candidate:
    """What deploying one function of the working copy would publish."""

    spec: FunctionSpec
    revision: Revision | None
    code: bytes | None
    error: str | None = None


class CodeZips:
    """The code zips of one look at the working copy: each top-level package zipped at most once, however
    many functions it holds (fifty in `functions/` cost one zip) and however many steps ask (the manifest's
    code check, then the candidates made from that manifest), so both see the same bytes. A new look (an
    edit, the next command) takes a new `CodeZips`.

    `limit` is FAAS_MAX_CODE_BYTES; `secrets` (FAAS_SECRETS_DIR) is left out of the code (`code_zip`).
    """

    def __init__(self, limit: int, secrets: Path | None = None) -> None:
        self.limit = limit
        self.secrets = secrets
        self._zips: dict[Path | None, bytes | str] = {}
        self._digests: dict[Path | None, str] = {}
        """The sha256 of each zip in `_zips`, once asked for (`code_of`)."""

    def zip_of(self, spec: FunctionSpec) -> bytes | str:
        """`spec`'s code zip, or why it cannot be a revision's (over the limit, unreadable)."""
        code = self.code_of(spec)
        return code if isinstance(code, str) else code[0]

    def code_of(self, spec: FunctionSpec) -> tuple[bytes, str] | str:
        """`spec`'s code zip and its sha256, each computed once per zip, or why it cannot be a revision's."""
        source = top_level(spec)
        if source not in self._zips:
            try:
                self._zips[source] = code_zip(spec, self.limit, self.secrets)
            except CodeRefused as exc:
                self._zips[source] = str(exc)
            except OSError as exc:
                self._zips[source] = f"cannot read its code: {exc}"
        data = self._zips[source]
        if isinstance(data, str):
            return data
        if source not in self._digests:
            self._digests[source] = sha256(data)
        return data, self._digests[source]

    def files_in(self, source: Path) -> dict[str, bytes] | None:
        """The files of the zip of top-level package `source` (path relative to the project: content), for
        the import check to import exactly that (`handler_check.import_errors`); None when it was not
        zipped in this look, or could not be."""
        data = self._zips.get(source)
        if not isinstance(data, bytes):
            return None
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return {info.filename: z.read(info) for info in z.infolist() if not info.is_dir()}

    def __call__(self, spec: FunctionSpec) -> str | None:
        """For `load_manifest(check_code=...)`: why `spec`'s code cannot be deployed, reported at its
        `handler`, so `faas validate`, `faas deploy`, watch mode and a starting node refuse it alike; None
        when it can."""
        data = self.zip_of(spec)
        return data if isinstance(data, str) else None

    def fresh(self) -> CodeZips:
        """A new look with the same limit and secrets folder."""
        return CodeZips(self.limit, self.secrets)


class Quiet:
    """For `load_manifest(check_code=...)` when the code's problems are reported by a later load (a starting
    node's): zips each function's code into `zips`, so the import check imports the zip (`files_in`), and
    reports nothing."""

    def __init__(self, zips: CodeZips) -> None:
        self.files_in = zips.files_in
        self._zips = zips

    def __call__(self, spec: FunctionSpec) -> None:
        self._zips.zip_of(spec)


def candidates(
    manifest: Manifest, zips: CodeZips, message: str | None = None, by: str | None = None
) -> dict[str, Candidate]:
    """A deploy candidate (revision number 0, to be numbered by the log) for every function, by uuid,
    made from `zips` (the look `manifest` was checked with, when it was)."""
    who, when = by or author(), now()
    out: dict[str, Candidate] = {}
    for spec in manifest.functions:
        code = zips.code_of(spec)
        if isinstance(code, str):
            out[spec.uuid] = Candidate(spec, None, None, f"function {spec.name}: {code}")
            continue
        data, digest = code
        rev = Revision(
            uuid=spec.uuid,
            function=spec.name,
            revision=0,
            action="deploy",
            spec=spec_of(spec),
            code_sha256=digest,
            deployed_at=when,
            deployed_by=who,
            message=message,
        )
        out[spec.uuid] = Candidate(spec, rev, data)
    return out


def undeploy_of(spec: FunctionSpec | None, newest: Revision | None, message: str | None = None) -> Revision:
    """An undeploy revision: the newest revision's spec and code, marked undeployed. `spec` is the
    manifest's entry (its own spec stands in when nothing was published yet), None for a function only the
    log knows (then `newest` names it)."""
    if spec is not None:
        uuid, name = spec.uuid, spec.name
        # Under the working copy's name, in its spec too: a revision's `function` is the name its spec holds.
        base = spec_of(spec, "undeployed") if newest is None else {**newest.spec, "state": "undeployed"}
        base["name"] = name
    elif newest is not None:
        uuid, name, base = newest.uuid, newest.function, {**newest.spec, "state": "undeployed"}
    else:
        raise ValueError("an undeploy needs the manifest's entry or a revision to go on")
    return Revision(
        uuid=uuid,
        function=name,
        revision=0,
        action="undeploy",
        spec=base,
        code_sha256=None if newest is None else newest.code_sha256,
        deployed_at=now(),
        deployed_by=author(),
        message=message,
    )


def live_status(candidate: Candidate | None, newest: Revision | None) -> dict[str, Any]:
    """`revision`, `modified` and `deployed_at` of a `GET /functions` entry (section 12), from the
    function's newest revision and its working copy: the live revision's number and time (null, null when
    the newest is an undeploy; null, false, null when never deployed). `faas ls --json` gives the same."""
    live = newest if newest is not None and newest.action == "deploy" else None
    return {
        "revision": live.revision if live else None,
        "modified": is_modified(candidate, newest),
        "deployed_at": live.deployed_at if live else None,
    }


def is_modified(candidate: Candidate | None, live: Revision | None) -> bool:
    """A function is modified when it is productive and its working copy differs from its live revision."""
    if candidate is None or live is None or not candidate.spec.productive:
        return False
    return candidate.revision is None or not candidate.revision.same_as(live)
