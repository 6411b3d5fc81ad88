"""`faas replay` against the real broker, on dead-letter topics the tests write themselves (DESIGN.md 15).

Each test has topics of its own: a dead-letter topic holding the records it needs (platform copies of
failed events, BadEvent copies, foreign records) and an events topic that no node reads, so what the
replay produced can be read back exactly.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from framework.kafka import replay as replay_module
from framework.kafka import topic_read
from framework.kafka.cloudevents import MAX_MESSAGE
from framework.kafka.deadletter import (
    MAX_ERROR_CHARS,
    bad_event_headers,
    classify,
    failed_headers,
    replay_headers,
    replayed_copy,
)
from framework.kafka.embedded import EmbeddedBroker, free_port
from framework.kafka.options import ensure_topics
from framework.settings import Settings
from tests.support import (
    Header,
    Node,
    ce_headers,
    consume,
    consume_raw,
    produce,
    records_now,
    run_cli,
    silent_listener,
    topic_exists,
    wait_for,
    write_project,
)

Letter = tuple[bytes | None, bytes | None, list[Header], int | None]  # key, value, headers, timestamp_ms


def failed(eid: str, type_: str = "t.one", function: str = "f1", replayed: int | None = None) -> Letter:
    headers = [*ce_headers(type_, eid), ("ce_subject", b"s")]
    if replayed is not None:
        headers.append(("faas_replayed", str(replayed).encode()))
    copy = failed_headers(headers, "FunctionError", "boom", function, 2)
    return (f"key-{eid}".encode(), f'{{"id": "{eid}"}}'.encode(), [(k, v or b"") for k, v in copy], None)


def bad_event(eid: str) -> Letter:
    return (
        b"k",
        b"{not json",
        [*ce_headers("t.one", eid), ("faas_error", b"record value is not JSON")],
        None,
    )


class Topics:
    def __init__(self, broker: EmbeddedBroker, root: Path) -> None:
        tag = uuid.uuid4().hex[:8]
        self.bootstrap = broker.bootstrap
        self.root = root
        self.dead, self.events = f"t.rdead.{tag}", f"t.revents.{tag}"
        self.deployments = f"t.rdeploy.{tag}"
        """A deployment log of its own: its live revisions say which replayed events some function runs."""

    def write(self, letters: list[Letter]) -> None:
        """Dead-letter `letters`; the events topic is made too, as a node makes it (replay refuses a missing
        one)."""

        async def go() -> None:
            await ensure_topics(self.bootstrap, [self.events], 4, {})
            p = AIOKafkaProducer(bootstrap_servers=self.bootstrap)
            await p.start()
            try:
                futures = [
                    await p.send(self.dead, value=v, key=k, headers=h, timestamp_ms=ts)
                    for k, v, h, ts in letters
                ]
                await asyncio.gather(*futures)
            finally:
                await p.stop()

        asyncio.run(go())

    def replay(self, *args: str, bootstrap: str | None = None) -> Any:
        env = {
            "FAAS_KAFKA_BOOTSTRAP_SERVERS": bootstrap or self.bootstrap,
            "FAAS_DEADLETTER_TOPIC": self.dead,
            "FAAS_EVENTS_TOPIC": self.events,
            "FAAS_DEPLOYMENTS_TOPIC": self.deployments,
        }
        return run_cli(self.root, "replay", *args, env=env, timeout=120)

    def produced(self, want: int, wait: float = 10) -> list[Any]:
        return asyncio.run(consume_raw(self.bootstrap, self.events, want, wait))


@pytest.fixture
def topics(broker: EmbeddedBroker, tmp_path: Path) -> Topics:
    return Topics(broker, tmp_path)


def test_every_failed_event_replayed_once_others_counted_apart(topics: Topics) -> None:
    """1. The dead-letter topic holds: failed copies of a (t.one, f1) and b (t.two, f2), a BadEvent copy,
       a record with no headers, one with faas_* headers but a value that is no event, and a newer copy of
       a that had been replayed once already.
    2. Run `faas replay`.
    Result: exit 0; a and b are produced once each with their original key, value and headers (no
    faas_error/faas_function/faas_attempts), a with faas_replayed 2 and b with 1; the summary counts the
    skipped records by reason."""
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    junk = ("faas_error", b"X: y"), ("faas_function", b"f"), ("faas_attempts", b"1")
    letters = [
        failed(a),
        failed(b, "t.two", "f2"),
        bad_event(str(uuid.uuid4())),
        (b"z", b"\x00\x01 foreign", [], None),
        (None, b"\xff not an event", list(junk), None),
        failed(a, replayed=1),
    ]
    topics.write(letters)
    r = topics.replay()
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[:2] == [b, a] or r.stdout.splitlines()[:2] == [a, b], r.stdout
    assert r.stdout.splitlines()[-1] == "replayed 2, skipped 4 (1 bad_event, 2 foreign, 1 superseded)"
    out = {dict(m.headers)["ce_id"].decode(): m for m in topics.produced(2)}
    assert set(out) == {a, b}
    for eid, replayed, source in ((a, b"2", letters[5]), (b, b"1", letters[1])):
        m = out[eid]
        assert (m.key, m.value) == (source[0], source[1])
        original = [(k, v) for k, v in source[2] if not k.startswith("faas_")]
        assert list(m.headers) == [*original, ("faas_replayed", replayed)]
    assert len(records_now(topics.bootstrap, topics.events)) == 2, "something produced twice"
    # No deployment log on this broker: the listeners are not checked, and none is created.
    no_log = f"(no deployment log {topics.deployments!r} on the broker: nothing was deployed through it)"
    assert r.stderr.splitlines()[-1] == no_log, r.stderr
    assert not topic_exists(topics.bootstrap, topics.deployments)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--function", "f2"), ["b"]),
        (("--type", "t.one"), ["a", "c"]),
        (("--id", "c", "--id", "b"), ["b", "c"]),
        (("--type", "t.one", "--function", "f3"), ["c"]),
        (("--since", "1h"), ["a", "b"]),
        (("--since", "1d"), ["a", "b", "c"]),
        (("--function", "nobody"), []),
        (("--function", "F2"), []),  # names match exactly
        (("--type", "t.ONE"), []),
        (("--id", "ghost", "--id", "a"), ["a"]),
        (("--function", "f1", "--function", "f2"), ["a", "b"]),  # any of them (the last one was taken)
        (("--type", "t.two", "--type", "t.one", "--since", "1h"), ["a", "b"]),
    ],
)
def test_selection(topics: Topics, args: tuple[str, ...], expected: list[str]) -> None:
    """1. Failed copies of a (t.one, f1), b (t.two, f2) and c (t.one, f3, dead-lettered 5 hours ago).
    2. `faas replay --dry-run` with a selection.
    Result: exactly the selected ce_ids are listed, the others counted as not selected, nothing produced;
    an `--id` with no copy on the topic is named on stderr, and so is a `--function` or `--type` no copy
    has, with those the topic holds."""
    ids = {n: str(uuid.uuid4()) for n in "abc"}
    old = int((time.time() - 5 * 3600) * 1000)
    k, v, h, _ = failed(ids["c"], "t.one", "f3")
    topics.write([failed(ids["a"]), failed(ids["b"], "t.two", "f2"), (k, v, h, old)])
    r = topics.replay("--dry-run", *[ids.get(x, x) for x in args])
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert sorted(lines[:-1]) == sorted(ids[n] for n in expected), r.stdout
    skipped = 3 - len(expected)
    reasons = f" ({skipped} not selected)" if skipped else ""
    assert lines[-1] == f"dry run: replayed 0, skipped {skipped}{reasons}; {len(expected)} would be replayed"
    assert records_now(topics.bootstrap, topics.events) == []
    assert ("no failed event with ce_id 'ghost'" in r.stderr) == ("ghost" in args), r.stderr
    # A --function or --type no failed event has is said, with what the topic holds.
    for flag, what, seen in (("--function", "function", "f1, f2, f3"), ("--type", "type", "t.one, t.two")):
        for value in [args[i + 1] for i, arg in enumerate(args) if arg == flag]:
            said = f"no failed event of {what} {value!r} on {topics.dead} ({what}s there: {seen})"
            assert (said in r.stderr) == (value not in seen.split(", ")), r.stderr


LISTENER = """
functions:
  - name: f2
    uuid: {uuid}
    handler: functions.m:handle
    state: draft
    events: [t.two]
"""


def test_events_replayed_to_no_productive_function_are_warned_of(topics: Topics, tmp_path: Path) -> None:
    """1. The deployment log serves f2, listening to t.two; nothing listens to t.one and f1 is not deployed.
    2. Failed copies of a (t.one, failed by f1), b (t.two, f2) and c (t.two, f1); `faas replay --dry-run`.
    3. `faas undeploy f2`; `faas replay`.
    Result: each run lists and counts the events as without the warnings; after 2, stderr warns that f1
    listens to neither t.one nor t.two (1 event each) and that nothing listens to t.one (1 event), and says
    nothing of f2 or of t.two; after 3, it also warns of f2 and of t.two, and every event is replayed."""
    project = write_project(
        tmp_path / "fns", LISTENER.format(uuid=uuid.uuid4()), {"m": "def handle(p, c):\n    pass\n"}
    )
    env = {"FAAS_KAFKA_BOOTSTRAP_SERVERS": topics.bootstrap, "FAAS_DEPLOYMENTS_TOPIC": topics.deployments}
    r = run_cli(project, "deploy", "f2", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    ids = {n: str(uuid.uuid4()) for n in "abc"}
    topics.write([failed(ids["a"]), failed(ids["b"], "t.two", "f2"), failed(ids["c"], "t.two", "f1")])

    r = topics.replay("--dry-run")
    assert r.returncode == 0 and sorted(r.stdout.splitlines()[:-1]) == sorted(ids.values()), r.stdout
    assert r.stdout.splitlines()[-1] == "dry run: replayed 0, skipped 0; 3 would be replayed"
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: 'f1' is not a productive listener of 't.one' now: it would not run the 1 replayed event "
        "it failed",
        "warning: 'f1' is not a productive listener of 't.two' now: it would not run the 1 replayed event "
        "it failed",
        "warning: no productive function listens to 't.one' now: 1 replayed event of it would be answered "
        "with no results",
    ], r.stderr

    r = run_cli(project, "undeploy", "f2", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    r = topics.replay()
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "replayed 3, skipped 0", r.stdout + r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == [
        "warning: 'f1' is not a productive listener of 't.one' now: it will not run the 1 replayed event it "
        "failed",
        "warning: 'f1' is not a productive listener of 't.two' now: it will not run the 1 replayed event it "
        "failed",
        "warning: 'f2' is not a productive listener of 't.two' now: it will not run the 1 replayed event it "
        "failed",
        "warning: no productive function listens to 't.one' now: 1 replayed event of it will be answered "
        "with no results",
        "warning: no productive function listens to 't.two' now: 2 replayed events of it will be answered "
        "with no results",
    ], r.stderr
    assert len(records_now(topics.bootstrap, topics.events)) == 3


def test_long_replay_prints_progress(topics: Topics) -> None:
    """1. 1,200 failed copies on the dead-letter topic.
    2. `faas replay`.
    Result: progress lines at 500, 1,000 and 1,200 on stderr; all 1,200 produced."""
    topics.write([failed(f"e-{i}") for i in range(1200)])
    r = topics.replay()
    assert r.returncode == 0, r.stdout + r.stderr
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("replaying:")] == [
        "replaying: 500 of 1200",
        "replaying: 1000 of 1200",
        "replaying: 1200 of 1200",
    ]
    assert r.stdout.splitlines()[-1] == "replayed 1200, skipped 0"
    assert len(topics.produced(1200, wait=30)) == 1200


def test_missing_topic_replays_nothing(topics: Topics) -> None:
    r = topics.replay()
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "replayed 0, skipped 0" and "no dead-letter topic" in r.stderr


@pytest.mark.parametrize("dry_run", [False, True], ids=["replay", "dry-run"])
def test_a_missing_events_topic_is_refused_not_made(topics: Topics, dry_run: bool) -> None:
    """1. A failed event on the dead-letter topic and no events topic (a mistyped FAAS_EVENTS_TOPIC).
    2. `faas replay`, and `faas replay --dry-run`. Result: exit 1 naming the topic and the setting,
    nothing produced, and the topic still missing (a broker that creates topics on first write made one
    no node reads, and replay said `replayed 1`; the dry run said all was well)."""
    topics.write([failed(uuid.uuid4().hex)])
    missing = f"t.nosuch.{uuid.uuid4().hex[:8]}"
    r = run_cli(
        topics.root,
        "replay",
        *(["--dry-run"] if dry_run else []),
        env={
            "FAAS_KAFKA_BOOTSTRAP_SERVERS": topics.bootstrap,
            "FAAS_DEADLETTER_TOPIC": topics.dead,
            "FAAS_EVENTS_TOPIC": missing,
            "FAAS_DEPLOYMENTS_TOPIC": topics.deployments,
        },
        timeout=120,
    )
    assert r.returncode == 1 and r.stdout == "", r.stdout + r.stderr
    assert f"no events topic {missing!r}" in r.stderr and "FAAS_EVENTS_TOPIC" in r.stderr, r.stderr
    assert "1 events would be" in r.stderr, r.stderr
    assert not topic_exists(topics.bootstrap, missing)


def test_unreachable_broker_exits_1_with_one_line(topics: Topics) -> None:
    """1. `faas replay` with a bootstrap address nothing listens on.
    Result: exit 1 and stderr is the one line saying so (none of aiokafka's own log lines)."""
    r = topics.replay(bootstrap=f"127.0.0.1:{free_port()}")
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("cannot reach the Kafka broker at"), r.stderr


def _lost_broker(tmp_path: Path, letters: int) -> tuple[EmbeddedBroker, Topics]:
    """A broker of the test's own (it gets killed), its dead-letter topic holding `letters` failed events."""
    own = EmbeddedBroker(log_path=tmp_path / "lost-broker.log").start()
    topics = Topics(own, tmp_path)
    topics.write([failed(f"lost-{i:05d}") for i in range(letters)])
    return own, topics


@pytest.mark.usefixtures("broker_kills")
def test_a_broker_lost_while_reading_is_the_reads_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. A dead-letter topic of 30,000 failed events on a broker of its own. 2. `replay()`; the broker is
    killed at the first progress line of the read.
    Result: the read's own KafkaError (it stalled), not the CancelledError aiokafka's `stop` raised on top
    of it (which `faas replay` printed as a traceback); nothing is produced."""
    monkeypatch.setattr(topic_read, "READ_STALL", 2.0)
    monkeypatch.setattr(topic_read, "READ_PROGRESS_EVERY", 1000)
    own, topics = _lost_broker(tmp_path, 30_000)
    settings = Settings(
        deadletter_topic=topics.dead, events_topic=topics.events, kafka_request_timeout_ms=5000
    )
    try:

        def progress(stage: str, done: int, total: int | None) -> None:
            if stage == "read":
                own.kill()

        async def run() -> None:
            async with asyncio.timeout(60):
                await replay_module.replay(
                    own.bootstrap, settings, replay_module.Selection(), False, progress
                )

        with pytest.raises(KafkaError):
            asyncio.run(run())
    finally:
        own.kill()


@pytest.mark.usefixtures("broker_kills")
def test_a_broker_lost_while_producing_says_what_went_out(tmp_path: Path) -> None:
    """1. A dead-letter topic of 20,000 failed events on a broker of its own. 2. `faas replay`; the broker
    is killed once its first progress line says 500 were replayed.
    Result: exit 1; stdout lists the ce_ids the broker acknowledged (500 or more, in order); stderr says
    the replay stopped, how many were acknowledged, sent without acknowledgement (named) and not sent,
    adding up to 20,000; no traceback, no "never retrieved" future."""
    own, topics = _lost_broker(tmp_path, 20_000)
    env = {
        **os.environ,
        "FAAS_MANIFEST": str(tmp_path / "functions.yaml"),
        "FAAS_KAFKA_BOOTSTRAP_SERVERS": own.bootstrap,
        "FAAS_DEADLETTER_TOPIC": topics.dead,
        "FAAS_EVENTS_TOPIC": topics.events,
        "FAAS_DEPLOYMENTS_TOPIC": topics.deployments,
        "FAAS_KAFKA_REQUEST_TIMEOUT_MS": "5000",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "framework", "replay"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("replaying: "):
                own.kill()
                break
        out, rest = proc.communicate(timeout=90)
    finally:
        proc.kill()
        own.kill()
    err = "".join(seen) + rest
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "never retrieved" not in err, err
    acked = out.split()
    assert len(acked) >= 500 and acked == sorted(acked), err
    stop = re.search(r"^replay stopped: the broker at (\S+) did not take a record: (\w+)(.*)$", err, re.M)
    assert stop is not None and stop[1] == own.bootstrap, err
    assert stop[3] != f": {stop[2]}", err  # an error that says only its name is said in words
    assert f"replayed {len(acked)} (the ce_ids above, acknowledged)" in err, err
    unconfirmed = re.search(r"^(\d+) sent, not acknowledged \(they may have landed\): (.*)$", err, re.M)
    maybe = unconfirmed[2].split() if unconfirmed else []
    assert not unconfirmed or int(unconfirmed[1]) == len(maybe)
    unsent = re.search(r"^(\d+) not sent$", err, re.M)
    assert unsent is not None, err
    assert len(acked) + len(maybe) + int(unsent[1]) == 20_000


async def test_an_address_that_never_answers_is_given_up_on(monkeypatch: pytest.MonkeyPatch) -> None:
    """1. `replay()` against a TCP listener that accepts connections and never answers (a wrong port, a
    proxy), the bound on reaching the broker lowered from 15 s to 1 s. Result: BrokerUnreachable saying
    there was no answer within 1 s, raised after about that long (aiokafka alone waited 40 s)."""
    monkeypatch.setattr(topic_read, "CONNECT_TIMEOUT", 1.0)
    with silent_listener() as port:
        started = time.monotonic()
        with pytest.raises(topic_read.BrokerUnreachable, match="no answer within 1 s"):
            await replay_module.replay(f"127.0.0.1:{port}", Settings(), replay_module.Selection())
        assert time.monotonic() - started < 10


@pytest.mark.parametrize("since", ["ten minutes", "5", "-1h", "1w"])
def test_bad_since_is_a_usage_error(topics: Topics, since: str) -> None:
    r = topics.replay("--since", since)
    assert r.returncode == 2 and "--since" in r.stderr and "not a duration" in r.stderr, r.stderr


def test_a_bad_event_copy_says_why_in_a_failed_copys_form() -> None:
    """A BadEvent copy: the record's own headers, unchanged and in order (a null one too), then `faas_error`
    `BadEvent: <reason>` (a reason the parser cut at MAX_MESSAGE already); replay counts it apart, never
    replays it."""
    original: list[tuple[str, bytes | None]] = [("b", b"1"), ("a", None), ("b", b"2")]
    marked = bad_event_headers(original, "record value is not JSON")
    assert marked == [*original, ("faas_error", b"BadEvent: record value is not JSON")]
    assert classify(b"{not json", marked).kind == "bad_event"


def test_a_bad_event_copy_of_a_record_carrying_our_headers_is_still_one() -> None:
    """A record too large to be an event (a valid event otherwise) that carried `faas_function` and
    `faas_attempts` of its own (copied back from a dead-letter topic by a generic tool). Result: its copy
    counts as a BadEvent one, never replayed (it counted as a failed event's, and went back to the events
    topic, still too large)."""
    own = [*ce_headers("t", "i"), ("faas_function", b"f"), ("faas_attempts", b"1")]
    marked = bad_event_headers(own, "record value of 2097154 bytes is over the limit")
    assert classify(b"{}", marked).kind == "bad_event"


def test_a_failed_copy_carries_the_whole_error_up_to_its_cap() -> None:
    """`faas_error` is the reply's `Type: message` as it is: a 10,000-character message whole (it was cut
    at MAX_MESSAGE, 500, once); one past MAX_ERROR_CHARS is cut there and ends in an ellipsis, so an
    exception text of megabytes cannot make the copy too large to produce."""
    message = "é" + "x" * 10_000 + "END"
    error = dict(failed_headers([], "FunctionError", message, "f", 1))["faas_error"]
    assert error == f"FunctionError: {message}".encode() and len(message) > MAX_MESSAGE
    cut = (dict(failed_headers([], "FunctionError", "y" * 1_000_000, "f", 1))["faas_error"] or b"").decode()
    assert len(cut) == MAX_ERROR_CHARS + 1 and cut.endswith("y…") and cut.startswith("FunctionError: y")


def test_classify_and_replay_headers() -> None:
    """The record kinds one by one, and the headers of a replayed record."""
    eid = str(uuid.uuid4())
    _k, v, h, _ = failed(eid, replayed=3)
    letter = classify(v, h)
    assert (letter.kind, letter.event_id, letter.type, letter.function, letter.replayed) == (
        "failed",
        eid,
        "t.one",
        "f1",
        3,
    )
    assert classify(b"{}", ce_headers("t", "i")).kind == "foreign"
    assert classify(b"{}", [("faas_error", b"x")]).kind == "bad_event"
    assert classify(v, [*h[:-1], ("faas_attempts", b"many")]).kind == "foreign"
    assert classify(v, [*h[:-1], ("faas_attempts", b"0")]).kind == "foreign"
    assert classify(v, [*h[:-1], ("faas_attempts", b"12")]).kind == "foreign"  # more than retries allow
    assert classify(v, [*h[:-1], ("faas_attempts", b"99999999999999999999999")]).kind == "foreign"
    assert classify(v, [*h[:-1], ("faas_attempts", b"11")]).kind == "failed"  # 1 + retry.attempts' 10
    platform_error = next(i for i, (n, _) in enumerate(h) if n == "faas_error")
    for empty in (None, b""):  # the platform always says why it failed
        forged = [(n, empty if i == platform_error else x) for i, (n, x) in enumerate(h)]
        assert classify(v, forged).kind == "foreign"
    # faas_replayed comes with the event's own headers: a producer's odd one is no replay, the copy ours.
    odd = [(n, b"zz" if n == "faas_replayed" else x) for n, x in h]
    assert (classify(v, odd).kind, classify(v, odd).replayed) == ("failed", 0)
    # 4,300 nines parse (Python's limit), but their successor would not print: `faas replay` raised.
    for huge in (b"9" * 4300, str(2**31).encode()):
        big = [(n, huge if n == "faas_replayed" else x) for n, x in h]
        assert (classify(v, big).kind, classify(v, big).replayed) == ("failed", 0)
    assert classify(v, [(n, x) for n, x in h if n != "faas_function"]).kind == "foreign"
    assert classify(b"[1", h).kind == "foreign"
    assert classify(v, [*h, ("faas_function", b"\xff")]).kind == "foreign"
    assert replay_headers([("ce_id", b"1"), ("FAAS_x", b"y"), ("faas_error", None)], 4) == [
        ("ce_id", b"1"),
        ("faas_replayed", b"4"),
    ]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ([("faas_replayed", b"2")], (("tests", "i"), 2)),
        # The last one, as the node reads it.
        ([("faas_replayed", b"1"), ("faas_replayed", b"5")], (("tests", "i"), 5)),
        ([], None),
        ([("faas_replayed", b"0")], None),
        ([("faas_replayed", b"-1")], None),
        ([("faas_replayed", b"two")], None),
        ([("faas_replayed", None)], None),
    ],
)
def test_a_replayed_copy_on_the_events_topic_is_read_by_its_header(
    extra: list[tuple[str, bytes | None]], expected: tuple[tuple[str, str], int] | None
) -> None:
    """The copies `faas replay` produced, as its count of earlier replays reads them: an event with a
    usable `faas_replayed`; anything else (no header, not a count, a record that is no event) is not."""
    assert replayed_copy(b"{}", [*ce_headers("t", "i"), *extra]) == expected
    assert replayed_copy(b"{not json", [*ce_headers("t", "i"), ("faas_replayed", b"3")]) is None


async def test_progress_while_reading_and_replaying(topics: Topics, monkeypatch: pytest.MonkeyPatch) -> None:
    """`replay()` in process with progress every 2 records read and every 2 produced: 5 failed copies give
    reads at 2 and 4 (or more at once: a fetch may bring several) and replays at 2, 4, 5 of 5."""
    await asyncio.to_thread(topics.write, [failed(f"p-{i}") for i in range(5)])
    monkeypatch.setattr(topic_read, "READ_PROGRESS_EVERY", 2)
    monkeypatch.setattr(replay_module, "PROGRESS_EVERY", 2)
    calls: list[tuple[str, int, int | None]] = []
    settings = Settings(deadletter_topic=topics.dead, events_topic=topics.events)
    report = await replay_module.replay(
        topics.bootstrap, settings, replay_module.Selection(), progress=lambda *a: calls.append(a)
    )
    assert len(report.replayed) == 5
    reads = [c for c in calls if c[0] == "read"]
    assert reads and all(total is None for _, _, total in reads), calls
    assert reads[-1][1] in (4, 5) and [n for _, n, _ in reads] == sorted({n for _, n, _ in reads}), calls
    assert [c for c in calls if c[0] == "replay"] == [("replay", 2, 5), ("replay", 4, 5), ("replay", 5, 5)]


def test_null_header_value_stays_null(topics: Topics) -> None:
    """1. A failed copy whose event had a header with a null value (and one with an empty value).
    2. `faas replay`.
    Result: the replayed record has the null header as null and the empty one as empty, in order."""
    eid = str(uuid.uuid4())
    headers: list[tuple[str, bytes | None]] = [*ce_headers("t.one", eid), ("x-null", None), ("x-empty", b"")]
    copy = failed_headers(headers, "FunctionError", "boom", "f1", 1)
    topics.write([(b"k", b'{"a": 1}', copy, None)])  # type: ignore[list-item]
    r = topics.replay()
    assert r.returncode == 0, r.stdout + r.stderr
    (m,) = topics.produced(1)
    assert list(m.headers) == [*headers, ("faas_replayed", b"1")]


def test_back_to_back_replays_count_up(topics: Topics) -> None:
    """1. One failed copy of a, never replayed; no node reads the events topic, so no replayed copy of it
       fails again.
    2. `faas replay --id a` twice, then `faas replay` (no selection).
    Result: three copies of a on the events topic with faas_replayed 1, 2 and 3."""
    a = str(uuid.uuid4())
    topics.write([failed(a)])
    for args in (("--id", a), ("--id", a), ()):
        r = topics.replay(*args)
        assert r.returncode == 0 and r.stdout.splitlines()[-1] == "replayed 1, skipped 0", r.stdout + r.stderr
    counts = sorted(dict(m.headers)["faas_replayed"] for m in topics.produced(3))
    assert counts == [b"1", b"2", b"3"]


def from_source(letter: Letter, source: bytes, key: bytes | None, value: bytes) -> Letter:
    """`letter` as an event of `source`, with `key` and `value`."""
    _, _, headers, ts = letter
    return (key, value, [(k, source if k == "ce_source" else v) for k, v in headers], ts)


def test_an_event_is_its_source_and_id(topics: Topics) -> None:
    """1. Failed copies of two events with one ce_id from two sources (sys-a, key ka; sys-b, key kb), then
       a second copy of sys-a's (it failed again), with no key, stamped a minute later.
    2. `faas replay --dry-run --id d`, then `faas replay --id d`, then again.
    Result: two events replayed (the ce_id listed twice), one superseded copy; each back with its own key
    and value, sys-a's from its newest copy; the second replay counts each event on its own: 2 and 2."""
    d = str(uuid.uuid4())
    now_ms = int(time.time() * 1000)
    a = from_source(failed(d), b"sys-a", b"ka", b'{"from": "a"}')
    b = from_source(failed(d), b"sys-b", b"kb", b'{"from": "b"}')
    again = from_source(failed(d), b"sys-a", None, b'{"from": "a, again"}')
    topics.write([(*a[:3], now_ms - 60_000), (*b[:3], now_ms - 60_000), (*again[:3], now_ms)])
    r = topics.replay("--dry-run", "--id", d)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1] == "dry run: replayed 0, skipped 1 (1 superseded); 2 would be replayed"
    assert r.stdout.count(d) == 2, r.stdout
    r = topics.replay("--id", d)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == "replayed 2, skipped 1 (1 superseded)", r.stdout
    first = {(m.key, m.value): dict(m.headers)["faas_replayed"] for m in topics.produced(2)}
    assert first == {(None, b'{"from": "a, again"}'): b"1", (b"kb", b'{"from": "b"}'): b"1"}, first
    assert topics.replay("--id", d).returncode == 0
    second = [(m.value, dict(m.headers)["faas_replayed"]) for m in topics.produced(4)]
    assert sorted(second) == [
        (b'{"from": "a, again"}', b"1"),
        (b'{"from": "a, again"}', b"2"),
        (b'{"from": "b"}', b"1"),
        (b'{"from": "b"}', b"2"),
    ], second


def test_the_newest_copy_is_the_latest_stamped_whatever_its_partition() -> None:
    """1. Two copies of one event without a key, on partitions 0 (stamped later) and 1 (earlier), read in
    (partition, offset) order. 2. Two copies in one partition, the later one stamped earlier.
    Result: 1 the copy of partition 0 is replayed, the other superseded; 2 the later one."""
    from aiokafka import ConsumerRecord

    _, _, headers, _ = failed("e")

    def copy(partition: int, timestamp: int, value: bytes) -> Any:
        return ConsumerRecord("dead", partition, 0, timestamp, 0, None, value, None, 0, 0, headers)

    report = replay_module.Report()
    chosen = replay_module.select(
        [copy(0, 2_000, b'{"n": "newer"}'), copy(1, 1_000, b'{"n": "older"}')],
        replay_module.Selection(),
        time.time(),
        report,
    )
    assert [c.record.value for c in chosen] == [b'{"n": "newer"}']
    assert report.skipped == {"superseded": 1}
    # In one partition the later offset is newer, even stamped earlier (another node's clock).
    later = ConsumerRecord("dead", 0, 5, 1_000, 0, None, b'{"n": "later"}', None, 0, 0, headers)
    first = copy(0, 2_000, b'{"n": "first"}')
    chosen = replay_module.select([first, later], replay_module.Selection(), 0, replay_module.Report())
    assert [c.record.value for c in chosen] == [b'{"n": "later"}']


def test_an_event_is_selected_by_its_newest_copy() -> None:
    """1. Event e failed in f1 (copy at offset 0), was replayed and failed in f2 (offset 1, faas_replayed 1);
    event g failed in f1 once. 2. Select `--function f1`, then `--function f2`.
    Result: 1 only g: e's newest copy is f2's failure, so both its copies count as not selected; 2 e, from its
    newest copy, its older copy superseded, and g not selected."""
    from aiokafka import ConsumerRecord

    def copy(offset: int, letter: Letter) -> Any:
        key, value, headers, _ = letter
        return ConsumerRecord("dead", 0, offset, 1_000 + offset, 0, key, value, None, 0, 0, headers)

    records = [copy(0, failed("e", function="f1")), copy(1, failed("e", function="f2", replayed=1))]
    records.append(copy(2, failed("g", function="f1")))
    report = replay_module.Report()
    chosen = replay_module.select(records, replay_module.Selection(functions=frozenset({"f1"})), 0, report)
    assert [c.event[1] for c in chosen] == ["g"]
    assert report.skipped == {"not selected": 2}
    report = replay_module.Report()
    chosen = replay_module.select(records, replay_module.Selection(functions=frozenset({"f2"})), 0, report)
    assert [(c.event[1], c.record.offset, c.replayed) for c in chosen] == [("e", 1, 1)]
    assert report.skipped == {"superseded": 1, "not selected": 1}


def test_events_of_a_key_are_replayed_in_the_order_they_first_failed() -> None:
    """1. Events a then b of one key fail (copies at offsets 0 and 1); a is replayed alone and fails again
    (offset 2, faas_replayed 1). 2. Select both. Result: a, then b (by their oldest copies): ordered by the
    newest copies, b came first, and the key's events were replayed backwards."""
    from aiokafka import ConsumerRecord

    def copy(offset: int, letter: Letter) -> Any:
        _, value, headers, _ = letter
        return ConsumerRecord("dead", 3, offset, 1_000 + offset, 0, b"K", value, None, 0, 0, headers)

    records = [copy(0, failed("a")), copy(1, failed("b")), copy(2, failed("a", replayed=1))]
    report = replay_module.Report()
    chosen = replay_module.select(records, replay_module.Selection(), 0, report)
    assert [(c.event[1], c.record.offset) for c in chosen] == [("a", 2), ("b", 1)]
    assert report.replayed == ["a", "b"] and report.skipped == {"superseded": 1}


def test_the_newest_copy_does_not_depend_on_the_order_partitions_are_read_in() -> None:
    """Copies of one keyless event: on partition 0 at offsets 1 (stamped 250, failed in f1) and 2 (stamped
    150 by a slow clock, f1); on partition 1 (stamped 200, failed in g). Read in every order, select
    `--function g`. Result: always the copy of partition 1 (partition 0's newest is offset 2, stamped 150),
    the two others superseded."""
    from aiokafka import ConsumerRecord

    def copy(partition: int, offset: int, timestamp: int, function: str) -> Any:
        _, value, headers, _ = failed("e", function=function)
        return ConsumerRecord("dead", partition, offset, timestamp, 0, None, value, None, 0, 0, headers)

    records = [copy(0, 1, 250, "f1"), copy(1, 0, 200, "g"), copy(0, 2, 150, "f1")]
    for order in itertools.permutations(records):
        report = replay_module.Report()
        chosen = replay_module.select(
            list(order), replay_module.Selection(functions=frozenset({"g"})), 0, report
        )
        assert [(c.record.partition, c.record.offset) for c in chosen] == [(1, 0)], order
        assert report.skipped == {"superseded": 2}, order


def test_replay_counts_read_the_whole_events_topic_on_the_embedded_broker(topics: Topics) -> None:
    """1. The events topic holds, in one partition: a replayed copy of a stamped 10 hours ago
       (faas_replayed 7), one stamped now (faas_replayed 2), then 50 other events each in a batch of its
       own, stamped 3 hours ago (producers may stamp records with their event's own time); the dead-letter
       topic a failed copy of a stamped 1 hour ago.
    2. `faas replay --id a`.
    Result: the new copy says faas_replayed 8: on the embedded broker, whose time lookups answer offset 0,
    no search on timestamps that need not grow with offsets is trusted; the whole topic is read (before,
    a search landed among the old-stamped events, skipped the copy saying 2, and the new copy said 1)."""
    a = str(uuid.uuid4())
    key, value, headers, _ = failed(a)
    original = [(k, v) for k, v in headers if not k.startswith("faas_")]
    hour_ms = 3600 * 1000
    now_ms = int(time.time() * 1000)

    async def events() -> None:
        p = AIOKafkaProducer(bootstrap_servers=topics.bootstrap, linger_ms=0)
        await p.start()
        try:
            for n, ts in ((b"7", now_ms - 10 * hour_ms), (b"2", None)):
                h = [*original, ("faas_replayed", n)]
                await (await p.send(topics.events, value, key, partition=0, headers=h, timestamp_ms=ts))
            old_ms = now_ms - 3 * hour_ms
            for i in range(50):
                other = ce_headers("t.other", str(uuid.uuid4()))
                await (
                    await p.send(
                        topics.events, b"{}", b"o%d" % i, partition=0, headers=other, timestamp_ms=old_ms
                    )
                )
        finally:
            await p.stop()

    asyncio.run(events())
    topics.write([(key, value, headers, now_ms - hour_ms)])
    r = topics.replay("--id", a)
    assert r.returncode == 0, r.stdout + r.stderr
    copies = [dict(m.headers) for m in topics.produced(53)]
    assert sorted(h["faas_replayed"] for h in copies if "faas_replayed" in h) == [b"2", b"7", b"8"]


FIXABLE = "2e721e00-0000-4000-8000-0000000000f1"
FIXABLE_MANIFEST = f"""
functions:
  - name: fixable
    uuid: {FIXABLE}
    handler: functions.fix:fixable
    state: productive
    events: [rp.fix]
    env: {{OUT: "{{out}}"}}
"""
FIXABLE_MODULE = """
import os

async def fixable(payload, ctx):
    if os.path.exists(os.path.join(os.environ["OUT"], "broken")):
        raise ValueError("broken until fixed")
    return {"fixed": True}
"""


def test_replay_count_survives_successful_replays(
    broker: EmbeddedBroker, nodes: Callable[..., Node], tmp_path: Path
) -> None:
    """1. A node serves `fixable`, which fails while OUT/broken exists; produce event E: it fails and is
       dead-lettered.
    2. Remove `broken` (the fix); `faas replay --id E`: E succeeds.
    3. `faas replay --id E` again: E succeeds again.
    4. Put `broken` back; `faas replay --id E`: E fails and is dead-lettered again.
    5. Remove `broken`; `faas replay --id E`.
    Result: the replayed copies of E on the events topic say faas_replayed 1, 2, 3 and 4 (each counts
    every replay before it, the successful ones too); the second dead-letter copy says 3; the replies are
    ok false, ok true, ok true, ok false, ok true."""
    out = tmp_path / "out"
    out.mkdir()
    root = write_project(
        tmp_path / "proj", FIXABLE_MANIFEST.replace("{out}", str(out)), {"fix": FIXABLE_MODULE}
    )
    node = nodes(root, broker.bootstrap).wait_ready()
    env = {
        "FAAS_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap,
        "FAAS_EVENTS_TOPIC": node.events,
        "FAAS_DEADLETTER_TOPIC": node.deadletter,
        "FAAS_DEPLOYMENTS_TOPIC": node.deployments,
    }
    eid = str(uuid.uuid4())

    def replies(want: int) -> list[bool]:
        def got() -> list[bool] | None:
            # Only E's replies are on the node's own topic: one more than wanted is read for a second, so
            # an extra one (a duplicate) shows.
            found = [
                r["value"]["ok"]
                for r in consume(broker.bootstrap, node.replies, want + 1, timeout=1)
                if isinstance(r["value"], dict) and r["value"].get("id") == eid
            ]
            return found if len(found) >= want else None

        return list(wait_for(got, timeout=60, interval=0.5, message=f"{want} replies to E\n{node.tail()}"))

    def dead_letters(want: int) -> list[Any]:
        def got() -> list[Any] | None:
            every = asyncio.run(consume_raw(broker.bootstrap, node.deadletter, want + 1, wait=1))
            found = [d for d in every if dict(d.headers or ()).get("ce_id") == eid.encode()]
            return found if len(found) >= want else None

        return list(wait_for(got, timeout=60, interval=0.5, message=f"{want} dead letters of E"))

    def replay_e() -> None:
        r = run_cli(root, "replay", "--id", eid, env=env, timeout=120)
        assert r.returncode == 0 and r.stdout.splitlines()[0] == eid, r.stdout + r.stderr
        # The node deployed `fixable`, which listens to the event's type: it runs the event again.
        assert "warning" not in r.stderr and "listeners not checked" not in r.stderr, r.stderr

    (out / "broken").write_text("")
    produce(
        broker.bootstrap, node.events, [(b"k", json.dumps({"id": eid}).encode(), ce_headers("rp.fix", eid))]
    )
    assert replies(1) == [False]
    dead_letters(1)

    (out / "broken").unlink()
    replay_e()
    assert replies(2) == [False, True]
    replay_e()
    assert replies(3) == [False, True, True]

    (out / "broken").write_text("")
    replay_e()
    assert replies(4) == [False, True, True, False]
    assert dict(dead_letters(2)[1].headers)["faas_replayed"] == b"3"

    (out / "broken").unlink()
    replay_e()
    assert replies(5) == [False, True, True, False, True]
    events = [
        e for e in records_now(broker.bootstrap, node.events) if dict(e.headers).get("ce_id") == eid.encode()
    ]
    assert [dict(e.headers).get("faas_replayed") for e in events] == [None, b"1", b"2", b"3", b"4"]


def test_an_error_that_says_only_its_name_is_said_in_words() -> None:
    from aiokafka.errors import KafkaTimeoutError

    stopped = replay_module.ReplayStopped(replay_module.Report(), [], 3, KafkaTimeoutError())
    assert str(stopped) == (
        "KafkaTimeoutError: no acknowledgement within the request timeout (FAAS_KAFKA_REQUEST_TIMEOUT_MS)"
    )
    assert str(replay_module.ReplayStopped(replay_module.Report(), [], 0, ValueError("x"))) == "ValueError: x"
    assert str(replay_module.ReplayStopped(replay_module.Report(), [], 0, OSError())) == "OSError"
