"""The dashboard's routes in-process (DESIGN.md section 16): files, headers, the session answer, keys.

The browser tests (test_dashboard.py) show what a person sees; these pin what the node serves under `/ui`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import httpx
import pytest

from framework.sources.http.dashboard import ASSETS, CSP, load_assets
from tests.sources.http_fakes import FakeNode, client_for


@pytest.fixture
async def keyed() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(FakeNode(keys="k-one,k-two")) as c:
        yield c


@pytest.mark.parametrize(
    ("path", "media"),
    [
        ("/ui", "text/html"),
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/app.css", "text/css"),
    ],
)
async def test_files_are_served_with_their_type_and_a_strict_policy(
    client: httpx.AsyncClient, path: str, media: str
) -> None:
    r = await client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(media)
    assert r.headers["content-security-policy"] == CSP
    assert "default-src 'none'" in CSP and "connect-src 'self'" in CSP and "script-src 'self'" in CSP
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-cache"


async def test_page_links_its_one_script_and_one_stylesheet(client: httpx.AsyncClient) -> None:
    html = (await client.get("/ui")).text
    assert re.findall(r'<script[^>]*src="([^"]+)"', html) == ["/ui/app.js"]
    assert re.findall(r'<link rel="stylesheet" href="([^"]+)"', html) == ["/ui/app.css"]
    assert "<script>" not in html  # no inline script: the policy would refuse it anyway
    for view in ("t-login", "t-functions", "t-function", "t-events", "t-failed"):
        assert f'<template id="{view}">' in html


def test_files_load_from_nothing_outside_the_node() -> None:
    """No URL of another origin anywhere (the SVG namespace is a name, never fetched), no web fonts."""
    files = load_assets()
    assert set(files) == set(ASSETS)
    for name, data in files.items():
        text = data.decode()
        urls = set(re.findall(r"(?:https?:)?//[A-Za-z0-9.-]+\.[a-z]{2,}[^\s\"'`)]*", text))
        assert urls <= {"http://www.w3.org/2000/svg"}, (name, urls)
        assert "@import" not in text and "@font-face" not in text and "url(" not in text, name


def test_script_inserts_text_never_html() -> None:
    script = load_assets()["app.js"].decode()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in script, sink
    assert "textContent" in script


@pytest.mark.parametrize("path", ["/ui/index.html", "/ui/../pyproject.toml", "/ui/app.js.map", "/ui/x"])
async def test_nothing_else_is_served_under_ui(client: httpx.AsyncClient, path: str) -> None:
    r = await client.get(path)
    assert r.status_code == 404
    assert r.json()["error"]["type"] == "NotFound"


async def test_ui_is_get_only(client: httpx.AsyncClient) -> None:
    r = await client.post("/ui", content=b"x")
    assert r.status_code == 405


async def test_session_without_keys_lists_the_routes(client: httpx.AsyncClient) -> None:
    r = await client.get("/ui/session")
    assert r.status_code == 200
    body = r.json()
    assert body["auth"] is False and body["key_ok"] is True
    assert {"/functions", "/functions/{uuid}/invoke", "/events/{type}", "/events/{type}/listeners"} <= set(
        body["routes"]
    )
    assert body["routes"] == sorted(set(body["routes"]))
    assert r.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("header", "ok"),
    [
        (None, False),
        ("Bearer k-two", True),
        ("Bearer k-one", True),
        ("Bearer k-three", False),
        ("Bearer ", False),
        ("Basic k-one", False),
        ("k-one", False),
        ("Bearer <script>alert(1)</script>", False),
    ],
)
async def test_session_checks_a_key_without_a_401(
    keyed: httpx.AsyncClient, header: str | None, ok: bool
) -> None:
    """Always 200, so the page can check a key without the browser logging a failed request."""
    r = await keyed.get("/ui/session", headers={"Authorization": header} if header else {})
    assert r.status_code == 200
    assert r.json()["auth"] is True
    assert r.json()["key_ok"] is ok


async def test_page_stays_open_while_the_api_needs_a_key(keyed: httpx.AsyncClient) -> None:
    for path in ("/ui", "/ui/app.js", "/ui/app.css", "/ui/session"):
        assert (await keyed.get(path)).status_code == 200, path
    assert (await keyed.get("/functions")).status_code == 401
    assert (await keyed.get("/functions", headers={"Authorization": "Bearer k-one"})).status_code == 200
