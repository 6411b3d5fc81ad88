"""Reading a request body as a JSON payload: the size limit (413), then JSON validity (400)."""

from __future__ import annotations

import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive, Scope

from framework.errors import BadRequest, PayloadTooLarge

NULL = b"null"


def declared_length(scope: Scope) -> int | None:
    """The `Content-Length` header as an int, or None; read from the raw ASGI headers (no Headers object)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def read_payload(request: Request, limit: int) -> bytes:
    """`read_body` of a Starlette request."""
    return await read_body(request.scope, request.receive, limit)


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    """The body as raw JSON bytes, validated but not re-encoded; an empty body is `null`.

    `limit` is in bytes (`FAAS_MAX_PAYLOAD_BYTES`). A declared `Content-Length` over it is refused before
    anything is read; otherwise streamed bytes are counted, so a chunked body without a length cannot
    slip past it, and reading stops at the first chunk that goes over the limit.
    """
    declared = declared_length(scope)
    if declared is not None and declared > limit:
        raise PayloadTooLarge(f"body of {declared} bytes is over the limit of {limit} bytes")
    # The ASGI messages directly rather than `request.stream()`: this is the invoke route's hot path.
    body = b""
    chunks: list[bytes] | None = None
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"body is over the limit of {limit} bytes")
            if not body:
                body = chunk
            else:  # several chunks: join once at the end
                chunks = chunks or [body]
                chunks.append(chunk)
        if not message.get("more_body", False):
            break
    if chunks is not None:
        body = b"".join(chunks)
    if not body:
        return NULL
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        try:  # orjson words bad UTF-8 as "str is not valid UTF-8: surrogates not allowed"
            body.decode()
        except UnicodeDecodeError as bad:
            raise BadRequest(f"body is not UTF-8 (byte {bad.start}): JSON must be UTF-8") from None
        raise BadRequest(f"body is not valid JSON: {exc}") from None
    return body
