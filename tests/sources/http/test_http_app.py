"""Unit tests of the HTTP app (DESIGN.md section 5), in-process: invocation, listings and HTTP events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import httpx
import orjson
import pytest
from starlette.types import Message

from framework.sources.http import body as http_body
from tests.sources.http_fakes import (
    DRAFT,
    ECHO,
    FAILING,
    LIMIT,
    UNKNOWN,
    UUIDS,
    FakeNode,
    FakeScheduler,
    app_for,
    client_for,
    err,
)

if TYPE_CHECKING:
    pass


# ---- POST /functions/{uuid}/invoke ----


async def test_invoke_splices_result(client: httpx.AsyncClient, fake: FakeNode) -> None:
    r = await client.post(f"/functions/{ECHO}/invoke", content=b'{"name": "Ann",  "n": 1.50}')
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["result"] == {"echo": {"name": "Ann", "n": 1.5}}
    assert body["cold_start"] is True and body["duration_ms"] == 1.235 and body["invocation_id"]
    # The payload reached the runtime as sent, and the result came back without re-encoding.
    assert fake.runtime.payloads == [b'{"name": "Ann",  "n": 1.50}']
    assert b'"result":{"echo":{"name": "Ann",  "n": 1.50}}' in r.content


async def test_invoke_uuid_case_insensitive(client: httpx.AsyncClient) -> None:
    assert (await client.post(f"/functions/{ECHO.upper()}/invoke", json=1)).status_code == 200


async def test_empty_body_is_null(client: httpx.AsyncClient, fake: FakeNode) -> None:
    r = await client.post(f"/functions/{ECHO}/invoke")
    assert r.status_code == 200 and r.json()["result"] == {"echo": None}
    assert fake.runtime.payloads == [b"null"]


@pytest.mark.parametrize("uuid", [UNKNOWN, DRAFT, "not-a-uuid"])
async def test_invoke_not_found(client: httpx.AsyncClient, uuid: str) -> None:
    r = await client.post(f"/functions/{uuid}/invoke", json={})
    assert r.status_code == 404 and err(r) == "NotFound" and r.json()["error"]["message"]


@pytest.mark.parametrize("body", [b"{not json", b"   ", b"\xff\xfe", b'{"a": 1} x', b"NaN"])
async def test_invoke_bad_json(client: httpx.AsyncClient, fake: FakeNode, body: bytes) -> None:
    r = await client.post(f"/functions/{ECHO}/invoke", content=body)
    assert r.status_code == 400 and err(r) == "BadRequest"
    assert fake.runtime.payloads == []


async def test_a_body_that_is_not_utf8_is_named_so(client: httpx.AsyncClient) -> None:
    r = await client.post(f"/functions/{ECHO}/invoke", content=b'{"a": "\xff"}')
    assert (
        r.status_code == 400
        and r.json()["error"]["message"] == "body is not UTF-8 (byte 7): JSON must be UTF-8"
    )


async def test_an_encoded_body_and_one_of_whitespace_are_named_so(client: httpx.AsyncClient) -> None:
    """A gzip body sent with `Content-Encoding: gzip` (the node does not decode bodies), and a body of blanks.
    Result: each 400 naming what is wrong; `Content-Encoding: identity` on plain JSON is taken."""
    import gzip

    r = await client.post(
        f"/functions/{ECHO}/invoke", content=gzip.compress(b'{"a": 1}'), headers={"content-encoding": "gzip"}
    )
    assert r.status_code == 400 and r.json()["error"]["message"] == (
        "body is encoded (Content-Encoding: gzip): the node reads JSON as sent, uncompressed"
    ), r.text
    r = await client.post(f"/functions/{ECHO}/invoke", content=b" \n\t ")
    assert r.status_code == 400 and r.json()["error"]["message"] == (
        "body holds only whitespace: send JSON, or no body for null"
    ), r.text
    r = await client.post(
        f"/functions/{ECHO}/invoke", content=b"{}", headers={"content-encoding": "identity"}
    )
    assert r.status_code == 200, r.text


async def test_limit_is_inclusive(client: httpx.AsyncClient) -> None:
    at_limit = b'"' + b"x" * (LIMIT - 2) + b'"'
    assert (await client.post(f"/functions/{ECHO}/invoke", content=at_limit)).status_code == 200
    r = await client.post(f"/functions/{ECHO}/invoke", content=at_limit + b" ")
    assert r.status_code == 413 and err(r) == "PayloadTooLarge"


async def _refused(
    fake: FakeNode, declared: int | None, chunks: int, expect: bool = False
) -> tuple[int, list[Message]]:
    """Send a body of `chunks` chunks of 10 bytes (`declared` its Content-Length, None: chunked) straight
    to the app; the number of chunks it asked for, and what it sent."""
    app = app_for(fake)
    received = 0
    sent: list[Message] = []

    async def receive() -> Message:
        nonlocal received
        received += 1
        return {"type": "http.request", "body": b"x" * 10, "more_body": received < chunks}

    async def send(message: Message) -> None:
        sent.append(message)

    headers = [] if declared is None else [(b"content-length", str(declared).encode())]
    scope = {
        "type": "http",
        "method": "POST",
        "path": f"/functions/{ECHO}/invoke",
        "raw_path": b"",
        "query_string": b"",
        "headers": headers + ([(b"expect", b"100-continue")] if expect else []),
        "http_version": "1.1",
        "scheme": "http",
        "server": ("node", 80),
        "root_path": "",
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 413
    assert orjson.loads(sent[1]["body"])["error"]["type"] == "PayloadTooLarge"
    return received, sent


async def test_a_body_over_the_limit_is_read_to_its_end_before_the_413(
    fake: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client still sending when the 413 goes out would see its connection reset, not the 413: a body
    over the limit is read and dropped to its end (declared or chunked), up to LINGER_BYTES, and nothing
    of it is invoked."""
    monkeypatch.setattr(http_body, "LINGER_BYTES", LIMIT * 20)
    chunks = LIMIT * 10 // 10
    assert (await _refused(fake, LIMIT * 10, chunks))[0] == chunks
    assert (await _refused(fake, None, chunks))[0] == chunks
    assert fake.runtime.payloads == []


async def test_a_body_beyond_the_linger_limit_or_awaiting_100_continue_is_not_read(
    fake: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Declared beyond LINGER_BYTES, or sent only after `100 Continue`: answered before the app asks for a
    single chunk. Chunked beyond it: reading stops at the first chunk past LINGER_BYTES."""
    monkeypatch.setattr(http_body, "LINGER_BYTES", LIMIT * 2)
    assert (await _refused(fake, LIMIT * 2 + 1, 10**6))[0] == 0
    assert (await _refused(fake, LIMIT + 1, 10**6, expect=True))[0] == 0
    assert (await _refused(fake, None, 10**6))[0] == LIMIT * 2 // 10 + 1
    assert fake.runtime.payloads == []


async def test_chunked_within_limit(client: httpx.AsyncClient, fake: FakeNode) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b'{"a":', b" [1, ", b"2]}"):
            yield part

    r = await client.post(f"/functions/{ECHO}/invoke", content=chunks())
    assert r.status_code == 200 and r.json()["result"] == {"echo": {"a": [1, 2]}}
    assert fake.runtime.payloads == [b'{"a": [1, 2]}']


@pytest.mark.parametrize(("name", "status"), [("boom", 500), ("busy", 429), ("crash", 502), ("late", 504)])
async def test_invoke_errors(client: httpx.AsyncClient, name: str, status: int) -> None:
    r = await client.post(f"/functions/{UUIDS[name]}/invoke", json={})
    assert r.status_code == status
    assert r.json() == {"error": FAILING[name].to_dict()}


async def test_node_bug_is_internal_error(
    client: httpx.AsyncClient, fake: FakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    fake.runtime.bug = RuntimeError("a bug in the node")
    r = await client.post(f"/functions/{ECHO}/invoke", json={})
    assert r.status_code == 500 and err(r) == "InternalError"
    assert "a bug in the node" not in r.text  # internals stay in the log
    assert any(rec.exc_info and "a bug in the node" in str(rec.exc_info[1]) for rec in caplog.records)


async def test_check_order_404_before_413_before_400(client: httpx.AsyncClient) -> None:
    big_bad = b"{" * (LIMIT + 1)
    assert (await client.post(f"/functions/{DRAFT}/invoke", content=big_bad)).status_code == 404
    assert (await client.post(f"/functions/{ECHO}/invoke", content=big_bad)).status_code == 413
    assert (await client.post(f"/functions/{ECHO}/invoke", content=b"{")).status_code == 400


# ---- listings ----


async def test_list_functions_all_states(client: httpx.AsyncClient) -> None:
    r = await client.get("/functions")
    assert r.status_code == 200
    listed = {f["name"]: f for f in r.json()["functions"]}
    assert listed["drafty"]["state"] == "draft" and listed["echo"]["state"] == "productive"
    echo = listed["echo"]
    assert set(echo) >= {"name", "uuid", "state", "events", "schedules", "instances"}
    assert echo["instances"] == 2 and echo["events"] == ["ping"] and echo["uuid"] == ECHO
    # No scheduler: the manifest's entries.
    assert echo["schedules"] == [
        {"cron": "* * * * *", "timezone": "UTC", "payload": None, "next_fire": None, "last": None}
    ]


async def test_list_uses_scheduler_status() -> None:
    async with client_for(FakeNode(scheduler=FakeScheduler())) as c:
        listed = {f["name"]: f for f in (await c.get("/functions")).json()["functions"]}
    assert listed["echo"]["schedules"][0]["next_fire"] == "2030-01-01T00:00:00Z"


async def test_get_function_is_the_productive_check(client: httpx.AsyncClient) -> None:
    r = await client.get(f"/functions/{ECHO}")
    assert r.status_code == 200 and r.json()["name"] == "echo"
    for uuid in (DRAFT, UNKNOWN):
        r = await client.get(f"/functions/{uuid}")
        assert r.status_code == 404 and err(r) == "NotFound"


async def test_listeners_productive_only(client: httpx.AsyncClient) -> None:
    r = await client.get("/events/ping/listeners")
    assert r.json() == {"event": "ping", "functions": [{"name": "echo", "uuid": ECHO}]}
    assert (await client.get("/events/nothing.here/listeners")).json()["functions"] == []


# ---- POST /events/{type} ----


async def test_event_ok(client: httpx.AsyncClient) -> None:
    r = await client.post("/events/ping", content=b'{"n": 1}', headers={"ce-id": "ev-1"})
    assert r.status_code == 200
    body = r.json()
    assert body["id"] == "ev-1" and body["event"] == "ping" and body["ok"] is True and body["error"] is None
    assert [(x["function"], x["result"]) for x in body["results"]] == [("echo", {"echo": {"n": 1}})]


async def test_event_without_listeners_or_id(client: httpx.AsyncClient) -> None:
    r = await client.post("/events/nobody.listens")
    body = r.json()
    assert r.status_code == 200 and body["ok"] is True and body["results"] == [] and len(body["id"]) == 36


@pytest.mark.parametrize(("name", "status"), [("boom", 500), ("busy", 429), ("crash", 502), ("late", 504)])
async def test_event_failure_status(client: httpx.AsyncClient, name: str, status: int) -> None:
    r = await client.post(f"/events/fail.{name}", json={})
    body = r.json()
    assert r.status_code == status and body["ok"] is False
    assert body["error"]["type"] == FAILING[name].type and body["error"]["function"] == name


async def test_event_bad_body(client: httpx.AsyncClient, fake: FakeNode) -> None:
    """A request refused before any listener ran is answered in the contract's error shape (section 5),
    as `POST /events` answers it, with the traceparent of its trace; not in the combined reply's shape."""
    trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    for body, headers, status, error_type in [
        (b"{nope", {"ce-id": "e-2", "traceparent": trace}, 400, "BadRequest"),
        (b"1", {"ce-id": "%FF", "traceparent": trace}, 400, "BadRequest"),
        (b"1" * (LIMIT + 1), {"traceparent": trace}, 413, "PayloadTooLarge"),
    ]:
        r = await client.post("/events/ping", content=body, headers=headers)
        assert r.status_code == status and set(r.json()) == {"error"}, r.text
        assert set(r.json()["error"]) == {"type", "message"} and err(r) == error_type, r.text
        assert r.headers["traceparent"].startswith(trace[:36]), r.headers
    assert fake.runtime.payloads == []


@pytest.mark.parametrize("event", ["%20", "%09%20"])
async def test_a_blank_event_type_in_the_path_is_400(client: httpx.AsyncClient, event: str) -> None:
    """`POST /events/%20`: no event can have a blank type (the manifest and `faas emit` refuse it), so it is
    400 BadRequest in the contract's error shape, not an event nobody listens to."""
    r = await client.post(f"/events/{event}", json={})
    body = r.json()
    assert r.status_code == 400 and set(body) == {"error"} and body["error"]["type"] == "BadRequest", body
    assert "must not be only whitespace" in body["error"]["message"] and r.headers["traceparent"]


async def test_an_event_type_whose_escapes_are_not_utf8_is_400(
    client: httpx.AsyncClient, fake: FakeNode
) -> None:
    """`/events/%FF`: the server decodes the path with errors replaced, which made the type `\ufffd` and
    raised an event the caller never named. It is 400 BadRequest on both event routes, as a `ce-type` that
    is not UTF-8 is on `POST /events`; a type holding U+FFFD itself (`%EF%BF%BD`) is still served."""
    for method, path in [("POST", "/events/a%FFb"), ("GET", "/events/a%FFb/listeners")]:
        r = await client.request(method, path, content=b"1")
        assert r.status_code == 400 and err(r) == "BadRequest", (path, r.text)
        assert "not UTF-8" in r.json()["error"]["message"], r.text
    r = await client.post("/events/a%EF%BF%BDb", content=b"1")
    assert r.status_code == 200 and r.json()["event"] == "a\ufffdb", r.text
    assert fake.runtime.payloads == []


@pytest.mark.parametrize(
    ("method", "path"), [("POST", f"/functions/{ECHO}/invoke/"), ("GET", "/functions/"), ("GET", "/readyz/")]
)
async def test_a_trailing_slash_is_another_path(client: httpx.AsyncClient, method: str, path: str) -> None:
    """A path with a trailing slash is 404 `NotFound` in the contract's body, not an empty 307 redirect."""
    r = await client.request(method, path, json={})
    assert r.status_code == 404 and err(r) == "NotFound", (r.status_code, r.text)
