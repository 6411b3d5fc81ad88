"""The working copy (the manifest and handler files on disk) as candidate revisions, and the `modified` check.

Zips are built once per top-level package per look (fifty functions in `functions/` cost one zip). A
function whose code cannot be zipped (unreadable, over FAAS_MAX_CODE_BYTES) has an error instead of a
candidate: it cannot be deployed, and counts as modified.
"""

from __future__ import annotations

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
        source = top_level(spec)
        if source not in zips:
            try:
                zips[source] = code_zip(spec, limit, secrets)
            except CodeTooLarge as exc:
                zips[source] = str(exc)
            except OSError as exc:
                zips[source] = f"function {spec.name}: cannot read its code: {exc}"
        data = zips[source]
        if isinstance(data, str):
            out[spec.uuid] = Candidate(spec, None, None, data)
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
