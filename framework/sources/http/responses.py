"""JSON responses of the HTTP source: orjson-encoded bodies and the contract's error shape.

Error bodies are `{"error": {"type", "message"}}` (DESIGN.md section 5), with the status of the error's class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from starlette.responses import Response

from framework.errors import FaasError


class JSONResponse(Response):
    """A JSON response encoded with orjson; `bytes` content is taken as already-encoded JSON."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        return orjson.dumps(content)


def error_body(error_type: str, message: str) -> bytes:
    return orjson.dumps({"error": {"type": error_type, "message": message}})


def error_response(exc: FaasError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(exc.type, exc.message), exc.status, headers=headers)


INTERNAL_ERROR = "InternalError"
"""Type of a 500 answer for a fault of the node itself (a bug), never of a function; not a contract type."""
