"""The deployment log (DESIGN.md section 12): a compacted, one-partition topic of code and revision records.

Here: the log's records applied to a `LogState`, and publishing. `KafkaLog` (`kafka_log.py`) moves the
records through the topic; `MemoryLog` is the same log in the node's memory, for `faas run --no-kafka`.

- A write is done when read back: `publish` writes the code record, waits for its acknowledgement, then
  the revision record, reads the log back to check that the revision is its own, then writes the
  tombstone of revision n-5, and (when following) waits until the follower has applied them, so the
  caller sees its own write;
- tombstones forget: the newest `KEPT` revisions of each function stay.

Concurrent publishers (two `faas deploy` at once, two watching nodes) cannot lock a topic, and the last record
of a key wins, so two that pick the same number would both be told "revision N deployed" while N holds one of
them. `publish_all` therefore numbers only after its code records are acknowledged (reading the log to its end
right before writing the revision records: a rival picks the same number only within one read and one produce
round trip, not during a code upload), and after writing reads the log back, then once more to a fresh end
offset. A revision whose key then holds another writer's record (same number, written later) lost: it is
numbered and written again as the next number, or reported "unchanged" when it now equals the newest revision
(two nodes watching the same files: one revision, whoever's time it carries), up to `PUBLISH_ATTEMPTS` times,
then PublishFailed. Of the writers of one number the last keeps it, so each attempt settles at least one of
them. Followers apply the lost record and then the winning one, so a node may serve the loser's revision for
that moment.

Tombstones are written only for revisions read back as the publisher's own, after the check: a loser
writes none for a number it lost, and after its retry as n+1 it forgets n-4, which the winner's n and its
own n+1 have pushed out of the newest `KEPT`. Numbers never go down (each attempt numbers after reading
further), so no tombstone reaches into the newest `KEPT` of what is on the log.

What is left: a rival that read the log before our revision record was appended, and whose own record
for the same number is appended only after our second read of the end offset, replaces ours after we
checked. Both are then told N, and N holds the rival's. Its numbering-to-append must outlast our
acknowledgement, read back and one more end-offset round trip (a few round trips, against its usual one),
so it takes a stall: a paused process, a produce retried after a timeout, a stalled network or an older
publisher that numbers before writing its code. The reverse also remains: a publisher that fails after
its record was acknowledged (the read back timing out) reports a failure although the revision may be
published; `faas history` shows what is.

A bad record never stops the reader: `LogState.apply` skips it with a warning and never raises.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from aiokafka.errors import KafkaError

from framework.control.log_state import LogState
from framework.control.revisions import KEPT, Revision, code_key, encode, revision_key

log = logging.getLogger("faas.deployments")

PUBLISH_ATTEMPTS = 5
"""Times a publication numbers and writes a revision before it gives up. Of the publishers that pick one
number at once, the one whose record comes last keeps it, so k publishers at once need at most k."""


def as_read(rev: Revision) -> Revision:
    """`rev` as a reader parses its record (the uuid lower case, the spec as JSON gives it back)."""
    return Revision.from_json(json.loads(encode(rev)))


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

    async def start(self) -> None:
        """Read the whole log (and keep following it, where that applies)."""

    async def stop(self) -> None:
        """Stop following."""

    async def catch_up(self) -> None:
        """Return once every record written before the call is applied."""

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
        more to a fresh end offset; each revision whose key now holds another writer's record is numbered
        and written again (up to `PUBLISH_ATTEMPTS` times in all; "unchanged" if it now equals the
        newest); only then are the tombstones of the revisions that fall out of the newest `KEPT`
        written. Raises PublishFailed when a candidate keeps losing its number, or when readers refuse a
        revision record (a warning says why); the others of the batch may be published then.
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
                    numbered[i] = candidate.numbered(self.state.next_number(candidate.uuid))
                if not numbered:  # each one unchanged
                    pending = []
                    break
                await self.write([(rev.key, encode(rev)) for rev in numbered.values()])
                await self.catch_up()
                # Once more, to a fresh end offset: a rival's record for the same key acknowledged while
                # we read back is seen too (what is left of the race: module docstring).
                await self.catch_up()
                pending, won = [], []
                for i, rev in numbered.items():
                    held = self._held(rev)
                    if held == as_read(rev):
                        out[i] = (rev, True)
                        won.append(rev)
                    elif held is None:
                        failures.append(
                            f"{rev.function}: revision {rev.revision} was written but the log does not "
                            "hold it (readers refused it: see the warning naming its key)"
                        )
                    else:
                        tried[i].append(rev.revision)
                        pending.append(i)
                        log.info(
                            "%s: revision %d was taken by another publisher (%s at %s): publishing again",
                            rev.function,
                            rev.revision,
                            held.deployed_by,
                            held.deployed_at,
                        )
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

    def _held(self, rev: Revision) -> Revision | None:
        """The revision the log holds under `rev`'s key, whoever wrote it."""
        return self.state.revisions.get(rev.uuid.lower(), {}).get(rev.revision)

    async def _forget_old(self, won: list[Revision]) -> None:
        """Tombstone, for each revision in `won` (each read back as ours), revision n-KEPT and any older one
        held beyond the newest KEPT, never one of those: written only for a number known to be ours, so a
        loser never forgets one."""
        records: list[tuple[str, bytes | None]] = []
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
        if records:
            await self.write(records)
            await self.catch_up()

    def _claims(self, candidate: Revision) -> bool:
        """Whether `candidate` is a deploy taking a held name (`LogState.claims`): written last."""
        return candidate.action == "deploy" and self.state.claims(
            candidate.uuid, str(candidate.spec.get("name"))
        )

    async def republish(self, revisions: list[Revision], code: Callable[[str], bytes | None]) -> int:
        """Write again the `revisions` (and their code) the log no longer holds; returns how many."""
        count = 0
        async with self._lock:
            await self.catch_up()
            # In the order first applied: a reader of the copy then refuses and accepts what one of the
            # original did (a revision taking a name is valid only after the rename that freed it).
            order = self.state.order
            written: set[str] = set()  # code records written here: read back only at the end
            lost: dict[str, list[str]] = {}  # code not cached: the revisions needing it, said once below
            for rev in sorted(revisions, key=lambda r: (order.get(r.key, 0), r.revision)):
                if rev.key in self.state.keys:
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
        if changed:
            self._changed()
