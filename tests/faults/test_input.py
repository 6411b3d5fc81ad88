"""Scenario 6: a storm of bad records and malformed HTTP requests."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
import pytest

from framework.kafka.embedded import EmbeddedBroker
from framework.tasks import within
from tests.faults.conftest import TICK
from tests.faults.kit import ReplyReader, events, producer, rss_by_process, send_all, tree_rss
from tests.support import Header, Node, Record, ce_headers, consume_raw, new_id

pytestmark = pytest.mark.faults

RSS_BOUND = 60 * 2**20
"""Growth of the node's process tree (node, template, instances) the storm may cause, in bytes."""
CE_NAMES = ["ce_specversion", "ce_type", "ce_id", "ce_source", "content-type"]


def random_records(rng: random.Random, n: int) -> list[Record]:
    """Random byte strings as keys, values and headers (sometimes with CloudEvents header names).

    A key, when there is one, starts with the record's number (two bytes), so that each keyed record can be
    told apart by the key its reply and its dead-letter copy carry."""
    out: list[Record] = []
    for i in range(n):
        headers: list[Header] = [
            (rng.choice([*CE_NAMES, rng.randbytes(6).hex()]), rng.randbytes(rng.randrange(0, 40)))
            for _ in range(rng.randrange(0, 5))
        ]
        key = rng.choice([None, b"\x00" + i.to_bytes(2, "big") + rng.randbytes(rng.randrange(0, 30))])
        out.append((key, rng.randbytes(rng.randrange(0, 3000)), headers))
    return out


def mutated_records(rng: random.Random, n: int) -> list[Record]:
    """Valid `fault.tick` events with one mutation each: flipped, cut or swapped bytes, a header dropped,
    garbled, duplicated or wrong, structured mode with a broken document, or a value over the limit."""
    out: list[Record] = []
    for i in range(n):
        eid = new_id()
        value = orjson.dumps(
            {"n": i, "text": "x" * rng.randrange(0, 200), "list": list(range(rng.randrange(9)))}
        )
        headers = ce_headers("fault.tick", eid)
        kind = i % 8
        if kind == 0:
            b = bytearray(value)
            for _ in range(rng.randrange(1, 5)):
                b[rng.randrange(len(b))] = rng.randrange(256)
            value = bytes(b)
        elif kind == 1:
            value = value[: rng.randrange(len(value))]
        elif kind == 2:
            del headers[rng.randrange(len(headers))]
        elif kind == 3:
            j = rng.randrange(len(headers))
            headers[j] = (headers[j][0], rng.randbytes(rng.randrange(0, 20)))
        elif kind == 4:
            headers += headers[: rng.randrange(1, 4)]
        elif kind == 5:
            doc = {"specversion": "1.0", "type": "fault.tick", "id": eid, "data": {"n": i}}
            raw = orjson.dumps(doc)
            value = (
                raw[: rng.randrange(len(raw) + 1)] if rng.random() < 0.5 else raw.replace(b"type", b"tpye")
            )
            headers = [("content-type", b"application/cloudevents+json")]
        elif kind == 6:
            value = rng.choice([b"", b"\xff" * 10, b"\x00", b"null" * 3, orjson.dumps("\ud7ff" * 50)])
        elif i % 80 == 7:
            value = b'"' + b"y" * (1_100_000) + b'"'  # over FAAS_MAX_PAYLOAD_BYTES
        else:
            headers = [(k, v if k != "ce_type" else v + rng.randbytes(2)) for k, v in headers]
        out.append((rng.choice([None, f"k{i % 37}/{i}".encode()]), value, headers))  # unique, as above
    return out


async def http_storm(node: Node, rng: random.Random) -> Counter[str]:
    """1,000 malformed requests: 600 over HTTP (bad JSON, unknown uuids and routes, wrong methods,
    oversized and non-UTF-8 bodies), 400 raw byte strings on fresh connections. Returns status counts."""
    statuses: Counter[str] = Counter()
    sem = asyncio.Semaphore(40)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        kind = i % 6
        async with sem:
            if kind == 0:
                r = await client.post(
                    f"/functions/{TICK}/invoke", content=rng.randbytes(rng.randrange(1, 500))
                )
            elif kind == 1:
                r = await client.post(f"/functions/{new_id()}/invoke", content=b"{}")
            elif kind == 2:
                r = await client.post(f"/functions/{TICK}/invoke", content=b"[" * 100_000)
            elif kind == 3:
                r = await client.request(rng.choice(["PUT", "DELETE", "PATCH"]), f"/functions/{TICK}/invoke")
            elif kind == 4:
                r = await client.post(f"/events/{rng.randbytes(8).hex()}", content=b"\xc3\x28{")
            elif i % 60 == 5:
                r = await client.post(f"/functions/{TICK}/invoke", content=b"0" * (1_100_000))
            else:
                r = await client.get(
                    "/" + rng.randbytes(20).hex(), headers={"x-junk": rng.randbytes(8).hex()}
                )
        statuses[f"{kind}:{r.status_code}"] += 1

    async def raw(i: int) -> None:
        junk = rng.choice(
            [
                rng.randbytes(rng.randrange(1, 2000)),
                b"POST /functions/" + TICK.encode() + b"/invoke HTTP/1.1\r\nContent-Length: 50\r\n\r\n{",
                b"GET / HTTP/1.1\r\n" + b"X: " + b"a" * 70_000 + b"\r\n\r\n",
                b"POST /functions/x/invoke HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                b"\r\n\r\n\r\n",
            ]
        )
        async with sem:
            with contextlib.suppress(OSError):
                reader, writer = await asyncio.open_connection("127.0.0.1", node.port)
                writer.write(junk)
                with contextlib.suppress(OSError):
                    await writer.drain()
                with contextlib.suppress(TimeoutError, OSError):
                    await within(reader.read(200), 0.5)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        statuses["raw"] += 1

    async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
        await asyncio.gather(*(one(client, i) for i in range(600)), *(raw(i) for i in range(400)))
    return statuses


def is_storm_key(key: bytes | None) -> bool:
    """Storm keys begin with a zero byte (random records) or hold a `/` (mutated ones); the warm-up and
    valid events' keys are `kN`."""
    return key is not None and (key[:1] == b"\x00" or b"/" in key)


async def check_storm_answers(bootstrap: str, node: Node, bad: list[Record]) -> None:
    """Every storm record has a reply, counted by distinct record (its unique key; the keyless ones by
    number); every record answered `BadEvent` has one exact dead-letter copy, and nothing else is there."""
    keyed = {k: (v, h) for k, v, h in bad if k is not None}
    keyless = sum(1 for k, _, _ in bad if k is None)
    assert len(keyed) + keyless == len(bad), "storm keys are not unique"
    deadline = time.monotonic() + 60
    while True:  # the topic is read from its start each time, until every storm record is answered
        replies = await consume_raw(bootstrap, node.replies, 50 + len(bad) + 200, 20)
        storm = [r for r in replies if r.key is None or is_storm_key(r.key)]
        answered = {r.key for r in storm if r.key is not None}
        if (answered >= keyed.keys() and len(storm) >= keyless) or time.monotonic() > deadline:
            break
    missing = keyed.keys() - answered
    assert not missing, f"{len(missing)} of {len(keyed)} keyed storm records got no reply\n{node.tail()}"
    assert answered == keyed.keys(), "a reply names a key no storm record had"
    unkeyed_replies = len(storm) - sum(1 for r in storm if r.key is not None)
    assert unkeyed_replies >= keyless, f"{unkeyed_replies} replies for {keyless} keyless storm records"

    bad_event = [r for r in storm if orjson.loads(r.value)["error"] is not None]
    types = Counter(orjson.loads(r.value)["error"]["type"] for r in bad_event)
    assert set(types) == {"BadEvent"}, f"storm records failed otherwise than BadEvent: {types}"
    expected = {r.key for r in bad_event if r.key is not None}
    expected_keyless = sum(1 for r in bad_event if r.key is None)
    assert len(expected) > 500, f"only {len(expected)} keyed storm records were bad: the storm proved little"

    copies = await consume_raw(bootstrap, node.deadletter, len(bad_event), 60)
    by_key = Counter(c.key for c in copies if c.key is not None)
    assert set(by_key) == expected, (
        f"dead letters: {len(expected - set(by_key))} BadEvent records without a copy, "
        f"{len(set(by_key) - expected)} copies of records that were not bad"
    )
    twice = {k: n for k, n in by_key.items() if n > 1}
    assert not twice, f"{len(twice)} records dead-lettered more than once"
    assert sum(1 for c in copies if c.key is None) == expected_keyless
    for c in copies:
        if c.key is None:
            continue
        value, headers = keyed[c.key]
        got = list(c.headers or ())
        names = [name for name, _ in got]
        assert names.count("faas_error") == 1 + sum(1 for n, _ in headers if n == "faas_error")
        if "faas_deadletter_error" in names:  # too big for the topic: sent without its value, saying so
            assert c.value is None
            got = [h for h in got if h[0] != "faas_deadletter_error"]
        else:
            assert c.value == value, f"dead-letter copy of {c.key!r} differs from the record"
        assert got[:-1] == list(headers) and got[-1][0] == "faas_error", f"headers of {c.key!r} changed"


async def storm(node: Node, broker: EmbeddedBroker) -> tuple[int, int, Counter[str]]:
    rng = random.Random(20240607)
    p = await producer(broker.bootstrap)
    try:
        async with ReplyReader(broker.bootstrap, node.replies) as reader:
            warm, records = events("fault.tick", 50)
            await send_all(p, node.events, records)
            assert not await reader.wait(warm, 30), node.tail()
            async with httpx.AsyncClient(timeout=10) as client:
                for _ in range(20):
                    assert (
                        await client.post(f"{node.url}/functions/{TICK}/invoke", json={})
                    ).status_code == 200
            before = tree_rss(node.proc.pid)
            per_process = [rss_by_process(node.proc.pid)]

            bad = random_records(rng, 1000) + mutated_records(rng, 1000)
            await send_all(p, node.events, bad)
            statuses = await http_storm(node, rng)
            ids, records = events("fault.tick", 200)
            await send_all(p, node.events, records)
            missing = await reader.wait(ids, 60)
            assert not missing, f"{len(missing)} valid events after the storm unanswered\n{node.tail()}"
            assert all(reader.first[i]["ok"] for i in ids)
            total = 50 + 2000 + 200
            assert await reader.wait_records(total, 30) >= total, "some storm records got no reply"
            await check_storm_answers(broker.bootstrap, node, bad)
            after = tree_rss(node.proc.pid)
            per_process.append(rss_by_process(node.proc.pid))
            print(f"\nRSS per process (MB) before {per_process[0]}, after {per_process[1]}")
            return before, after, statuses
    finally:
        await p.stop()


def test_bad_input_storm(project: Path, broker: EmbeddedBroker, nodes: Callable[..., Node]) -> None:
    """1. 1,000 random byte strings and 1,000 mutated valid events go to the events topic.
    2. 1,000 malformed HTTP requests hit the node at the same time (40 at once).
    3. 200 valid events follow.
    Result: the node stays up; every storm record got a reply (counted by distinct record, not by reply);
    every storm record answered `BadEvent` has exactly one dead-letter copy with its key, value and headers
    (plus `faas_error`), and no other record has one; every malformed HTTP request got a 4xx (never a 5xx);
    all 200 valid events are answered `ok`; the process tree's RSS grew by less than 60 MB."""
    node = nodes(project, broker.bootstrap, env={"FAAS_MAX_PAYLOAD_BYTES": "1048576"}).wait_ready()
    before, after, statuses = asyncio.run(storm(node, broker))
    growth = after - before
    print(
        f"\nbad input storm: RSS {before / 2**20:.1f} MB -> {after / 2**20:.1f} MB "
        f"({growth / 2**20:+.1f} MB); HTTP statuses {dict(sorted(statuses.items()))}"
    )
    assert node.proc.poll() is None, node.tail()
    assert httpx.get(f"{node.url}/healthz", timeout=5).status_code == 200
    server_errors = {k: v for k, v in statuses.items() if k != "raw" and int(k.split(":")[1]) >= 500}
    assert not server_errors, f"malformed requests answered 5xx: {server_errors}\n{node.tail()}"
    expected = {"0": {400}, "1": {404}, "2": {400}, "3": {405}, "4": {400}, "5": {404, 413}}
    for k in statuses:
        if k != "raw":
            kind, code = k.split(":")
            assert int(code) in expected[kind], f"case {kind} answered {code}"
    assert statuses["raw"] == 400
    assert growth < RSS_BOUND, f"RSS grew by {growth / 2**20:.1f} MB"
