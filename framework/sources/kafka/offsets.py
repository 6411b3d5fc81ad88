"""Which offsets may be committed: the at-least-once bookkeeping of the Kafka source.

Records of one partition finish out of order (different keys run concurrently), but Kafka commits one
offset per partition meaning "everything below this is done". So an offset is committable only once every
record below it in that partition has had its reply (and dead-letter copy) acknowledged by the broker.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

P = TypeVar("P")  # a partition: aiokafka's TopicPartition in the source, anything hashable in tests


class PartitionOffsets:
    """Offsets taken from one partition, in the order the consumer returned them (increasing)."""

    __slots__ = ("_done", "_pending", "acking", "committed", "next_offset")

    def __init__(self) -> None:
        self._pending: deque[int] = deque()
        self._done: set[int] = set()
        self.acking = 0
        """Records whose reply was handed to the producer and is not acknowledged yet."""
        self.next_offset: int | None = None
        """One past the highest offset taken: what to commit once nothing is pending."""
        self.committed: int | None = None
        """The last offset committed to the broker (None: nothing yet in this assignment)."""

    @property
    def held(self) -> int:
        """Records taken and not done yet (running, queued behind their key, or awaiting their ack)."""
        return len(self._pending) - len(self._done)

    @property
    def oldest(self) -> int | None:
        """The oldest offset taken and not done (None when every one is): where the partition's work is."""
        return self._pending[0] if self._pending else None

    def take(self, offset: int) -> None:
        if self.next_offset is not None and offset < self.next_offset:
            return  # refetched after a seek: already tracked
        self._pending.append(offset)
        self.next_offset = offset + 1

    def done(self, offset: int) -> None:
        if self._pending and offset == self._pending[0]:
            self._pending.popleft()
            # Later offsets that finished first are released now, in order.
            while self._pending and self._pending[0] in self._done:
                self._done.discard(self._pending.popleft())
        else:
            self._done.add(offset)

    def committable(self) -> int | None:
        """The offset to commit now (Kafka's "next record to read"), or None when it would not move."""
        point = self._pending[0] if self._pending else self.next_offset
        if point is None or point == self.committed:
            return None
        return point


class OffsetTracker(Generic[P]):
    """Per-partition offsets of one assignment; `forget` drops a partition when it is revoked."""

    def __init__(self) -> None:
        self.partitions: dict[P, PartitionOffsets] = {}

    def take(self, tp: P, offset: int) -> PartitionOffsets:
        """Record that `offset` of `tp` was taken for processing; returns the partition's tracker.

        Callers mark the record done on that returned object, so a record finishing after its
        partition was revoked (and maybe reassigned) cannot touch the new assignment's state.
        """
        part = self.partitions.get(tp)
        if part is None:
            part = self.partitions[tp] = PartitionOffsets()
        part.take(offset)
        return part

    def committable(self, tps: list[P] | None = None) -> dict[P, int]:
        """Offsets that moved since the last commit, for `tps` (default: every tracked partition)."""
        out: dict[P, int] = {}
        for tp in self.partitions if tps is None else tps:
            part = self.partitions.get(tp)
            point = part.committable() if part is not None else None
            if point is not None:
                out[tp] = point
        return out

    def committed(self, offsets: dict[P, int]) -> None:
        """The broker acknowledged the commit of `offsets`."""
        for tp, offset in offsets.items():
            part = self.partitions.get(tp)
            if part is not None:
                part.committed = offset

    def acking(self, tps: list[P] | None = None) -> int:
        """Replies handed to the producer and not acknowledged yet, in `tps` (default: all)."""
        return sum(p.acking for tp, p in self.partitions.items() if tps is None or tp in tps)

    def forget(self, tps: list[P]) -> None:
        for tp in tps:
            self.partitions.pop(tp, None)
