"""The invocation routes in process (framework/sources/http/invocations.py): GET /invocations and its
filters, GET /invocations/{id}, the stats routes, bad query values, and the API keys."""

from __future__ import annotations

import time

import httpx
import pytest

from framework.errors import Timeout
from framework.observe.record_json import render
from framework.observe.records import error_of
from framework.types import Invocation, new_id
from tests.sources.http_fakes import DRAFT, ECHO, UNKNOWN, FakeNode, client_for, err


def record(
    fake: FakeNode, name: str = "echo", trigger: str = "direct", error: Exception | None = None
) -> str:
    spec = fake.registry.find(name)
    assert spec is not None
    inv = Invocation(new_id(), trigger, None, b"null")  # type: ignore[arg-type]
    logs = [{"time": "2026-01-01T00:00:00.000Z", "level": "INFO", "message": f"log of {inv.invocation_id}"}]
    now, failure = time.time(), None if error is None else error_of(error)
    rendered = render(
        inv.invocation_id, name, spec.uuid, spec.revision, trigger, None, None, None, "n1", f"{name}-1", now,
        2.0, False, 1, failure, logs,
    )  # fmt: skip
    fake.records.keep(spec, inv, now, 2.0, error is None, rendered)  # as an instance's reply brings it
    return inv.invocation_id


async def test_list_newest_first_and_filters(fake: FakeNode, client: httpx.AsyncClient) -> None:
    first = record(fake)
    failed = record(fake, error=Timeout("slow"))
    scheduled = record(fake, "drafty", trigger="schedule")
    r = await client.get("/invocations")
    assert r.status_code == 200
    assert [x["invocation_id"] for x in r.json()["invocations"]] == [scheduled, failed, first]

    async def ids(**params: str) -> list[str]:
        got = await client.get("/invocations", params=params)
        assert got.status_code == 200, got.text
        return [x["invocation_id"] for x in got.json()["invocations"]]

    assert await ids(function="echo") == [failed, first]
    assert await ids(function=ECHO) == [failed, first]
    assert await ids(function=DRAFT) == [scheduled]
    assert await ids(ok="false") == [failed]
    assert await ids(ok="true") == [scheduled, first]
    assert await ids(trigger="schedule") == [scheduled]
    assert await ids(trigger="event") == []
    assert await ids(limit="1") == [scheduled]
    assert await ids(function="nobody") == []


@pytest.mark.parametrize(
    ("params", "names"),
    [
        ({"ok": "maybe"}, "'ok'"),
        ({"trigger": "cron"}, "'trigger'"),
        ({"limit": "ten"}, "'limit'"),
        ({"limit": "-1"}, "'limit'"),
        ({"limit": "+1"}, "'limit'"),
        ({"limit": " 1"}, "'limit'"),
        ({"limit": "1_000"}, "'limit'"),
        ({"limit": "\u0663"}, "'limit'"),  # an Arabic-Indic 3: int() takes it, the contract does not
        ({"ok": "1"}, "'ok'"),
        ({"ok": "True"}, "'ok'"),
    ],
)
async def test_bad_query_values_are_400(
    client: httpx.AsyncClient, params: dict[str, str], names: str
) -> None:
    r = await client.get("/invocations", params=params)
    assert r.status_code == 400 and err(r) == "BadRequest"
    assert names in r.json()["error"]["message"]


@pytest.mark.parametrize(
    "query", ["limit=5&limit=10", "ok=true&ok=false", "function=a&function=b", "trigger=http&trigger=http"]
)
async def test_a_filter_given_twice_is_400(client: httpx.AsyncClient, query: str) -> None:
    """A repeated filter is refused, naming it, not read as its last value (Starlette's reading)."""
    r = await client.get(f"/invocations?{query}")
    assert r.status_code == 400 and err(r) == "BadRequest"
    name = query.partition("=")[0]
    assert r.json()["error"]["message"] == f"query parameter {name!r} is given 2 times: give it once"


async def test_one_record_and_unknown(fake: FakeNode, client: httpx.AsyncClient) -> None:
    inv = record(fake)
    r = await client.get(f"/invocations/{inv}")
    assert r.status_code == 200
    assert r.json()["invocation_id"] == inv and r.json()["logs"][0]["message"] == f"log of {inv}"
    assert (await client.get(f"/invocations/{inv.upper()}")).json()["invocation_id"] == inv
    missing = await client.get(f"/invocations/{new_id()}")
    assert missing.status_code == 404 and err(missing) == "NotFound"


async def test_stats_routes(fake: FakeNode, client: httpx.AsyncClient) -> None:
    record(fake)
    record(fake, error=Timeout("slow"))
    r = await client.get(f"/functions/{ECHO}/stats")
    assert r.status_code == 200
    body = r.json()
    assert body["function"] == "echo" and body["count"] == 2 and body["failures"] == 1
    assert body["p50_ms"] is not None and len(body["minutes"]) == 15
    never = (await client.get(f"/functions/{DRAFT}/stats")).json()
    assert never["count"] == 0 and never["p99_ms"] is None
    assert (await client.get(f"/functions/{UNKNOWN}/stats")).status_code == 404
    every = (await client.get("/invocations/stats")).json()["functions"]
    assert [s["function"] for s in every] == [f.name for f in fake.registry.functions]
    assert next(s for s in every if s["function"] == "echo")["count"] == 2


async def test_active_stats_leave_out_the_functions_not_invoked_lately(
    fake: FakeNode, client: httpx.AsyncClient
) -> None:
    """1. Invoke echo once (drafty never runs). 2. GET /invocations/stats with active=true, false, none.
    Result: active=true lists echo alone, with its count; false and none list every function; a bad or
    repeated value is 400 naming the parameter."""
    record(fake)
    active = (await client.get("/invocations/stats", params={"active": "true"})).json()["functions"]
    assert [(s["function"], s["count"]) for s in active] == [("echo", 1)]
    names = [f.name for f in fake.registry.functions]
    assert len(names) > 1
    for query in ("?active=false", ""):
        every = (await client.get(f"/invocations/stats{query}")).json()["functions"]
        assert [s["function"] for s in every] == names
    for query, message in (
        ("active=yes", "query parameter 'active' must be true or false, not 'yes'"),
        ("active=true&active=true", "query parameter 'active' is given 2 times: give it once"),
    ):
        r = await client.get(f"/invocations/stats?{query}")
        assert r.status_code == 400 and err(r) == "BadRequest"
        assert r.json()["error"]["message"] == message


async def test_routes_need_the_key_when_keys_are_set() -> None:
    fake = FakeNode(keys="k1")
    inv = record(fake)
    async with client_for(fake) as c:
        for path in ("/invocations", f"/invocations/{inv}", "/invocations/stats", f"/functions/{ECHO}/stats"):
            for headers in ({}, {"Authorization": "Bearer nope"}):
                r = await c.get(path, headers=headers)
                assert r.status_code == 401 and err(r) == "Unauthorized", path
            ok = await c.get(path, headers={"Authorization": "Bearer k1"})
            assert ok.status_code == 200, path
