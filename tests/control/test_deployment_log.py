"""The deployment log: what a batch of bad records does to a reader, in which order revisions are written.

The Kafka tests run `KafkaLog` in this process against the session's real broker, each on a topic of its
own, with the node's code cache as the code sink.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient

from framework.control import kafka_log as kafka_log_module
from framework.control.code_cache import CodeCache
from framework.control.deployment_log import MemoryLog
from framework.control.kafka_log import KafkaLog
from framework.control.log_state import LogState
from framework.control.revisions import Revision, code_key, encode, sha256
from framework.kafka.embedded import EmbeddedBroker
from framework.settings import Settings
from tests.control.zips import BROKEN, package
from tests.support import Record, new_id, produce_async

MODULE = "async def handle(payload, ctx):\n    return 1\n"


def revision(uuid: str, name: str, code: bytes, number: int = 1) -> Revision:
    spec = {"name": name, "uuid": uuid, "handler": "functions.m:handle", "state": "productive"}
    return Revision(uuid, name, number, "deploy", spec, sha256(code), "2026-01-01T00:00:00.000Z", "t@h")


def with_timeout(rev: Revision, timeout: int) -> Revision:
    """`rev` with another `timeout` in its spec: a change worth a revision of its own."""
    return dataclasses.replace(rev, spec={**rev.spec, "timeout": timeout})


def code_record(data: bytes) -> Record:
    return code_key(sha256(data)).encode(), data, []


def rev_record(rev: Revision) -> Record:
    return rev.key.encode(), encode(rev), []


async def until(condition: Callable[[], object], timeout: float, message: str) -> None:
    """Poll `condition` on the running loop until it holds; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"{message} not met within {timeout} s")
        await asyncio.sleep(0.05)


def kafka_log(tmp_path: Path, broker: EmbeddedBroker, topic: str, follow: bool) -> KafkaLog:
    state = LogState(on_code=CodeCache(tmp_path / "cache").store)
    return KafkaLog(state, Settings(deployments_topic=topic), broker.bootstrap, follow=follow)


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_records_after_a_bad_code_record_in_the_same_fetch_apply(
    tmp_path: Path, broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A following log on an empty topic. 2. Produce in one batch (so one fetch reads them): a code
    record whose zip holds a 300-character file name (unpacking fails with OSError), a good code record,
    a revision of alpha using it. 3. Produce another revision. Result: the bad record is a warning naming
    its offset and the OSError (not a debug line); alpha's revision 1 from the same fetch is applied,
    then revision 2: the follower goes on."""
    topic = f"t.deploy.{new_id()[:8]}"
    log = kafka_log(tmp_path, broker, topic, follow=True)
    u, code = new_id(), package(MODULE)
    await log.start()
    try:
        with caplog.at_level(logging.WARNING, "faas.deployments"):
            bad = BROKEN["300-character name"][0]()
            await produce_async(
                broker.bootstrap,
                topic,
                [code_record(bad), code_record(code), rev_record(revision(u, "alpha", code))],
            )
            await until(lambda: log.state.newest(u) is not None, 10, "revision 1 applied")
            second = revision(u, "alpha", code, 2)
            await produce_async(broker.bootstrap, topic, [rev_record(second)])
            await until(lambda: log.state.newest(u) == second, 10, "revision 2 applied")
        skips = [w for w in warnings(caplog) if "skipped the record" in w]
        assert len(skips) == 1 and "at offset 0" in skips[0] and "File name too long" in skips[0], skips
        assert log.state.codes == {sha256(code)}
    finally:
        await log.stop()


async def test_a_batch_of_several_records_is_not_taken_for_a_lost_log(
    tmp_path: Path, broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A following log (end checks every 0.05 s). 2. Another tool produces three records in one batch
    (a restore, a mirror), then, after ten end checks, a revision on its own.
    Result: the broker's end offset stays below the records read (Tansu: the last batch's base offset + 1)
    all the while, yet the log is not taken for lost: no reset, no "broker lost it" warning, one small
    fetch to tell (not one per check); the revision after it applies."""
    monkeypatch.setattr(kafka_log_module, "CHECK_EVERY", 0.05)
    topic = f"t.deploy.{new_id()[:8]}"
    log = kafka_log(tmp_path, broker, topic, follow=True)
    resets: list[None] = []
    log.on_reset = lambda: resets.append(None)
    checks, probes = 0, 0
    check_end, still_there = log._check_end, log._still_there

    async def counted_check() -> None:
        nonlocal checks
        checks += 1
        await check_end()

    async def counted_probe(offset: int) -> bool:
        nonlocal probes
        probes += 1
        return await still_there(offset)

    log._check_end, log._still_there = counted_check, counted_probe  # type: ignore[method-assign]
    u, code = new_id(), package(MODULE)
    await log.start()
    try:
        with caplog.at_level(logging.WARNING, "faas.deployments"):
            batch = [
                code_record(code),
                rev_record(revision(u, "alpha", code)),
                code_record(package("x = 1\n")),
            ]
            await produce_async(broker.bootstrap, topic, batch)
            await until(lambda: log.position == 3, 10, "the batch read")
            assert await log.end_offset() < log.position  # the case at hand: the floor
            seen = checks
            await until(lambda: checks >= seen + 10, 10, "ten end checks")
            assert await log.end_offset() < log.position
            second = revision(u, "alpha", code, 2)
            await produce_async(broker.bootstrap, topic, [rev_record(second)])
            await until(lambda: log.state.newest(u) == second, 10, "revision 2 applied")
        assert resets == [] and not [w for w in warnings(caplog) if "lost it" in w], warnings(caplog)
        assert probes == 1
    finally:
        await log.stop()


async def test_a_new_reader_skips_every_kind_of_unusable_zip(
    tmp_path: Path, broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A topic holding, in this order: a code record of each unusable zip (flipped deflate bytes,
    encrypted, unknown compression method, 300-character name, truncated), a good code record and a
    revision using it. 2. A reader starts (reads the log to its end, as a node does before /readyz).
    Result: the start returns; each bad record is one warning naming its offset and why; the revision is
    applied."""
    topic = f"t.deploy.{new_id()[:8]}"
    first = kafka_log(tmp_path / "first", broker, topic, follow=False)
    await first.start()  # creates the topic as a node would (compacted, one partition)
    await first.stop()
    u, code = new_id(), package(MODULE)
    records = [code_record(make()) for make, _ in BROKEN.values()]
    records += [code_record(code), rev_record(revision(u, "alpha", code))]
    for record in records:  # one at a time: every offset known
        await produce_async(broker.bootstrap, topic, [record])
    reader = kafka_log(tmp_path / "second", broker, topic, follow=False)
    with caplog.at_level(logging.WARNING, "faas.deployments"):
        try:
            await asyncio.wait_for(reader.start(), 30)
        finally:
            await reader.stop()
    skips = [w for w in warnings(caplog) if "skipped the record" in w]
    assert len(skips) == len(BROKEN), skips
    for offset, (skip, (_, why)) in enumerate(zip(skips, BROKEN.values(), strict=True)):
        assert f"at offset {offset}" in skip and why in skip, skip
    assert reader.state.newest(u) == revision(u, "alpha", code)


async def test_a_write_after_the_broker_lost_the_topic_creates_it_again(
    tmp_path: Path, broker: EmbeddedBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. A log (not following) writes a code record: its producer now holds the topic's metadata.
    2. The topic is deleted, as a restarted memory-only broker loses it. 3. The same log writes the code
    record and a revision of alpha using it. 4. A new reader starts (reads the log to its end).
    Result: the topic is there again, one partition; the reader's start returns within 30 s and it holds
    the revision. (Before: the producer wrote to the missing topic, which Tansu acknowledges and never
    serves, so the reader's start waited for records no fetch returned.)"""
    # Every write checks here: the topic is lost within the second a check holds for (a broker restarts
    # slower than that).
    monkeypatch.setattr(kafka_log_module, "TOPIC_CHECK_EVERY", 0.0)
    topic = f"t.deploy.{new_id()[:8]}"
    u, code = new_id(), package(MODULE)
    rev = revision(u, "alpha", code)
    log = kafka_log(tmp_path / "writer", broker, topic, follow=False)
    await log.start()
    try:
        await log.write([(code_key(sha256(code)), code)])
        admin = AIOKafkaAdminClient(bootstrap_servers=broker.bootstrap)
        await admin.start()
        try:
            await admin.delete_topics([topic])
            assert topic not in await admin.list_topics()
            await log.write([(code_key(sha256(code)), code), (rev.key, encode(rev))])
            assert topic in await admin.list_topics()  # listing all topics creates none
            reader = kafka_log(tmp_path / "reader", broker, topic, follow=False)
            try:
                await asyncio.wait_for(reader.start(), 30)
            finally:
                await reader.stop()
            assert reader.state.newest(u) == rev
            described = await admin.describe_topics([topic])
            assert [len(t["partitions"]) for t in described] == [1], described
        finally:
            await admin.close()
    finally:
        await log.stop()


async def test_a_record_over_this_nodes_own_limits_is_still_written(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. A log whose node has the default FAAS_MAX_CODE_BYTES (1 MiB) writes a 17 MB record (a code record a
    deployer with a higher limit published, now republished after the topic was lost).
    Result: the write succeeds and a reader gets the record back (the producer was sized for its own
    limit, 16 MiB, and every republish of such a log failed with MessageSizeTooLargeError)."""
    topic = f"t.deploy.{new_id()[:8]}"
    blob = bytes(range(256)) * (17 * 1024 * 1024 // 256)
    log = kafka_log(tmp_path / "writer", broker, topic, follow=False)
    await log.start()
    try:
        await log.write([("big", blob)])
    finally:
        await log.stop()
    reader = AIOKafkaConsumer(
        topic,
        bootstrap_servers=broker.bootstrap,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=32 * 1024 * 1024,
        fetch_max_bytes=32 * 1024 * 1024,
    )
    await reader.start()
    try:
        got = await asyncio.wait_for(reader.getone(), 30)
    finally:
        await reader.stop()
    assert (got.key, got.value) == (b"big", blob)


async def test_a_batch_frees_a_name_before_taking_it() -> None:
    """1. alpha (uuid A) is live. 2. Publish one batch: B as alpha, then A renamed to gamma. Result: A's
    rename is written first, so both are applied (B served as alpha, A as gamma), and the results come
    back in the order asked."""
    a, b, code = new_id(), new_id(), package(MODULE)
    log = MemoryLog(LogState())
    await log.publish(revision(a, "alpha", code), code)
    out = await log.publish_all([(revision(b, "alpha", code), code), (revision(a, "gamma", code), code)])
    assert [(r.uuid, r.revision, new) for r, new in out] == [(b, 1, True), (a, 2, True)]
    assert {u: r.spec["name"] for u, r in log.state.live().items()} == {a: "gamma", b: "alpha"}


async def test_a_gap_in_the_numbers_keeps_the_newest_five_held() -> None:
    """1. Revisions 1 and 2 published; a revision 50 written by hand (a gap). 2. Publish a change (51), then
    6 more (52..57). Result: after 1 every revision is kept (51, 50, 2, 1: fewer than five), only 46's
    tombstone written; after 2 the newest five held are kept (57..53), the older ones tombstoned."""
    a, code = new_id(), package(MODULE)
    log = Recording(LogState())
    timed = functools.partial(with_timeout, revision(a, "alpha", code))
    await log.publish(revision(a, "alpha", code), code)
    await log.publish(timed(2), None)
    await log.write([(f"rev:{a}:50", encode(revision(a, "alpha", code, 50)))])
    log.written.clear()
    (rev, new) = await log.publish(timed(3), None)
    assert (rev.revision, new) == (51, True)
    assert [r.revision for r in log.state.kept(a)] == [51, 50, 2, 1]
    assert [k for k, v in log.written if v is None] == [f"rev:{a}:46"]
    for timeout in range(4, 10):
        await log.publish(timed(timeout), None)
    assert [r.revision for r in log.state.kept(a)] == [57, 56, 55, 54, 53]


async def test_a_gap_inside_the_newest_five_forgets_none_of_them() -> None:
    """Revisions 1-4 published, 5 never written, 6 written by hand; publish a change (7). Result: 7, 6,
    4, 3, 2 are kept (the newest five held): 7 - 5 = 2 is one of them, so no tombstone for it; only 1 is
    forgotten."""
    a, code = new_id(), package(MODULE)
    log = Recording(LogState())
    timed = functools.partial(with_timeout, revision(a, "alpha", code))
    await log.publish(revision(a, "alpha", code), code)
    for timeout in (2, 3, 4):
        await log.publish(timed(timeout), None)
    await log.write([(f"rev:{a}:6", encode(dataclasses.replace(timed(6), revision=6)))])
    assert [r.revision for r in log.state.kept(a)] == [6, 4, 3, 2, 1]
    log.written.clear()
    (rev, new) = await log.publish(timed(7), None)
    assert (rev.revision, new) == (7, True)
    assert [r.revision for r in log.state.kept(a)] == [7, 6, 4, 3, 2]
    assert [k for k, v in log.written if v is None] == [f"rev:{a}:1"]


async def test_a_code_record_is_forgotten_with_the_last_kept_revision_using_it() -> None:
    """1. alpha published six times with codes c1..c6 (revision 1 falls out); beta uses c2. 2. alpha's
    revision 7 (c7): revision 2 falls out. 3. alpha's revision 8 goes back to c4; revision 3 falls out.
    Result: 1 tombstones c1 (nothing kept uses it); 2 tombstones no code (beta's revision uses c2); 3
    tombstones c3, and c4 stays (revisions 4 and 8 use it). The log then holds exactly the codes its kept
    revisions use."""
    a, b = new_id(), new_id()
    codes = {i: package(MODULE + f"# {i}\n") for i in range(1, 8)}
    log = Recording(LogState())
    await log.publish(revision(b, "beta", codes[2]), codes[2])
    for i in range(1, 6):
        await log.publish(revision(a, "alpha", codes[i], i), codes[i])
    log.written.clear()
    await log.publish(revision(a, "alpha", codes[6], 6), codes[6])
    assert [k for k, v in log.written if v is None] == [f"rev:{a}:1", code_key(sha256(codes[1]))]
    log.written.clear()
    await log.publish(revision(a, "alpha", codes[7], 7), codes[7])
    assert [k for k, v in log.written if v is None] == [f"rev:{a}:2"]
    log.written.clear()
    (rev, new) = await log.publish(revision(a, "alpha", codes[4], 8), codes[4])
    assert (rev.revision, new) == (8, True)
    assert [k for k, v in log.written if v is None] == [f"rev:{a}:3", code_key(sha256(codes[3]))]
    used = {r.code_sha256 for uuid in (a, b) for r in log.state.kept(uuid)}
    assert log.state.codes == used == {sha256(codes[i]) for i in (2, 4, 5, 6, 7)}


async def test_a_code_forgotten_under_a_publisher_is_written_again() -> None:
    """1. alpha's revision 1 uses code X, which is on the log. 2. A publisher of beta with code X looks at
    the log (X is there: no code record to write), and before its revision record lands a rival forgets X
    (its tombstone). Result: readers refuse that revision record (no code), so the publisher writes X
    again and its revision after it: beta is published, served with X, and the log holds X."""
    a, b, code = new_id(), new_id(), package(MODULE)
    log = Recording(LogState())
    await log.publish(revision(a, "alpha", code), code)
    forget = [(code_key(sha256(code)), None)]

    async def rival_first(records: list[tuple[str, bytes | None]]) -> None:
        if forget and any(key.startswith(f"rev:{b}:") for key, _ in records):
            await MemoryLog.write(log, [forget.pop()])
        await Recording.write(log, records)

    log.write = rival_first  # type: ignore[method-assign]
    (rev, new) = await log.publish(revision(b, "beta", code), code)
    assert (rev.uuid, rev.revision, new) == (b, 1, True)
    assert log.state.live()[b].code_sha256 == sha256(code) and sha256(code) in log.state.codes
    assert [k for k, _ in log.written].count(code_key(sha256(code))) == 2  # alpha's, then again for beta


class Recording(MemoryLog):
    """A log in memory that keeps what was written."""

    def __init__(self, state: LogState) -> None:
        super().__init__(state)
        self.written: list[tuple[str, bytes | None]] = []

    async def write(self, records: list[tuple[str, bytes | None]]) -> None:
        self.written.extend(records)
        await super().write(records)


async def test_a_lost_log_is_published_again_in_the_order_first_applied() -> None:
    """1. On one log: B as alpha (revision 1), A as beta (revision 1), B renamed to gamma (2), A renamed
    to alpha (2). 2. The log is lost (its keys forgotten) and published again. 3. A new reader reads the
    copy. Result: the copy holds the revisions in the order first applied (not by number), so the new
    reader serves what the first did: A as alpha and B as gamma."""
    a, b, code = new_id(), new_id(), package(MODULE)
    log = Recording(LogState())
    for rev in (revision(b, "alpha", code), revision(a, "beta", code)):
        await log.publish(rev, code)
    for rev in (revision(b, "gamma", code), revision(a, "alpha", code)):
        await log.publish(rev, code)
    served = {u: r.spec["name"] for u, r in log.state.live().items()}
    assert served == {a: "alpha", b: "gamma"}
    log.state.keys.clear()
    log.written.clear()
    kept = [r for u in (a, b) for r in log.state.kept(u)]
    assert await log.republish(kept, lambda sha: code) == 4
    copy = LogState()
    for key, value in log.written:
        copy.apply(key, value)
    assert {u: r.spec["name"] for u, r in copy.live().items()} == served
    names = [json.loads(v)["spec"]["name"] for k, v in log.written if k.startswith("rev:") and v]
    assert names == ["alpha", "beta", "gamma", "alpha"]


class Unread(Recording):
    """A log whose writes are applied only when it is read (`catch_up`), as on Kafka."""

    def __init__(self, state: LogState) -> None:
        super().__init__(state)
        self.unread: list[tuple[str, bytes | None]] = []

    async def write(self, records: list[tuple[str, bytes | None]]) -> None:
        self.written.extend(records)
        self.unread.extend(records)

    async def catch_up(self) -> None:
        records, self.unread = self.unread, []
        await MemoryLog.write(self, records)


async def test_a_lost_log_publishes_each_code_record_once() -> None:
    """1. On a log applied only when read back (as Kafka's): A and B deployed with the same code, A
    again with it (three revisions, one code record). 2. The log is lost and published again.
    Result: one code record is written, before the first revision needing it, and all three revisions."""
    a, b, code = new_id(), new_id(), package(MODULE)
    log = Unread(LogState())
    for rev in (revision(a, "alpha", code), revision(b, "beta", code), revision(a, "gamma", code)):
        await log.publish(rev, code)
    assert [k.split(":")[0] for k, v in log.written if v] == ["code", "rev", "rev", "rev"]
    kept = [r for u in (a, b) for r in log.state.kept(u)]
    log.state.keys.clear()
    log.written.clear()
    assert await log.republish(kept, lambda sha: code) == 3
    assert [k.split(":")[0] for k, _ in log.written] == ["code", "rev", "rev", "rev"]


async def test_a_lost_log_whose_code_is_not_cached_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    """1. A and B deployed with the same code. 2. The log is lost and published again with the code no
    longer cached. Result: nothing is written, the cache is asked once, and one error names both revisions
    and the code."""
    a, b, code = new_id(), new_id(), package(MODULE)
    log = Unread(LogState())
    for rev in (revision(a, "alpha", code), revision(b, "beta", code)):
        await log.publish(rev, code)
    kept = [r for u in (a, b) for r in log.state.kept(u)]
    log.state.keys.clear()
    log.written.clear()
    asked: list[str] = []
    assert await log.republish(kept, lambda sha: asked.append(sha)) == 0
    assert log.written == [] and len(asked) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [
        f"cannot publish {kept[0].key}, {kept[1].key} again: their code {asked[0][:12]} is not cached"
    ]


async def test_publishing_a_batch_of_n_revisions_costs_work_linear_in_n(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """1. 300 functions are live. 2. A batch of a new revision of each is checked for names it would take
    (`refused_names`) and published, counting the look-ups of a function's newest revision and the walks
    over every function's revisions. Result: a few look-ups per revision and no walk over all functions
    per revision (taking each name used to walk every live function: 300 look-ups per revision)."""
    count = 300
    ids, code, again = [new_id() for _ in range(count)], package(MODULE), package(MODULE + "# 2\n")
    log = MemoryLog(LogState())
    await log.publish_all([(revision(u, f"f{i}", code), code) for i, u in enumerate(ids)])
    walks, lookups = [0], [0]

    class Walked(dict[str, dict[int, Revision]]):
        def __iter__(self):  # type: ignore[no-untyped-def]
            walks[0] += 1
            return super().__iter__()

        def items(self):  # type: ignore[no-untyped-def]
            walks[0] += 1
            return super().items()

        def values(self):  # type: ignore[no-untyped-def]
            walks[0] += 1
            return super().values()

    newest = LogState.newest

    def counted(state: LogState, uuid: str) -> Revision | None:
        lookups[0] += 1
        return newest(state, uuid)

    log.state.revisions = Walked(log.state.revisions)
    monkeypatch.setattr(LogState, "newest", counted)
    batch: list[tuple[Revision, bytes | None]] = [
        (revision(u, f"f{i}", again), again) for i, u in enumerate(ids)
    ]
    assert log.state.refused_names([(r.uuid, r.function) for r, _ in batch]) == {}
    out = await log.publish_all(batch)
    assert all(new for _, new in out) and {r.revision for r, _ in out} == {2}
    assert walks[0] <= 2 and lookups[0] <= 10 * count, (walks, lookups)


async def test_a_stream_of_revisions_is_told_a_few_times_not_once_a_fetch(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. A following log counts its tellings (`on_change`: each rebuilds the node's whole registry).
    2. Another log publishes 200 revisions (a save of a package of 200 functions: one record per request).
    Result: every revision is applied, and the last telling saw them all; the follower told a few times
    (one at once, then at most one per CHANGE_EVERY), not after each fetch (with 1,000 functions that
    took minutes to serve one edit)."""
    topic = f"t.deploy.{new_id()[:8]}"
    follower = kafka_log(tmp_path / "f", broker, topic, follow=True)
    publisher = kafka_log(tmp_path / "p", broker, topic, follow=False)
    code = package(MODULE)
    ids = [new_id() for _ in range(200)]
    seen: list[int] = []
    follower.on_change = lambda: seen.append(sum(follower.state.newest(u) is not None for u in ids))
    await follower.start()
    await publisher.start()
    try:
        started = asyncio.get_running_loop().time()
        await publisher.publish_all([(revision(u, f"f{i}", code), code) for i, u in enumerate(ids)])
        took = asyncio.get_running_loop().time() - started
        await until(lambda: seen and seen[-1] == len(ids), 10, "a telling that saw every revision")
        allowed = 2 + took / kafka_log_module.CHANGE_EVERY
        assert len(seen) <= allowed, (len(seen), allowed, took)
        assert len(seen) < len(ids) / 4, seen
    finally:
        await publisher.stop()
        await follower.stop()


async def test_what_a_following_log_publishes_is_told_when_the_publication_returns(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. A following log (a node's) publishes 30 revisions itself, as a node does at its start and in
    watch mode. Result: when the publication returns, the telling has seen all 30 (a node turns ready, or
    logs "revision N deployed", then: it must serve them), though tellings are otherwise held back up to
    CHANGE_EVERY (without this, 17 of 30 were served at ready)."""
    topic = f"t.deploy.{new_id()[:8]}"
    log = kafka_log(tmp_path, broker, topic, follow=True)
    log.create = True
    code = package(MODULE)
    ids = [new_id() for _ in range(30)]
    seen: list[int] = []
    log.on_change = lambda: seen.append(sum(log.state.newest(u) is not None for u in ids))
    await log.start()
    try:
        await log.publish_all([(revision(u, f"f{i}", code), code) for i, u in enumerate(ids)])
        assert seen and seen[-1] == len(ids), seen
    finally:
        await log.stop()
