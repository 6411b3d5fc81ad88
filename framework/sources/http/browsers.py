"""What a web page open in a user's browser may not make a node do: the refusals of cross-site requests.

A node without `FAAS_API_KEYS` answers anyone who reaches it, and a browser reaches a developer's
`127.0.0.1:8080` from any page it shows. Two attacks follow, both answered 403 `Forbidden` here:

- **Cross-site requests (CSRF).** A page of another site posts to `POST /functions/{uuid}/invoke` or
  `/events*` (a form, or `fetch(..., {mode: "no-cors"})`): a "simple" request, sent without a preflight,
  and the node would run it. Browsers name the page's origin in `Origin` on every request that is not a
  GET or HEAD, so such a request is refused when its `Origin` is not the node's own (the `Host` it was
  sent to; the scheme is not compared, so a TLS proxy in front changes nothing). Clients that are not
  browsers (curl, the CLI, other services) send no `Origin` and are not affected; GETs change nothing and
  a page of another origin cannot read their answers (the node sends no CORS headers).
- **DNS rebinding.** A page of `evil.example` whose name then resolves to 127.0.0.1 is same-origin with
  the node as far as the browser knows, and may read `GET /invocations` (logs). A node bound to a loopback
  address answers only requests for a loopback name (`localhost`, `*.localhost`, `127.0.0.1`, `[::1]`) or
  one listed in `FAAS_HTTP_ALLOWED_HOSTS`: any other `Host` is refused. A node bound to another address
  (`0.0.0.0` in a container) is reached under names it cannot know, and answers any `Host` unless the
  setting lists them (`*` turns the check off everywhere).

Only what a browser sends is checked: a request with an `Origin` or a `Sec-Fetch-Site` header, or a
`User-Agent` that begins `Mozilla/` (every browser's, and the one marker a plain-HTTP page's GET carries:
browsers send `Sec-Fetch-*` to secure origins only). Other clients (curl, httpx, the CLI, a test's raw
`Host: x`) send none of these, and whatever `Host` they name is no attack: nothing changes for them.

With `FAAS_API_KEYS` set, neither attack gets far (a browser adds no bearer key by itself), but the checks
run all the same: they cost one walk over a request's headers, and a node is not safe only when configured
so.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from starlette.types import Scope

from framework.errors import Forbidden

_READS = frozenset({"GET", "HEAD"})


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address, IPv6 without brackets) names this machine's loopback."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _name(host: str) -> str:
    """The name of a `Host` header value or an origin's netloc, without its port or IPv6 brackets."""
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host[1:]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


class BrowserGuard:
    """Refuses cross-site requests and, where the node is reachable only from its own machine, requests
    for foreign host names. `allowed_hosts` is FAAS_HTTP_ALLOWED_HOSTS (comma-separated names, `*` any,
    empty: loopback names only when `bind_host` is a loopback address, any otherwise)."""

    def __init__(self, bind_host: str, allowed_hosts: str) -> None:
        names = {n.strip().lower().rstrip(".") for n in allowed_hosts.split(",") if n.strip()}
        self.any_host = "*" in names or (not names and not is_loopback(bind_host))
        self.hosts = frozenset(names)

    def problem(self, scope: Scope) -> Forbidden | None:
        """Why the request of `scope` is refused, or None (the common case: one walk over its headers)."""
        host = origin = None
        browser = False
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin, browser = value, True
            elif name == b"sec-fetch-site" or (name == b"user-agent" and value.startswith(b"Mozilla/")):
                browser = True
        if host is None or not browser:
            return None
        text = host.decode("latin-1").lower()
        if not self.any_host:
            name = _name(text).rstrip(".")
            if not is_loopback(name) and name not in self.hosts:
                return Forbidden(
                    f"this node answers requests for its own names only, not for {name!r} (a web page "
                    "may have made its name point here); list the names it serves in FAAS_HTTP_ALLOWED_HOSTS"
                )
        if origin is not None and scope["method"] not in _READS:
            sent = origin.decode("latin-1").lower()
            if sent == "null" or urlsplit(sent).netloc != text:
                return Forbidden(
                    f"a request from a web page of {sent} to this node is refused (cross-site): only "
                    "the node's own pages, and clients that are not browsers, may call it"
                )
        return None
