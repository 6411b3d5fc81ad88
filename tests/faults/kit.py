"""What the fault scenarios share: a groupless reply reader, a batch producer, node probes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from typing import Any

import orjson
import psutil
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from framework.tasks import within
from tests.support import Record, ce_headers, new_id


class ReplyReader:
    """Reads a topic from its start in the background, with no consumer group (no 3-5 s join on Tansu).

    `counts` holds how many replies each event id got, `first` the first reply's value per id.
    """

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.counts: Counter[str] = Counter()
        self.first: dict[str, dict[str, Any]] = {}
        self.records = 0
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None

    async def __aenter__(self) -> ReplyReader:
        self._consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            metadata_max_age_ms=500,
            max_partition_fetch_bytes=4_000_000,
        )
        await self._consumer.start()
        self._task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._consumer is not None:
            with contextlib.suppress(Exception):
                await within(self._consumer.stop(), 5)

    async def _read(self) -> None:
        assert self._consumer is not None
        while True:
            for msgs in (await self._consumer.getmany(timeout_ms=200, max_records=5000)).values():
                for m in msgs:
                    self.records += 1
                    try:
                        value = orjson.loads(m.value or b"null")
                    except orjson.JSONDecodeError:
                        continue
                    if isinstance(value, dict) and isinstance(value.get("id"), str):
                        self.counts[value["id"]] += 1
                        self.first.setdefault(value["id"], value)

    async def wait(self, ids: set[str] | list[str], timeout: float) -> set[str]:
        """Wait up to `timeout` seconds until every id in `ids` has a reply; returns those still missing."""
        deadline = time.monotonic() + timeout
        while True:
            missing = {i for i in ids if i not in self.counts}
            if not missing or time.monotonic() > deadline:
                return missing
            await asyncio.sleep(0.1)

    async def wait_records(self, n: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.records < n and time.monotonic() < deadline:  # noqa: ASYNC110 - polls a count
            await asyncio.sleep(0.1)
        return self.records

    def duplicates(self, ids: set[str] | list[str]) -> int:
        return sum(self.counts[i] - 1 for i in ids if self.counts[i] > 1)


async def producer(bootstrap: str) -> AIOKafkaProducer:
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4_000_000, linger_ms=5)
    await p.start()
    return p


async def send_all(
    p: AIOKafkaProducer, topic: str, records: list[Record], partition: int | None = None, retry_for: float = 0
) -> None:
    """Send every record and wait until the broker acknowledged them all; for `retry_for` seconds, records
    the broker refused are sent again (as a producer facing a broker that just restarted would)."""
    deadline = time.monotonic() + retry_for
    while True:
        futures = [await p.send(topic, value=v, key=k, headers=h, partition=partition) for k, v, h in records]
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed = [(r, rec) for r, rec in zip(results, records, strict=True) if isinstance(r, BaseException)]
        if not failed:
            return
        if time.monotonic() > deadline or not all(isinstance(r, KafkaError) for r, _ in failed):
            raise failed[0][0]
        records = [rec for _, rec in failed]
        await asyncio.sleep(0.2)


def events(
    type_: str, n: int, keys: int = 100, replyto: str | None = None, payload: Any = None
) -> tuple[list[str], list[Record]]:
    """`n` valid events of `type_` spread over `keys` keys; returns their ids and records."""
    ids = [new_id() for _ in range(n)]
    body = orjson.dumps(payload)
    return ids, [
        (f"k{i % keys}".encode(), body, ce_headers(type_, eid, replyto)) for i, eid in enumerate(ids)
    ]


async def raw_post(port: int, path: str, body: bytes = b"{}") -> tuple[int, bytes]:
    """POST on a fresh connection with a hand-written HTTP/1.1 request; returns (status, body).

    For load: httpx spends ~14 ms of CPU per request once hundreds wait in its pool, so at 400 req/s the
    client, not the node, would be measured (benchmarks/httpclient.py is raw for the same reason).
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        data = await reader.read(-1)
    finally:
        writer.close()
    head, _, rest = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), rest


def tree_rss(pid: int) -> int:
    """Resident memory (bytes) of a process and all its descendants."""
    root = psutil.Process(pid)
    total = 0
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            total += p.memory_info().rss
    return total


def rss_by_process(pid: int) -> dict[str, float]:
    """MB resident per process of the tree, named by pid and first command-line words (diagnostics)."""
    root = psutil.Process(pid)
    out: dict[str, float] = {}
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            out[f"{p.pid}"] = round(p.memory_info().rss / 2**20, 1)
    return out


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")
