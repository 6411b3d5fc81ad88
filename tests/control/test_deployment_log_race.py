"""Concurrent publishers on one deployment log: each is told the number that holds its own revision.

The Kafka tests run two `KafkaLog`s in this process against the session's real broker (one following,
as a node's; one reading once, as `faas deploy`'s), on a topic of their own. The in-memory tests stage
the race exactly: a rival's record for the same key lands right before ours, or right after it.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from framework.control.deployment_log import PUBLISH_ATTEMPTS, MemoryLog, PublishFailed
from framework.control.kafka_log import KafkaLog
from framework.control.log_state import LogState
from framework.control.revisions import KEPT, Revision, code_key, encode, now, sha256
from framework.kafka.embedded import EmbeddedBroker
from framework.settings import Settings
from tests.control.test_deployment_log import kafka_log
from tests.control.zips import package
from tests.support import new_id

ROUNDS = 10
FILLER = 96 * 1024
"""Characters of incompressible text in each code zip: a code record that takes a while to write."""


def code_of(tag: str, filler: int = 0) -> bytes:
    body = f"async def handle(payload, ctx):\n    return {tag!r}\n"
    return package(body + (f"# {os.urandom(filler // 2).hex()}\n" if filler else ""))


def candidate(uuid: str, code: bytes, by: str, name: str = "alpha") -> Revision:
    spec = {"name": name, "uuid": uuid, "handler": "functions.m:handle", "state": "productive"}
    return Revision(uuid, name, 0, "deploy", spec, sha256(code), now(), by)


async def test_two_publishers_at_once_each_get_a_number_of_their_own(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. Two publishers on one topic: A follows the log (a node), B reads it once (`faas deploy`).
    2. Ten times: both publish a revision of the same function at the same moment, each with code of its
    own (about 100 KB, so the code record takes a while). 3. After each round a fresh reader reads the
    log. Result: each round both are told a new revision, the two numbers differ and are the next two;
    the reader holds under each reported number exactly what its publisher wrote (its code_sha256,
    deployed_at, deployed_by), keeps the newest 5 numbers with no gap, and both publishers hold the
    same kept revisions as the reader. Whether a round collides is up to the scheduler (the old code
    collided in the first round here); the `Contended` tests below force the collision every time."""
    topic = f"t.deploy.{new_id()[:8]}"
    a = kafka_log(tmp_path / "a", broker, topic, follow=True)
    b = kafka_log(tmp_path / "b", broker, topic, follow=False)
    u = new_id()
    await a.start()
    await b.start()
    try:
        for r in range(ROUNDS):
            code_a, code_b = code_of(f"a{r}", FILLER), code_of(f"b{r}", FILLER)
            cand_a, cand_b = candidate(u, code_a, "a@test"), candidate(u, code_b, "b@test")
            (rev_a, new_a), (rev_b, new_b) = await asyncio.gather(
                a.publish(cand_a, code_a), b.publish(cand_b, code_b)
            )
            where = f"round {r + 1}: A told {rev_a.revision}, B told {rev_b.revision}"
            assert new_a and new_b, where
            assert {rev_a.revision, rev_b.revision} == {2 * r + 1, 2 * r + 2}, where
            assert (rev_a.code_sha256, rev_b.code_sha256) == (sha256(code_a), sha256(code_b)), where
            reader = kafka_log(tmp_path / f"reader{r}", broker, topic, follow=False)
            await reader.start()
            await reader.stop()
            held = {rev.revision: rev for rev in reader.state.kept(u)}
            assert held.get(rev_a.revision) == rev_a, f"{where}; revision {rev_a.revision} holds {held}"
            assert held.get(rev_b.revision) == rev_b, f"{where}; revision {rev_b.revision} holds {held}"
            top = 2 * r + 2
            assert sorted(held) == list(range(max(1, top - KEPT + 1), top + 1)), where
            await a.catch_up()
            await b.catch_up()
            assert a.state.kept(u) == b.state.kept(u) == reader.state.kept(u), where
    finally:
        await a.stop()
        await b.stop()


class Stalled(KafkaLog):
    """A `faas deploy` that stalls between numbering its revision and writing it (a paused process, a slow
    scheduler): its first revision write waits for `go`, after setting `numbered`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.numbered, self.go = asyncio.Event(), asyncio.Event()

    async def write(self, records: list[tuple[str, bytes | None]]) -> None:
        if not self.go.is_set() and any(k.startswith("rev:") and v for k, v in records):
            self.numbered.set()
            await self.go.wait()
        await super().write(records)


async def test_a_rival_that_writes_the_same_number_after_our_check_takes_the_next_one(
    tmp_path: Path, broker: EmbeddedBroker
) -> None:
    """1. B (`faas deploy`) numbers its revision of alpha 1 and stalls before writing it. 2. A (a node,
    following the log) publishes its revision, numbers it 1 too, and is told so. 3. B writes its record
    for 1, which replaces A's (the last record of a key wins). Result: B sees that A's record came
    first: it writes A's record again and is told revision 2; a fresh reader holds A's revision under 1
    and B's under 2, as each was told (deciding by the last record, B was told 1 too, and 1 held B's)."""
    topic = f"t.deploy.{new_id()[:8]}"
    a = kafka_log(tmp_path / "a", broker, topic, follow=True)
    b = Stalled(LogState(), Settings(deployments_topic=topic), broker.bootstrap, follow=False)
    u, code_a, code_b = new_id(), code_of("a"), code_of("b")
    await a.start()
    await b.start()
    try:
        late = asyncio.create_task(b.publish(candidate(u, code_b, "b@test"), code_b))
        await asyncio.wait_for(b.numbered.wait(), 10)
        rev_a, new_a = await a.publish(candidate(u, code_a, "a@test"), code_a)
        assert (rev_a.revision, new_a) == (1, True)
        b.go.set()
        rev_b, new_b = await asyncio.wait_for(late, 20)
        assert (rev_b.revision, new_b, rev_b.code_sha256) == (2, True, sha256(code_b))
        reader = kafka_log(tmp_path / "reader", broker, topic, follow=False)
        await reader.start()
        await reader.stop()
        assert [r.revision for r in reader.state.kept(u)] == [2, 1]
        assert reader.state.kept(u) == [rev_b, rev_a]
        await a.catch_up()
        assert a.state.kept(u) == reader.state.kept(u)
    finally:
        await a.stop()
        await b.stop()


class Contended(MemoryLog):
    """A log in memory where, `times` times, a rival's record for the same key lands right before ours
    (`first`: a concurrent publisher that picked the same number and appended first) or right after it
    (a rival that does not repair what it replaced: an older publisher, or one killed first). Keeps what
    we wrote (`written`) and the rival's revisions (`rivals`)."""

    def __init__(
        self,
        state: LogState,
        rival_code: bytes,
        times: int,
        same_content: bool = False,
        only: str = "",
        first: bool = True,
    ) -> None:
        super().__init__(state)
        self.only = only
        """Only this function's records get a rival (empty: every function's)."""
        self.rival_code = rival_code
        self.times = times
        self.same_content = same_content
        self.first = first
        self.written: list[tuple[str, bytes | None]] = []
        self.rivals: list[Revision] = []

    async def write(self, records: list[tuple[str, bytes | None]]) -> None:
        self.written.extend(records)
        for key, value in records:
            rival = self._rival(key, value)
            if rival is None:
                await super().write([(key, value)])
                continue
            tombstone = [(f"rev:{rival.uuid}:{rival.revision - KEPT}", None)] if rival.revision > KEPT else []
            theirs = [
                (code_key(sha256(self.rival_code)), self.rival_code),
                (rival.key, encode(rival)),
                *tombstone,
            ]
            mine = [(key, value)]
            for batch in (theirs, mine) if self.first else (mine, theirs):
                await super().write(batch)
            self.rivals.append(rival)

    def _rival(self, key: str, value: bytes | None) -> Revision | None:
        """The rival's revision for the same number as our record (`key`, `value`), if one contends."""
        if not key.startswith("rev:") or value is None or self.times == 0:
            return None
        if self.only and not key.startswith(f"rev:{self.only}:"):
            return None
        mine = Revision.from_json(json.loads(value))
        if mine.deployed_by == RIVAL:  # the rival's record, written again by us
            return None
        self.times -= 1
        sha = mine.code_sha256 if self.same_content else sha256(self.rival_code)
        return Revision(**{**mine.to_json(), "code_sha256": sha, "deployed_by": RIVAL})


RIVAL = "rival@elsewhere"


def ours(log: Contended) -> list[str]:
    """The keys of the revision records and tombstones we wrote, in the order written."""
    return [k for k, v in log.written if k.startswith("rev:")]


async def test_a_publisher_whose_number_a_rival_took_first_publishes_as_the_next_number() -> None:
    """1. Alpha has revisions 1 to 5. 2. Publish new code while a rival's revision 6 (other code) lands
    right before ours. Result: we are told revision 7, which holds our code; 6 holds the rival's, which
    we wrote again byte for byte after ours replaced it; we wrote no tombstone for our lost 6, and the
    tombstone of 2 only once 7 was read back as ours; 3 to 7 are kept."""
    u = new_id()
    log = Contended(LogState(), code_of("rival"), times=0)
    for i in range(KEPT):
        code = code_of(f"v{i}")
        await log.publish(candidate(u, code, "me@here"), code)
    log.times, log.written = 1, []
    code = code_of("mine")
    rev, new = await log.publish(candidate(u, code, "me@here"), code)
    assert (rev.revision, new, rev.code_sha256) == (7, True, sha256(code))
    assert log.state.newest(u) == rev
    assert log.state.kept(u)[1] == log.rivals[0] and log.rivals[0].revision == 6
    assert [r.revision for r in log.state.kept(u)] == [7, 6, 5, 4, 3]
    assert ours(log) == [f"rev:{u}:6", f"rev:{u}:6", f"rev:{u}:7", f"rev:{u}:2"]
    assert [v for k, v in log.written if k == f"rev:{u}:6"][1] == encode(log.rivals[0])


async def test_a_rival_record_that_replaced_ours_is_undone() -> None:
    """1. Publish alpha while a rival's revision 1 (other code) lands right after ours and the rival does
    not repair it. Result: ours came first, so we are told revision 1 and write our record again: the
    log holds ours under 1, and nothing under 2."""
    u, code = new_id(), code_of("mine")
    log = Contended(LogState(), code_of("rival"), times=1, first=False)
    rev, new = await log.publish(candidate(u, code, "me@here"), code)
    assert (rev.revision, new, rev.code_sha256) == (1, True, sha256(code))
    assert log.state.kept(u) == [rev]
    assert [(k, v) for k, v in log.written if k.startswith("rev:")] == [(rev.key, encode(rev))] * 2


async def test_a_publisher_whose_number_a_rival_took_with_the_same_content_is_unchanged() -> None:
    """1. Two nodes watching the same files publish the same change: the rival's revision 1 (same action,
    spec and code, another deployed_at and author) lands right before ours. Result: we are told
    "unchanged, revision 1" with the rival's record, which we wrote again after ours replaced it, and
    we publish nothing more."""
    u, code = new_id(), code_of("same")
    log = Contended(LogState(), code, times=1, same_content=True)
    rev, new = await log.publish(candidate(u, code, "me@here"), code)
    assert (rev, new) == (log.rivals[0], False)
    assert [r.revision for r in log.state.kept(u)] == [1]
    assert ours(log) == [f"rev:{u}:1", f"rev:{u}:1"]
    assert log.written[-1] == (f"rev:{u}:1", encode(log.rivals[0]))


async def test_a_publisher_that_keeps_losing_gives_up_with_an_error() -> None:
    """1. A rival takes every number we pick. Result: after PUBLISH_ATTEMPTS tries, PublishFailed names
    the function and the numbers tried; the log holds only the rival's revisions."""
    u, code = new_id(), code_of("mine")
    log = Contended(LogState(), code_of("rival"), times=PUBLISH_ATTEMPTS)
    with pytest.raises(PublishFailed, match=r"alpha: .*revisions? 1, 2, 3, 4, 5"):
        await log.publish(candidate(u, code, "me@here"), code)
    assert log.state.kept(u) == list(reversed(log.rivals))


async def test_a_batch_retries_only_the_revisions_that_lost() -> None:
    """1. Publish one batch of two functions; a rival takes the number of the first one written.
    Result: that one is told revision 2 (the rival holds 1), the other revision 1; each holds ours."""
    u, v = new_id(), new_id()
    code_u, code_v = code_of("u"), code_of("v")
    log = Contended(LogState(), code_of("rival"), times=1)
    cand_u, cand_v = candidate(u, code_u, "me@here"), candidate(v, code_v, "me@here", "beta")
    out = await log.publish_all([(cand_u, code_u), (cand_v, code_v)])
    assert [(r.uuid, r.revision, new) for r, new in out] == [(u, 2, True), (v, 1, True)]
    assert log.state.newest(u) == out[0][0] and log.state.newest(v) == out[1][0]
    assert log.state.kept(u)[1] == log.rivals[0]


async def test_a_batch_that_fails_in_part_says_what_it_published() -> None:
    """1. Publish one batch of alpha and beta; a rival takes every number alpha picks. Result:
    PublishFailed names alpha; its `published` holds beta's revision 1, which the log holds as ours, so
    a caller can say (and keep) what went out."""
    u, v = new_id(), new_id()
    code_u, code_v = code_of("u"), code_of("v")
    log = Contended(LogState(), code_of("rival"), times=PUBLISH_ATTEMPTS, only=u)
    cand_u, cand_v = candidate(u, code_u, "me@here"), candidate(v, code_v, "me@here", "beta")
    with pytest.raises(PublishFailed) as failed:
        await log.publish_all([(cand_u, code_u), (cand_v, code_v)])
    assert len(failed.value.failures) == 1 and failed.value.failures[0].startswith("alpha: ")
    assert list(failed.value.published) == [1]
    rev, new = failed.value.published[1]
    assert (rev.uuid, rev.revision, new, rev.code_sha256) == (v, 1, True, sha256(code_v))
    assert log.state.newest(v) == rev
