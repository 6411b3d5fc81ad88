"""`framework/json_exact.py`: orjson's speed, Python's exactness for integers beyond 64 bits."""

from __future__ import annotations

import dataclasses
import sys

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
