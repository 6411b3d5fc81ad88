"""shout: a draft function, runnable only as a test run with `faas invoke shout`."""

from __future__ import annotations

from typing import Any

from framework import Context


async def handle(payload: Any, ctx: Context) -> dict[str, str]:
    text = str(payload.get("text", "")) if isinstance(payload, dict) else str(payload)
    ctx.log.info("shouting %d characters", len(text))
    return {"text": text.upper() + "!"}
