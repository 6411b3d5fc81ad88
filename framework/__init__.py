"""A self-hosted, Python, serverless-style function platform."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from framework.context import Context

try:
    __version__ = version("faas-platform")  # pyproject.toml's `version` is the one source
except PackageNotFoundError:  # pragma: no cover - running from a source tree that was never installed
    __version__ = "0+unknown"
__all__ = ["Context", "__version__"]
