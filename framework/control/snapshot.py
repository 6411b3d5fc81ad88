"""Snapshots of the last good handler code, so an edit that breaks a module never reaches an instance.

Instances import their handler when they start: a scale-out, an idle instance coming back or a crash
replacement all read the code from disk. When an edit leaves a module that no longer imports, the node
rejects the edit, and new instances must still get the code that was validated. So, after each manifest
that passed validation, the node copies each handler's top-level package (or module) into a folder named
by the hash of its content, and instances import from there first (the project folder stays on `sys.path`
behind it, and stays their working directory). Unchanged code keeps its folder, so a reload does not
restart functions whose code did not change.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from framework.control.manifest import FunctionSpec, Manifest

IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".*")


def top_level(spec: FunctionSpec) -> Path | None:
    """The handler's top-level package folder or module file under `root`, if it is there."""
    top = spec.handler.partition(":")[0].split(".")[0]
    folder = spec.root / top
    if folder.is_dir():
        return folder
    module = spec.root / f"{top}.py"
    return module if module.is_file() else None


def _digest(source: Path) -> str:
    h = hashlib.sha256()
    files = [source] if source.is_file() else sorted(p for p in source.rglob("*.py") if p.is_file())
    for path in files:
        h.update(str(path.relative_to(source.parent)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


class CodeSnapshots:
    """Content-addressed copies under `base` (default: a folder of this process in the temp dir)."""

    def __init__(self, base: Path | None = None) -> None:
        self.base = base or Path(tempfile.gettempdir()) / f"faas-code-{os.getpid()}"
        self._sweep_orphans()

    def take(self, manifest: Manifest) -> Manifest:
        """`manifest` with each function's `code` pointing at a snapshot of its handler's package."""
        specs = []
        for spec in manifest.functions:
            source = top_level(spec)
            if source is None:
                specs.append(spec)
                continue
            target = self.base / _digest(source)
            if not (target / source.name).exists():
                tmp = Path(tempfile.mkdtemp(dir=self._ensure_base()))
                if source.is_dir():
                    shutil.copytree(source, tmp / source.name, ignore=IGNORED)
                else:
                    shutil.copy2(source, tmp / source.name)
                with contextlib.suppress(OSError):  # another reload raced us to the same content
                    tmp.rename(target)
                shutil.rmtree(tmp, ignore_errors=True)
            specs.append(spec.model_copy(update={"code": target}))
        return manifest.model_copy(update={"functions": tuple(specs)})

    def remove(self) -> None:
        shutil.rmtree(self.base, ignore_errors=True)

    def _ensure_base(self) -> Path:
        self.base.mkdir(parents=True, exist_ok=True)
        return self.base

    def _sweep_orphans(self) -> None:
        """Remove the snapshots of nodes that died without cleaning up (SIGKILL)."""
        for folder in self.base.parent.glob("faas-code-*"):
            pid = folder.name.removeprefix("faas-code-")
            if pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
