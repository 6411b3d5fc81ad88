"""Helpers the tests share: temporary projects, `faas run` nodes, CLI runs, Kafka as the "other system"."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
from prometheus_client.parser import text_string_to_metric_families

from framework.kafka.embedded import EmbeddedBroker, free_port
from framework.settings import Settings

LOGS = Path(tempfile.gettempdir()) / "faas-test-logs"
LOGS.mkdir(parents=True, exist_ok=True)

JOINED = re.compile(r"joined group \S+ with partitions \[([\d, ]*)\]")
T = TypeVar("T")
Header = tuple[str, bytes]
Record = tuple[bytes | None, bytes | None, list[Header]]


def wait_for(
    condition: Callable[[], object], timeout: float = 10.0, interval: float = 0.05, message: str = "condition"
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not met within {timeout} s")
        time.sleep(interval)


class _Plain(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"not kafka\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the test's output is for the test


def run_async(main: Coroutine[Any, Any, T], grace: float = 10.0) -> T:
    """`asyncio.run(main)`, except that the tasks `main` leaves behind get `grace` seconds to end once
    cancelled, and those that do not are named on stderr instead of holding the test for ever.

    A Kafka client stopped within a bound after its broker died can leave a background task that does not
    end when cancelled; `asyncio.run` would wait for it until pytest-timeout, with the node under test fine.
    """
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            left = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in left:
                task.cancel()
            if left:
                _, pending = loop.run_until_complete(asyncio.wait(left, timeout=grace))
                for task in pending:
                    print(f"still running {grace} s after its cancel: {task!r}", file=sys.stderr)
                    task.print_stack(file=sys.stderr)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


@contextlib.contextmanager
def http_server(handler: type[http.server.BaseHTTPRequestHandler] | None = None) -> Iterator[int]:
    """A real HTTP server (the standard library's) on a free port, answering with `handler` (default: GET
    answers 200 `not kafka`); yields the port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler or _Plain)
    thread = threading.Thread(target=server.serve_forever, name="http-server", daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@contextlib.contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections (the kernel's backlog) and never says anything; yields it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        yield int(s.getsockname()[1])


def write_project(root: Path, manifest: str, modules: dict[str, str] | None = None) -> Path:
    """Write `functions.yaml` and `functions/<name>.py` modules under `root`; returns `root`."""
    (root / "functions").mkdir(parents=True, exist_ok=True)
    (root / "functions" / "__init__.py").write_text("")
    for name, src in (modules or {}).items():
        (root / "functions" / f"{name}.py").write_text(textwrap.dedent(src))
    (root / "functions.yaml").write_text(textwrap.dedent(manifest).lstrip("\n"))
    return root


def run_cli(
    root: Path, *args: str, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m framework ARGS` in `root` with `FAAS_MANIFEST` pointing at its manifest."""
    e = os.environ.copy()
    e["FAAS_MANIFEST"] = str(root / "functions.yaml")
    e.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "framework", *args],
        cwd=root,
        env=e,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def new_id() -> str:
    return str(uuid.uuid4())


class SameIdBroker(EmbeddedBroker):
    """An embedded broker started without `--cluster-id`: Tansu's default id, the same at every start (as
    DESIGN.md section 8's command starts it), so a restart cannot be told by the id."""

    def command(self) -> list[str]:
        cmd = super().command()
        at = cmd.index("--cluster-id")
        return cmd[:at] + cmd[at + 2 :]


class Node:
    """One `faas run` process on a free HTTP port, with topics of its own unless `tag` is shared."""

    def __init__(
        self,
        root: Path,
        bootstrap: str | None,
        tag: str | None = None,
        env: dict[str, str] | None = None,
        kafka: bool = True,
    ) -> None:
        self.root = root
        self.port = free_port()
        self.tag = tag or uuid.uuid4().hex[:8]
        self.events = f"t.events.{self.tag}"
        self.replies = f"t.replies.{self.tag}"
        self.deadletter = f"t.dead.{self.tag}"
        self.invocations = f"t.invocations.{self.tag}"
        self.deployments = f"t.deploy.{self.tag}"
        full = os.environ.copy()
        full.update(
            {
                "FAAS_MANIFEST": str(root / "functions.yaml"),
                "FAAS_HTTP_HOST": "127.0.0.1",
                "FAAS_HTTP_PORT": str(self.port),
                "FAAS_EVENTS_TOPIC": self.events,
                "FAAS_REPLIES_TOPIC": self.replies,
                "FAAS_DEADLETTER_TOPIC": self.deadletter,
                "FAAS_INVOCATIONS_TOPIC": self.invocations,
                "FAAS_DEPLOYMENTS_TOPIC": self.deployments,
                "FAAS_SCHEDULER_TOPIC": f"t.scheduler.{self.tag}",
                "FAAS_KAFKA_GROUP_ID": f"t-{self.tag}",
                "FAAS_LOG_FORMAT": "text",
                # The shortest Apache Kafka accepts: a pair's hand-over takes ~9 s less than at the default.
                "FAAS_KAFKA_SESSION_TIMEOUT_MS": "6000",
                "PYTHONUNBUFFERED": "1",
            }
        )
        if bootstrap:
            full["FAAS_KAFKA_BOOTSTRAP_SERVERS"] = bootstrap
        full.update(env or {})
        self.log = LOGS / f"node-{self.tag}-{self.port}.log"
        args = [sys.executable, "-m", "framework", "run"] + ([] if kafka else ["--no-kafka"])
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                args, cwd=root, env=full, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 45) -> Node:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"faas run exited {self.proc.returncode}:\n{self.tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"node not ready in {timeout} s:\n{self.tail()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 40) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the whole process group, instances included, as a machine failure would."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


def partitions(node: Node) -> list[int] | None:
    """The partitions the node's last "joined group" log line names (None before it joined)."""
    found = JOINED.findall(node.log.read_text(errors="replace"))
    if not found:
        return None
    return sorted(int(p) for p in found[-1].replace(" ", "").split(",") if p)


def settled(a: Node, b: Node, count: int) -> None:
    """Wait until the pair's last rebalance gave each node a share and every one of `count` partitions an
    owner (read from each node's "joined group" log line): the condition, not a pause, ends a rebalance."""

    def shared() -> bool:
        pa, pb = partitions(a), partitions(b)
        return bool(pa and pb and not set(pa) & set(pb) and sorted(pa + pb) == list(range(count)))

    wait_for(shared, timeout=40, message=f"both nodes owning a share\na:\n{a.tail(5)}\nb:\n{b.tail(5)}")


def metric(node: Node, name: str, **labels: str) -> float:
    """The sum of the samples of `name` matching `labels` in the node's /metrics."""
    total = 0.0
    for family in text_string_to_metric_families(httpx.get(f"{node.url}/metrics", timeout=5).text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


# ---- Kafka as the other system ----


def ce_headers(type_: str, id_: str, replyto: str | None = None) -> list[Header]:
    h = [
        ("ce_specversion", b"1.0"),
        ("ce_type", type_.encode()),
        ("ce_id", id_.encode()),
        ("ce_source", b"tests"),
        ("content-type", b"application/json"),
    ]
    if replyto:
        h.append(("ce_replyto", replyto.encode()))
    return h


async def produce_async(bootstrap: str, topic: str, records: list[Record]) -> None:
    from aiokafka import AIOKafkaProducer

    p = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=40_000_000)  # records of 17 MiB too
    await p.start()
    try:
        futs = [await p.send(topic, value=v, key=k, headers=h) for k, v, h in records]
        await asyncio.gather(*futs)
    finally:
        await p.stop()


def produce(bootstrap: str, topic: str, records: list[Record]) -> None:
    asyncio.run(produce_async(bootstrap, topic, records))


async def consume_raw(
    bootstrap: str, topic: str, want: int, wait: float, ids: set[str] | None = None
) -> list[Any]:
    """Read `topic` from the start until `want` records or every id in `ids` (the value's "id").

    No consumer group (so no 3-5 s join on Tansu): the reader is assigned every partition at once.
    """
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=8_000_000,
        metadata_max_age_ms=500,
    )
    await c.start()
    out: list[Any] = []
    pending = set(ids or ())
    deadline = time.monotonic() + wait
    try:
        while len(out) < want and time.monotonic() < deadline and not (ids and not pending):
            for msgs in (await c.getmany(timeout_ms=300)).values():
                out.extend(msgs)
                for m in msgs:
                    with contextlib.suppress(ValueError, AttributeError, TypeError):
                        pending.discard(json.loads(m.value).get("id"))
    finally:
        await c.stop()
    return out


def consume(
    bootstrap: str, topic: str, want: int, timeout: float = 30, ids: set[str] | None = None
) -> list[dict[str, Any]]:
    """Read `topic` from the start until `want` records, or every id in `ids` (by value "id"), or timeout.

    Each record is a dict: key, value (parsed JSON when it is JSON), partition, offset, headers (str).
    """
    return [_as_dict(m) for m in asyncio.run(consume_raw(bootstrap, topic, want, timeout, ids))]


def records_now(bootstrap: str, topic: str) -> list[Any]:
    """Every record `topic` holds now ([] when it does not exist), without waiting for more: for checks
    after whoever writes it has finished (its writes acknowledged). `faas replay`'s own reader, which ends
    at the end offsets it finds (`topic_read.read_topic`)."""
    from framework.kafka.topic_read import read_topic

    return asyncio.run(read_topic(bootstrap, topic, Settings(_env_file=None))) or []


def topic_exists(bootstrap: str, topic: str) -> bool:
    """Whether the broker has `topic`, asked from its topic list (asking for the topic itself, as a reader
    assigned to it does, would have the broker create it)."""
    from framework.kafka.topic_read import partitions, reader_of, started

    async def ask() -> bool:
        consumer = await started(reader_of(bootstrap, Settings(_env_file=None)))
        try:
            return await partitions(consumer, topic) is not None
        finally:
            await consumer.stop()

    return asyncio.run(ask())


def topic_now(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    """`records_now` as `consume` gives records."""
    return [_as_dict(m) for m in records_now(bootstrap, topic)]


def _as_dict(m: Any) -> dict[str, Any]:
    try:
        value = json.loads(m.value) if m.value else None
    except ValueError:
        value = m.value
    return {
        "key": m.key,
        "value": value,
        "partition": m.partition,
        "offset": m.offset,
        "headers": {k: v.decode(errors="replace") for k, v in (m.headers or [])},
    }


CLONE_NEWUSER = 0x10000000


def namespaces_allowed(uid: int | None) -> bool:
    """Whether a process (as `uid`) may enter a user namespace here: then hiding must succeed."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            if uid is not None:
                os.setgroups([])
                os.setresgid(uid, uid, uid)
                os.setresuid(uid, uid, uid)
            os._exit(0 if ctypes.CDLL(None, use_errno=True).unshare(CLONE_NEWUSER) == 0 else 1)
        finally:
            os._exit(1)
    return os.waitpid(pid, 0)[1] == 0


def produce_one_batch(
    bootstrap: str, topic: str, records: list[tuple[bytes | None, bytes, list[tuple[str, bytes]]]]
) -> None:
    """Produce `records` (key, value, headers) as one batch on partition 0 through aiokafka's pure-Python
    builder, so a `RawHeaderName` goes out as its bytes (the compiled builder encodes names itself)."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy

    async def send() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            batch = producer.create_batch()
            batch._builder = _DefaultRecordBatchBuilderPy(2, 0, 0, -1, -1, 0, 1 << 20)
            for key, value, headers in records:
                assert batch.append(key=key, value=value, timestamp=None, headers=headers)
            await (await producer.send_batch(batch, topic, partition=0))
        finally:
            await producer.stop()

    asyncio.run(send())


class RawHeaderName(str):
    """A Kafka header name whose UTF-8 encoding is `raw`, any bytes: what Go clients and librdkafka may
    send (aiokafka's builders encode a name with `.encode()`)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawHeaderName:
        name = super().__new__(cls, raw.decode("latin-1"))
        name.raw = raw
        return name

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw
