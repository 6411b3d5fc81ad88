"""Revision code on disk: each code zip of the deployment log unpacked into `FAAS_CACHE_DIR/<sha256>/`.

Instances import a revision's handler from its folder here (`FunctionSpec.code`), never from the working
copy, so deleting or editing `functions/` does not change what a node serves. A folder is written under
a temporary name and renamed into place, so a folder that exists is complete; the zip itself is kept
beside it (`<sha256>.zip`) so a node can publish the exact bytes again after the broker lost its log.
Entries are never removed while the node runs (a retired instance may still import from one).
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from framework.control.revisions import sha256


class CodeCache:
    """Content-addressed folders under `base` (the manifest folder's `.faas` by default)."""

    def __init__(self, base: Path) -> None:
        self.base = base

    def path(self, sha: str) -> Path:
        return self.base / sha

    def has(self, sha: str) -> bool:
        return self.path(sha).is_dir()

    def zip_bytes(self, sha: str) -> bytes | None:
        try:
            return (self.base / f"{sha}.zip").read_bytes()
        except OSError:
            return None

    def store(self, sha: str, data: bytes) -> Path:
        """Unpack `data` (a zip whose sha256 must be `sha`) as `base/sha`; raises ValueError when corrupt."""
        if sha256(data) != sha:
            raise ValueError(f"code record {sha[:12]}: its value's sha256 is {sha256(data)[:12]}")
        target = self.path(sha)
        if target.is_dir():
            return target
        self.base.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=self.base, prefix=".unpack-"))
        try:
            try:
                with zipfile.ZipFile(io.BytesIO(data)) as z:
                    for name in z.namelist():
                        parts = PurePosixPath(name).parts
                        if PurePosixPath(name).is_absolute() or ".." in parts:
                            raise ValueError(f"code record {sha[:12]}: unsafe path {name!r} in the zip")
                    z.extractall(tmp)
            except (zipfile.BadZipFile, EOFError) as exc:
                raise ValueError(f"code record {sha[:12]}: not a zip ({exc})") from None
            (self.base / f"{sha}.zip").write_bytes(data)
            with contextlib.suppress(OSError):  # another process raced us to the same content
                tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target
