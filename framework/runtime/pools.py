"""The node's runtime: one pool of instances per function, the template they fork from, and the reaper.

The node, the invoker and the CLI talk only to `Runtime` (and `invoke_once` for `faas invoke NAME`).

The project's folders (the secrets folder the template hides and secret values are read from, the
folders it must leave visible) follow the manifest: they are looked up again, the manifest's link
resolved, whenever the served functions or the secrets change. When a re-pointed manifest moved them
(`current -> releases/X` re-pointed), every function gets instances of a fresh template that hides the
new secrets folder, and values are read from there.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from framework import sandbox
from framework.control.deployments import cache_dir
from framework.control.secrets import SecretError, SecretStore
from framework.control.spec import FunctionSpec
from framework.errors import Overloaded
from framework.observe import tracing
from framework.observe.metrics import Metrics
from framework.runtime.handle import LINES_WAIT, InstanceHandle
from framework.runtime.memory import MemoryGuard
from framework.runtime.pool import FunctionPool
from framework.runtime.template import Template
from framework.settings import Settings
from framework.tasks import cancel_and_wait, wait_or_cancel
from framework.types import Invocation, InvokeResult

InSpan = Callable[[FunctionSpec, Invocation, tracing.Span, Awaitable[InvokeResult]], Awaitable[InvokeResult]]
"""Runs an invocation (the awaitable) as the span given: how `Runtime.warmup` has its warm-ups exported."""

if TYPE_CHECKING:
    from framework.observe.records import Recorder

log = logging.getLogger("faas.runtime")

REAP_TICK = (0.05, 1.0)
"""Bounds (seconds) of the reaper's tick; within them it is a quarter of the shortest idle timeout."""


OUTPUTS_WAIT = 0.5
"""Seconds a stop waits, once its instances and what they started are gone, for the rest of their raw
output (`raw_output.py`)."""


class Runtime:
    """Runs function instances on this node.

    `invoke` raises FunctionError, Timeout, InstanceCrashed or Overloaded. Pools are keyed by function
    name and rebuilt (the old one retired) whenever the spec a caller passes differs from the pool's.
    """

    def __init__(self, settings: Settings, metrics: Metrics | None = None, code: Sequence[Path] = ()) -> None:
        """`code`: folders of code its instances import besides the code cache (a local test run's)."""
        self.settings = settings
        self.metrics = metrics or Metrics()
        self._code = list(code)
        # Instances never see the secrets folder: their function's values come in their start message.
        self._needed = self._project_folders()
        self._code_path = sandbox.CodePath.at_start()
        """The import path of every template this runtime starts, fixed now (`sandbox.CodePath`)."""
        self._template = Template(settings.secrets_path, self._needed, self._code_path)
        self._old_templates: list[Template] = []
        """Templates replaced by a fresh one (`_renew_template`), kept until their instances are gone."""
        self._folder_went = False
        """The secrets folder went since the template started: the next one there is not hidden."""
        self._pools: dict[str, FunctionPool] = {}
        self._retired: list[FunctionPool] = []
        self._served: set[str] = set()
        """The names of the functions `apply` was last given."""
        self._left: set[str] = set()
        """Functions that left what is served: their metric series go once no pool of theirs is left."""
        self._reaper: asyncio.Task[None] | None = None
        self._stopping = False
        self._hurried = asyncio.Event()
        """A second signal: `stop` kills the instances now, not at the end of its grace."""
        self.secrets = SecretStore(settings.secrets_path)
        """Where instances' secret values are read from (DESIGN.md section 14)."""
        self._memory = MemoryGuard(self._limited)
        self.recorder: Recorder | None = None
        """Told of every invocation's end (the node's invocation records); None: no records."""

    async def start(self) -> None:
        """Start the template process and the idle reaper. Call it on the node's loop thread."""
        if not self._template.alive():
            self._template.start()
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().create_task(self._reap_forever(), name="faas-reaper")

    async def stop(self, grace: float) -> None:
        """Refuse new requests, wait up to `grace` seconds for in-flight ones, then stop every instance
        (`FunctionPool.stop`: requests still held get InstanceCrashed) and the template."""
        self._stopping = True
        deadline = time.monotonic() + grace
        # Polls a sum over pools: simpler than an Event wired through every pool and instance.
        while self.inflight() and time.monotonic() < deadline and not self._hurried.is_set():  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await cancel_and_wait([self._reaper])
        self._reaper = None
        await self._memory.stop()
        instances = [i for p in self._all_pools() for i in (*p.instances, *p.exiting)]
        for pool in self._all_pools():
            pool.stop()
        if instances:  # let them exit and their log channels and outputs drain (last words), then close them
            # An instance's last act is exporting its spans (up to 2 s): a second signal waits no more.
            await wait_or_cancel(
                [asyncio.ensure_future(i.exited.wait()) for i in instances], 2, self._hurried
            )
            for inst in instances:
                inst.kill_group()  # what handlers started goes with them, as with a killed instance
            # Their output sockets end once those processes are gone too (they hold descriptors 1 and 2).
            await wait_or_cancel([asyncio.shield(o.done) for i in instances for o in i.raw], OUTPUTS_WAIT)
            for inst in instances:
                inst.close_logs()
        # The records of what those instances held, now that their last lines are in.
        await wait_or_cancel([t for p in self._all_pools() for t in p.late_records], LINES_WAIT)
        self._pools.clear()
        self._retired.clear()
        for template in (*self._old_templates, self._template):
            template.stop()
        self._old_templates.clear()

    def hurry(self) -> None:
        """A second signal: `stop` (under way or to come) waits no longer for requests in flight, nor for
        instances to exit."""
        self._hurried.set()

    def invoke(self, spec: FunctionSpec, inv: Invocation) -> Coroutine[Any, Any, InvokeResult]:
        """Run `inv` on an instance of `spec`; await the result. A plain function handing back the pool's
        coroutine: one coroutine frame less to pass through on every call and every resumption."""
        if self._stopping:
            raise Overloaded("the node is stopping")
        return self._pool(spec).invoke(inv)

    async def warmup(self, spec: FunctionSpec, traced: InSpan | None = None) -> int:
        """Call the module's `warmup(ctx)` hook (never `handle`) in every live instance of `spec`, starting
        one first if there is none (that start is not a cold start for later requests). Returns how many
        instances ran it; raises the first error when none did. `traced` runs each warm-up in its span (the
        invoker's: it exports the span)."""
        if self._stopping:
            raise Overloaded("the node is stopping")
        pool = self._pool(spec)
        pool.check_available()
        if not pool.instances:
            pool.start(warm=True)
        targets = [i for i in pool.instances if not i.dead]

        # Each warm-up is an invocation of its own, at the root of a trace of its own (nothing triggered it).
        async def warm(instance: InstanceHandle) -> InvokeResult:
            span = tracing.start()
            inv = Invocation(str(uuid.uuid4()), "warmup", None, b"null", None, span.traceparent)
            call = pool.call_on(instance, inv)
            # Each in its own span: a slow instance's warm-up does not stretch the others'.
            return await (call if traced is None else traced(spec, inv, span, call))

        results = await asyncio.gather(*(warm(i) for i in targets), return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors and len(errors) == len(results):
            raise errors[0]
        return len(results) - len(errors)

    def apply(self, functions: Sequence[FunctionSpec]) -> None:
        """Manifest reload: retire the pool of every function whose spec changed or that vanished."""
        self._follow_manifest()
        new = {f.name: f for f in functions}
        self._left = (self._left | self._served) - new.keys()
        self._served = set(new)
        for name, pool in list(self._pools.items()):
            spec = new.get(name)
            if spec == pool.spec:
                continue
            # Its queued requests (not started yet) go to the same function's next pool, if it is served.
            if spec is not None and pool.queued and spec.uuid == pool.spec.uuid and spec.productive:
                pool.hand_queue_to(self._pool(spec))  # `_pool` retires `pool`
            else:
                self._retire(name)

    def refresh_secrets(self) -> list[str]:
        """The secrets folder changed: retire the pool of every function whose secret values changed (or
        became unreadable, or readable again), so its next request gets a fresh instance while in-flight
        ones finish on the old. Returns the names of those functions.

        A folder that appeared, or was replaced, since the template started is not hidden from it
        (`framework/sandbox.py`): every function then gets instances of a fresh template, which hides it
        (told by the watcher, `secrets_folder_appeared`, or seen here by its identity)."""
        moved = self._follow_manifest()
        if moved is not None:
            return moved
        stale = self._stale_view()
        if stale is not None:
            return self._renew_template(stale)
        changed = []
        for name, pool in list(self._pools.items()):
            if not pool.spec.secrets:
                continue
            values, problem = self._read_secrets(pool.spec)
            if values != pool.secrets or problem != pool.unavailable:
                changed.append(name)
                log.info("secrets of function %s changed: its next request gets a fresh instance", name)
                self._retire(name)
        return changed

    def secrets_folder_appeared(self, went_at: float) -> None:
        """The secrets folder appeared, or another took its place (even with the old one's inode number),
        after `went_at` (`time.monotonic()`): a template that looked at it before then hides the old one at
        most; one that looked after (renewed by `refresh_secrets` meanwhile) hides the new one."""
        if self._template.hidden_at < went_at:
            self._folder_went = True
        stale = self._stale_view()
        if stale is not None:
            self._renew_template(stale)

    def _stale_view(self) -> str | None:
        """Why the template's view of the files is out of date, or None. A secrets folder is there that it
        does not hide (one that appeared, or took the place of the one it hides: a folder gone only marks it
        so; the next one renews it, once), or a folder of code it keeps read-only was replaced."""
        template = self._template
        if template.hide is None or self._stopping:
            return None
        now = sandbox.identity(template.hide)
        if now is None:
            self._folder_went = self._folder_went or template.hidden is not None
            return None
        if now != template.hidden or self._folder_went:
            return f"the secrets folder {template.hide} appeared or was replaced"
        # Looked at through an instance of the template (they share its mount namespace, and, unlike the
        # template, may be looked into by a node that is not root); with none, no one can write there.
        pid = next(
            (i.pid for p in self._pools.values() for i in p.instances if i.template is template and i.pid),
            None,
        )
        # Only once the template hid the folder (its view shows another one there) are the folders of code
        # read-only in its view: never where the kernel refused the namespace.
        if pid is None or sandbox.identity(Path(f"/proc/{pid}/root{template.hide}")) in (None, now):
            return None
        for folder in template.kept:
            if sandbox.writable_in(pid, folder):
                return f"{folder}, which instances see read-only, was replaced"
        return None

    def _project_folders(self) -> list[Path]:
        """The folders instances must see (the template keeps them visible, and read-only): the manifest's
        and the code cache's, as the manifest's link resolves now, the folders holding a link on the way to
        the manifest (`sandbox.link_holders`), and the code given at the start (a local test run's)."""
        manifest = self.settings.manifest
        holders = sandbox.link_holders(manifest)
        return [manifest.resolve().parent, *holders, cache_dir(self.settings), *self._code]

    def _follow_manifest(self) -> list[str] | None:
        """When the manifest resolves to another folder now (its link re-pointed), that folder's secrets
        folder is read and hidden: a fresh template for every function (their names returned); else None."""
        if self._stopping:
            return None
        secrets, needed = self.settings.secrets_path, self._project_folders()
        if secrets == self.secrets.path and needed == self._needed:
            return None
        self.secrets.path, self._needed = secrets, needed
        return self._renew_template(f"the manifest's folder moved: secrets are read from {secrets} now")

    def _renew_template(self, why: str) -> list[str]:
        """A fresh template for every new instance; the old one stays until its instances are gone (they
        die with it). Every pool is retired, and one still starting instances for its queue starts them
        from the fresh template too."""
        old = self._template
        log.info("%s: every function gets fresh instances", why)
        self._template = fresh = Template(self.secrets.path, self._needed, self._code_path)
        fresh.start()
        self._folder_went = False
        self._old_templates.append(old)
        names = list(self._pools)
        for name in names:
            self._retire(name)
        for pool in self._retired:
            pool.template = fresh
        return names

    def instance_count(self, name: str) -> int:
        """Live (or starting) instances of function `name`, those draining after a reload included."""
        return len(self.instance_ids(name))

    def instance_ids(self, name: str) -> list[str]:
        return [i.id for p in self._all_pools() if p.spec.name == name for i in p.instances]

    def inflight(self) -> int:
        """Requests held by all pools (in flight or queued), for draining."""
        return sum(p.load for p in self._all_pools())

    # ---- internals ----

    def _inflight_of(self, name: str) -> int:
        """Requests held by `name`'s pools. Read by `/metrics` once per function, from the thread that
        renders it: one look-up (a walk over every pool, per function, made a scrape of 1,000 functions
        quadratic), and reads that a change on the loop meanwhile cannot break."""
        pool = self._pools.get(name)
        held = pool.load if pool is not None else 0
        return held + sum(p.load for p in tuple(self._retired) if p.spec.name == name)

    def _pool(self, spec: FunctionSpec) -> FunctionPool:
        pool = self._pools.get(spec.name)
        if pool is not None and (pool.spec is spec or pool.spec == spec):
            pool.spec = spec  # an equal spec from a reloaded manifest: compare by identity from now on
            return pool
        if pool is not None:
            self._retire(spec.name)
        if not self._template.alive():
            self._template.start()
        # Read when scraped, not counted per request (a gauge update costs microseconds on the hot path).
        self.metrics.inflight.labels(spec.name).set_function(lambda: self._inflight_of(spec.name))
        values, problem = self._read_secrets(spec)
        if problem is not None:
            log.error("function %s cannot start instances: %s", spec.name, problem)
        pool = self._pools[spec.name] = FunctionPool(
            spec,
            self._template,
            self.metrics,
            self.settings.queue_timeout,
            self.settings.log_level,
            secrets=values,
            unavailable=problem,
            recorder=self.recorder,
            log_caps=(self.settings.log_entries, self.settings.log_chars),
        )
        if spec.instances.memory_mb is not None:
            self._memory.ensure_started()
        return pool

    def _read_secrets(self, spec: FunctionSpec) -> tuple[dict[str, str], str | None]:
        """The values of the secrets `spec` lists, or ({}, why one cannot be read)."""
        try:
            return self.secrets.values(spec.secrets), None
        except SecretError as exc:
            return {}, str(exc)

    def _limited(self) -> list[tuple[InstanceHandle, int]]:
        """Instances whose function has `instances.memory_mb`, with that limit (for the memory guard)."""
        return [
            (inst, limit)
            for pool in self._all_pools()
            if (limit := pool.spec.instances.memory_mb) is not None
            for inst in pool.instances
        ]

    def _retire(self, name: str) -> None:
        pool = self._pools.pop(name)
        log.info(
            "function %s changed or left the manifest: retiring its %d instance(s)", name, len(pool.instances)
        )
        pool.retire()
        self._retired.append(pool)

    def code_in_use(self) -> list[Path]:
        """The code folders of every pool, retiring ones too: their instances import from them."""
        return [p.spec.code for p in self._all_pools() if p.spec.code is not None]

    def _all_pools(self) -> list[FunctionPool]:
        return [*self._pools.values(), *self._retired]

    async def _reap_forever(self) -> None:
        while True:
            pools = self._all_pools()
            shortest = min((p.spec.instances.idle_timeout for p in pools), default=REAP_TICK[1] * 4)
            await asyncio.sleep(min(max(shortest / 4, REAP_TICK[0]), REAP_TICK[1]))
            now = time.monotonic()
            for pool in pools:
                pool.reap(now)
            self._retired = [
                p for p in self._retired if p.instances or p.queued or p.exiting or p.late_records
            ]
            if self._left:
                pooled = {p.spec.name for p in self._all_pools()}
                gone = self._left - pooled
                if gone:
                    self.metrics.forget(gone)
                self._left &= pooled
            forked = {i.template for p in self._all_pools() for i in (*p.instances, *p.exiting)}
            for old in [t for t in self._old_templates if t not in forked]:
                old.stop()  # none of its instances is left: they would die with it
                self._old_templates.remove(old)


async def invoke_once(spec: FunctionSpec, payload: bytes, settings: Settings | None = None) -> InvokeResult:
    """`faas invoke NAME` without `--url`: run `spec` (any state) once in a fresh instance, then stop."""
    runtime = Runtime(settings or Settings(), code=[] if spec.code is None else [spec.code])
    await runtime.start()
    try:
        return await runtime.invoke(spec, Invocation(str(uuid.uuid4()), "direct", None, payload))
    finally:
        await runtime.stop(0)
