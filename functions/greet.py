"""greet: answers `conversation.created` with a greeting built from the GREETING environment variable."""

from __future__ import annotations

from typing import Any

from framework import Context


async def handle(payload: Any, ctx: Context) -> dict[str, str]:
    name = payload.get("name", "stranger") if isinstance(payload, dict) else "stranger"
    ctx.log.info("greeting %s", name)
    return {"greeting": f"{ctx.env.get('GREETING', 'Hello')}, {name}"}


async def warmup(ctx: Context) -> None:
    """Called by the keep-warm schedule instead of `handle`: nothing to do but keep the instance alive."""
    ctx.log.debug("warm (cold start: %s)", ctx.cold_start)
