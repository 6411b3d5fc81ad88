"""Reading fetched batches whose header names are not UTF-8 (`framework/kafka/lenient.py`), no broker."""

from __future__ import annotations

import inspect

import aiokafka.consumer.fetcher as fetcher
import pytest
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.record.memory_records import MemoryRecords

from framework.kafka.lenient import LenientRecords, install
from tests.support import RawHeaderName


def _batch(codec: int) -> bytes:
    builder = _DefaultRecordBatchBuilderPy(2, codec, 0, -1, -1, 0, 1 << 20)
    builder.append(0, timestamp=1, key=b"a", value=b"1", headers=[("ok", b"x")])
    builder.append(
        1, timestamp=1, key=b"b", value=b"2", headers=[(RawHeaderName(b"h-\xff"), b"y"), ("ce_id", b"i")]
    )
    builder.append(2, timestamp=1, key=b"c", value=None, headers=[])
    return bytes(builder.build())


@pytest.mark.parametrize("codec", [0, 1], ids=["plain", "gzip"])
def test_every_record_is_read_once_with_escaped_names(codec: int) -> None:
    """1. Build a batch of three records, the second with a header named by bytes that are not UTF-8.
    2. Read it as aiokafka does, then through LenientRecords.
    Result: aiokafka's reader raises UnicodeDecodeError; LenientRecords yields offsets 0, 1, 2 once each,
    the bad name as `h-\\xff`, the other headers, keys and values as sent."""
    data = _batch(codec) * 2  # two batches: the position of the next one is kept right
    with pytest.raises(UnicodeDecodeError):
        plain = MemoryRecords(data)
        list(plain.next_batch())
    records = LenientRecords(data)
    seen: list[tuple[int, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []
    while records.has_next():
        batch = records.next_batch()
        assert batch.base_offset == 0 and batch.validate_crc()
        seen.extend((r.offset, r.key, r.value, list(r.headers)) for r in batch)
    assert not records.has_next() and records.next_batch() is None
    one = [
        (0, b"a", b"1", [("ok", b"x")]),
        (1, b"b", b"2", [("h-\\xff", b"y"), ("ce_id", b"i")]),
        (2, b"c", None, []),
    ]
    assert seen == one + one


def test_install_replaces_what_the_fetcher_builds_records_with() -> None:
    """aiokafka's fetcher looks up `MemoryRecords` in its module when it unpacks a response (pinned: a
    release that moves it must fail here, not leave nodes crash-looping on such a record)."""
    assert "MemoryRecords(" in inspect.getsource(fetcher.Fetcher)
    install()
    assert fetcher.MemoryRecords is LenientRecords
