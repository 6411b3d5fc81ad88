"""What a web page open in a user's browser may not make a node do: the refusals of cross-site requests.

A node without `FAAS_API_KEYS` answers anyone who reaches it, and a browser reaches a developer's
`127.0.0.1:8080` from any page it shows. Two attacks follow, both answered 403 `Forbidden` here:

- **Cross-site requests (CSRF).** A page of another site posts to `POST /functions/{uuid}/invoke` or
  `/events*` (a form, or `fetch(..., {mode: "no-cors"})`): a "simple" request, sent without a preflight,
  and the node would run it. Browsers name the page's origin in `Origin` on every request that is not a
  GET or HEAD (scripts cannot set it), so such a request is refused unless its `Origin` is the node's own
  (the `Host` it was sent to, default ports aside; the scheme is not compared, so a TLS proxy that passes
  the `Host` on changes nothing) or a name listed in `FAAS_HTTP_ALLOWED_HOSTS` (a proxy that rewrites the
  `Host`). Clients that are not browsers (curl, the CLI, other services) send no `Origin`; GETs change
  nothing, and a page of another origin cannot read their answers (the node sends no CORS headers).
- **DNS rebinding.** A page of `evil.example` whose name then resolves to 127.0.0.1 is same-origin with the
  node as far as the browser knows: it may read `GET /invocations` (logs), and its POSTs carry a matching
  `Origin`. So a node bound to a loopback address refuses a request whose `Host` is a domain name (one with
  a dot) other than `localhost`, `*.localhost` or one listed in `FAAS_HTTP_ALLOWED_HOSTS`, whoever sends it:
  a page can pass itself off as any other client (Firefox lets scripts set `User-Agent`). What cannot be
  rebinding passes: an address (`127.0.0.1`, `[::1]`, `127.0.1.1`: the browser connected to that address
  itself) and a name of one label (`Host: x`, a machine's short name: no attacker's DNS answers for it).
  A node bound to another address (`0.0.0.0` in a container) is reached under names it cannot know and
  answers any `Host` unless the setting lists names; `*` answers any name everywhere.

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
_DEFAULT_PORTS = {"http": 80, "https": 443}


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address, IPv6 without brackets) names this machine's loopback."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split(host: str) -> tuple[str, int | None]:
    """A `Host` value or a netloc as (name without IPv6 brackets or trailing dot, port or None)."""
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        name, _, port = host.partition(":")
    else:
        name, port = host, ""
    return name.rstrip("."), int(port) if port.isdigit() else None


def _rebindable(name: str) -> bool:
    """Whether a page's DNS name could be `name`: a domain name, not an address nor a one-label name."""
    if "." not in name:
        return False
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return True
    return False


class BrowserGuard:
    """Refuses cross-site requests and, where the node is reachable only from its own machine, requests
    for foreign domain names. `allowed_hosts` is FAAS_HTTP_ALLOWED_HOSTS (comma-separated names, a port or
    brackets ignored; `*` any; empty: loopback names only when `bind_host` is a loopback address, any
    otherwise)."""

    def __init__(self, bind_host: str, allowed_hosts: str) -> None:
        names = {_split(n.strip().lower())[0] for n in allowed_hosts.split(",") if n.strip()}
        self.any_host = "*" in names or (not names and not is_loopback(bind_host))
        self.hosts = frozenset(names)

    def problem(self, scope: Scope) -> Forbidden | None:
        """Why the request of `scope` is refused, or None (the common case: one walk over its headers)."""
        host = origin = None
        for name, value in scope["headers"]:
            if name == b"host":
                host = value
            elif name == b"origin":
                origin = value
        if host is None:  # HTTP/1.0 sends none; every browser does
            return None
        text = host.decode("latin-1").lower()
        name, port = _split(text)
        if not self.any_host and _rebindable(name) and not is_loopback(name) and name not in self.hosts:
            return Forbidden(
                f"this node answers requests for its own names only, not for {name!r} (a web page may have "
                "made its name point here); list the names it serves in FAAS_HTTP_ALLOWED_HOSTS"
            )
        if origin is not None and scope["method"] not in _READS:
            sent = origin.decode("latin-1").lower()
            if not self._own(sent, name, port):
                return Forbidden(
                    f"a request from a web page of {sent} to this node is refused (cross-site): only "
                    "the node's own pages, and clients that are not browsers, may call it"
                )
        return None

    def _own(self, origin: str, name: str, port: int | None) -> bool:
        """Whether a page of `origin` is the node's own: the host it sent its request to, or a listed name."""
        if origin == "null":  # a sandboxed frame, a file: no site at all
            return False
        try:
            parts = urlsplit(origin)
            page_name, page_port = _split(parts.netloc)
        except ValueError:
            return False
        default = _DEFAULT_PORTS.get(parts.scheme)
        if page_name in self.hosts:
            return True
        return page_name == name and (page_port or default) == (port or default)
