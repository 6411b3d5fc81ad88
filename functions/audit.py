"""audit: records every `conversation.created` event; a plain `def`, run in a thread of its instance."""

from __future__ import annotations

from typing import Any

from framework import Context


def handle(payload: Any, ctx: Context) -> dict[str, Any]:
    level = ctx.env.get("AUDIT_LEVEL", "basic")
    ctx.log.info("audit (%s): %s %s", level, ctx.event, payload if level == "full" else "")
    return {"audited": ctx.event, "invocation_id": ctx.invocation_id, "level": level}
