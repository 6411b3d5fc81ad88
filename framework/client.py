"""`EventClient`, kept importable from its first home; it lives in `framework.kafka.client`."""

from __future__ import annotations

from framework.kafka.client import EventClient

__all__ = ["EventClient"]
