"""nightly_report: run by its schedule with the payload written in functions.yaml."""

from __future__ import annotations

from typing import Any

from framework import Context


async def handle(payload: Any, ctx: Context) -> dict[str, Any]:
    kind = payload.get("kind", "adhoc") if isinstance(payload, dict) else "adhoc"
    recipients = payload.get("recipients", []) if isinstance(payload, dict) else []
    ctx.log.info("%s report for %d recipients (%.1f s left)", kind, len(recipients), ctx.remaining())
    return {"report": kind, "sent_to": recipients, "trigger": ctx.trigger}
