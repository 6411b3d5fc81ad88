"""Where a handler's code lives in the working copy: its top-level package (or module) beside the manifest.

That folder is what a revision carries as its code zip (`control.revisions`) and what the watcher watches.
Instances never import from it: they import the code of their revision, unpacked in `FAAS_CACHE_DIR`
(`control.code_cache`), so an edit that breaks a module never reaches an instance unless it is deployed,
and deployment refuses a module that does not import.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the manifest's import check (`handler_check`) uses this module: no cycle at run time
    from framework.control.spec import FunctionSpec


def is_code(relative: PurePath) -> bool:
    """Whether the file at `relative` (to its package folder) is part of the code: not hidden, not in
    `__pycache__`, not compiled. What a revision's zip holds and what the watcher reacts to, alike (the
    secrets folder aside: `revisions.code_zip`)."""
    hidden = any(p.startswith(".") or p == "__pycache__" for p in relative.parts)
    return not hidden and relative.suffix != ".pyc"


def top_level(spec: FunctionSpec) -> Path | None:
    """The handler's top-level package folder or module file under `root`, if it is there."""
    return top_level_of(spec.root, spec.handler)


def top_level_name(handler: str) -> str:
    """The top-level package or module of a `module:attr` handler (`functions` for `functions.greet:h`)."""
    return handler.partition(":")[0].split(".")[0]


def top_level_of(root: Path, handler: str) -> Path | None:
    """`top_level` of a `module:attr` handler in the project folder `root` (a folder wins over a module
    file of the same name, as in the revision)."""
    top = top_level_name(handler)
    folder = root / top
    if folder.is_dir():
        return folder
    module = root / f"{top}.py"
    return module if module.is_file() else None


CACHE_TAG = "CACHEDIR.TAG"
"""A file marking a cache folder (https://bford.info/cachedir/): the code cache writes one, and no revision
carries a folder holding it. A FAAS_CACHE_DIR inside a handler package was zipped into each revision, whose
unpacking changed the package again: watch mode published revision after revision on its own."""


def code_files(source: Path, secrets: Path | None = None) -> list[Path]:
    """The files a revision carries of the top-level package or module `source`, sorted: its code files
    (`is_code`), not entering linked folders, less any inside the `secrets` folder (FAAS_SECRETS_DIR,
    absolute) or in a cache folder (`CACHE_TAG`)."""
    if source.is_file():
        return [source]
    out = []
    for folder, dirs, files in os.walk(source):
        if CACHE_TAG in files:
            dirs.clear()
            continue
        for name in files:
            path = Path(folder, name)
            if not path.is_file() or not is_code(path.relative_to(source)):
                continue
            if secrets is not None and _within(path, secrets):
                continue
            out.append(path)
    return sorted(out)


def _within(path: Path, folder: Path) -> bool:
    """Whether `path` is in `folder`, by its own name or by what it links to (a secret mount's files are
    links: Kubernetes points them at a hidden folder beside them)."""
    return path.absolute().is_relative_to(folder) or path.resolve().is_relative_to(folder)
