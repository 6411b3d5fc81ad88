"""Bearer-key check for `/functions*`, `/events*` and `/invocations*` when `FAAS_API_KEYS` is set
(DESIGN.md section 5).

A pure ASGI wrapper rather than `BaseHTTPMiddleware`: it adds one function call per request, and the app
installs it only when keys are configured. It runs before routing, so 401 comes before any 404.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

from framework.errors import Unauthorized
from framework.sources.http.body import discard
from framework.sources.http.responses import error_response

PROTECTED_PREFIXES = ("/functions", "/events", "/invocations")
"""Paths that need a key; health, readiness, metrics and the OpenAPI document stay open."""


class ApiKeys:
    """The keys in force, shared by every check of one app, so a rotation (`replace`) reaches them all at
    once. Empty for a node started without keys (the API is open); a rotation never empties it: auth stays
    on for the node's life once it started with keys."""

    def __init__(self, keys: Iterable[str]) -> None:
        self.encoded = [k.encode() for k in keys]

    def __bool__(self) -> bool:
        return bool(self.encoded)

    def replace(self, keys: Iterable[str]) -> bool:
        """Put `keys` in force (one assignment: a check in progress sees the old list or the new whole);
        False, changing nothing, when they are the keys in force already."""
        encoded = [k.encode() for k in keys]
        if not encoded:
            raise ValueError("no key: the keys in force stay (API keys are not turned off while running)")
        if encoded == self.encoded:
            return False
        self.encoded = encoded
        return True

    def matches(self, token: bytes) -> bool:
        # Compare with every key, without stopping at a match: the timing reveals nothing about the keys.
        found = False
        for key in self.encoded:
            found |= hmac.compare_digest(token, key)
        return found


class BearerAuth:
    """Answers 401 `Unauthorized` unless `Authorization: Bearer <key>` carries one of `keys`."""

    def __init__(self, app: ASGIApp, keys: ApiKeys | Iterable[str]) -> None:
        self.app = app
        self.keys = keys if isinstance(keys, ApiKeys) else ApiKeys(keys)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["path"].startswith(PROTECTED_PREFIXES)
            and not self.allowed(scope)
        ):
            await discard(scope, receive)  # so the 401 reaches a client still sending its body
            response = error_response(
                Unauthorized("a valid 'Authorization: Bearer <key>' header is required"),
                headers={"WWW-Authenticate": "Bearer"},
            )
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def allowed(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and self.keys.matches(token.strip())
        return False
