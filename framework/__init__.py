"""A self-hosted, Python, serverless-style function platform."""

from __future__ import annotations

from typing import Any

from framework.context import Context

__all__ = ["Context", "__version__"]


def __getattr__(name: str) -> Any:
    """`__version__`, read from the installed metadata when first asked for: reading it costs ~50 ms of
    imports (importlib.metadata, email parsing), which every `faas` command would otherwise pay before its
    entry point can catch a Ctrl-C (`framework/__main__.py`)."""
    if name != "__version__":
        raise AttributeError(f"module 'framework' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("faas-platform")  # pyproject.toml's `version` is the one source
    except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
        found = "0+unknown"
    globals()["__version__"] = found
    return found
