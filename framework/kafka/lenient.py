"""Fetched records whose header names are not UTF-8 are read, not fatal to the consumer.

Kafka's record format says a header name is a UTF-8 string, but only Java clients enforce it: Go clients
(sarama, franz-go) and librdkafka take any bytes. aiokafka decodes every header name strictly while it
iterates a fetched batch, so one such record raised `UnicodeDecodeError` out of `getmany`: the node's
consumer failed, rejoined from the committed offset, fetched the same record and failed again, for good,
and every partition it owned stopped with it (DESIGN.md section 4: the node never stops on bad input).

`install()` puts `LenientRecords` in the place aiokafka's fetcher builds its records from. A batch is read
by aiokafka's own (compiled) reader as before; only when that reader raises on a header name is the batch
read again by aiokafka's pure-Python reader, with the undecodable bytes of header names kept as `\\xNN`
escapes (`errors="backslashreplace"`). Records the fast reader already yielded are not yielded twice.

Trade-offs: a name read so is not the bytes that were sent, so a dead-letter copy of such a record carries
the escaped name (ASCII, valid UTF-8: it can always be produced, logged and replayed). No such name can be
a CloudEvents attribute (those are ASCII), so the event itself is served as if the header were absent;
a `ce_` one is an extension with an invalid name, dropped with a warning (`cloudevents.py`). The cost is
paid only by batches holding such a record: the pure-Python reader is about ten times slower.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import aiokafka.consumer.fetcher as fetcher
from aiokafka.record.default_records import DefaultRecordBatch, _DefaultRecordBatchPy
from aiokafka.record.memory_records import MemoryRecords

_LENGTH = struct.Struct(">i")
_LENGTH_AT = 8
"""A batch starts with its base offset (8 bytes), then its length (4 bytes) not counting these 12."""
_OVERHEAD = 12


class _Text(bytearray):
    """A slice of a batch whose `decode` never raises: aiokafka's reader decodes header names from these."""

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return bytearray.decode(self, encoding, "backslashreplace")


class _Buffer(bytearray):
    """A batch's (decompressed) bytes; slices of it are `_Text`."""

    def __getitem__(self, index: Any) -> Any:
        got = bytearray.__getitem__(self, index)
        return _Text(got) if isinstance(index, slice) else got


class _LenientBatch(_DefaultRecordBatchPy):  # type: ignore[misc]
    """aiokafka's pure-Python batch reader, reading header names with `backslashreplace`."""

    def _maybe_uncompress(self) -> None:
        super()._maybe_uncompress()
        buffer: bytearray = self._buffer  # type: ignore[has-type]  # aiokafka's, set in __init__
        if not isinstance(buffer, _Buffer):
            self._buffer = _Buffer(buffer)


class _Batch:
    """One fetched batch (aiokafka's own reader, everything else passed through to it), read again
    leniently from the record where that reader failed on a header name."""

    def __init__(self, batch: Any, raw: memoryview) -> None:
        self._batch = batch
        self._raw = raw

    def __getattr__(self, name: str) -> Any:
        return getattr(self._batch, name)

    def __next__(self) -> Any:  # aiokafka reads a control batch's marker with next()
        return next(self._batch)

    def __iter__(self) -> Iterator[Any]:
        last = -1
        try:
            for record in self._batch:
                last = record.offset
                yield record
            return
        except UnicodeDecodeError:
            pass
        for record in _LenientBatch(self._raw):
            if record.offset > last:
                yield record


class LenientRecords:
    """aiokafka's `MemoryRecords` (one fetched partition's bytes), its record batches wrapped in `_Batch`."""

    def __init__(self, data: bytes) -> None:
        self._records = MemoryRecords(data)
        self._data = memoryview(data)
        self._pos = 0
        """Where the next batch starts: the reader's own position, which it does not show."""

    def size_in_bytes(self) -> int:
        return int(self._records.size_in_bytes())

    def has_next(self) -> bool:
        return bool(self._records.has_next())

    def next_batch(self) -> Any:
        batch = self._records.next_batch()
        if batch is None:
            return None
        start = self._pos
        (length,) = _LENGTH.unpack_from(self._data, start + _LENGTH_AT)
        self._pos = start + _OVERHEAD + length
        if isinstance(batch, DefaultRecordBatch):  # the only format with headers (magic 2)
            return _Batch(batch, self._data[start : self._pos])
        return batch


def install() -> None:
    """Have every aiokafka consumer of this process read fetched records through `LenientRecords`
    (idempotent; the fetcher looks the name up each time it unpacks a response)."""
    fetcher.MemoryRecords = LenientRecords
