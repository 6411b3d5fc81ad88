"""A self-hosted, Python, serverless-style function platform."""

from __future__ import annotations

from framework.context import Context

__version__ = "0.1.0"
__all__ = ["Context", "__version__"]
