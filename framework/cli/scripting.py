"""The CLI's forms for scripts (DESIGN.md section 6): JSON reports and `--data` read from a file or stdin.

`faas ls --json` prints `{"functions": [{"name", "uuid", "state", "events", "schedules": [{"cron",
"timezone", "payload", "next_fire"}], "keep_warm": {"cron", "next_fire"} | null}]}`;
`faas validate --json` prints `{"ok": true, "functions": N}` (exit 0) or `{"ok": false, "errors":
[{"file", "line", "column", "message", "text"}]}` (exit 1), `line` and `column` 1-based (null when an error
names no place), `text` the same `functions.yaml:LINE:COL: message` line the plain form prints.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from framework.control.cron import next_fire
from framework.control.spec import FunctionSpec, Manifest
from framework.control.working_copy import live_status

if TYPE_CHECKING:
    from framework.cli.deployments import LiveFacts

_PLACE = re.compile(r"^(?P<file>.+?):(?P<line>\d+):(?P<column>\d+): (?P<message>.*)$", re.DOTALL)


def error_entry(text: str) -> dict[str, Any]:
    """One `file:LINE:COL: message` line as a JSON object (no place: file, line and column are null)."""
    m = _PLACE.match(text)
    if m is None:
        return {"file": None, "line": None, "column": None, "message": text, "text": text}
    return {
        "file": m["file"],
        "line": int(m["line"]),
        "column": int(m["column"]),
        "message": m["message"],
        "text": text,
    }


def validate_report(manifest: Manifest | None, errors: list[str]) -> str:
    if manifest is not None:
        return json.dumps({"ok": True, "functions": len(manifest.functions)})
    return json.dumps({"ok": False, "errors": [error_entry(e) for e in errors]})


def fires(served: bool, cron: str, timezone: str) -> str | None:
    """When `cron` fires next (ISO 8601 in `timezone`), or None when the function is not `served`: only
    productive functions fire (as `GET /functions` says of the schedules it lists), and with a deployment
    log, the log decides that, not the working copy (an undeployed function's copy may say productive)."""
    return next_fire(cron, timezone).isoformat(timespec="seconds") if served else None


def in_live_revision(
    f: FunctionSpec, facts: Mapping[str, LiveFacts] | None
) -> Callable[[str, str | None], bool]:
    """Whether a schedule (`cron`, `timezone`) or, with timezone None, the keep-warm cron of the working
    copy's `f` is in its live revision: only those fire, whatever the working copy says (a schedule added
    and not deployed yet does not). All are, as far as can be told, when the log was not read or has no
    live revision of `f` (`served_state` then decides whether anything fires)."""
    spec = _live_spec(f, facts)
    if spec is None:
        return lambda cron, timezone: True
    crons = {(s.get("cron"), s.get("timezone")) for s in spec.get("schedules") or [] if isinstance(s, dict)}
    warm = spec.get("keep_warm")
    return lambda cron, timezone: (cron == warm) if timezone is None else (cron, timezone) in crons


def undeployed_events(f: FunctionSpec, facts: Mapping[str, LiveFacts] | None) -> list[str]:
    """The working copy's event types of `f` that its live revision does not listen to (none when the log was
    not read or has no live revision of `f`)."""
    spec = _live_spec(f, facts)
    if spec is None:
        return []
    served = set(spec.get("events") or [])
    return [e for e in f.events if e not in served]


def _live_spec(f: FunctionSpec, facts: Mapping[str, LiveFacts] | None) -> dict[str, Any] | None:
    """The spec of `f`'s live revision, None when the log was not read or has no live revision of it."""
    live = None if facts is None else facts.get(f.uuid)
    return None if live is None else live.spec


def served_state(f: FunctionSpec, facts: Mapping[str, LiveFacts] | None) -> tuple[str, bool]:
    """The state `f` is served in, as `GET /functions` gives it, and whether it is served: as the log says
    when it has a revision of `f`; `draft` when it has none and the working copy says productive (never
    deployed: no node serves it); the working copy's word when the log was not read (`facts` None)."""
    if facts is None:
        return f.state, f.productive
    live = facts.get(f.uuid)
    if live is not None:
        return live.state, live.live
    return ("draft" if f.productive else f.state), False


def listing(manifest: Manifest, facts: Mapping[str, LiveFacts] | None) -> str:
    """`faas ls --json`: every function with its schedules' next fire times (ISO 8601, their timezone) and,
    as `GET /functions` gives them, the `state` it is served in (`served_state`) and its live revision's
    `revision`, `modified` and `deployed_at` (null, false, null for a function the log has no revision of,
    when the log could not be read, and for an undeployed one)."""
    out = []
    for f in manifest.functions:
        live = None if facts is None else facts.get(f.uuid)
        state, served = served_state(f, facts)
        live_has = in_live_revision(f, facts)
        schedules = [
            {
                "cron": s.cron,
                "timezone": s.timezone,
                "payload": s.payload,
                "next_fire": fires(served and live_has(s.cron, s.timezone), s.cron, s.timezone),
            }
            for s in f.schedules
        ]
        warm = None
        if f.keep_warm:
            warming = served and live_has(f.keep_warm, None)
            warm = {"cron": f.keep_warm, "next_fire": fires(warming, f.keep_warm, "UTC")}
        out.append(
            {
                "name": f.name,
                "uuid": f.uuid,
                "state": state,
                "events": list(f.events),
                "schedules": schedules,
                "keep_warm": warm,
                **(live_status(None, None) if live is None else live.status),
            }
        )
    return json.dumps({"functions": out}, default=str)


MAX_DATA_BYTES = 64 * 1024 * 1024
"""Most `--data @FILE` reads: far over any payload a node takes (FAAS_MAX_PAYLOAD_BYTES, 1 MiB by default),
and a bound on what `@/dev/zero` or an endless pipe costs."""


def json_data(ctx: click.Context, param: click.Parameter, value: str | None) -> bytes:
    """`--data`: a JSON text, `@file` holding one, or `@-` for standard input; the payload's bytes (`null`
    when not given)."""
    if value is None:
        return b"null"
    if value == "@-":
        if sys.stdin is None:  # closed (`<&-`), as under some service managers
            raise click.BadParameter("@-: there is no standard input (it is closed)")
        raw = sys.stdin.buffer.read(MAX_DATA_BYTES + 1)
    elif value.startswith("@"):
        try:
            with Path(value[1:]).open("rb") as f:
                raw = f.read(MAX_DATA_BYTES + 1)
        except OSError as exc:
            raise click.BadParameter(f"cannot read {value[1:]}: {exc.strerror}") from None
    else:
        try:
            raw = value.encode()  # command-line bytes that are not UTF-8 arrive as lone surrogates
        except UnicodeEncodeError:
            raise click.BadParameter("not valid JSON: the text is not valid UTF-8") from None
    if len(raw) > MAX_DATA_BYTES:  # `@/dev/zero` would fill the memory
        where = "standard input" if value == "@-" else value[1:]
        raise click.BadParameter(f"{where} holds over {MAX_DATA_BYTES >> 20} MiB: no payload is that large")
    try:  # orjson, as the node reads payloads: a lone surrogate escape ("\\udcff") is not valid JSON text
        orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        where = " (from standard input)" if value == "@-" else ""
        raise click.BadParameter(f"not valid JSON{where}: {exc}") from None
    return raw.strip()
