"""JSON schemas of the HTTP source's bodies, for the OpenAPI document (`framework.sources.http.openapi`)."""

from __future__ import annotations

from typing import Any

from framework.errors import ERRORS

ERROR_TYPES = [*ERRORS, "MethodNotAllowed", "InternalError"]
"""`error.type` values: the contract's, plus `MethodNotAllowed` (405) and `InternalError` (a node bug)."""


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


ANY_JSON: dict[str, Any] = {"description": "Any JSON value."}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {
                    "type": {"type": "string", "enum": ERROR_TYPES},
                    "message": {"type": "string"},
                },
            }
        },
    },
    "InvokeResult": {
        "type": "object",
        "required": ["invocation_id", "result", "duration_ms", "cold_start"],
        "properties": {
            "invocation_id": {"type": "string"},
            "result": {**ANY_JSON, "description": "What the handler returned."},
            "duration_ms": {
                "type": "number",
                "description": "Milliseconds from the instance receiving the request to its reply.",
            },
            "cold_start": {"type": "boolean", "description": "The request waited for its instance to start."},
        },
    },
    "Function": {
        "type": "object",
        "required": ["name", "uuid", "state", "events", "schedules", "instances"],
        "properties": {
            "name": {"type": "string"},
            "uuid": {"type": "string"},
            "state": {"type": "string", "enum": ["draft", "productive", "undeployed"]},
            "events": {"type": "array", "items": {"type": "string"}},
            "schedules": {
                "type": "array",
                "items": ref("Schedule"),
            },
            "instances": {"type": "integer", "minimum": 0, "description": "Live instances on this node."},
            "revision": {"type": ["integer", "null"], "description": "Live revision (null: none)."},
            "modified": {"type": "boolean", "description": "Working copy differs from it."},
            "deployed_at": {"type": ["string", "null"], "description": "When it was published."},
        },
    },
    "Revision": {
        "type": "object",
        "required": ["uuid", "function", "revision", "action", "spec", "code_sha256", "deployed_at"],
        "properties": {
            "uuid": {"type": "string"},
            "function": {"type": "string"},
            "revision": {"type": "integer", "minimum": 1},
            "action": {"type": "string", "enum": ["deploy", "undeploy"]},
            "spec": {"type": "object", "description": "The manifest entry with defaults applied."},
            "code_sha256": {"type": ["string", "null"], "description": "sha256 of the code zip."},
            "deployed_at": {"type": "string"},
            "deployed_by": {"type": "string", "description": "user@host"},
            "message": {"type": ["string", "null"]},
            "rollback_of": {"type": ["integer", "null"]},
        },
    },
    "RevisionList": {
        "type": "object",
        "required": ["revisions"],
        "properties": {"revisions": {"type": "array", "items": ref("Revision")}},
    },
    "Schedule": {
        "type": "object",
        "required": ["cron", "timezone", "payload", "next_fire", "last"],
        "properties": {
            "cron": {"type": "string"},
            "timezone": {"type": "string", "description": "IANA name."},
            "payload": {**ANY_JSON, "description": "Sent to the function on each tick."},
            "next_fire": {"type": ["string", "null"], "description": "ISO 8601; null unless productive."},
            "last": {
                "type": ["object", "null"],
                "description": "The last run on this node (`at`, `ok`, `duration_ms`, `error`), or null.",
            },
        },
    },
    "FunctionList": {
        "type": "object",
        "required": ["functions"],
        "properties": {"functions": {"type": "array", "items": ref("Function")}},
    },
    "Listeners": {
        "type": "object",
        "required": ["event", "functions"],
        "properties": {
            "event": {"type": "string"},
            "functions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["name", "uuid"],
                    "properties": {"name": {"type": "string"}, "uuid": {"type": "string"}},
                },
            },
        },
    },
    "EventReply": {
        "type": "object",
        "required": ["id", "event", "ok", "results", "error"],
        "description": "The combined reply of every productive listener (DESIGN.md section 4).",
        "properties": {
            "id": {"type": ["string", "null"]},
            "event": {"type": ["string", "null"]},
            "ok": {"type": "boolean"},
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["function", "uuid", "ok", "result", "duration_ms"],
                    "properties": {
                        "function": {"type": "string"},
                        "uuid": {"type": "string"},
                        "ok": {"type": "boolean"},
                        "result": ANY_JSON,
                        "duration_ms": {"type": "number"},
                    },
                },
            },
            "error": {
                "oneOf": [
                    {"type": "null"},
                    {
                        "type": "object",
                        "required": ["function", "uuid", "type", "message"],
                        "properties": {
                            "function": {"type": ["string", "null"]},
                            "uuid": {"type": ["string", "null"]},
                            "type": {"type": "string", "enum": ERROR_TYPES},
                            "message": {"type": "string"},
                        },
                    },
                ]
            },
        },
    },
    "Readiness": {
        "type": "object",
        "required": ["ready", "reasons"],
        "properties": {
            "ready": {"type": "boolean"},
            "reasons": {"type": "array", "items": {"type": "string"}},
            "functions": {"type": "integer"},
            "manifest_errors": {
                "type": "array",
                "items": {"type": "string"},
                "description": "`functions.yaml:LINE:COL: message` lines of a rejected edit.",
            },
        },
    },
}
