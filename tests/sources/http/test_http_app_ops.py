"""Unit tests of the HTTP app (DESIGN.md section 5), in-process: auth, operations, routing, disconnects."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
from openapi_spec_validator import validate
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.types import Message

from framework import __version__
from framework.sources.http.auth import ApiKeys, BearerAuth
from tests.sources.http_fakes import ECHO, LIMIT, UNKNOWN, FakeNode, app_for, client_for, err

if TYPE_CHECKING:
    pass


# ---- auth ----


@pytest.fixture
async def keyed() -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(FakeNode(keys=" k-one , k-two")) as c:
        yield c


@pytest.mark.parametrize("header", [None, "Bearer nope", "Bearer", "Basic k-one", "Bearer k-one-x", "k-one"])
async def test_auth_refuses(keyed: httpx.AsyncClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in [
        ("POST", f"/functions/{ECHO}/invoke"),
        ("GET", "/functions"),
        ("GET", f"/functions/{ECHO}"),
        ("GET", "/events/ping/listeners"),
        ("POST", "/events/ping"),
    ]:
        r = await keyed.request(method, path, headers=headers, json={})
        assert r.status_code == 401 and err(r) == "Unauthorized", (method, path)
        assert r.headers["www-authenticate"] == "Bearer"


async def test_auth_accepts_each_key(keyed: httpx.AsyncClient) -> None:
    for key in ("k-one", "k-two"):
        r = await keyed.post(f"/functions/{ECHO}/invoke", json={}, headers={"Authorization": f"bearer {key}"})
        assert r.status_code == 200


async def test_auth_comes_first(keyed: httpx.AsyncClient) -> None:
    """401 before 404, 413 and 400."""
    for uuid, body in [(UNKNOWN, b"{}"), (ECHO, b"1" * (LIMIT + 1)), (ECHO, b"{")]:
        assert (await keyed.post(f"/functions/{uuid}/invoke", content=body)).status_code == 401


async def test_open_routes_need_no_key(keyed: httpx.AsyncClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert (await keyed.get(path)).status_code == 200, path


def test_auth_matches_exact_bytes() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError

    keys = BearerAuth(app, ["k"]).keys
    assert keys.matches(b"k") and not keys.matches(b"") and not keys.matches(b"K") and not keys.matches(b"kk")


def test_keys_rotate_in_place_and_never_turn_off() -> None:
    """`ApiKeys.replace`: the new keys in force for every check sharing the holder, the old ones refused;
    the same keys again change nothing; no key at all is refused (auth stays on)."""
    keys = ApiKeys(["old"])
    auth = BearerAuth(lambda *_: None, keys)  # type: ignore[arg-type]
    bearer = {"headers": [(b"authorization", b"Bearer new")]}
    assert not auth.allowed(bearer)
    assert keys.replace(["new", "other"]) is True and auth.allowed(bearer)
    assert not auth.allowed({"headers": [(b"authorization", b"Bearer old")]})
    assert keys.replace(["new", "other"]) is False
    with pytest.raises(ValueError, match="no key"):
        keys.replace([])
    assert auth.allowed(bearer)


# ---- operations ----


async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


async def test_readyz(client: httpx.AsyncClient, fake: FakeNode) -> None:
    r = await client.get("/readyz")
    assert r.status_code == 200 and r.json()["manifest_errors"] == ["functions.yaml:3:5: bad"]
    fake.ready = False
    r = await client.get("/readyz")
    assert r.status_code == 503 and r.json()["reasons"] == ["kafka"]


async def test_metrics(client: httpx.AsyncClient) -> None:
    await client.post(f"/functions/{ECHO}/invoke", json={})
    r = await client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"] == CONTENT_TYPE_LATEST
    assert 'faas_invocations_total{function="echo",outcome="ok",trigger="direct"} 1.0' in r.text


async def test_a_slow_metrics_render_holds_no_other_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. /metrics renders for 0.5 s of Python (as 1,000 functions' series take a second or more).
    2. /healthz is asked for while it renders. Result: /healthz is answered before /metrics: the render
    runs off the loop (on it, every request and event waited for it)."""
    node = FakeNode()
    render = node.metrics.render

    rendering = threading.Event()

    def slow() -> bytes:
        rendering.set()
        until = time.monotonic() + 0.5
        while time.monotonic() < until:  # CPU, holding the GIL in turns, as the real render does
            pass
        return render()

    monkeypatch.setattr(node.metrics, "render", slow)
    done: list[str] = []
    async with client_for(node) as c:

        async def get(path: str) -> None:
            r = await c.get(path)
            assert r.status_code == 200
            done.append(path)

        scrape = asyncio.ensure_future(get("/metrics"))
        deadline = time.monotonic() + 5
        while not rendering.is_set():  # the render under way (on the loop, this wait itself would hang)
            assert time.monotonic() < deadline, "the render never started"
            await asyncio.sleep(0.01)
        await get("/healthz")
        await scrape
    assert done == ["/healthz", "/metrics"]


async def test_metrics_as_prometheus_users_expect(client: httpx.AsyncClient) -> None:
    """1. Invoke once (200), call an unknown uuid (404), an unknown route (404) and GET /healthz.
    2. Read /metrics.
    Result: process_* and python_* families and faas_build_info{version} are there; no `_created` series;
    requests are counted and timed by route template, method and status (the raw path never appears)."""
    await client.post(f"/functions/{ECHO}/invoke", json={})
    await client.post("/functions/00000000-0000-4000-8000-000000000000/invoke", json={})
    await client.get("/nowhere")
    await client.get("/healthz")
    text = (await client.get("/metrics")).text
    for family in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info", "python_gc_"):
        assert family in text, family
    assert f'faas_build_info{{version="{__version__}"}} 1.0' in text
    assert "_created" not in text
    route = 'method="POST",route="/functions/{uuid}/invoke"'
    assert f'faas_http_requests_total{{{route},status="200"}} 1.0' in text
    assert f'faas_http_requests_total{{{route},status="404"}} 1.0' in text
    assert 'faas_http_requests_total{method="GET",route="none",status="404"} 1.0' in text
    assert 'faas_http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert f'faas_http_request_duration_seconds_count{{{route},status="200"}} 1.0' in text
    assert "00000000-0000" not in text


@pytest.mark.parametrize("keys", ["", "k"])
async def test_openapi_validates(keys: str) -> None:
    async with client_for(FakeNode(keys=keys)) as c:
        spec = (await c.get("/openapi.json")).json()
    validate(spec)
    assert spec["openapi"].startswith("3")
    assert set(spec["paths"]) == {
        "/functions/{uuid}/invoke",
        "/functions",
        "/functions/{uuid}",
        "/functions/{uuid}/revisions",
        "/events/{type}/listeners",
        "/events/{type}",
        "/events",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/invocations",
        "/invocations/stats",
        "/invocations/{invocation_id}",
        "/functions/{uuid}/stats",
        "/ui",
        "/ui/session",
    }
    invoke = spec["paths"]["/functions/{uuid}/invoke"]["post"]
    expected = {"200", "400", "403", "404", "413", "429", "500", "502", "504"} | ({"401"} if keys else set())
    assert set(invoke["responses"]) == expected
    assert ("security" in invoke) == bool(keys)


async def test_unknown_route_and_method(client: httpx.AsyncClient) -> None:
    r = await client.get("/nowhere")
    assert r.status_code == 404 and err(r) == "NotFound"
    r = await client.get(f"/functions/{ECHO}/invoke")
    assert r.status_code == 405 and err(r) == "MethodNotAllowed" and "POST" in r.headers["allow"]


async def test_concurrent_invocations(client: httpx.AsyncClient) -> None:
    rs = await asyncio.gather(*(client.post(f"/functions/{ECHO}/invoke", json=i) for i in range(50)))
    assert sorted(r.json()["result"]["echo"] for r in rs) == list(range(50))


async def test_client_gone_mid_body(fake: FakeNode) -> None:
    """A caller that disconnects while sending its body gets no invocation and no logged error."""
    app = app_for(fake)
    messages: list[Message] = [
        {"type": "http.request", "body": b'{"a":', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return messages.pop(0)

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": f"/functions/{ECHO}/invoke",
        "raw_path": b"",
        "query_string": b"",
        "headers": [],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("node", 80),
        "root_path": "",
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 400 and fake.runtime.payloads == []
