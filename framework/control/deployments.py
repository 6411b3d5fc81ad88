"""The node's side of deployments: what it serves is the newest revision of each function in the log.

- Served: every function whose newest revision is a `deploy`, built from that revision's spec and code
  (unpacked in `FAAS_CACHE_DIR`); the working copy never reaches an instance. Functions of the working
  copy without a served revision are listed (all states, as `GET /functions` wants) but not productive.
- Bootstrap: at start, each function the working copy marks productive that has no revision at all in
  the log is deployed, so a fresh cluster (or a memory-only broker that restarted) serves the manifest.
- Watch mode: each valid change of the working copy publishes a revision of each function it changed
  (or `undeploy` for one that left `productive` or the manifest). Off: changes only update `modified`.
  What changed is measured against the working copy as last published whole, so an edit whose
  publication failed (the broker away) is published again, every `WATCH_RETRY` seconds, until it is:
  `problems` says so meanwhile. Later edits join it.
- A lost log (broker restarted empty): the node publishes again the kept revisions it knows; identical
  copies from several nodes are the same records.
- Start: reading the log is tried again, with backoff (0.5 s doubling to 5 s), after any failure, not
  only a broker's: `/readyz` names the last error meanwhile and turns 200 once the log is read.
- Names: a function is not published under a name another live function holds (readers would refuse
  the revision, see `log_state`); that is logged as an error and the holder keeps serving.
- The project folder (`root`: where instances run, and where a relative FAAS_CACHE_DIR starts) is the
  folder the manifest's path resolves to when an edit is applied, so it follows a symlinked manifest that
  is re-pointed (`..data` swapped, `current -> releases/X` re-pointed: the watcher loads the new target).
  A relative cache moves with it, since the old folder is usually deleted after such a swap: the code of
  every kept revision is unpacked again into the new folder's cache, from the old cache's zips or from the
  working copy's (the old folder may be gone by the time the node notices: code found in neither is
  logged), and code that reached the old cache only while it moved is fetched from there when served. The
  trade-off: a re-point unpacks the kept revisions' code once more, on the loop (re-points are rare and
  zips small). An absolute FAAS_CACHE_DIR never moves: the choice for a cache that outlives releases.
- The cache's upkeep (code that went missing, code the log forgot): `code_upkeep.py`.
Publications run one at a time, off the watcher's callback.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from framework.control.code_cache import CodeCache
from framework.control.code_upkeep import CodeUpkeep
from framework.control.deployment_log import DeploymentLog, MemoryLog, PublishFailed
from framework.control.kafka_log import KafkaLog
from framework.control.log_state import LogState
from framework.control.registry import Registry
from framework.control.revisions import Revision, spec_from
from framework.control.spec import FunctionSpec, Manifest
from framework.control.working_copy import Candidate, CodeZips, candidates, live_status, undeploy_of
from framework.settings import Settings
from framework.tasks import cancel_and_wait, within

log = logging.getLogger("faas.deployments")

FALLBACK_AFTER = 5.0
"""Seconds after start without the log read before the node serves its working copy meanwhile."""
START_TIMEOUT = 30.0
"""Seconds one attempt to read the log may take before it is retried."""
START_RETRY = (0.5, 5.0)
"""Seconds before the first retry of a failed start, doubled per failure up to the second."""
UNPACK_RETRY = 10.0
"""Seconds between attempts to unpack served code this node's disk refused (full, read-only)."""
WATCH_RETRY = (1.0, 30.0)
"""Seconds before publishing a failed watch-mode edit again, doubled per failure up to the second."""


class Deployments:
    """Reads and follows the log, publishes on bootstrap and in watch mode, builds the served registry."""

    def __init__(
        self,
        deployment_log: DeploymentLog,
        cache: CodeCache,
        working: Manifest,
        watch: bool,
        code: CodeZips,
        on_registry: Callable[[Registry], None],
        cache_dir: Path | None = None,
        cache_idle: float = 3600.0,
    ) -> None:
        self.log = deployment_log
        self.cache = cache
        self.cache_dir = cache_dir
        """FAAS_CACHE_DIR when relative: the cache follows the project folder (None: it stays at `cache`)."""
        self._previous: CodeCache | None = None
        """The cache a re-pointed manifest left behind: code not found in `cache` is looked for there when
        served."""
        self._unpacking = False
        """A later look at code this node's disk refused is planned (`_unpack_later`)."""
        self._specs: dict[str, tuple[Revision, FunctionSpec]] = {}
        """The revision last served of each function, by uuid, and the spec made of it (`_served`)."""
        self.watch = watch
        self.code = code
        """The working copy's code: the look `working` was checked with (FAAS_MAX_CODE_BYTES, FAAS_SECRETS_DIR
        left out), so its candidates need no second zip."""
        self.on_registry = on_registry
        self.working = working
        self.root = project_folder(working)
        """Where instances run: the folder of the manifest as last loaded."""
        self.candidates = candidates(working, code)
        self._published = self.candidates
        """The working copy as last published whole (at start: as loaded, which the node does not publish
        unless bootstrapping): watch mode publishes what differs from it."""
        self._publishing: asyncio.Task[None] | None = None
        self._again = False
        """An edit came while `_publishing` ran: it goes round once more."""
        self._edited = asyncio.Event()
        """Set by an edit: a publication waiting to try again tries at once."""
        self._log_read = asyncio.Event()
        """Set once the log is read: edits are published against what it holds, not before."""
        self.unpublished: str | None = None
        """Why watch mode's last attempt to publish the working copy failed (None: nothing is waiting)."""
        self.ready = False
        self.fallback = False
        """The log could not be read in time: the working copy is served until it is."""
        self.booted = False
        self.refused: dict[str, str] = {}
        """Functions of the working copy whose publication was refused (a live function holds the name),
        by uuid: said by `problems` (on `/readyz` and the dashboard) until one is published or leaves."""
        self.error: str | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.upkeep = CodeUpkeep(deployment_log, cache, self._store, self._elsewhere, cache_idle)
        self._queue: asyncio.Lock = asyncio.Lock()
        deployment_log.on_change = self.refresh
        deployment_log.on_reset = self._on_reset

    # ---- lifecycle ----

    def begin(self) -> None:
        """Start in the background: an unreachable broker must not keep the node from serving HTTP."""
        self._spawn(self._start_retrying(), "deployments-start")
        self._spawn(self._fall_back_later(), "deployments-fallback")

    async def _fall_back_later(self) -> None:
        """Serve the working copy while the log cannot be read (the broker down at start): HTTP and
        schedules keep working, as they do when the broker goes away later. The log wins once read."""
        await asyncio.sleep(FALLBACK_AFTER)
        if not self.ready:
            log.warning(
                "deployment log not read after %g s: serving the working copy until it is", FALLBACK_AFTER
            )
            self.fallback = True
            self.refresh()

    async def _start_retrying(self) -> None:
        """Start until it works: a node that gave up would stay not ready for good."""
        delay, most = START_RETRY
        while True:
            try:
                await within(self.start(), START_TIMEOUT)
                return
            except Exception as exc:  # not only the broker's errors: any failure is worth another try
                self.error = f"cannot read the deployment log: {exc!r}"
                log.warning("%s; retrying in %g s", self.error, delay)
                await self.log.stop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, most)

    async def start(self) -> None:
        """Read the log to its end, deploy productive functions it lacks, then serve what it says."""
        await self.log.start()
        self.ready = True  # the log is read: its revisions decide what is served from now on
        self.refresh()
        await self._bootstrap()
        self.booted = True
        self._log_read.set()
        self.error = None
        self.upkeep.start()

    def not_ready(self) -> list[str]:
        if self.booted:
            return []
        return [f"deployments: {self.error or 'reading the deployment log'}"]

    def problems(self) -> list[str]:
        """What the working copy asked for that was not published (the node serves, so it stays ready)."""
        waiting = [] if self.unpublished is None else [self.unpublished]
        return [*waiting, *(self.refused[uuid] for uuid in sorted(self.refused))]

    async def stop(self) -> None:
        await cancel_and_wait([*self._tasks, *self.upkeep.tasks()])
        await self.log.stop()

    # ---- what is served ----

    def registry(self) -> Registry:
        """The working copy's functions, each replaced by its served revision where there is one."""
        if not self.ready:
            return Registry(self.working) if self.fallback else unserved(self.working)
        live = self.log.state.live()
        specs: list[FunctionSpec] = []
        seen: set[str] = set()
        for spec in self.working.functions:
            seen.add(spec.uuid)
            rev = live.get(spec.uuid)
            if rev is not None:
                specs.append(self._served(rev))
            elif self.log.state.newest(spec.uuid) is not None:
                # Its newest revision is an undeploy: undeployed cluster-wide, as `faas ls` says, whatever the
                # working copy's state (a draft or productive copy is not served until it is deployed).
                specs.append(
                    spec if spec.state == "undeployed" else spec.model_copy(update={"state": "undeployed"})
                )
            elif spec.productive:  # productive in the working copy only: listed, not served
                specs.append(spec.model_copy(update={"state": "draft"}))
            else:
                specs.append(spec)
        for uuid, rev in sorted(live.items(), key=lambda item: item[1].function):
            if uuid not in seen:
                specs.append(self._served(rev))
        if len(self._specs) > 2 * len(live):  # forget the specs of functions no longer served
            self._specs = {uuid: made for uuid, made in self._specs.items() if uuid in live}
        # Names stay unique: a served function wins over a working-copy entry of the same name.
        served_names = {s.name for s in specs if s.revision is not None}
        specs = [s for s in specs if s.revision is not None or s.name not in served_names]
        return Registry(self.working.model_copy(update={"functions": tuple(specs)}))

    def _served(self, rev: Revision) -> FunctionSpec:
        """The spec served for `rev`. A revision read from the log is never changed, so its spec is made
        once (validating 1,000 specs each time what is served is worked out took a node seconds per
        deploy), and made again for another revision object (read anew: a lost log published again) or
        when where it runs from moved (a re-pointed manifest, code unpacked again elsewhere)."""
        assert rev.code_sha256 is not None
        code = self._code(rev.code_sha256)
        made = self._specs.get(rev.uuid)
        if made is not None and made[0] is rev and made[1].root == self.root and made[1].code == code:
            return made[1]
        spec = spec_from(rev.spec, self.root, code, rev.revision)
        self._specs[rev.uuid] = (rev, spec)
        return spec

    def _code(self, sha: str) -> Path:
        """Where revision code `sha` is unpacked. Code this node's disk refused when the log was read (full,
        read-only) is unpacked again here, each time what is served is worked out, until it is; after the
        cache moved (a re-pointed manifest), code that reached the old cache only (a code record applied
        while the cache moved) is unpacked again here."""
        path = self.cache.path(sha)
        if path.is_dir():
            return path
        unstored = self.log.state.unstored.get(sha)  # this node's disk refused it when the log was read
        if unstored is not None:
            if self._store(sha, unstored):
                del self.log.state.unstored[sha]
            elif not self._unpacking:  # work out what is served again later: the disk may have room then
                self._unpacking = True
                self._spawn(self._unpack_later(), "unpack-code")
        elif self._previous is not None:
            data = self._previous.zip_bytes(sha)
            if data is not None:
                self._store(sha, data)
        return path

    async def _unpack_later(self) -> None:
        try:
            await asyncio.sleep(UNPACK_RETRY)
        finally:
            self._unpacking = False
        self.refresh()

    def _elsewhere(self, sha: str) -> bytes | None:
        """The zip of code `sha` outside the cache: the working copy's, or the cache a re-pointed manifest
        left (for `CodeUpkeep`)."""
        for cand in self.candidates.values():
            if cand.revision is not None and cand.revision.code_sha256 == sha and cand.code is not None:
                return cand.code
        return self._previous.zip_bytes(sha) if self._previous is not None else None

    def _zip_bytes(self, sha: str) -> bytes | None:
        """The zip of code `sha`: from the cache, or held in memory while this node's disk refuses it."""
        return self.cache.zip_bytes(sha) or self.log.state.unstored.get(sha)

    def _store(self, sha: str, data: bytes) -> bool:
        try:
            self.cache.store(sha, data)
        except (ValueError, OSError) as exc:
            log.error("cannot unpack revision code %s into %s: %s", sha[:12], self.cache.base, exc)
            return False
        return True

    def refresh(self) -> None:
        if self.ready or self.fallback:  # a log read halfway is not served: its end may change everything
            self.on_registry(self.registry())

    def status(self, uuid: str) -> dict[str, Any]:
        """`revision`, `modified` and `deployed_at` of a `GET /functions` entry (`live_status`)."""
        return live_status(self.candidates.get(uuid.lower()), self.log.state.newest(uuid))

    def productive_since(self, uuid: str) -> float | None:
        """Epoch seconds since which `uuid` has been served without a break (`LogState.productive_since`);
        None when not known. A scheduler starting owes no tick from before it (a new leader caught up ticks
        that fell while the function was undeployed)."""
        since = self.log.state.productive_since(uuid)
        try:
            return None if not since else datetime.fromisoformat(since).timestamp()
        except ValueError:  # a hand-written record's time
            return None

    def revisions(self, uuid: str) -> list[dict[str, Any]] | None:
        """The kept revisions of `uuid`, newest first; None when neither the log nor the manifest has it."""
        kept = self.log.state.kept(uuid)
        if not kept and uuid.lower() not in self.candidates:
            return None
        return [r.to_json() for r in kept]

    # ---- the working copy ----

    def working_copy_changed(self, manifest: Manifest, code: CodeZips | None = None) -> None:
        """A valid edit: in watch mode publish what changed; in any mode update `modified`. `code` is the
        look the edit was checked with (None: a new one)."""
        self.working = manifest
        self.code = code if code is not None else self.code.fresh()
        self.candidates = candidates(manifest, self.code)
        self._follow(project_folder(manifest))  # first: what is published now is unpacked in its cache
        if self.watch:
            if self._publishing is None or self._publishing.done():
                self._publishing = self._spawn(self._publish_edits(), "watch-deploy")
            else:
                self._again = True
                self._edited.set()
        self.refresh()

    def _follow(self, root: Path) -> None:
        """The manifest was loaded from another folder (a re-pointed link): instances run there from now on,
        and a relative cache moves there with the code of every kept revision (module docstring)."""
        if root == self.root:
            return
        log.info("the manifest is now in %s (was %s): functions run there from now on", root, self.root)
        self.root = root
        if self.cache_dir is None or (root / self.cache_dir) == self.cache.base:
            return
        old, fresh = CodeCache(self.cache.base), CodeCache(root / self.cache_dir)
        problem = fresh.folder_problem()
        if problem is not None:
            log.error("%s: keeping the code cache in %s", problem, old.base)
            return
        ours = {c.revision.code_sha256: c.code for c in self.candidates.values() if c.revision and c.code}
        needed = {r.code_sha256 for u in list(self.log.state.revisions) for r in self.log.state.kept(u)}
        self.cache.base = fresh.base  # in place: the log's reader stores code records through it
        self._previous = old
        lost = []
        for sha in sorted(s for s in needed if s is not None):
            data = old.zip_bytes(sha) or ours.get(sha)
            if data is None or not self._store(sha, data):
                lost.append(sha[:12])
        if lost:
            log.warning(
                "the code of kept revisions (%s) is neither in the old cache %s nor in the working copy: "
                "those revisions cannot start instances here (an absolute FAAS_CACHE_DIR outside the "
                "folders a link is re-pointed between keeps it)",
                ", ".join(lost),
                old.base,
            )

    async def _publish_edits(self) -> None:
        """Publish what the working copy changed since it was last published whole, until it all is."""
        delay, most = WATCH_RETRY
        while True:
            await self._log_read.wait()
            self._again = False
            target = self.candidates
            try:
                failed = await self._deploy_changes(self._published, target)
            except Exception as exc:  # the broker away, most often: the next round tries again
                failed = repr(exc)
            if failed is None:
                self._published, self.unpublished = target, None
                if not self._again:
                    return
                delay = WATCH_RETRY[0]
                continue
            self.unpublished = f"deployments: the working copy's changes are not published yet ({failed})"
            log.warning("%s; trying again in %g s", self.unpublished, delay)
            self._edited.clear()
            with contextlib.suppress(TimeoutError):  # a new edit tries at once (within 2 s, section 12)
                await asyncio.wait_for(self._edited.wait(), delay)
            delay = WATCH_RETRY[0] if self._edited.is_set() else min(delay * 2, most)

    async def _deploy_changes(self, before: dict[str, Candidate], after: dict[str, Candidate]) -> str | None:
        """Publish what `after` changed from `before`; returns why a publication failed, or None."""
        productive = {uuid.lower() for uuid, cand in after.items() if cand.spec.productive}
        self.refused = {uuid: why for uuid, why in self.refused.items() if uuid in productive}
        changed = []
        for uuid, cand in after.items():
            old = before.get(uuid)
            if not cand.spec.productive:
                if old is not None and old.spec.productive:
                    await self._undeploy(cand.spec)
                continue
            unchanged = (
                old is not None
                and old.spec.productive
                and old.revision is not None
                and cand.revision is not None
                and cand.revision.same_as(old.revision)
            )
            if not unchanged:
                changed.append(cand)
        # Undeploys first: a function that left may free the name one of the changed ones takes.
        for uuid, old in before.items():
            if uuid not in after and old.spec.productive:
                await self._undeploy(old.spec)
        return await self._deploy(*changed)

    async def _bootstrap(self) -> None:
        missing = [c for u, c in self.candidates.items() if c.spec.productive and not self.log.state.kept(u)]
        await self._deploy(*missing)  # what fails is logged; a broker's error fails the start, tried again

    async def _deploy(self, *cands: Candidate) -> str | None:
        """Publish `cands` (those with a revision and a free name); returns why a publication failed."""
        for cand in cands:
            if cand.revision is None:
                log.error("function %s not deployed: %s", cand.spec.name, cand.error)
        refused = self.log.state.refused_names(
            [(c.spec.uuid, c.spec.name) for c in cands if c.revision is not None]
        )
        for cand in cands:
            uuid = cand.spec.uuid.lower()
            holder = refused.get(uuid)
            if holder is None:
                self.refused.pop(uuid, None)
                continue
            why = (
                f"function {cand.spec.name} ({cand.spec.uuid}) not deployed: live function {holder} has that "
                "name (names are unique; two functions cannot swap names in one step: rename through a free "
                "name)"
            )
            self.refused[uuid] = why
            log.error("%s", why)
        items = [
            (c.revision, c.code)
            for c in cands
            if c.revision is not None and c.spec.uuid.lower() not in refused
        ]
        if not items:
            return None
        failures: list[str] = []
        async with self._queue:
            try:
                published = await self.log.publish_all(items)
            except PublishFailed as exc:  # the others of the batch are published: said as usual
                published, failures = list(exc.published.values()), exc.failures
        for rev, new in published:
            if new:
                log.info("function %s: revision %d deployed", rev.function, rev.revision)
        for why in failures:
            log.error("not deployed: %s", why)
        return "; ".join(failures) or None

    async def _undeploy(self, spec: FunctionSpec) -> None:
        newest = self.log.state.newest(spec.uuid)
        if newest is None or newest.action == "undeploy":
            return
        async with self._queue:
            rev, new = await self.log.publish(undeploy_of(spec, newest), None)
        if new:
            log.info("function %s: revision %d undeploys it", rev.function, rev.revision)

    def _on_reset(self) -> None:
        self._spawn(self._republish(), "republish")

    async def _republish(self) -> None:
        kept = [r for uuid in list(self.log.state.revisions) for r in self.log.state.kept(uuid)]
        for attempt in range(1, 31):
            try:
                count = await self.log.republish(kept, self._zip_bytes)
            except Exception as exc:  # the broker may still be coming back: try again shortly
                log.warning("publishing the lost deployment log again failed (%r), retrying", exc)
                await asyncio.sleep(min(5.0, 0.5 * attempt))
                continue
            log.info("deployment log: published %d kept revisions again", count)
            return
        log.error(
            "gave up publishing the lost deployment log again after 30 attempts: nodes that start now will "
            "not serve these revisions; restart this node (or deploy again) once the broker takes them"
        )

    def _spawn(self, work: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(self._guard(work, name), name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _guard(self, work: Any, name: str) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("deployments: %s failed: %r", name, exc)


def cache_dir(settings: Settings) -> Path:
    """`FAAS_CACHE_DIR`, relative to the manifest's folder unless absolute (the manifest's link resolved
    now: it follows a re-pointed manifest, as `Deployments` moves its cache)."""
    base = settings.cache_dir
    return base if base.is_absolute() else settings.manifest.resolve().parent / base


def project_folder(manifest: Manifest) -> Path:
    """The folder of the file `manifest`'s path resolves to now (a link's target), as `cache_dir` and
    `Settings.secrets_path` resolve it: called as a manifest is applied, right after its load."""
    return manifest.path.resolve().parent


def unserved(manifest: Manifest) -> Registry:
    """The working copy with nothing productive: what a node lists before it has read the log."""
    specs = tuple(s.model_copy(update={"state": "draft"}) if s.productive else s for s in manifest.functions)
    return Registry(manifest.model_copy(update={"functions": specs}))


def open_deployments(
    settings: Settings,
    manifest: Manifest,
    code: CodeZips,
    bootstrap: str | None,
    on_registry: Callable[[Registry], None],
) -> Deployments:
    """The node's deployments on the Kafka log, or (no Kafka) on a log in memory with watch mode on;
    `code` is the look `manifest` was checked with."""
    cache = CodeCache(cache_dir(settings), compile_code=True)
    state = LogState(on_code=cache.store)
    relative = None if settings.cache_dir.is_absolute() else settings.cache_dir
    deployment_log = MemoryLog(state) if bootstrap is None else KafkaLog(state, settings, bootstrap)
    watch = bootstrap is None or settings.watch
    return Deployments(
        deployment_log, cache, manifest, watch, code, on_registry, relative, settings.cache_idle
    )
