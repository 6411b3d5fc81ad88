"""The catch-up of a new scheduler leader (framework/sources/schedule/catchup.py): the rule on its own, and
the scheduler taking leadership on a fake clock, with the tick log in memory."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest

from framework.control.cron import parse
from framework.observe.metrics import Metrics
from framework.settings import Settings
from framework.sources.schedule.catchup import CATCH_UP_MAX, CATCH_UP_WINDOW, owed
from framework.sources.schedule.entry import CronEntry
from framework.sources.schedule.leader import KafkaElection
from framework.sources.schedule.scheduler import Scheduler
from tests.sources.schedule.test_scheduler import (
    T0,
    Clock,
    FakeElection,
    FakeInvoker,
    registry,
    sample,
    settle,
    spec,
    until,
)

S = int(T0)
"""The whole second just before T0: per-second ticks are S + 1, S + 2, ..."""


def at(second: float) -> datetime:
    return datetime.fromtimestamp(second, UTC)


class FakeTicks:
    """The tick log in memory: `newest` answers `known` (once `gate`, when set, opens) or raises `fail`."""

    def __init__(self, known: dict[str, int] | None = None) -> None:
        self.known = dict(known or {})
        self.records: list[tuple[str, int]] = []
        self.results: list[tuple[str, int, dict[str, Any]]] = []
        self.gate: asyncio.Event | None = None
        self.fail: Exception | None = None
        self.answered = 0

    def record(self, key: str, tick: int) -> None:
        self.records.append((key, tick))

    def result(self, key: str, tick: int, last: dict[str, Any]) -> None:
        self.results.append((key, tick, last))

    async def newest(self, since: float) -> dict[str, int]:
        if self.gate is not None:
            await self.gate.wait()
        self.answered += 1
        if self.fail is not None:
            raise self.fail
        return {k: v for k, v in self.known.items()}

    def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


class Cluster:
    """One scheduler on a fake clock as a follower, its election, its invoker and its tick log."""

    def __init__(
        self,
        newest: int | None = None,
        by_index: bool = False,
        since: float | None = None,
        **spec_fields: str,
    ) -> None:
        """`newest`: the tick log's newest tick of the schedule, under its key (`by_index`: under the key
        of records written before schedules were keyed by what they are, `<uuid>:<index>`). `since`: when
        the function was last deployed after an undeploy, as the deployment log says (None: not known)."""
        self.job = spec(**spec_fields)
        self.ticks = FakeTicks()
        self.invoker, self.clock, self.metrics = FakeInvoker(), Clock(), Metrics()
        self.election = FakeElection(leader=False)
        self.sched = Scheduler(
            Settings(shutdown_grace=1),
            self.invoker,
            self.metrics,
            None,
            election=self.election,
            ticks=self.ticks,
            clock=self.clock,
        )
        self.sched.apply(registry(self.job), start=True, since=lambda uuid: since)
        self.key = self.sched.entries[(self.job.name, "schedule", 0)].key
        if newest is not None:
            self.ticks.known[f"{self.job.uuid}:0" if by_index else self.key] = newest

    def run(self, second: float) -> None:
        self.clock.now = second
        self.sched.run_due(second)

    async def take_over(self, second: float) -> None:
        """Leadership comes at `second` (a new term): the read starts; wait for its answer, run the loop."""
        self.election.is_leader, self.election.term = True, self.election.term + 1
        self.run(second)
        await until(lambda: self.ticks.answered > 0, message="the tick log read")
        self.run(second)
        await settle(self.sched)

    @property
    def fired(self) -> list[int]:
        return [int(str(c[3]).rsplit(":", 1)[1]) for c in self.invoker.calls]


# ---- the rule ----


def test_owed_are_the_ticks_strictly_between_oldest_first() -> None:
    cron = parse("* * * * * */1")
    ticks, missed = owed(cron, at(S + 1), at(S + 5))
    assert [t.timestamp() for t in ticks] == [S + 2, S + 3, S + 4] and missed == 0
    assert owed(cron, at(S + 5), at(S + 5)) == ([], 0)
    assert owed(cron, at(S + 9), at(S + 5)) == ([], 0), "a recorded tick past the boundary: nothing owed"


def test_owed_beyond_the_cap_keeps_only_the_latest() -> None:
    cron = parse("* * * * * */1")
    ticks, missed = owed(cron, at(S), at(S + CATCH_UP_MAX + 1))
    assert len(ticks) == CATCH_UP_MAX and missed == 0, "exactly the cap: all of them"
    ticks, missed = owed(cron, at(S), at(S + CATCH_UP_MAX + 2))
    assert [t.timestamp() for t in ticks] == [S + CATCH_UP_MAX + 1] and missed == CATCH_UP_MAX


def test_owed_never_looks_past_the_window() -> None:
    """A bogus record (tick 0, 1970) must not walk a per-second cron for 54 years: only the window counts."""
    cron = parse("* * * * * */1")
    ticks, missed = owed(cron, at(0), at(S))
    assert [t.timestamp() for t in ticks] == [S - 1] and missed == CATCH_UP_WINDOW - 2


def test_owed_counts_instants_in_the_hour_a_fall_back_repeats() -> None:
    """Europe/Berlin on 2026-10-25 goes from 03:00 CEST back to 02:00 CET at 01:00 UTC. 1. A per-minute
    cron whose last recorded tick is 00:55 UTC (02:55 CEST) and whose next is 02:00 CET (01:00 UTC, the
    repeated hour's second pass). 2. A per-second cron from 00:59:50 to 01:00:05 UTC.
    Result: 1 owes 00:56 to 00:59 UTC; 2 owes the 14 seconds between. (Times of one zone compare by wall
    clock, fold ignored: 02:56 CEST looked later than 02:00 CET, and nothing was owed.) A tick queues
    behind late ticks by the same instants (`Scheduler._behind_late`)."""
    minute = parse("* * * * *", "Europe/Berlin")
    before = minute.next(datetime(2026, 10, 25, 0, 59, tzinfo=UTC))
    assert before.timestamp() == datetime(2026, 10, 25, 1, 0, tzinfo=UTC).timestamp() and before.fold == 1
    ticks, missed = owed(minute, datetime(2026, 10, 25, 0, 55, tzinfo=UTC), before)
    assert [t.astimezone(UTC).strftime("%H:%M") for t in ticks] == ["00:56", "00:57", "00:58", "00:59"]
    assert missed == 0
    second = parse("* * * * * */1", "Europe/Berlin")
    before = second.next(datetime(2026, 10, 25, 1, 0, 4, tzinfo=UTC))
    ticks, missed = owed(second, datetime(2026, 10, 25, 0, 59, 50, tzinfo=UTC), before)
    assert len(ticks) == 14 and missed == 0, [t.isoformat() for t in ticks]
    first_pass, second_pass = ticks[0], ticks[-1]  # 02:59:51 CEST, 02:00:04 CET
    entry = SimpleNamespace(owed=[first_pass], late_until=second_pass)
    assert Scheduler._behind_late(cast(CronEntry, entry))


def test_the_election_counts_terms_and_wakes_on_every_change() -> None:
    """1. Take leadership. 2. A rebalance revokes and gives it back. 3. Lose it, take it again.
    Result: terms 1, 1, 2, and the wake callback on each change of leadership only."""
    woken: list[bool] = []
    election = KafkaElection(Settings(), "127.0.0.1:1", wake=lambda: woken.append(election.is_leader))
    election.set_leader(True)
    assert (election.term, woken) == (1, [True])
    election.revoke()
    election.set_leader(True)
    assert (election.term, woken) == (1, [True]), "kept through a rebalance: the same term"
    election.set_leader(False)
    election.set_leader(True)
    assert (election.term, woken) == (2, [True, False, True])


# ---- the scheduler taking leadership ----


async def test_new_leader_fires_the_ticks_since_the_last_recorded_one_then_goes_on() -> None:
    """1. A follower consumes three ticks (S+1..S+3) without firing; the tick log's newest is S. 2. It
    becomes leader at S+3.25. 3. The clock reaches S+4.
    Result: S+1, S+2, S+3 fire at once, in order, with their own ids; then S+4 fires, once; every fired
    tick is written to the tick log."""
    c = Cluster(newest=S)
    c.run(S + 3.25)
    assert c.fired == []
    await c.take_over(S + 3.25)
    assert c.fired == [S + 1, S + 2, S + 3]
    assert [str(call[3]) for call in c.invoker.calls] == [f"job:0:{S + i}" for i in (1, 2, 3)]
    c.run(S + 4)
    await settle(c.sched)
    c.run(S + 4.5)
    await settle(c.sched)
    assert c.fired == [S + 1, S + 2, S + 3, S + 4], "the normal loop fired no caught-up tick again"
    assert c.ticks.records == [(c.key, S + i) for i in (1, 2, 3, 4)]


async def test_a_record_keyed_by_the_schedules_index_is_read_too() -> None:
    """1. As above, the tick log's newest (S) written under `<uuid>:0`, as before schedules were keyed by
    what they are. Result: the same catch-up, and the new ticks written under the new key."""
    c = Cluster(newest=S, by_index=True)
    c.run(S + 3.25)
    await c.take_over(S + 3.25)
    assert c.fired == [S + 1, S + 2, S + 3]
    assert c.key.startswith(f"{c.job.uuid}:s") and c.ticks.records[0] == (c.key, S + 1)


async def test_the_newer_of_the_two_keys_bounds_the_catch_up() -> None:
    """In a rolling upgrade a node of the version before writes ticks by index: the tick log holds S + 1 by
    the schedule's key and S + 3 by its index. Leadership comes at S + 5.25. Result: S + 4 and S + 5 fire
    (the key's older record alone would run S + 2 and S + 3 again)."""
    c = Cluster()
    c.ticks.known.update({c.key: S + 1, f"{c.job.uuid}:0": S + 3})
    c.run(S + 5.25)
    await c.take_over(S + 5.25)
    assert c.fired == [S + 4, S + 5]


async def test_a_schedule_that_moved_in_the_manifest_catches_up_from_its_own_ticks() -> None:
    """1. A node's first table (as after a restart) holds one schedule, per second, payload "B": a deploy
    while no node ran removed the schedule before it, so it is index 0 now. The tick log holds the removed
    schedule's newest tick (S - 30, keyed by what that schedule was) and this one's (S + 2, run under its
    old index). 2. It becomes leader at S + 4.25.
    Result: S + 3 and S + 4 fire, nothing before: this schedule's own ticks bound its catch-up. (Keyed by
    index, the removed schedule's records were taken for its own, and S - 29 to S + 2, which had run, ran
    again under new ids.)"""
    c = Cluster(payload="B")
    other = CronEntry("schedule", c.job, 0, parse("* * * * *"), "A")
    assert other.key != c.key and other.key.startswith(f"{c.job.uuid}:s")
    c.ticks.known.update({other.key: S - 30, c.key: S + 2})
    c.run(S + 4.25)
    await c.take_over(S + 4.25)
    assert c.fired == [S + 3, S + 4]


async def test_no_record_no_catch_up() -> None:
    """1. A follower consumes S+1..S+3; the tick log knows nothing of the schedule. 2. It becomes leader.
    Result: nothing of the gap fires (nothing says it was lost); the next tick fires."""
    c = Cluster()
    c.run(S + 3.25)
    await c.take_over(S + 3.25)
    assert c.fired == []
    c.run(S + 4)
    await settle(c.sched)
    assert c.fired == [S + 4]


async def test_a_long_gap_fires_the_latest_and_counts_the_rest_missed() -> None:
    """1. The newest record is S; the follower consumes 30 ticks. 2. It becomes leader.
    Result: only S+30 fires; 29 ticks counted as missed (as after a late wake)."""
    c = Cluster(newest=S)
    c.run(S + 30.25)
    await c.take_over(S + 30.25)
    assert c.fired == [S + 30]
    assert sample(c.metrics, "faas_schedule_skipped_total", function="job", reason="missed") == 29


async def test_nothing_fires_before_the_read_and_what_falls_due_meanwhile_queues_in_order() -> None:
    """1. The newest record is S; the follower consumes S+1, S+2; it becomes leader and its read hangs.
    2. S+3 falls due. Result: nothing fires. 3. The read answers; the first late run hangs. 4. S+4 falls
    due. Result: S+4 queues behind the late ticks (no overlap skip); all run once, in order S+1..S+4."""
    c = Cluster(newest=S)
    c.run(S + 2.25)
    c.ticks.gate = asyncio.Event()
    c.election.is_leader, c.election.term = True, c.election.term + 1
    c.run(S + 2.25)
    c.run(S + 3)
    await asyncio.sleep(0)
    assert c.fired == [], "fired before the tick log was read"
    c.invoker.gate = asyncio.Event()
    c.ticks.gate.set()
    await until(lambda: c.ticks.answered > 0)
    c.run(S + 3.25)
    await until(lambda: len(c.invoker.calls) == 1, message="the first late run")
    c.run(S + 4)
    c.invoker.gate.set()
    await settle(c.sched)
    assert c.fired == [S + 1, S + 2, S + 3, S + 4]
    assert sample(c.metrics, "faas_schedule_skipped_total", function="job", reason="overlap") == 0


async def test_after_the_late_ticks_a_slow_run_makes_overlaps_not_a_queue() -> None:
    """1. The newest record is S; the follower consumes S+1 and becomes leader; its late run of S+1 hangs
    (a handler slower than the period). 2. S+2 and S+3 fall due while it runs. 3. It ends.
    Result: S+2 and S+3 are overlaps (skipped, counted, recorded), as on a leader that never changed: no
    late tick waited any more, so queueing them would only put the schedule further behind with every
    run."""
    c = Cluster(newest=S)
    c.run(S + 1.25)
    c.invoker.gate = asyncio.Event()
    c.election.is_leader, c.election.term = True, c.election.term + 1
    c.run(S + 1.25)
    await until(lambda: c.ticks.answered > 0, message="the tick log read")
    c.run(S + 1.5)
    await until(lambda: len(c.invoker.calls) == 1, message="the late run")
    c.run(S + 2)
    c.run(S + 3)
    c.invoker.gate.set()
    await settle(c.sched)
    assert c.fired == [S + 1]
    assert sample(c.metrics, "faas_schedule_skipped_total", function="job", reason="overlap") == 2
    assert c.ticks.records == [(c.key, S + i) for i in (1, 2, 3)]


async def test_an_unreadable_log_fires_only_what_fell_due_since_taking_over(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. The follower consumes S+1, S+2; it becomes leader at S+2.25 and reading the tick log fails slowly
    (S+3 falls due meanwhile). Result: a warning; S+3 fires (it was this leader's), S+1 and S+2 do not."""
    c = Cluster(newest=S)
    c.run(S + 2.25)
    c.ticks.gate, c.ticks.fail = asyncio.Event(), OSError("broker gone")
    c.election.is_leader, c.election.term = True, c.election.term + 1
    c.run(S + 2.25)
    c.run(S + 3)
    c.ticks.gate.set()
    await until(lambda: c.ticks.answered > 0)
    c.run(S + 3.25)
    await settle(c.sched)
    assert c.fired == [S + 3]
    assert "cannot read the tick log" in caplog.text and "broker gone" in caplog.text


async def test_leadership_lost_during_the_read_fires_nothing() -> None:
    """1. A new leader's read hangs. 2. It loses leadership; the read answers. Result: nothing fires."""
    c = Cluster(newest=S)
    c.run(S + 2.25)
    c.ticks.gate = asyncio.Event()
    c.election.is_leader, c.election.term = True, c.election.term + 1
    c.run(S + 2.25)
    c.election.is_leader = False
    c.run(S + 2.5)
    c.ticks.gate.set()
    c.run(S + 3.25)
    await asyncio.sleep(0.01)
    await settle(c.sched)
    assert c.fired == []


async def test_leadership_lost_while_catching_up_drops_the_rest() -> None:
    """1. A new leader owes S+1..S+3; its first late run hangs. 2. It loses leadership.
    Result: once that run ends, S+2 and S+3 do not fire here (they are the next leader's)."""
    c = Cluster(newest=S)
    c.run(S + 3.25)
    c.invoker.gate = asyncio.Event()
    c.election.is_leader, c.election.term = True, c.election.term + 1
    c.run(S + 3.25)
    await until(lambda: c.ticks.answered > 0)
    c.run(S + 3.25)
    await until(lambda: len(c.invoker.calls) == 1, message="the first late run")
    c.election.is_leader = False
    c.run(S + 3.5)
    c.invoker.gate.set()
    await settle(c.sched)
    assert c.fired == [S + 1]


async def test_a_node_that_just_started_catches_up_on_its_own_downtime() -> None:
    """1. The newest record is S-3 (the previous process of this node fired it, then stopped); the node
    starts at S+0.5. 2. It consumes S+1..S+3 while it joins, and becomes leader.
    Result: S-2..S+3 fire: the ticks from before it started too."""
    c = Cluster(newest=S - 3)
    c.run(S + 3.25)
    await c.take_over(S + 3.25)
    assert c.fired == list(range(S - 2, S + 4))


async def test_a_node_that_just_started_owes_no_tick_from_before_the_functions_last_deploy() -> None:
    """1. The newest record is S-5 (fired before the function was undeployed); it was deployed again at
    S-2.5, while no node ran; the node starts at S+0.5. 2. It consumes S+1..S+3 and becomes leader.
    Result: S-2..S+3 fire, not S-4..S-3: those fell while the function was undeployed (a new leader fired
    them, as if it had only been down)."""
    c = Cluster(newest=S - 5, since=S - 2.5)
    c.run(S + 3.25)
    await c.take_over(S + 3.25)
    assert c.fired == list(range(S - 2, S + 4))


async def test_no_catch_up_for_ticks_before_the_schedule_was_deployed() -> None:
    """1. The newest record is S; the function is deployed only at S+1.75. 2. The follower consumes S+2
    and S+3 and becomes leader. Result: S+2 and S+3 fire, S+1 (before the deploy) does not."""
    c = Cluster(newest=S, state="draft")
    c.clock.now = S + 1.75
    c.sched.apply(registry(spec()))
    c.run(S + 3.25)
    await c.take_over(S + 3.25)
    assert c.fired == [S + 2, S + 3]


async def test_the_leader_records_what_it_fires_and_skips_not_keep_warm() -> None:
    """1. A leader (caught up) with a per-second schedule and keep-warm; a run that hangs. 2. The next tick
    comes (skipped: overlap). Result: both ticks are in the tick log; no keep-warm tick is."""
    c = Cluster(keep_warm="* * * * * */1")
    await c.take_over(S + 0.25)
    c.invoker.gate = asyncio.Event()
    c.run(S + 1)
    await until(lambda: len(c.invoker.calls) == 1)
    c.run(S + 2)
    assert sample(c.metrics, "faas_schedule_skipped_total", function="job", reason="overlap") == 1
    c.invoker.gate.set()
    await settle(c.sched)
    assert c.ticks.records == [(c.key, S + 1), (c.key, S + 2)] and c.invoker.warmups == ["job", "job"]


async def test_a_follower_records_nothing() -> None:
    c = Cluster()
    for i in range(1, 4):
        c.run(S + i)
    await settle(c.sched)
    assert c.fired == [] and c.ticks.records == [] and c.ticks.answered == 0
