"""Per-key ordering with bounded concurrency: the scheduling half of the Kafka source.

Jobs with the same (partition, key) run one after another in submission order (offset order); different
keys run concurrently. A record with a null key is its own key: it orders against nothing, since Kafka's
default partitioner already scatters null-key records and no producer can expect an order among them.
At most `limit` jobs are held (running or waiting in a chain); the poll loop asks `room` before fetching.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Hashable
from typing import Generic, TypeVar

from framework.tasks import wait_or_cancel

log = logging.getLogger("faas.kafka")

G = TypeVar("G", bound=Hashable)  # the group a chain belongs to: a partition
Job = Callable[[], Awaitable[None]]


class _Chain:
    __slots__ = ("group", "jobs", "task")

    def __init__(self, group: Hashable) -> None:
        self.group = group
        self.jobs: deque[Job] = deque()
        self.task: asyncio.Task[None] | None = None


class KeyedRunner(Generic[G]):
    """Run jobs in per-key chains; `limit` bounds the jobs held (default FAAS_MAX_INFLIGHT_EVENTS)."""

    def __init__(self, limit: int = 1000) -> None:
        self.limit = limit
        self.size = 0
        """Jobs submitted and not yet finished or dropped."""
        self._chains: dict[object, _Chain] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.on_release: Callable[[], None] | None = None
        """Called whenever jobs finish or are dropped (the poll loop waits on it while full)."""

    @property
    def room(self) -> int:
        return self.limit - self.size

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the chains run on (set by the first `submit`)."""
        assert self._loop is not None
        return self._loop

    def submit(self, group: G, key: bytes | None, job: Job) -> None:
        """Queue `job` behind earlier jobs of the same (group, key); start a chain if there is none."""
        chain_id: object = object() if key is None else (group, key)
        chain = self._chains.get(chain_id)
        self.size += 1
        if chain is None:
            chain = self._chains[chain_id] = _Chain(group)
            chain.jobs.append(job)
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            # `loop.create_task`: `asyncio.create_task` asks for the running loop (a getpid() each time).
            chain.task = self._loop.create_task(self._run(chain_id, chain), name="kafka-chain")
        else:
            chain.jobs.append(job)

    async def _run(self, chain_id: object, chain: _Chain) -> None:
        try:
            while chain.jobs:
                job = chain.jobs.popleft()
                try:
                    await job()
                except Exception:  # jobs answer their own errors; this is a bug, but the chain goes on
                    log.exception("event job failed")
                finally:
                    self._release(1)
        finally:  # also on cancellation: what was still queued is dropped
            self._release(len(chain.jobs))
            chain.jobs.clear()
            if self._chains.get(chain_id) is chain:
                del self._chains[chain_id]

    def _release(self, n: int) -> None:
        self.size -= n
        if self.on_release is not None:
            self.on_release()

    def _select(self, groups: Collection[G] | None) -> list[_Chain]:
        return [c for c in self._chains.values() if groups is None or c.group in groups]

    def drop_queued(self, groups: Collection[G] | None = None) -> int:
        """Drop jobs not started yet in `groups` (default: all); returns how many. Running ones go on."""
        dropped = 0
        for chain in self._select(groups):
            dropped += len(chain.jobs)
            chain.jobs.clear()
        self._release(dropped)
        return dropped

    async def drain(self, groups: Collection[G] | None = None, wait: float = 5.0) -> bool:
        """Wait up to `wait` seconds for the chains of `groups`; cancel what is left.

        Returns True when everything finished in time. Callers drop queued jobs first when they only
        want the running ones to finish.
        """
        return await wait_or_cancel([c.task for c in self._select(groups) if c.task is not None], wait)
