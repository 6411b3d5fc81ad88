"""What a web page may not make a node do (`sources/http/browsers.py`): cross-site requests and requests for a
foreign host name are answered 403 `Forbidden`, in unit cases and from a real Chromium against a real node."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from framework.sources.http.browsers import BrowserGuard, is_loopback
from tests.sources.http.browser import CHROMIUM_ARGS, require_chromium
from tests.support import Node, wait_for, write_project

UUID = "abababab-0000-4000-8000-000000000001"
MANIFEST = f"""
functions:
  - name: marker
    uuid: {UUID}
    handler: functions.marker:handle
    state: productive
    events: [page.hit]
"""
MODULES = {
    "marker": """
    async def handle(payload, ctx):
        ctx.log.info("ran for %s", (payload or {}).get("via"))
        return {"via": (payload or {}).get("via")}
    """
}


def scope(method: str, host: str | None, origin: str | None = None, agent: str = "curl/8.5.0") -> Any:
    """A request's scope (its `User-Agent` changes nothing: a page's script may set it)."""
    headers = [] if host is None else [(b"host", host.encode())]
    if origin is not None:
        headers.append((b"origin", origin.encode()))
    headers.append((b"user-agent", agent.encode()))
    return {"type": "http", "method": method, "headers": headers}


@pytest.mark.parametrize(
    ("bind", "allowed", "method", "host", "origin", "refused"),
    [
        ("127.0.0.1", "", "POST", "127.0.0.1:8080", None, False),  # curl, the CLI
        ("127.0.0.1", "", "POST", "127.0.0.1:8080", "http://127.0.0.1:8080", False),  # the dashboard
        ("127.0.0.1", "", "POST", "localhost:8080", "http://localhost:8080", False),
        ("127.0.0.1", "", "POST", "[::1]:8080", "http://[::1]:8080", False),
        ("127.0.0.1", "", "POST", "LocalHost.:8080", "http://localhost:8080", False),
        ("127.0.0.1", "", "POST", "127.0.0.1:8080", "http://evil.example", True),  # CSRF
        ("127.0.0.1", "", "POST", "127.0.0.1:8080", "http://127.0.0.1:9999", True),  # another local port
        ("127.0.0.1", "", "POST", "127.0.0.1:8080", "null", True),  # a sandboxed frame, a file
        ("127.0.0.1", "", "POST", "127.0.0.1:8080", "http://[::1", True),  # an origin that does not parse
        ("127.0.0.1", "", "GET", "127.0.0.1:8080", "http://evil.example", False),  # reads change nothing
        ("127.0.0.1", "", "GET", "evil.example:8080", None, True),  # DNS rebinding, whatever its agent
        ("127.0.0.1", "", "POST", "evil.example:8080", "http://evil.example:8080", True),
        ("127.0.0.1", "", "GET", "x", None, False),  # one label: no attacker's DNS answers for it
        ("127.0.0.1", "", "GET", "127.0.1.1:8080", None, False),  # an address: no DNS at all
        ("127.0.0.1", "evil.example", "GET", "evil.example:8080", None, False),
        ("127.0.0.1", "evil.example:8443", "GET", "evil.example:8080", None, False),  # a listed port: ignored
        ("127.0.0.1", "*", "GET", "evil.example:8080", None, False),
        ("0.0.0.0", "", "GET", "faas.internal:8080", None, False),  # reached under names it cannot know
        ("0.0.0.0", "", "POST", "faas.internal", "https://faas.internal", False),  # a TLS proxy
        ("0.0.0.0", "", "POST", "faas.internal:443", "https://faas.internal", False),  # default ports
        ("0.0.0.0", "", "POST", "faas.internal:8443", "https://faas.internal", True),
        ("0.0.0.0", "", "POST", "faas.internal:8080", "http://evil.example", True),
        ("0.0.0.0", "faas.internal", "GET", "other.internal", None, True),
        ("0.0.0.0", "faas.internal", "GET", "10.1.2.3:8080", None, False),  # a probe by the pod's address
        # A proxy that sends its own Host: the page's name is listed.
        ("127.0.0.1", "faas.example.com", "POST", "127.0.0.1:8080", "https://faas.example.com", False),
        ("127.0.0.1", "", "POST", None, None, False),  # HTTP/1.0: no Host, no browser
    ],
)
def test_the_guard_refuses_cross_site_requests_and_foreign_hosts(
    bind: str, allowed: str, method: str, host: str | None, origin: str | None, refused: bool
) -> None:
    problem = BrowserGuard(bind, allowed).problem(scope(method, host, origin, agent="Mozilla/5.0"))
    assert (problem is not None) is refused, problem
    if problem is not None:
        assert problem.status == 403 and problem.type == "Forbidden"


def test_loopback_names() -> None:
    assert all(
        map(is_loopback, ["localhost", "LOCALHOST.", "app.localhost", "127.0.0.1", "127.8.0.1", "::1"])
    )
    assert not any(map(is_loopback, ["0.0.0.0", "10.0.0.1", "localhost.evil.example", "evil.example", ""]))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    root = write_project(tmp_path_factory.mktemp("guard"), MANIFEST, MODULES)
    n = Node(root, None, kafka=False).wait_ready()
    yield n
    n.kill()


class _Attacker(BaseHTTPRequestHandler):
    """Serves one page that, opened in a browser, posts to the node with what any site may send."""

    page = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/html")
        self.end_headers()
        self.wfile.write(self.page)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def attacker(node: Node) -> Iterator[str]:
    """The address of a page of another origin (another port of this machine) aimed at `node`."""
    _Attacker.page = f"""<!doctype html><body>
    <form id=f method=POST enctype="text/plain" action="{node.url}/functions/{UUID}/invoke">
    <input name='{{"via": "form", "pad": "' value='"}}'></form>
    <script>
      fetch("{node.url}/events/page.hit", {{method: "POST", mode: "no-cors", body: '{{"via": "fetch"}}'}})
        .finally(() => document.getElementById("f").submit());
    </script>""".encode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Attacker)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def _browser(*args: str) -> Any:
    from playwright.sync_api import sync_playwright

    playwright = sync_playwright().start()
    return playwright, playwright.chromium.launch(
        executable_path=require_chromium(), args=[*CHROMIUM_ARGS, *args]
    )


def test_a_page_of_another_site_cannot_invoke_or_raise_events(node: Node, attacker: str) -> None:
    """1. A node without API keys serving `marker`. 2. Chromium opens a page of another origin that posts a
    form to `POST /functions/{uuid}/invoke` and a no-cors fetch to `POST /events/page.hit` (requests a
    browser sends without asking the node first). 3. The node's own dashboard page posts an invocation.
    Result: both cross-site requests are answered 403 `Forbidden` and `marker` never runs for them; the
    dashboard's own request is answered 200, and so is one from a client that is not a browser."""
    playwright, browser = _browser()
    try:
        page = browser.new_page()
        with (
            page.expect_response(lambda r: r.url.endswith("/invoke"), timeout=30_000) as form,
            page.expect_response(lambda r: r.url.endswith("/events/page.hit"), timeout=30_000) as fetch,
        ):
            page.goto(attacker)
        assert (form.value.status, fetch.value.status) == (403, 403)
        page.wait_for_url(f"{node.url}/functions/{UUID}/invoke")
        assert "cross-site" in page.content()  # the form's answer, shown as the page
        page.goto(f"{node.url}/ui")
        status = page.evaluate(
            f"""fetch("/functions/{UUID}/invoke", {{method: "POST", body: '{{"via": "dashboard"}}'}})
                .then(r => r.status)"""
        )
        assert status == 200
    finally:
        browser.close()
        playwright.stop()
    assert (
        httpx.post(f"{node.url}/functions/{UUID}/invoke", json={"via": "curl"}, timeout=30).status_code == 200
    )
    wait_for(lambda: len(_runs(node)) >= 2, 30, message="two records of marker")
    assert sorted(_runs(node)) == ["curl", "dashboard"]


def _runs(node: Node) -> list[str]:
    records = httpx.get(f"{node.url}/invocations", params={"function": "marker"}, timeout=30).json()
    return [r["logs"][0]["message"].removeprefix("ran for ") for r in records["invocations"] if r["logs"]]


def test_a_name_rebound_to_the_node_reads_nothing(node: Node, tmp_path: Path) -> None:
    """1. Chromium resolves `rebound.test` to 127.0.0.1, as a page whose DNS name an attacker pointed at the
    developer's machine would. 2. It opens the node's dashboard and its invocations under that name.
    3. A second node is told the name (FAAS_HTTP_ALLOWED_HOSTS=rebound.test).
    Result: the first node answers 403 `Forbidden` to both, saying why, and nothing of its records is
    shown; the second answers them."""
    playwright, browser = _browser("--host-resolver-rules=MAP rebound.test 127.0.0.1")
    named = Node(
        write_project(tmp_path, MANIFEST, MODULES),
        None,
        kafka=False,
        env={"FAAS_HTTP_ALLOWED_HOSTS": "rebound.test"},
    ).wait_ready()
    try:
        page = browser.new_page()
        for path in ("/ui", "/invocations"):
            response = page.goto(f"http://rebound.test:{node.port}{path}")
            assert response is not None and response.status == 403, path
            assert "FAAS_HTTP_ALLOWED_HOSTS" in response.json()["error"]["message"]
        for path in ("/ui", "/invocations"):
            response = page.goto(f"http://rebound.test:{named.port}{path}")
            assert response is not None and response.status == 200, path
    finally:
        browser.close()
        playwright.stop()
        named.kill()
