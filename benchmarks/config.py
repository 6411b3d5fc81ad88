"""Sample counts of a full run (`make bench`, ~9 min on 2 cores, `costs` included) and of `--quick`
(end-to-end check)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    name: str
    repeats: int
    """Repetitions of every case; the median is reported."""
    direct_warmup: float
    direct_duration: float
    """Seconds of load per repetition of a direct-invoke case."""
    batch_requests: int
    cold_warmup: int
    cold_samples: int
    """Cold starts per repetition (each on a function that has never run)."""
    event_warmup: int
    event_count: int
    """Events per throughput repetition."""
    event_latency_seconds: float
    event_latency_max: int
    """At most this many events per latency repetition (Tansu's in-memory log slows as topics grow)."""
    warm_calls: int
    """In-process Runtime.invoke calls per repetition."""
    overload_seconds: float
    """Seconds of open-loop overload per repetition (cases/overload.py)."""
    producer_records: int
    """Invocation records per repetition of the producer's CPU case (cases/producer.py)."""


FULL = Profile(
    name="full",
    repeats=5,  # more than the minimum 3: the median of 5 holds up better on a shared machine
    direct_warmup=2.0,
    direct_duration=3.0,
    batch_requests=1000,
    cold_warmup=2,
    cold_samples=10,
    event_warmup=300,
    # 12,000 events a round, as the event path was first measured: at the relay's 30,000-40,000 events/s a
    # round of 3,000 lasted 0.1 s, and its fixed waits (the first fetch, the last acknowledgement) made
    # the relay look slower than it is (31,600 against 39,200 events/s in two runs on 2026-12-02).
    event_count=12_000,
    event_latency_seconds=3.0,
    event_latency_max=2500,
    warm_calls=3000,
    overload_seconds=4.0,
    producer_records=50_000,
)
QUICK = Profile(
    name="quick",
    repeats=1,  # a check of the harness (every case measured), not of the figures
    direct_warmup=0.1,
    direct_duration=0.2,
    batch_requests=1000,
    cold_warmup=1,
    cold_samples=3,
    event_warmup=20,
    event_count=100,
    event_latency_seconds=0.5,
    event_latency_max=200,
    warm_calls=200,
    overload_seconds=0.5,
    producer_records=2_000,
)
