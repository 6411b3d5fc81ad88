"""Where a handler's code lives in the working copy: its top-level package (or module) beside the manifest.

That folder is what a revision carries as its code zip (`control.revisions`) and what the watcher watches.
Instances never import from it: they import the code of their revision, unpacked in `FAAS_CACHE_DIR`
(`control.code_cache`), so an edit that breaks a module never reaches an instance unless it is deployed,
and deployment refuses a module that does not import.
"""

from __future__ import annotations

from pathlib import Path, PurePath

from framework.control.manifest import FunctionSpec


def is_code(relative: PurePath) -> bool:
    """Whether the file at `relative` (to its package folder) is part of the code: not hidden, not in
    `__pycache__`, not compiled. What a revision's zip holds and what the watcher reacts to, alike (the
    secrets folder aside: `revisions.code_zip`)."""
    hidden = any(p.startswith(".") or p == "__pycache__" for p in relative.parts)
    return not hidden and relative.suffix != ".pyc"


def top_level(spec: FunctionSpec) -> Path | None:
    """The handler's top-level package folder or module file under `root`, if it is there."""
    top = spec.handler.partition(":")[0].split(".")[0]
    folder = spec.root / top
    if folder.is_dir():
        return folder
    module = spec.root / f"{top}.py"
    return module if module.is_file() else None
