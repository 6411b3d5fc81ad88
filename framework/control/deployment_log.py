"""The deployment log (DESIGN.md section 12): a compacted, one-partition topic of code and revision records.

Here: the log's records applied to a `LogState`, and publishing. `KafkaLog` (`kafka_log.py`) moves the
records through the topic; `MemoryLog` is the same log in the node's memory, for `faas run --no-kafka`.

- A write is done when read back: `publish` writes the code record, waits for its acknowledgement, then
  the revision record, reads the log back to check that the revision is its own, then writes the
  tombstone of revision n-5 (and of the code records only the forgotten revisions used), and (when
  following) waits until the follower has applied them, so the caller sees its own write;
- tombstones forget: the newest `KEPT` revisions of each function stay, and the code records they use.

Concurrent publishers (two `faas deploy` at once, two watching nodes) cannot lock a topic, and the last record
of a key wins, so two that pick the same number would both be told "revision N deployed" while N holds one of
them. `publish_all` therefore numbers only after its code records are acknowledged (reading the log to its end
right before writing the revision records: a rival picks the same number only within one read and one produce
round trip, not during a code upload), and after writing reads the log back, then once more to a fresh end
offset. The first record of a number wins: each publisher watches the records of its keys applied after it
numbered (`_Contest`), and the first one readers accepted decides. Ours first: we keep the number, and write
our record again if a rival's record has replaced it since (a rival that lost repairs that too; this covers
one that died first, or an older publisher). Another's first: we lost; our record replaced it (the last
record of a key wins), so we write the winner's record again, byte for byte, and number ours again as the
next number, or report "unchanged" when it now equals the newest revision (two nodes watching the same
files: one revision, the first one's time); up to `PUBLISH_ATTEMPTS` times, then PublishFailed. Of the
writers of one number the first keeps it, so each attempt settles at least one of them, and a publisher
told N is the one whose record N holds, however late a rival's record comes. (Deciding by the last record
would tell both N whenever a rival that numbered before our record was appended appended its own only after
our read back: three `faas deploy` at once do that about one time in ten.) Followers apply the loser's
record and then the winner's again, so a node may serve the loser's revision for that moment.

Tombstones are written only for revisions read back as the publisher's own, after the check: a loser
writes none for a number it lost, and after its retry as n+1 it forgets n-4, which the winner's n and its
own n+1 have pushed out of the newest `KEPT`. Numbers never go down (each attempt numbers after reading
further), so no tombstone reaches into the newest `KEPT` of what is on the log.

What is left: a loser killed between its write and its repair, whose record landed after the winner's
check, leaves the number holding the loser's record although the winner was told it (`faas history` shows
what each number holds). The reverse also remains: a publisher that fails after its record was
acknowledged (the read back timing out) reports a failure although the revision may be published.

A bad record never stops the reader: `LogState.apply` skips it with a warning and never raises.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import orjson
from aiokafka.errors import KafkaError

from framework.control.log_state import LogState
from framework.control.revisions import KEPT, MAX_REVISION, Revision, code_key, encode, revision_key

log = logging.getLogger("faas.deployments")

PUBLISH_ATTEMPTS = 5
"""Times a publication numbers and writes a revision before it gives up. Of the publishers that pick one
number at once, the one whose record comes last keeps it, so k publishers at once need at most k."""


def as_read(rev: Revision) -> Revision:
    """`rev` as a reader parses its record (the uuid lower case, the spec as JSON gives it back)."""
    return Revision.from_json(json.loads(encode(rev)))


@dataclass
class _Contest:
    """The records of one revision's key applied after its publisher numbered it, in log order: each
    value with the revision it made the key hold, None when readers refused it (module docstring)."""

    rev: Revision
    seen: list[tuple[bytes, Revision | None]] = field(default_factory=list)

    def winner(self) -> tuple[bytes, Revision] | None:
        """The first record readers accepted: whoever wrote it keeps the number."""
        return next(((value, held) for value, held in self.seen if held is not None), None)


def _parsed(value: bytes) -> Revision | None:
    """`value` as `LogState.apply` parses a revision record; None when it is none."""
    try:
        return Revision.from_json(orjson.loads(value))
    except ValueError:  # not JSON (orjson's error is a ValueError), or not a revision
        return None


class PublishFailed(KafkaError):  # type: ignore[misc]  # aiokafka is untyped
    """A revision could not be published: other publishers took every number tried, or readers refused
    its record. A KafkaError, so a caller that only knows the log failing handles it as such.

    `failures` says why, one line per revision not published; `published` holds, by the index asked,
    what `publish_all` would have returned for the others of the batch (they are on the log)."""

    def __init__(self, failures: list[str], published: dict[int, tuple[Revision, bool]]) -> None:
        super().__init__("; ".join(failures))
        self.failures = failures
        self.published = published


class DeploymentLog:
    """The log's records applied to `state`; subclasses move the records."""

    def __init__(self, state: LogState) -> None:
        self.state = state
        self.on_change: Callable[[], None] | None = None
        self.on_reset: Callable[[], None] | None = None
        self._lock = asyncio.Lock()
        self._contests: dict[str, _Contest] = {}
        """The revision keys a publication awaits, by key (`_observe`)."""

    async def start(self) -> None:
        """Read the whole log (and keep following it, where that applies)."""

    async def stop(self) -> None:
        """Stop following."""

    async def catch_up(self) -> None:
        """Return once every record written before the call is applied."""

    async def code_records(self, shas: Collection[str]) -> dict[str, bytes]:
        """The values of those code records `shas` the log holds now, by sha256 (read afresh from its
        start: for code whose folder went). A log in memory keeps no records: it has none."""
        return {}

    async def write(self, records: list[tuple[str, bytes | None]]) -> None:
        """Write `records` in order and wait until every one is acknowledged."""
        raise NotImplementedError

    async def publish(self, candidate: Revision, code: bytes | None) -> tuple[Revision, bool]:
        """Publish `candidate` as the next revision of its function, unless it equals the newest one.

        Returns (the revision now newest, whether it is new). See `publish_all`.
        """
        return (await self.publish_all([(candidate, code)]))[0]

    async def publish_all(self, items: list[tuple[Revision, bytes | None]]) -> list[tuple[Revision, bool]]:
        """Publish each candidate (one per function) that differs from its function's newest revision.

        Returns, in the order asked, (the revision now newest, whether it is new). Steps (module
        docstring, "Concurrent publishers"): the code records are written and acknowledged first (a
        revision is never on the log without its code); then the log is read to its end and the
        candidates are numbered; then the revision records are written, read back, and the log read once
        more to a fresh end offset; the first record readers accepted under each key since the numbering
        keeps the number: ours (written again if a rival's replaced it), or another writer's (written
        again, since ours replaced it, and ours numbered and written again: up to `PUBLISH_ATTEMPTS`
        times in all; "unchanged" if it now equals the newest); only then are the tombstones of the
        revisions that fall out of the newest `KEPT` written. Raises PublishFailed when a candidate keeps
        losing its number, or when readers refuse a revision record (a warning says why); the others of
        the batch may be published then.
        """
        async with self._lock:
            out: dict[int, tuple[Revision, bool]] = {}
            pending = list(range(len(items)))
            tried: dict[int, list[int]] = {i: [] for i in pending}
            failures: list[str] = []
            for _ in range(PUBLISH_ATTEMPTS):
                await self.catch_up()
                codes = self._missing_codes([items[i] for i in pending])
                if codes:
                    await self.write(codes)
                    # Number only now: a code record of up to FAAS_MAX_CODE_BYTES may take a while to
                    # write, and numbers picked before it would be stale by then.
                    await self.catch_up()
                numbered: dict[int, Revision] = {}
                for i in sorted(pending, key=lambda i: self._claims(items[i][0])):
                    candidate = items[i][0]
                    newest = self.state.newest(candidate.uuid)
                    if newest is not None and candidate.same_as(newest):
                        out[i] = (newest, False)
                        continue
                    number = self.state.next_number(candidate.uuid)
                    if number > MAX_REVISION:  # only a hand-written record numbers so high
                        failures.append(
                            f"{candidate.function}: revision {number - 1} is the highest a revision may "
                            "have: publish the function under a new uuid"
                        )
                        continue
                    numbered[i] = candidate.numbered(number)
                if not numbered:  # each one unchanged
                    pending = []
                    break
                # Watched from here on (no await since numbering): the records of these keys applied from
                # now are the ones written by us and by rivals that picked the same numbers.
                contests = {i: _Contest(rev) for i, rev in numbered.items()}
                self._contests.update({c.rev.key: c for c in contests.values()})
                values = {i: encode(rev) for i, rev in numbered.items()}  # once: encoding is not cheap
                try:
                    await self.write([(numbered[i].key, value) for i, value in values.items()])
                    await self.catch_up()
                    # Once more, to a fresh end offset: a rival's record acknowledged while we read back
                    # is seen too, so a rival that lost repairs what it replaced before we move on.
                    await self.catch_up()
                finally:
                    for contest in contests.values():
                        self._contests.pop(contest.rev.key, None)
                pending, won = [], []
                repairs: list[tuple[str, bytes | None]] = []
                for i, contest in contests.items():
                    rev, mine = contest.rev, values[i]
                    first = contest.winner()
                    if first is None and self._code_forgotten(rev, items[i][1]):
                        # A rival forgot its code (`_orphans`) between our look and our write: again.
                        tried[i].append(rev.revision)
                        pending.append(i)
                        log.info(
                            "%s: its code record was forgotten meanwhile: publishing again", rev.function
                        )
                        continue
                    if first is None:
                        why = "readers refused it: see the warning naming its key"
                        if not any(value == mine for value, _ in contest.seen):
                            why = "it was not read back"
                        failures.append(
                            f"{rev.function}: revision {rev.revision} was written but the log does not "
                            f"hold it ({why})"
                        )
                        continue
                    value, held = first
                    if value == mine:
                        out[i] = (rev, True)
                        won.append(rev)
                        if self._held(rev) != held:  # a rival's record replaced ours: ours is first
                            repairs.append((rev.key, mine))
                        continue
                    # Another's record came first: it keeps the number, and ours replaced it.
                    if self._held(rev) != held:
                        repairs.append((rev.key, value))
                    tried[i].append(rev.revision)
                    pending.append(i)
                    log.info(
                        "%s: revision %d was taken by another publisher (%s at %s): publishing again",
                        rev.function,
                        rev.revision,
                        held.deployed_by,
                        held.deployed_at,
                    )
                if repairs:
                    await self.write(repairs)
                    await self.catch_up()
                await self._forget_old(won)
                if not pending:
                    break
            for i in pending:
                numbers = ", ".join(str(n) for n in tried[i])
                failures.append(
                    f"{items[i][0].function}: other publishers took revisions {numbers} in turn; gave up "
                    f"after {PUBLISH_ATTEMPTS} attempts (none of them holds this revision): publish again"
                )
            if failures:
                raise PublishFailed(failures, out)
            return [out[i] for i in range(len(items))]

    def _missing_codes(self, items: list[tuple[Revision, bytes | None]]) -> list[tuple[str, bytes | None]]:
        """The code records the new revisions among `items` need and the log does not hold yet."""
        codes: dict[str, bytes | None] = {}
        for candidate, code in items:
            sha = candidate.code_sha256
            if code is None or sha is None or sha in self.state.codes:
                continue
            if not candidate.same_as(self.state.newest(candidate.uuid)):
                codes[code_key(sha)] = code
        return list(codes.items())

    def _code_forgotten(self, rev: Revision, code: bytes | None) -> bool:
        """Whether `rev` was refused for lacking a code record this publisher holds and can write again."""
        return rev.action == "deploy" and code is not None and rev.code_sha256 not in self.state.codes

    def _held(self, rev: Revision) -> Revision | None:
        """The revision the log holds under `rev`'s key, whoever wrote it."""
        return self.state.revisions.get(rev.uuid.lower(), {}).get(rev.revision)

    def _observe(self, key: str | None, value: bytes | None) -> None:
        """Called by the reader after applying each record: note it when a publication awaits its key."""
        contest = self._contests.get(key or "")
        if contest is None or value is None:
            return
        held = self._held(contest.rev)
        accepted = held is not None and held == _parsed(value)
        contest.seen.append((value, held if accepted else None))

    async def _forget_old(self, won: list[Revision]) -> None:
        """Tombstone, for each revision in `won` (each read back as ours), revision n-KEPT and any older one
        held beyond the newest KEPT, never one of those: written only for a number known to be ours, so a
        loser never forgets one. Then the code records only those forgotten revisions used (`_orphans`)."""
        records: list[tuple[str, bytes | None]] = []
        forgotten: list[Revision] = []
        for rev in won:
            # n - KEPT, and any held beyond the newest KEPT (one a race left: numbered, then not
            # tombstoned); never one of the newest KEPT held, so a gap in the numbers (a hand-written
            # record) keeps five all the same.
            kept = self.state.kept(rev.uuid)
            newest = {r.revision for r in kept[:KEPT]}
            old = {r.revision for r in kept[KEPT:] if r.revision <= rev.revision - KEPT}
            if rev.revision > KEPT and rev.revision - KEPT not in newest:
                old.add(rev.revision - KEPT)
            records += [(revision_key(rev.uuid, n), None) for n in sorted(old)]
            forgotten += [r for r in kept if r.revision in old]
        records += [(code_key(sha), None) for sha in self._orphans(forgotten)]
        if records:
            await self.write(records)
            await self.catch_up()

    def _orphans(self, forgotten: list[Revision]) -> list[str]:
        """The code records of `forgotten` revisions that no other kept revision (of any function) uses:
        without their tombstones the log, which every node reads whole at start, would grow by a zip per
        change for ever. Only codes of revisions forgotten now: a code record written for a revision not
        numbered yet (a rival publisher's) is never one of them. A rival that found such a code on the
        log, and so did not write it again, is refused its revision; it publishes again, code first
        (`publish_all`)."""
        gone = {(r.uuid.lower(), r.revision) for r in forgotten}
        used = {
            r.code_sha256
            for uuid, numbers in self.state.revisions.items()
            for n, r in numbers.items()
            if (uuid, n) not in gone
        }
        orphans = {r.code_sha256 for r in forgotten if r.code_sha256 is not None} - used
        return sorted(orphans & self.state.codes)

    def _claims(self, candidate: Revision) -> bool:
        """Whether `candidate` is a deploy taking a held name (`LogState.claims`): written last."""
        return candidate.action == "deploy" and self.state.claims(
            candidate.uuid, str(candidate.spec.get("name"))
        )

    async def republish(self, revisions: list[Revision], code: Callable[[str], bytes | None]) -> int:
        """Write again the `revisions` (and their code) the log no longer holds; returns how many.

        A function the new log holds revisions of already is left as the log has it: one deployed since
        the loss (`faas deploy` right after the broker came back) must stay the newest, and the kept
        revisions, numbered higher, would bury it. (Another node's republish looks the same, and wrote the
        same records.)"""
        count = 0
        async with self._lock:
            await self.catch_up()
            on_log = {key.split(":")[1].lower() for key in self.state.keys if key.startswith("rev:")}
            passed: list[Revision] = []  # kept revisions of functions on the new log: not published again
            # In the order first applied: a reader of the copy then refuses and accepts what one of the
            # original did (a revision taking a name is valid only after the rename that freed it).
            order = self.state.order
            written: set[str] = set()  # code records written here: read back only at the end
            lost: dict[str, list[str]] = {}  # code not cached: the revisions needing it, said once below
            for rev in sorted(revisions, key=lambda r: (order.get(r.key, 0), r.revision)):
                if rev.key in self.state.keys:
                    continue
                if rev.uuid.lower() in on_log:
                    passed.append(rev)
                    continue
                sha = rev.code_sha256
                if sha is not None and code_key(sha) not in self.state.keys and code_key(sha) not in written:
                    data = None if sha in lost else code(sha)
                    if data is None:
                        lost.setdefault(sha, []).append(rev.key)
                        continue
                    await self.write([(code_key(sha), data)])
                    written.add(code_key(sha))
                await self.write([(rev.key, encode(rev))])
                count += 1
            for sha, keys in lost.items():
                log.error("cannot publish %s again: their code %s is not cached", ", ".join(keys), sha[:12])
            numbers: dict[str, list[int]] = {}
            for rev in passed:  # forgotten here too, as a tombstone would: what the new log holds is served
                self.state.apply(rev.key, None, "a lost log")
                numbers.setdefault(f"{rev.function} ({rev.uuid})", []).append(rev.revision)
            for function, kept in numbers.items():
                log.warning(
                    "%s: published since the broker lost the log; its kept revisions %s are not published "
                    "again (the new log's history of it starts there)",
                    function,
                    ", ".join(map(str, sorted(kept))),
                )
            if passed:
                self._changed()
            await self.catch_up()
        return count

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change()


class MemoryLog(DeploymentLog):
    """The log in this process only (`faas run --no-kafka`): a write is applied at once."""

    async def write(self, records: list[tuple[str, bytes | None]]) -> None:
        changed = False
        for key, value in records:
            changed |= self.state.apply(key, value, "in memory")
            self._observe(key, value)
        if changed:
            self._changed()
