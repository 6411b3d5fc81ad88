"""The web dashboard at `GET /ui` (DESIGN.md section 16): static files, served from the package itself.

The dashboard is one HTML page (its views are `<template>` elements), one stylesheet and one script, in the
`dashboard/` folder next to this module; the wheel ships them as package data. No build step, no framework,
nothing fetched from outside: the page reads the same routes of section 5 any client reads, with the user's
key as a bearer token. The files are read once, when the app is built, and served from memory.

Routes, all open (the API keys guard `/functions*`, `/events*` and `/invocations*`, never `/ui`):

- `GET /ui` (and `/ui/`): the page. `GET /ui/app.js`, `GET /ui/app.css`: its script and stylesheet.
- `GET /ui/session`: `{"auth", "key_ok", "routes", "ready", "problems"}`, always 200. `auth` says whether
  a key is needed, `key_ok` whether the request's `Authorization: Bearer` key is one of them (true without
  keys), `routes` the app's route paths (e.g. `/invocations`; not the invocation routes of a node with
  records off, whose empty answers would read as "nothing ran"), so the page calls only routes this node
  serves; `ready` and `problems` are what `/readyz` says (its reasons and the manifest's errors), which the
  page shows in a banner. A browser logs every non-2xx answer as a console error, so checking a key, a
  route or readiness by trying it (`/readyz` answers 503) would not be clean. The session holds no secret:
  readiness is as open as `/readyz`.

Every answer carries a Content-Security-Policy that allows only the node itself (`'self'`): no inline script,
no other origin, no framing; even a bug that inserted HTML could neither run script nor call out. The script
inserts all text with `textContent`, never as HTML. Cache-Control `no-cache` makes a browser revalidate the
files, so a node upgrade shows its own dashboard at the next load.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from importlib import resources
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from framework.sources.http.auth import ApiKeys, BearerAuth
from framework.sources.http.responses import JSONResponse

ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
"""The dashboard's files (in `dashboard/`) and their media types; nothing else under `/ui` is served."""

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def load_assets() -> dict[str, bytes]:
    """The dashboard's files, read from the installed package."""
    folder = resources.files("framework.sources.http").joinpath("dashboard")
    return {name: folder.joinpath(name).read_bytes() for name in ASSETS}


class Dashboard:
    """The `/ui` routes; `keys` are the node's API keys (empty: the API is open); `readiness` gives what
    `/readyz` says, which the session passes on so the page can show a node that is not well."""

    def __init__(
        self,
        keys: ApiKeys | Iterable[str],
        readiness: Callable[[], tuple[bool, dict[str, Any]]] | None = None,
        unlisted: Iterable[str] = (),
    ) -> None:
        self.readiness = readiness
        self.unlisted = frozenset(unlisted)
        """Route paths the session does not list: served, but with nothing the page should show (the
        invocation routes of a node with records off)."""
        keys = keys if isinstance(keys, ApiKeys) else ApiKeys(keys)
        self.auth = BearerAuth(_no_app, keys) if keys else None
        self.assets = load_assets()

    def asset(self, name: str) -> Response:
        return Response(self.assets[name], media_type=ASSETS[name], headers=HEADERS)

    async def page(self, request: Request) -> Response:
        return self.asset("index.html")

    async def script(self, request: Request) -> Response:
        return self.asset("app.js")

    async def stylesheet(self, request: Request) -> Response:
        return self.asset("app.css")

    async def session(self, request: Request) -> Response:
        key_ok = self.auth is None or self.auth.allowed(request.scope)
        paths = {path for route in request.app.routes if (path := getattr(route, "path", None))}
        routes = sorted(paths - self.unlisted)
        body: dict[str, Any] = {"auth": self.auth is not None, "key_ok": key_ok, "routes": routes}
        if self.readiness is not None:
            ready, health = self.readiness()
            problems = [str(r) for r in health.get("reasons", [])]
            problems += [str(e) for e in health.get("manifest_errors") or []]
            body |= {"ready": ready, "problems": problems}
        return JSONResponse(body, headers={**HEADERS, "Cache-Control": "no-store"})

    def routes(self) -> list[Route]:
        return [
            Route("/ui", self.page, methods=["GET"]),
            Route("/ui/", self.page, methods=["GET"]),
            Route("/ui/app.js", self.script, methods=["GET"]),
            Route("/ui/app.css", self.stylesheet, methods=["GET"]),
            Route("/ui/session", self.session, methods=["GET"]),
        ]


def openapi_paths() -> dict[str, Any]:
    """The dashboard's page and its session answer, for `/openapi.json` (its script and stylesheet are not
    described: they are parts of the page)."""
    html = {"text/html": {"schema": {"type": "string"}}}
    session = {
        "type": "object",
        "required": ["auth", "key_ok", "routes"],
        "properties": {
            "auth": {"type": "boolean", "description": "whether the API needs a key (FAAS_API_KEYS)"},
            "key_ok": {"type": "boolean", "description": "whether this request's bearer key is valid"},
            "routes": {"type": "array", "items": {"type": "string"}, "description": "the node's routes"},
            "ready": {"type": "boolean", "description": "what /readyz says"},
            "problems": {
                "type": "array",
                "items": {"type": "string"},
                "description": "/readyz's reasons and the manifest's errors",
            },
        },
    }
    return {
        "/ui": {
            "get": {
                "summary": "The web dashboard (DESIGN.md section 16); open even with API keys",
                "operationId": "dashboard",
                "responses": {"200": {"description": "the dashboard's page", "content": html}},
            }
        },
        "/ui/session": {
            "get": {
                "summary": "For the dashboard: is a key needed, is this one valid, which routes",
                "operationId": "dashboardSession",
                "responses": {
                    "200": {
                        "description": "always 200, so checking a key logs no failed request",
                        "content": {"application/json": {"schema": session}},
                    }
                },
            }
        },
    }


async def _no_app(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("only BearerAuth.allowed is used on this instance")
