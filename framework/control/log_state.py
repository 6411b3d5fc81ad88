"""What the deployment log holds, rebuilt record by record: the kept revisions of each function.

Records are applied in log order, as a compacted topic's reader must: the last record of a key wins and a
tombstone (value None) forgets the key. Anything this platform did not write, or wrote wrong, is logged
as a warning naming the record's offset and why, and skipped, never fatal: a value that is not JSON, an
unknown action, a key that does not match its value, a code record whose sha256 does not match its key
or whose zip cannot be unpacked, a deploy revision whose code record was not seen first (publishers
write the code, wait for its acknowledgement, then the revision). Each record is applied on its own and
whole or not at all: whatever one raises, the state is as before it and the next record applies.

Names are unique (DESIGN.md section 2) among what is served: a deploy revision whose spec takes the
name of another function that is live at that point of the log is refused like an invalid record (the
warning names both uuids); the function holding the name keeps serving, and the refused function keeps
its previous revisions. The trade-off: validity depends on log order, so a rename that frees a name
must come before the revision that takes it (publishers order a batch so; two functions cannot swap
names in one step), and a log published again after a loss keeps the order of the original (`order`),
so a reader of the copy refuses and accepts what a reader of the original did.

Cost: what is served (`live`) and who holds each name are kept as records apply, each record updating
the one function it concerns, so applying a record, `holder` and `claims` take constant time and
`refused_names` time in the batch's size: a batch of n revisions (an edit of a package of n functions)
costs O(n), not O(n²). `revisions` is therefore read-only outside `apply`. Several live functions may
share a name only when a tombstone brought back an older revision of one of them (the name was free when
that revision was read); `holder` names the one that took it first.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import MappingProxyType

import orjson
from pydantic import ValidationError

from framework.control.revisions import Revision, sha256, spec_from
from framework.control.snapshot import top_level_name

log = logging.getLogger("faas.deployments")

_REV_KEY = re.compile(r"^rev:([0-9a-fA-F-]{36}):([1-9][0-9]*)$")
_CODE_KEY = re.compile(r"^code:([0-9a-f]{64})$")

CodeSink = Callable[[str, bytes], object]
"""Called with (sha256, zip) for each code record; raises ValueError when the record is unusable (it is
skipped), OSError when this node cannot keep it (its disk: the record is held, `LogState.unstored`)."""
UNSTORED_BYTES = 64 * 1024 * 1024
"""Bytes of code records a node holds in memory while its disk refuses them."""


class LogState:
    """Kept revisions by uuid and number, and the code records seen (sha256s)."""

    def __init__(self, on_code: CodeSink | None = None) -> None:
        self.revisions: dict[str, dict[int, Revision]] = {}
        """By uuid (lower case) and number. Read-only outside `apply`: `_live` and `_names` follow it."""
        self.codes: set[str] = set()
        self.tops: dict[str, frozenset[str]] = {}
        """The top-level names (`pkg`, `mod.py`) in each code record's zip, by sha256: a deploy revision's
        handler must be in its code (`_check_handler`)."""
        self.keys: set[str] = set()
        """Keys present in the log as read since the last reset (to find what a lost log lacks)."""
        self.order: dict[str, int] = {}
        """For each kept revision's key, when it was applied (a count): the log order to publish it in."""
        self.skipped = 0
        self.unstored: dict[str, bytes] = {}
        """Code records held whose `on_code` failed on this node's own disk (full, read-only...), by sha256:
        the revisions using them are kept all the same, so numbering stays the cluster's."""
        self._applied = 0
        self._on_code = on_code
        self._live: dict[str, Revision] = {}
        """uuid -> its newest revision, for each function whose newest revision is a deploy."""
        self._names: dict[str, dict[str, None]] = {}
        """name -> the uuids of the live functions served under it (in the order they took it)."""

    def newest(self, uuid: str) -> Revision | None:
        kept = self.revisions.get(uuid.lower())
        return kept[max(kept)] if kept else None

    def kept(self, uuid: str) -> list[Revision]:
        """The kept revisions of `uuid`, newest first."""
        kept = self.revisions.get(uuid.lower(), {})
        return [kept[n] for n in sorted(kept, reverse=True)]

    def productive_since(self, uuid: str) -> str | None:
        """`deployed_at` of the deploy that made `uuid` served without a break since (the first deploy after
        its last undeploy, or its revision 1); None when it is not served, or when the kept revisions do not
        reach back that far (older ones were dropped)."""
        since: str | None = None
        for rev in self.kept(uuid):  # newest first
            if rev.action != "deploy":
                return since
            since = rev.deployed_at
            if rev.revision == 1:
                return since
        return None

    def next_number(self, uuid: str) -> int:
        kept = self.revisions.get(uuid.lower())
        return max(kept) + 1 if kept else 1

    def live(self) -> Mapping[str, Revision]:
        """The newest revision of every function whose newest revision is a deploy: what is served. A
        read-only view that follows the state."""
        return MappingProxyType(self._live)

    def holder(self, name: str, besides: str) -> Revision | None:
        """The live revision of a function other than `besides` that is served under `name`, if any."""
        besides = besides.lower()
        uuid = next((u for u in self._names.get(name, ()) if u != besides), None)
        return None if uuid is None else self._live[uuid]

    def listeners(self, event_type: str) -> list[str]:
        """The names of the functions served now that listen to `event_type`, sorted."""
        return sorted(
            str(rev.spec.get("name"))
            for rev in self.live().values()
            if event_type in (rev.spec.get("events") or ())
        )

    def claims(self, uuid: str, name: str) -> bool:
        """Whether serving `uuid` as `name` takes a name another live function holds now. Publishers
        write such revisions last in a batch: a rename in the same batch may free the name first."""
        return self.holder(name, uuid) is not None

    def refused_names(self, batch: list[tuple[str, str]]) -> dict[str, str]:
        """The deploy revisions, as (uuid, name), of one batch that every reader would refuse, each with
        the uuid of the function holding its name when it is read.

        The batch is taken in the order `DeploymentLog.publish_all` writes it: revisions whose name is
        free first, then those taking a held name, so a rename in the batch frees its old name before it
        is taken. A cycle (two functions swapping names) is refused: no order frees a name first.
        """
        held: dict[str, list[str]] = {}  # the names this batch touches: their holders as it goes
        moved: dict[str, str | None] = {}  # uuid -> the name it is served under after the batch so far

        def holders(name: str) -> list[str]:
            return held.setdefault(name, list(self._names.get(name, ())))

        refused = {}
        for uuid, name in sorted(batch, key=lambda item: self.claims(*item)):  # stable, as publish_all's
            uuid = uuid.lower()
            holder = next((u for u in holders(name) if u != uuid), None)
            if holder is not None:
                refused[uuid] = holder
                continue
            before = moved[uuid] if uuid in moved else _name(self._live.get(uuid))
            if before is not None and uuid in holders(before):  # served under another name: freed
                holders(before).remove(uuid)
            holders(name).append(uuid)
            moved[uuid] = name
        return refused

    def apply(self, key: str | None, value: bytes | None, where: str = "") -> bool:
        """Apply one record; returns whether the served or kept revisions changed. Never raises."""
        try:
            return self._apply(key or "", value)
        except Exception as exc:  # a record must never stop the reader, whatever its bytes make us raise
            self.skipped += 1
            why = str(exc) if isinstance(exc, ValueError) else repr(exc)
            log.warning("deployment log: skipped the record %s (key %r): %s", where, key, why)
            return False

    def _hold(self, sha: str, value: bytes, exc: OSError) -> None:
        """Keep the code record `sha` this node's disk refused, and its bytes (the oldest dropped beyond
        UNSTORED_BYTES: those come back with the next start's read of the log)."""
        self.unstored[sha] = value
        log.error(
            "deployment log: code record %s cannot be unpacked on this node (%s): kept, and unpacked again "
            "when what is served is worked out",
            sha[:12],
            exc,
        )
        while sum(len(v) for v in self.unstored.values()) > UNSTORED_BYTES and len(self.unstored) > 1:
            oldest = next(iter(self.unstored))
            del self.unstored[oldest]
            log.error(
                "deployment log: code record %s dropped from memory (over %d bytes held)",
                oldest[:12],
                UNSTORED_BYTES,
            )

    def _apply(self, key: str, value: bytes | None) -> bool:
        code = _CODE_KEY.match(key)
        if code is not None:
            sha = code.group(1)
            if value is None:
                self.codes.discard(sha)
                self.tops.pop(sha, None)
                self.keys.discard(key)
                self.unstored.pop(sha, None)
                return False
            if self._on_code is not None:
                try:
                    self._on_code(sha, value)
                except OSError as exc:  # this node's disk, not the record: the sink refuses bad bytes with
                    self._hold(sha, value, exc)  # ValueError (code_cache.py), and the sha256 matched
                else:
                    self.unstored.pop(sha, None)
            elif sha256(value) != sha:
                raise ValueError(f"its value's sha256 is {sha256(value)[:12]}, not {sha[:12]}")
            self.codes.add(sha)
            self.tops[sha] = _tops(value)
            self.keys.add(key)
            return False
        rev = _REV_KEY.match(key)
        if rev is None:
            raise ValueError("not a key of the deployment log (code:<sha256> or rev:<uuid>:<n>)")
        uuid, number = rev.group(1).lower(), int(rev.group(2))
        if value is None:
            self.keys.discard(key)
            self.order.pop(key, None)
            kept = self.revisions.get(uuid, {})
            if kept.pop(number, None) is None:
                return False
            self._served_now(uuid)  # an older revision may be the newest now
            return True
        try:  # orjson, not json: a lone surrogate (`"\\udcff"`) is not text every reader can encode again
            data = orjson.loads(value)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"value is not JSON text ({exc})") from None
        revision = Revision.from_json(data)
        if (revision.uuid, revision.revision) != (uuid, number):
            raise ValueError(f"value is revision {revision.revision} of {revision.uuid}, not of its key")
        if revision.action == "deploy" and revision.code_sha256 not in self.codes:
            raise ValueError(f"its code record code:{revision.code_sha256} is missing")
        name = None
        if revision.action == "deploy":
            name = _check_spec(revision)
            _check_handler(revision, self.tops.get(revision.code_sha256 or "", frozenset()))
        if self.revisions.get(uuid, {}).get(number) == revision:  # read again (a lost log): as before
            self.keys.add(key)
            return False
        holder = self.holder(name, uuid) if name is not None else None
        if holder is not None:
            raise ValueError(
                f"function {uuid} would be served as {name!r}, the name of live function {holder.uuid} "
                f"(revision {holder.revision}): names are unique, {holder.uuid} keeps it"
            )
        self.keys.add(key)
        self._applied += 1
        self.order[key] = self._applied
        self.revisions.setdefault(uuid, {})[number] = revision
        self._served_now(uuid)
        return True

    def _served_now(self, uuid: str) -> None:
        """Update `_live` and `_names` for `uuid`, whose kept revisions changed."""
        newest = self.newest(uuid)
        before = self._live.get(uuid)
        if newest is not None and newest.action == "deploy":
            self._live[uuid] = newest
        else:
            self._live.pop(uuid, None)
            newest = None
        old, new = _name(before), _name(newest)
        if old == new:
            return
        if old is not None:
            holders = self._names[old]
            del holders[uuid]
            if not holders:
                del self._names[old]
        if new is not None:
            self._names.setdefault(new, {})[uuid] = None


def _name(rev: Revision | None) -> str | None:
    """The name `rev` is served under (None: none, or not a deploy's)."""
    name = None if rev is None else rev.spec.get("name")
    return name if isinstance(name, str) else None


def _tops(data: bytes) -> frozenset[str]:
    """The first component of each name in zip `data` (none when it is no zip)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return frozenset(name.split("/", 1)[0] for name in z.namelist())
    except (zipfile.BadZipFile, ValueError, OSError):
        return frozenset()


def _check_handler(revision: Revision, tops: frozenset[str]) -> None:
    """A deploy revision's handler must be in its code: its top-level package or module is what the zip
    holds (`faas deploy` refuses any other). A hand-written record naming another (`os:system`, an installed
    package) would run whatever each node has under that name, none of it the revision's."""
    handler = str(revision.spec.get("handler", ""))
    top = top_level_name(handler)
    # An empty zip is what `faas deploy` published for a handler outside the project before it refused
    # those: such a revision, written then, is served as it was.
    if tops and top not in tops and f"{top}.py" not in tops:
        held = ", ".join(sorted(tops)[:5]) or "nothing"
        raise ValueError(f"its handler {handler!r} is not in its code, which holds {held}")


def _check_spec(revision: Revision) -> str:
    """A deploy revision's spec must be a function this node can serve, with the record's uuid and name.

    Returns the name it would be served under.
    """
    try:
        spec = spec_from(revision.spec, Path("."), None, revision.revision)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"its spec is not a valid function ({where}: {first['msg']})") from None
    if spec.uuid != revision.uuid:
        raise ValueError(f"its spec is function {spec.uuid}, not {revision.uuid}")
    if spec.name != revision.function:  # `faas history` would list it under one name, nodes serve another
        raise ValueError(f"its spec names the function {spec.name!r}, the record {revision.function!r}")
    return spec.name
