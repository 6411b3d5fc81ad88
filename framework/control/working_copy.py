"""The working copy (the manifest and handler files on disk) as candidate revisions, and the `modified` check.

Zips are built once per top-level package per look (fifty functions in `functions/` cost one zip). A
function whose code cannot be zipped (unreadable, over FAAS_MAX_CODE_BYTES) has an error instead of a
candidate: it cannot be deployed, and counts as modified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from framework.control.manifest import FunctionSpec, Manifest
from framework.control.revisions import (
    CodeTooLarge,
    Revision,
    author,
    code_zip,
    now,
    sha256,
    spec_of,
)
from framework.control.snapshot import top_level


@dataclass(frozen=True)
class Candidate:
    """What deploying one function of the working copy would publish."""

    spec: FunctionSpec
    revision: Revision | None
    code: bytes | None
    error: str | None = None


def candidates(
    manifest: Manifest,
    limit: int,
    message: str | None = None,
    by: str | None = None,
    secrets: Path | None = None,
) -> dict[str, Candidate]:
    """A deploy candidate (revision number 0, to be numbered by the log) for every function, by uuid;
    `secrets` (FAAS_SECRETS_DIR) is left out of the code (`code_zip`)."""
    zips: dict[Path | None, bytes | str] = {}
    who, when = by or author(), now()
    out: dict[str, Candidate] = {}
    for spec in manifest.functions:
        data = _zipped(zips, spec, limit, secrets)
        if isinstance(data, str):
            out[spec.uuid] = Candidate(spec, None, None, f"function {spec.name}: {data}")
            continue
        rev = Revision(
            uuid=spec.uuid,
            function=spec.name,
            revision=0,
            action="deploy",
            spec=spec_of(spec),
            code_sha256=sha256(data),
            deployed_at=when,
            deployed_by=who,
            message=message,
        )
        out[spec.uuid] = Candidate(spec, rev, data)
    return out


def _zipped(
    zips: dict[Path | None, bytes | str], spec: FunctionSpec, limit: int, secrets: Path | None
) -> bytes | str:
    """`spec`'s code zip, or why it cannot be a revision's; each top-level package zipped once per `zips`."""
    source = top_level(spec)
    if source not in zips:
        try:
            zips[source] = code_zip(spec, limit, secrets)
        except CodeTooLarge as exc:
            zips[source] = str(exc)
        except OSError as exc:
            zips[source] = f"cannot read its code: {exc}"
    return zips[source]


def code_check(limit: int, secrets: Path | None = None) -> Callable[[FunctionSpec], str | None]:
    """For `load_manifest(check_code=...)`: why a function's code cannot be deployed (over
    FAAS_MAX_CODE_BYTES, unreadable), reported at its `handler`, so `faas validate`, `faas deploy` and
    watch mode refuse it alike; None when it can. Each top-level package is zipped once per check."""
    zips: dict[Path | None, bytes | str] = {}

    def check(spec: FunctionSpec) -> str | None:
        data = _zipped(zips, spec, limit, secrets)
        return data if isinstance(data, str) else None

    return check


def undeploy_of(spec: FunctionSpec, newest: Revision | None, message: str | None = None) -> Revision:
    """An undeploy revision of `spec`: the newest revision's spec and code, marked undeployed."""
    base = spec_of(spec, "undeployed") if newest is None else {**newest.spec, "state": "undeployed"}
    return Revision(
        uuid=spec.uuid,
        function=spec.name,
        revision=0,
        action="undeploy",
        spec=base,
        code_sha256=None if newest is None else newest.code_sha256,
        deployed_at=now(),
        deployed_by=author(),
        message=message,
    )


def is_modified(candidate: Candidate | None, live: Revision | None) -> bool:
    """A function is modified when it is productive and its working copy differs from its live revision."""
    if candidate is None or live is None or not candidate.spec.productive:
        return False
    return candidate.revision is None or not candidate.revision.same_as(live)
