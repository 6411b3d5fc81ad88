"""Which partition a keyed record goes to: Kafka's default partitioner, with the key's hash remembered.

Java clients and aiokafka put a keyed record on partition `murmur2(key) & 0x7fffffff % partitions`, so
records of one key stay in order on one partition; replies and invocation records follow the same rule so
a reader sees them where any Kafka client would put them. aiokafka's murmur2 is pure Python, about 4 us a
key (30 us on a loaded machine), paid per record when called per reply. Keys repeat (a conversation's
events, a function's records), so the hash is remembered, for up to `KEYS` keys at a time.
"""

from __future__ import annotations

from aiokafka.partitioner import murmur2

KEYS = 65_536
"""Keys whose hash is remembered; the memory is forgotten whole when full (~8 MB at most)."""


class KeyHashes:
    """`partition(key, partitions)`: the default partitioner's choice among `partitions` for `key`."""

    def __init__(self, keys: int = KEYS) -> None:
        self.keys = keys
        self._hashes: dict[bytes, int] = {}

    def partition(self, key: bytes, partitions: list[int]) -> int:
        hashed = self._hashes.get(key)
        if hashed is None:
            if len(self._hashes) >= self.keys:
                self._hashes.clear()
            hashed = self._hashes[key] = murmur2(key) & 0x7FFFFFFF
        return partitions[hashed % len(partitions)]
