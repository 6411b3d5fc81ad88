"""Remembered key hashes (`framework/kafka/partitioner.py`) choose as Kafka's default partitioner does."""

from __future__ import annotations

import os

from aiokafka.partitioner import DefaultPartitioner

from framework.kafka.partitioner import KeyHashes


def test_same_partition_as_the_default_partitioner() -> None:
    hashes = KeyHashes()
    for count in (1, 6, 24):
        partitions = list(range(count))
        for _ in range(300):
            key = os.urandom(1 + os.urandom(1)[0] % 40)
            expected = DefaultPartitioner()(key, partitions, partitions)
            assert hashes.partition(key, partitions) == expected
            assert hashes.partition(key, partitions) == expected  # remembered: the same answer


def test_answers_stay_right_past_the_memorys_bound() -> None:
    """More keys than it remembers: it forgets them all and goes on hashing, with the same answers."""
    hashes = KeyHashes(keys=10)
    partitions = list(range(6))
    keys = [f"k{i}".encode() for i in range(25)]
    expected = [DefaultPartitioner()(k, partitions, partitions) for k in keys]
    assert [hashes.partition(k, partitions) for k in keys] == expected
    assert [hashes.partition(k, partitions) for k in keys] == expected
