"""The OpenAPI 3.1 document of the HTTP source (`GET /openapi.json`), hand-written from DESIGN.md section 5.

Hand-built rather than generated: the routes are few, and the contract (status codes, error types, the
combined event reply) is richer than what docstring-based generators describe.
"""

from __future__ import annotations

from typing import Any

from framework import __version__
from framework.errors import ERRORS, INVOCATION_ERRORS
from framework.sources.http import dashboard, invocations
from framework.sources.http.openapi_schemas import ANY_JSON, SCHEMAS, ref


def _described(name: str) -> str:
    return f"{name}: {ERRORS[name].__doc__}"


INVOKE_ERRORS = {
    ERRORS[name].status: _described(name)
    for name in ("BadRequest", "Forbidden", "NotFound", "PayloadTooLarge", *INVOCATION_ERRORS)
}

EVENT_ERRORS = {
    **{ERRORS[name].status: _described(name) for name in ("BadRequest", "PayloadTooLarge")},
    **{ERRORS[name].status: f"A listener failed with {name}" for name in INVOCATION_ERRORS},
}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> dict[str, Any]:
    return _json(ref("Error"), description)


STRUCTURED_EVENT: dict[str, Any] = {
    "type": "object",
    "required": ["specversion", "type", "id"],
    "properties": {
        "specversion": {"const": "1.0"},
        "type": {"type": "string", "minLength": 1},
        "id": {"type": "string", "minLength": 1},
        "source": {"type": ["string", "null"]},
        "subject": {"type": ["string", "null"]},
        "time": {"type": ["string", "null"]},
        "datacontenttype": {"type": ["string", "null"]},
        "data": ANY_JSON,
    },
    "additionalProperties": True,
    "description": "A CloudEvent in structured mode; other attributes are extensions (strings, numbers, "
    "booleans). A null attribute counts as absent.",
}

UUID_PARAM = {
    "name": "uuid",
    "in": "path",
    "required": True,
    "description": "The function's UUID.",
    "schema": {"type": "string"},
}
TYPE_PARAM = {
    "name": "type",
    "in": "path",
    "required": True,
    "description": "CloudEvent type, e.g. `conversation.created`.",
    "schema": {"type": "string"},
}
PAYLOAD_BODY = {
    "required": False,
    "description": "The JSON payload; an empty body is `null`.",
    "content": {"application/json": {"schema": ANY_JSON}},
}


def _paths(auth: list[dict[str, list[str]]]) -> dict[str, Any]:
    secured = {"security": auth} if auth else {}
    unauthorized = {"401": _error("Unauthorized: missing or wrong bearer key")} if auth else {}
    return {
        "/functions/{uuid}/invoke": {
            "post": {
                "summary": "Invoke a productive function directly",
                "operationId": "invoke",
                **secured,
                "parameters": [UUID_PARAM],
                "requestBody": PAYLOAD_BODY,
                "responses": {
                    "200": _json(ref("InvokeResult"), "The handler's result"),
                    **unauthorized,
                    **{str(code): _error(text) for code, text in INVOKE_ERRORS.items()},
                },
            }
        },
        "/functions": {
            "get": {
                "summary": "Every function of the manifest, in any state",
                "operationId": "listFunctions",
                **secured,
                "responses": {"200": _json(ref("FunctionList"), "The functions"), **unauthorized},
            }
        },
        "/functions/{uuid}": {
            "get": {
                "summary": "The function if it is productive",
                "operationId": "getFunction",
                **secured,
                "parameters": [UUID_PARAM],
                "responses": {
                    "200": _json(ref("Function"), "The function is productive"),
                    **unauthorized,
                    "404": _error("NotFound: unknown UUID, or not productive"),
                },
            }
        },
        "/functions/{uuid}/revisions": {
            "get": {
                "summary": "The kept revisions of a function, newest first (any state)",
                "operationId": "functionRevisions",
                **secured,
                "parameters": [UUID_PARAM],
                "responses": {
                    "200": _json(ref("RevisionList"), "The kept revisions"),
                    **unauthorized,
                    "404": _error("NotFound: unknown UUID"),
                },
            }
        },
        "/events/{type}/listeners": {
            "get": {
                "summary": "Productive functions listening to an event type",
                "operationId": "listeners",
                **secured,
                "parameters": [TYPE_PARAM],
                "responses": {
                    "200": _json(ref("Listeners"), "The listeners, in manifest order"),
                    **unauthorized,
                },
            }
        },
        "/events/{type}": {
            "post": {
                "summary": "Raise an event on this node (not via Kafka)",
                "operationId": "emit",
                **secured,
                "parameters": [
                    TYPE_PARAM,
                    {
                        "name": "ce-id",
                        "in": "header",
                        "required": False,
                        "description": "Event id (default: a new UUID).",
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": PAYLOAD_BODY,
                "responses": {
                    "200": _json(ref("EventReply"), "Every listener succeeded"),
                    **unauthorized,
                    **{str(code): _json(ref("EventReply"), text) for code, text in EVENT_ERRORS.items()},
                    "403": _error(_described("Forbidden")),
                    "400": _error("BadRequest: the body is not JSON, or the type or ce-id is unusable"),
                    "413": _error(INVOKE_ERRORS[413]),
                },
            }
        },
        "/events": {
            "post": {
                "summary": "CloudEvents HTTP sink: one event, binary or structured mode",
                "description": "Structured mode (below): `Content-Type: application/cloudevents+json` and "
                "the event as the body; other attributes are extensions. Binary mode: the headers "
                "`ce-specversion` (1.0), `ce-type` and `ce-id` (required), `ce-source`, `ce-subject`, "
                "`ce-time` and `ce-<extension>`, the JSON data as the body (empty = null). Either mode "
                "may carry `traceparent` / `tracestate`. The answer is the combined reply as a "
                "binary-mode CloudEvent: headers `ce-specversion`, `ce-type: faas.reply`, `ce-id`, "
                "`ce-source: faas`, `ce-correlationid` and `traceparent`.",
                "operationId": "receiveCloudEvent",
                **secured,
                "requestBody": {
                    "required": True,
                    "content": {"application/cloudevents+json": {"schema": STRUCTURED_EVENT}},
                },
                "responses": {
                    "200": _json(ref("EventReply"), "Every listener succeeded"),
                    **unauthorized,
                    **{str(code): _json(ref("EventReply"), text) for code, text in EVENT_ERRORS.items()},
                    "403": _error(_described("Forbidden")),
                    "400": _error("BadRequest: not JSON, or an event without its type or id"),
                    "413": _error(INVOKE_ERRORS[413]),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness",
                "operationId": "healthz",
                "responses": {"200": _json({"type": "object"}, "The process serves")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness",
                "operationId": "readyz",
                "responses": {
                    "200": _json(ref("Readiness"), "Ready"),
                    "503": _json(ref("Readiness"), "Not ready, with reasons"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "operationId": "metrics",
                "responses": {
                    "200": {
                        "description": "Prometheus text format",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "responses": {"200": _json({"type": "object"}, "The OpenAPI document")},
            }
        },
    }


def openapi_document(auth: bool = False) -> dict[str, Any]:
    """The document; with `auth` (API keys configured) `/functions*` and `/events*` require a bearer key."""
    security: list[dict[str, list[str]]] = [{"bearer": []}] if auth else []
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "faas node",
            "version": __version__,
            "description": "Direct invocation, listings, HTTP events and operations of one node.",
        },
        "paths": {**_paths(security), **invocations.openapi_paths(auth), **dashboard.openapi_paths()},
        "components": {
            "schemas": {**SCHEMAS, **invocations.SCHEMAS},
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "One of FAAS_API_KEYS."}
            },
        },
    }
