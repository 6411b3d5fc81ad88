"""`framework/json_exact.py`: orjson's speed, Python's exactness for integers beyond 64 bits."""

from __future__ import annotations

import dataclasses
import datetime
import json
import subprocess
import sys
import zoneinfo
from typing import ClassVar

import orjson
import pytest

from framework import json_exact

BIG = 123456789012345678901234567890


def test_integers_beyond_64_bits_are_read_exact_and_the_rest_as_orjson_reads_it() -> None:
    raw = b'{"a":123456789012345678901234567890,"b":[18446744073709551616,-9223372036854775809],"c":1.5}'
    assert json_exact.loads(raw) == {"a": BIG, "b": [2**64, -(2**63) - 1], "c": 1.5}
    assert json_exact.loads(raw.decode()) == json_exact.loads(memoryview(raw))
    # the edges orjson holds exactly itself, and long runs that are not integers
    edges = b'[18446744073709551615,-9223372036854775808,0.12345678901234567890,"12345678901234567890"]'
    assert json_exact.loads(edges) == orjson.loads(edges)


@pytest.mark.parametrize(
    "text", [b"NaN", b"[1e999]", b'"\\ud800"', b"[1,]", b"", b'{"a": 12345678901234567890']
)
def test_what_orjson_refuses_stays_refused(text: bytes) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        json_exact.loads(text)


def test_integers_beyond_64_bits_are_written_and_other_refusals_keep_a_reason() -> None:
    assert json_exact.dumps({"n": BIG, "s": "é"}) == b'{"n":123456789012345678901234567890,"s":"\xc3\xa9"}'
    assert json_exact.dumps({1: 2}, option=orjson.OPT_NON_STR_KEYS) == b'{"1":2}'

    @dataclasses.dataclass
    class Point:
        x: int

    with pytest.raises(orjson.JSONEncodeError, match="not JSON serializable"):
        json_exact.dumps([BIG, Point(1)])
    with pytest.raises(orjson.JSONEncodeError, match="Out of range float"):
        json_exact.dumps([BIG, float("nan")])
    with pytest.raises(orjson.JSONEncodeError, match="not JSON serializable"):
        json_exact.dumps({1, 2})  # not the integer fallback's business: orjson's own refusal


def test_dict_keys_beyond_64_bits_are_written_and_a_key_of_no_json_type_is_named() -> None:
    """orjson refuses an integer key outside 64 bits, as it refuses such a value, and says of a tuple key
    only that it "must a type serializable": `json` writes the first and names the type of the second."""
    option = orjson.OPT_NON_STR_KEYS
    assert json_exact.dumps({BIG: "x", -BIG: 1, 2: 3}, option=option) == (
        b'{"123456789012345678901234567890":"x","-123456789012345678901234567890":1,"2":3}'
    )
    with pytest.raises(orjson.JSONEncodeError, match="keys must be str, int, float, bool or None, not tuple"):
        json_exact.dumps({"outer": {(1, 2): "b"}}, option=option)
    with pytest.raises(orjson.JSONEncodeError, match="Dict key must be str"):
        json_exact.dumps({1: 2})  # without OPT_NON_STR_KEYS a non-str key is refused, as orjson says


def test_non_string_keys_written_alike_are_refused() -> None:
    """Keys written as one JSON key (1 and "1", True and "true", a huge integer and its text), at any depth;
    keys that differ stay, as does a value of string keys only."""
    opt = orjson.OPT_NON_STR_KEYS
    for value, first, second in [
        ({1: "a", "1": "b"}, "1", "'1'"),
        ([{"x": {True: 1, "true": 2}}], "True", "'true'"),
        ((0, {"y": {BIG: 1, str(BIG): 2}}), str(BIG), f"'{BIG}'"),
    ]:
        with pytest.raises(orjson.JSONEncodeError, match=f"dict keys {first} and {second} are both written"):
            json_exact.dumps(value, option=opt)
    assert (
        json_exact.dumps({1: "a", "2": {None: 3, 1.5: 4}}, option=opt) == b'{"1":"a","2":{"null":3,"1.5":4}}'
    )
    assert json_exact.dumps({"1": {"1": 1}}, option=opt) == b'{"1":{"1":1}}'


def test_clashing_keys_are_looked_for_where_orjson_writes_and_only_there() -> None:
    """A clash in a dataclass attribute set after `__init__` (orjson writes `__dict__`) and one after an
    integer beyond 64 bits (written by `json`) are refused; one in a dataclass field starting with `_`
    (orjson leaves it out) is not, and the value is written as before."""
    opt = orjson.OPT_NON_STR_KEYS

    @dataclasses.dataclass
    class Later:
        m: dict[object, int]

        def __post_init__(self) -> None:
            self.extra = {1: 1, "1": 2}

    @dataclasses.dataclass
    class Private:
        m: dict[object, int]
        _cache: dict[object, int]

    for value in (Later({1: 1}), {"id": BIG, "by_day": {1: "a", "1": "b"}}):
        with pytest.raises(orjson.JSONEncodeError, match="dict keys 1 and '1' are both written"):
            json_exact.dumps(value, option=opt)
    assert json_exact.dumps(Private({1: 1}, {1: 1, "1": 2}), option=opt) == b'{"m":{"1":1}}'


def nested(depth: int, leaf: object = None) -> object:
    value = leaf
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize("depth", [255, 600, 1023])
def test_values_deeper_than_orjson_writes_are_written_up_to_what_it_reads(depth: int) -> None:
    """orjson writes 254 levels and reads 1,024: a value it reads (an envelope's data, a handler's result)
    is written back, exact (a huge integer at the bottom too), and the recursion limit is as it was."""
    limit = sys.getrecursionlimit()
    text = json_exact.dumps(nested(depth, BIG))
    assert text.count(b"[") + text.count(b"{") == depth and str(BIG).encode() in text
    if depth < 900:  # `==` of deeper values recurses past Python's limit
        assert json_exact.loads(text) == nested(depth, BIG)
    assert sys.getrecursionlimit() == limit


@pytest.mark.parametrize("depth", [1025, 1200, 5000])
def test_values_deeper_than_any_reader_reads_are_refused_naming_the_depth(depth: int) -> None:
    limit = sys.getrecursionlimit()
    with pytest.raises(orjson.JSONEncodeError, match="nested deeper than 1,024 levels"):
        json_exact.dumps(nested(depth))
    assert sys.getrecursionlimit() == limit


class _Fixed(datetime.tzinfo):
    """A user's tzinfo that behaves: a fixed offset, the way the docs' examples write one."""

    def __init__(self, offset: datetime.timedelta) -> None:
        self.offset = offset

    def utcoffset(self, dt: datetime.datetime | None) -> datetime.timedelta:
        return self.offset

    def dst(self, dt: datetime.datetime | None) -> datetime.timedelta:
        return datetime.timedelta(0)

    def tzname(self, dt: datetime.datetime | None) -> str:
        return "fixed"


@dataclasses.dataclass
class _Plain:
    x: int
    when: datetime.datetime
    _private: int = 0


@dataclasses.dataclass(slots=True)
class _Slots:
    x: int
    init_only: dataclasses.InitVar[int] = 0
    shared: ClassVar[int] = 3
    _private: int = 1


@dataclasses.dataclass
class _OnSlots(_Slots):
    y: int = 2


def _later() -> _Plain:
    value = _Plain(1, datetime.datetime(2024, 5, 1))
    value.extra = "set after __init__"  # type: ignore[attr-defined]
    return value


_PARIS, _NEW_YORK = zoneinfo.ZoneInfo("Europe/Paris"), zoneinfo.ZoneInfo("America/New_York")
_WRITTEN_AS_ORJSON_WROTE = {
    "naive": datetime.datetime(2024, 5, 1, 12, 30, 5),
    "naive-us": datetime.datetime(2024, 5, 1, 12, 30, 5, 40),
    "year-5": datetime.datetime(5, 1, 2, 3, 4, 5, 600000),
    "utc": datetime.datetime(2024, 5, 1, 12, 30, 5, 123456, tzinfo=datetime.UTC),
    "plus-5:30": datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone(datetime.timedelta(hours=5.5))),
    "minus-3:30": datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone(-datetime.timedelta(hours=3.5))),
    "seconds-up": datetime.datetime(2024, 5, 1, tzinfo=_Fixed(datetime.timedelta(hours=5, seconds=30))),
    "seconds-to-60": datetime.datetime(2024, 5, 1, tzinfo=_Fixed(datetime.timedelta(minutes=59, seconds=45))),
    "minus-seconds": datetime.datetime(2024, 5, 1, tzinfo=_Fixed(-datetime.timedelta(hours=5, seconds=30))),
    "seconds-down": datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone(datetime.timedelta(seconds=29))),
    "minus-1us": datetime.datetime(2024, 5, 1, tzinfo=datetime.timezone(-datetime.timedelta(microseconds=1))),
    "paris-summer": datetime.datetime(2024, 7, 1, 9, tzinfo=_PARIS),
    "new-york-lmt": datetime.datetime(1800, 1, 1, tzinfo=_NEW_YORK),
    "user-tzinfo": datetime.datetime(2024, 5, 1, 1, tzinfo=_Fixed(datetime.timedelta(hours=-8))),
    "date": datetime.date(7, 8, 9),
    "time": [datetime.time(0), datetime.time(23, 59, 59, 999999)],
    "dataclass": {"p": _Plain(1, datetime.datetime(2024, 5, 1, tzinfo=_PARIS), 5)},
    "set-after-init": _later(),
    "slots": _Slots(1),
    "dict-on-slots": _OnSlots(1),  # orjson writes its `__dict__`: `y`, not the base's slot `x`
}


@pytest.mark.parametrize("value", _WRITTEN_AS_ORJSON_WROTE.values(), ids=_WRITTEN_AS_ORJSON_WROTE)
@pytest.mark.parametrize("option", [None, orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY])
def test_datetimes_and_dataclasses_are_written_as_orjson_wrote_them(
    value: object, option: int | None
) -> None:
    """Well-behaved datetimes (naive, UTC, offsets east and west, offsets with seconds that orjson rounds to
    the minute, zoneinfo, a user's tzinfo), dates, times and dataclasses (plain, `_` fields, attributes set
    after `__init__`, slots with ClassVar and InitVar, a dict-backed subclass of a slots class), written by
    `dumps`, which hands them to Python code (`_default`) rather than to orjson's native code.
    Result: the very bytes orjson's native code writes for them."""
    assert json_exact.dumps(value, option=option) == orjson.dumps(value, option=option)


def test_what_orjson_refused_of_them_stays_refused_as_it_said() -> None:
    """A time with a tzinfo, and a subclass of a dataclass that is not a dataclass itself (orjson looks for
    `__dataclass_fields__` in the class's own dict). Result: refused with orjson's own message."""

    class NotItself(_Plain):
        pass

    for value in (datetime.time(1, tzinfo=datetime.UTC), NotItself(1, datetime.datetime(2024, 5, 1))):
        with pytest.raises(orjson.JSONEncodeError) as ours:
            json_exact.dumps(value)
        with pytest.raises(orjson.JSONEncodeError) as theirs:
            orjson.dumps(value)
        assert str(ours.value) == str(theirs.value)


_BROKEN = """
import dataclasses, datetime, json, sys
import orjson
from framework import json_exact

class Raises(datetime.tzinfo):
    def utcoffset(self, dt): raise RuntimeError("tz boom")
    def dst(self, dt): return None

class Returns(datetime.tzinfo):
    def __init__(self, offset): self.offset = offset
    def utcoffset(self, dt): return self.offset
    def dst(self, dt): return None

@dataclasses.dataclass(slots=True)
class Unset:
    x: int

@dataclasses.dataclass
class Keyed:
    x: int

empty = Keyed(1)
empty.__dict__[""] = 5
cases = {
    "raises": {"when": datetime.datetime(2020, 1, 1, tzinfo=Raises())},
    "not-a-timedelta": [datetime.datetime(2020, 1, 1, tzinfo=Returns("+01:00"))],
    "a-day-or-more": datetime.datetime(2020, 1, 1, tzinfo=Returns(datetime.timedelta(hours=30))),
    "unknown-offset": datetime.datetime(2020, 1, 1, tzinfo=Returns(None)),
    "slot-never-set": {"rows": [Unset.__new__(Unset)]},
    "empty-name": empty,
}
for name, value in cases.items():
    for option in (None, orjson.OPT_NON_STR_KEYS):
        try:
            out = ["written", json_exact.dumps(value, option=option).decode()]
        except orjson.JSONEncodeError as exc:
            out = ["refused", str(exc)]
        print(json.dumps([name, *out]), flush=True)
"""


def test_broken_datetimes_and_dataclasses_are_refused_not_a_crash() -> None:
    """In a process of its own (orjson's native code crashed the process on them), `dumps` of: a datetime
    whose tzinfo's `utcoffset()` raises, returns a str, returns 30 hours, returns None; a `slots=True`
    dataclass whose field was never set; a dataclass whose `__dict__` holds the key "".
    Result: the process lives; each is refused saying what is wrong (the type, the field, the reason),
    with and without OPT_NON_STR_KEYS, except the unknown offset (a naive time to Python: written without
    an offset, as `isoformat` writes it, where orjson wrote `+00:00` read from no timedelta) and the empty
    name (written: orjson took its first character to check for `_`, and found none)."""
    done = subprocess.run(
        [sys.executable, "-c", _BROKEN], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, f"exit {done.returncode}: {done.stdout[-500:]} {done.stderr[-2000:]}"
    outcomes: dict[str, set[tuple[str, str]]] = {}
    for line in done.stdout.splitlines():
        name, how, text = json.loads(line)
        outcomes.setdefault(name, set()).add((how, text))
    tz = "datetime.datetime with a tzinfo of type {} whose UTC offset cannot be read: {}"
    assert outcomes == {
        "raises": {("refused", tz.format("Raises", "RuntimeError: tz boom"))},
        "not-a-timedelta": {
            (
                "refused",
                tz.format(
                    "Returns", "TypeError: tzinfo.utcoffset() must return None or timedelta, not 'str'"
                ),
            )
        },
        "a-day-or-more": {
            (
                "refused",
                tz.format(
                    "Returns",
                    "ValueError: offset must be a timedelta strictly between -timedelta(hours=24) and "
                    "timedelta(hours=24).",
                ),
            )
        },
        "unknown-offset": {("written", '"2020-01-01T00:00:00"')},
        "slot-never-set": {
            (
                "refused",
                "dataclass Unset: field 'x' cannot be read: "
                "AttributeError: 'Unset' object has no attribute 'x'",
            )
        },
        "empty-name": {("written", '{"x":1,"":5}')},
    }
