"""Revisions (DESIGN.md section 12): immutable snapshots of one function, and the code they carry.

A revision is a function's manifest entry with defaults applied (`spec`: every field of `FunctionSpec`
except the node-local `root`, `code` and `revision`), the zip of its handler's top-level package addressed
by its sha256, a number (1, 2, 3, ... per function), when, by whom, an optional message and `rollback_of`.
Secret values are never part of a revision: the spec holds only secret names.

The zip is built deterministically (names sorted, fixed timestamps and modes, `__pycache__`, `*.pyc` and
dotfiles left out), so the same files give the same sha256 on every machine with the same zlib: two nodes
that bootstrap or watch the same files publish the same revision, which the publisher then recognises as
"unchanged" (equality is action + spec + code, never time or author).
"""

from __future__ import annotations

import getpass
import hashlib
import io
import json
import socket
import zipfile
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from framework.control.snapshot import code_files, top_level
from framework.control.spec import FunctionSpec

Action = Literal["deploy", "undeploy"]
ACTIONS: tuple[Action, ...] = ("deploy", "undeploy")
KEPT = 5
"""Revisions kept per function (LivePerson Functions keeps 5): publishing n tombstones n - KEPT."""
MAX_REVISION = 2**53 - 1
"""The highest revision number: the largest integer every JSON reader holds exactly (JavaScript's, the
dashboard's, among them). Readers refuse a record numbered above it, so a hand-written revision of 2**64
cannot wedge a function (the next publication would be a number no reader takes)."""
_LOCAL_FIELDS = {"root", "code", "revision"}
"""FunctionSpec fields that belong to one node, never to a revision."""
_EPOCH = (1980, 1, 1, 0, 0, 0)
"""The zip timestamp of every entry: the earliest a zip can hold, so content alone decides the bytes."""


MAX_UNPACKED_BYTES = 256 * 1024 * 1024
"""Bytes a revision's code may hold unpacked (its files' sizes, summed). The zip's own limit
(FAAS_MAX_CODE_BYTES) does not bound this: deflate packs zeros about 1,000 to 1, bzip2 and LZMA far more, so
a crafted or damaged code record of 1 MiB could otherwise fill a node's disk. Real packages are far below."""
MAX_FILES = 50_000
"""Files a revision's code may hold."""


class CodeRefused(ValueError):
    """The handler package cannot be a revision's code: zipped, over FAAS_MAX_CODE_BYTES, or over
    MAX_UNPACKED_BYTES or MAX_FILES; or it holds a file whose name a zip cannot hold."""


def unpacked_problem(files: int, size: int) -> str | None:
    """Why code of `files` files and `size` bytes (unpacked) cannot be a revision's, or None."""
    if files > MAX_FILES:
        return f"it holds {files} files, over the {MAX_FILES} a revision's code may hold"
    if size > MAX_UNPACKED_BYTES:
        limit = MAX_UNPACKED_BYTES
        return f"its files take {size} bytes, over the {limit} a revision's code may take unpacked"
    return None


@dataclass(frozen=True)
class Revision:
    """One revision record: the JSON value of `rev:<uuid>:<n>` on the deployment log."""

    uuid: str
    function: str
    revision: int
    action: Action
    spec: dict[str, Any]
    code_sha256: str | None
    deployed_at: str
    deployed_by: str
    message: str | None = None
    rollback_of: int | None = None

    @property
    def key(self) -> str:
        return revision_key(self.uuid, self.revision)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def same_as(self, other: Revision | None) -> bool:
        """Equal in what is served (action, spec, code): a publication equal to the newest is no revision."""
        return other is not None and (self.action, self.spec, self.code_sha256) == (
            other.action,
            other.spec,
            other.code_sha256,
        )

    def numbered(self, number: int) -> Revision:
        return replace(self, revision=number)

    @classmethod
    def from_json(cls, data: Any) -> Revision:
        """Parse a record value; raises ValueError naming what is wrong (foreign or corrupt records)."""
        if not isinstance(data, dict):
            raise ValueError("a revision record must be a JSON object")
        missing = {"uuid", "function", "revision", "action", "spec", "code_sha256"} - data.keys()
        if missing:
            raise ValueError(f"missing {', '.join(sorted(missing))}")
        if data["action"] not in ACTIONS:
            raise ValueError(f"unknown action {data['action']!r}")
        number = data["revision"]
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise ValueError(f"revision must be a positive integer, not {number!r}")
        if number > MAX_REVISION:
            raise ValueError(f"revision {number} is over {MAX_REVISION}, the highest a revision may have")
        if not isinstance(data["spec"], dict):
            raise ValueError("spec must be an object")
        sha = data["code_sha256"]
        if data["action"] == "deploy" and not (isinstance(sha, str) and len(sha) == 64):
            raise ValueError("a deploy revision needs a code_sha256")
        rollback = data.get("rollback_of")
        return cls(
            uuid=str(data["uuid"]).lower(),
            function=str(data["function"]),
            revision=number,
            action=data["action"],
            spec=data["spec"],
            code_sha256=sha if isinstance(sha, str) else None,
            deployed_at=str(data.get("deployed_at") or ""),
            deployed_by=str(data.get("deployed_by") or ""),
            message=None if data.get("message") is None else str(data["message"]),
            rollback_of=rollback if isinstance(rollback, int) else None,
        )


def revision_key(uuid: str, number: int) -> str:
    return f"rev:{uuid}:{number}"


def code_key(sha256: str) -> str:
    return f"code:{sha256}"


def spec_of(spec: FunctionSpec, state: str = "productive") -> dict[str, Any]:
    """The revision form of a manifest entry: JSON values, defaults applied, node-local fields left out."""
    data = spec.model_dump(mode="json", exclude=_LOCAL_FIELDS)
    data["state"] = state
    return data


def spec_from(data: dict[str, Any], root: Path, code: Path | None, number: int) -> FunctionSpec:
    """The FunctionSpec a node serves for a revision: its spec, imported from `code`, productive."""
    return FunctionSpec.model_validate(
        {**data, "state": "productive", "root": root, "code": code, "revision": number}
    )


def code_zip(spec: FunctionSpec, limit: int, secrets: Path | None = None) -> bytes:
    """The zip of `spec`'s handler top-level package (empty when it is not beside the manifest).

    A `secrets` folder (FAAS_SECRETS_DIR, absolute) inside the package is left out: secret values are
    never part of a revision (DESIGN.md section 12), and every node reads them from its own folder.
    Raises CodeRefused when a file's name is not UTF-8, when the zip is over `limit` bytes, or its files
    over what a node unpacks (`unpacked_problem`).
    """
    source = top_level(spec)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        if source is not None:
            files = code_files(source, secrets)
            size = 0
            for count, path in enumerate(files, 1):
                content = path.read_bytes()
                size += len(content)
                problem = unpacked_problem(count, size)
                if problem is not None:
                    raise CodeRefused(f"its code ({source}): {problem}")
                name = path.relative_to(source.parent).as_posix()
                if not _utf8(name):
                    raise CodeRefused(
                        f"its code ({source}) holds a file whose name is not UTF-8: {name!r}; rename or "
                        "remove it (a revision's zip names its files in UTF-8)"
                    )
                info = zipfile.ZipInfo(name, _EPOCH)
                info.external_attr = 0o644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                z.writestr(info, content)
    data = buf.getvalue()
    if len(data) > limit:
        raise CodeRefused(
            f"its code ({source}) zips to {len(data)} bytes, over FAAS_MAX_CODE_BYTES ({limit} bytes)"
        )
    return data


def _utf8(name: str) -> bool:
    try:
        name.encode()
    except UnicodeEncodeError:  # bytes a file system name held that are not UTF-8 (surrogate escapes)
        return False
    return True


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def now() -> str:
    """RFC 3339 UTC with milliseconds, as invocation records write times."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def author() -> str:
    """`user@host` of whoever publishes."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


def encode(revision: Revision) -> bytes:
    """The record's value: JSON, strictly (ValueError for NaN or infinity, which JSON has no word for)."""
    return json.dumps(revision.to_json(), separators=(",", ":"), allow_nan=False).encode()
