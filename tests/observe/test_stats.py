"""Per-function 15-minute aggregates (framework/observe/stats.py): counts, failures, percentiles and
the window."""

from __future__ import annotations

from framework.observe.stats import BOUNDS, WINDOW_MINUTES, FunctionStats, StatsBook

T0 = 1_800_000_000.0  # a minute boundary (divisible by 60)


def test_counts_failures_and_percentiles_within_a_bin() -> None:
    s = FunctionStats("u", "f")
    for i in range(1, 101):  # 1..100 ms
        s.observe(T0 + 1, float(i), ok=i % 10 != 0)
    snap = s.snapshot(T0 + 30)
    assert snap["count"] == 100 and snap["failures"] == 10
    assert snap["window_s"] == WINDOW_MINUTES * 60 and snap["function"] == "f" and snap["uuid"] == "u"
    assert abs(snap["p50_ms"] - 50) <= 2.5  # within 5 %
    assert 99 <= snap["p99_ms"] <= 100  # capped by the longest duration seen
    minutes = snap["minutes"]
    assert len(minutes) == WINDOW_MINUTES
    assert minutes[-1]["count"] == 100 and minutes[-1]["minute"].endswith(":00Z")
    assert all(m["count"] == 0 and m["p50_ms"] is None for m in minutes[:-1])


def test_old_minutes_leave_the_window_and_slots_are_reused() -> None:
    s = FunctionStats("u", "f")
    s.observe(T0, 5.0, ok=False)
    s.observe(T0 + 60 * 3, 7.0, ok=True)
    assert s.snapshot(T0 + 60 * 3)["count"] == 2
    assert s.snapshot(T0 + 60 * WINDOW_MINUTES)["count"] == 1  # the first minute left the window
    s.observe(T0 + 60 * WINDOW_MINUTES, 9.0, ok=True)  # same ring slot as T0: reset, not added
    snap = s.snapshot(T0 + 60 * WINDOW_MINUTES)
    assert snap["count"] == 2 and snap["failures"] == 0
    assert s.snapshot(T0 + 60 * 40)["count"] == 0 and s.snapshot(T0 + 60 * 40)["p99_ms"] is None


def test_extremes_land_in_the_edge_bins() -> None:
    s = FunctionStats("u", "f")
    s.observe(T0, 0.0, ok=True)
    s.observe(T0, 120_000.0, ok=True)
    snap = s.snapshot(T0)
    assert 0 < snap["p50_ms"] <= BOUNDS[0]  # within the first bin
    assert snap["p99_ms"] == 120_000.0


def test_book_gives_zeros_for_a_function_that_never_ran() -> None:
    book = StatsBook()
    book.observe("u1", "one", T0, 3.0, ok=True)
    assert book.of("u1", "one", T0)["count"] == 1
    empty = book.of("u2", "two", T0)
    assert empty["count"] == 0 and empty["function"] == "two" and len(empty["minutes"]) == WINDOW_MINUTES
    assert book.of("u1", "renamed", T0)["count"] == 0  # a renamed function starts a fresh history


def test_ran_is_true_only_within_the_window_and_for_the_same_name() -> None:
    book = StatsBook()
    assert not book.ran("u1", "one", T0)
    book.observe("u1", "one", T0, 3.0, ok=False)
    assert book.ran("u1", "one", T0) and book.ran("u1", "one", T0 + 60 * (WINDOW_MINUTES - 1))
    assert not book.ran("u1", "one", T0 + 60 * WINDOW_MINUTES)  # left the window
    assert not book.ran("u1", "one", T0 - 60)  # a clock set back: that minute is not in the window
    assert not book.ran("u1", "renamed", T0)


def test_percentiles_are_rounded_to_the_microsecond() -> None:
    """A longest duration of many decimals caps p99: it is given to the microsecond, as records give
    `duration_ms`, not as the float it was measured as."""
    s = FunctionStats("u", "f")
    s.observe(T0, 0.25, ok=True)
    s.observe(T0, 0.6996709998929873, ok=True)
    snap = s.snapshot(T0)
    assert snap["p99_ms"] == 0.7 and snap["minutes"][-1]["p99_ms"] == 0.7
    assert all(round(v, 3) == v for v in (snap["p50_ms"], snap["p99_ms"]))


def test_a_median_of_durations_spread_evenly_is_close_to_the_exact_one() -> None:
    """21 invocations of 0, 20, 40, ..., 400 ms. Result: p50 within 5 % of the exact median (200 ms) and p99
    the longest (it was 241 ms: the upper edge of a bin 25 % wide)."""
    s = FunctionStats("u", "f")
    for i in range(21):
        s.observe(T0, 20.0 * i + 0.16, ok=True)
    snap = s.snapshot(T0)
    assert abs(snap["p50_ms"] - 200.16) <= 10 and snap["p99_ms"] == 400.16, snap
