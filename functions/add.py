"""add: a direct-only function; `{"a": 1, "b": 2}` gives `{"sum": 3}`."""

from __future__ import annotations

from typing import Any

from framework import Context


def handle(payload: Any, ctx: Context) -> dict[str, float]:
    if not isinstance(payload, dict):
        raise ValueError("expected a JSON object with numbers a and b")
    total = float(payload.get("a", 0)) + float(payload.get("b", 0))
    ctx.log.info("adding for %s", ctx.trigger)
    return {"sum": total}
