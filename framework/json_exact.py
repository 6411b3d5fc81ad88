"""JSON text to Python values and back, integers kept exact whatever their size.

orjson (the platform's codec: several times the standard library's speed) reads an integer outside 64 bits
(below -2**63 or above 2**64-1) as a float, rounding it without a word, and refuses to write one. JSON
itself sets no limit, and Python's `json` keeps such integers exact, as a handler's author expects: an
order number of 30 digits must reach the handler as sent, and come back as returned.

So both directions go through orjson first and fall back to `json` only where orjson cannot be exact:
- `loads`: an integer beyond 64 bits needs at least 19 digits in a row, so only a text holding such a run
  is read again by `json`, after orjson accepted it, so the fallback changes numbers only, never what
  counts as valid JSON. The run is found by mapping every digit to `0` and everything else to a space
  (`bytes.translate`) and searching for 19 zeros: 0.6 us for a 476-byte payload (orjson reads it in 1.8
  us) and 1 ms per MB (orjson: 6 ms), where a regex (`[0-9]{19}`) took 5.4 us and 14 ms;
- `dumps`: only when orjson refuses an integer (a value or a dict key), or a value nested deeper than the
  254 levels it writes (it reads 1,024), the value is written by `json` (compact, UTF-8, NaN refused; for
  depth, with the recursion limit raised by `DEEP` for the call, and refused beyond 1,024 levels). A value
  that `json` cannot write either (a dataclass or a NaN beside a huge integer) is refused with `json`'s
  reason, and so is a dict key of a type neither can write, whose orjson message names no type.

`dumps` also refuses, with `OPT_NON_STR_KEYS`, a dict two of whose keys are written as one JSON key.

`dumps` never lets orjson's native code read a datetime or a dataclass: orjson trusts them, and a user's
object can break that trust (a `tzinfo.utcoffset()` that raises or returns no timedelta, a `slots=True`
dataclass with a field never set, a `__dict__` holding the key `""`): orjson 3.13 then crashes the process
(SIGSEGV, SIGILL) or writes garbage (`+4294656080:4294967244`). With `OPT_PASSTHROUGH_DATETIME` and
`OPT_PASSTHROUGH_DATACLASS` it hands them to `_default`, which writes exactly the text orjson wrote for a
well-behaved one (same offset rounding, same members in the same order; see `_datetime_text`,
`_dataclass_members`) and refuses a broken one with a JSONEncodeError saying what is wrong. One exception:
a tzinfo whose `utcoffset()` returns None (Python's "offset unknown": a naive time) is written without an
offset, as `isoformat` does, where orjson read a timedelta that was not there. What passthrough costs,
timed in process (`timeit`, best of 5, a loaded 2-core machine), orjson alone before -> now: a naive
datetime 0.17 -> 0.9 us, an aware one (UTC, zoneinfo) 0.3 -> 1.7 us, a date 0.17 -> 0.56 us, a dataclass
0.30 -> 0.86 us (slots: 0.79 -> 2.1 us); a list of 100 aware datetimes 9.6 -> 123 us, of 100 dataclasses
6.7 -> 48 us. A value holding neither never reaches `_default`: it pays only for passing it (0.17 -> 0.19
us for a small dict).
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import sys
import threading
from typing import Any

import orjson

from framework.errors import type_name

_DIGITS_AS_ZEROS = bytes(48 if 48 <= byte <= 57 else 32 for byte in range(256))
"""A `bytes.translate` table: each ASCII digit to `0`, every other byte to a space."""
_LONG_RUN = b"0" * 19
"""A run of digits long enough to hold an integer orjson reads as a float."""
_TOO_BIG = ("Integer exceeds 64-bit range", "Dict integer key must be within 64-bit range")
"""orjson's messages when it refuses to write an integer (a value, a dict key)."""
_TOO_DEEP = "Recursion limit reached"
"""orjson's message for a value nested deeper than 254 levels."""
DEEP = 1100
"""Levels of recursion added for `json` to write a value orjson finds too deep: the 1,024 levels orjson
reads (so any JSON the node takes can be written back), with room for the caller's own frames."""
_DEEP_WRITE = threading.Lock()
_DEEPER = "nested deeper than 1,024 levels"
"""The refusal of a value too deep for any reader of the platform's JSON."""
_BAD_KEY = "Dict key must a type serializable"
"""The start of orjson's message for a dict key it cannot write: its text names no type (and misses a
word), so `json`, which can write no such key either, gives the reason instead ("... not tuple")."""
_PASSTHROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
"""Datetimes and dataclasses go to `_default`, never to orjson's native code (see the module docstring)."""
_REASON_CHARS = 300
"""Characters of a user exception's text that a refusal quotes at most (a refusal is an error message)."""


class _Refused(TypeError):
    """`_default`'s refusal of a datetime or dataclass it cannot write. orjson wraps it in a JSONEncodeError
    that names only the type ("Type is not JSON serializable: datetime.datetime"): `_refusal` unwraps it."""


def loads(raw: bytes | bytearray | memoryview | str) -> Any:
    """The value of JSON text `raw`; raises orjson.JSONDecodeError (a ValueError) when it is not JSON."""
    value = orjson.loads(raw)
    text = raw.encode() if isinstance(raw, str) else bytes(raw)
    if text.translate(_DIGITS_AS_ZEROS).find(_LONG_RUN) == -1:
        return value
    try:
        return json.loads(text)  # NaN and Infinity cannot reach it: orjson refused them above
    except (ValueError, RecursionError):  # deeper than Python's own parser goes: orjson's reading stands
        return value


def dumps(value: Any, option: int | None = None) -> bytes:
    """`value` as compact JSON bytes; raises orjson.JSONEncodeError (a TypeError) when it is not JSON.

    With `orjson.OPT_NON_STR_KEYS`, a dict key that is not a string is written as one (`1` as `"1"`), unless
    two keys of one dict would be written alike (`1` and `"1"`), which is refused: the JSON object would
    hold one key twice, and a reader keeps one of the values. A value of string keys only is written once,
    by orjson, as without the option; any other (a non-string key, an integer beyond 64 bits) is written
    again and walked for such keys (`_refuse_clashing_keys`, about 0.65 us per dict or list it holds: a
    result of 20,000 small dicts takes 15 ms where orjson alone takes 2 ms; a small dict, 2.4 us where
    orjson takes 0.2)."""
    if option is None or not option & orjson.OPT_NON_STR_KEYS:
        return _dumps(value, option)
    try:
        return orjson.dumps(value, _default, (option & ~orjson.OPT_NON_STR_KEYS) | _PASSTHROUGH)
    except orjson.JSONEncodeError as exc:
        # A broken datetime or dataclass is refused for good; anything else (a non-string key, an integer
        # beyond 64 bits, or no JSON at all): the slow path tells which.
        _refusal(exc)
    body = _dumps(value, option)
    _refuse_clashing_keys(value)
    return body


_LEAVES = frozenset({str, int, float, bool, type(None)})
"""Types that hold no dict: not pushed on the walk's stack."""
_KEY_TEXT: dict[Any, str] = {True: "true", False: "false", None: "null"}
"""Keys whose JSON text is not their `str`."""


def _refuse_clashing_keys(value: Any) -> None:
    """Raise orjson.JSONEncodeError naming two keys of one dict in `value` that are written alike, in the
    containers orjson writes (dicts, lists, tuples, enums' values, dataclasses' members as orjson picks
    them). Only called on values written already, so they hold no cycle; its own stack, so depth costs no
    frames."""
    stack = [value]
    pop, push, extend = stack.pop, stack.append, stack.extend
    leaves = _LEAVES
    while stack:
        v = pop()
        if isinstance(v, dict):
            extend([item for item in v.values() if type(item) not in leaves])
            if all(type(k) is str for k in v):
                continue
            written: dict[str, Any] = {}
            for key in v:
                kind = type(key)
                if kind is str:
                    text = key
                elif kind is int:
                    text = str(key)
                elif key is None or kind is bool:
                    text = _KEY_TEXT[key]
                else:
                    text = _key_text(key)
                if text in written:
                    raise orjson.JSONEncodeError(
                        f"dict keys {written[text]!r} and {key!r} are both written as the JSON key {text!r}"
                    )
                written[text] = key
        elif isinstance(v, list | tuple):
            extend([item for item in v if type(item) not in leaves])
        elif isinstance(v, enum.Enum):
            push(v.value)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            extend(_members(v))


def _members(instance: Any) -> list[Any]:
    """The values orjson writes of a dataclass instance (`_dataclass_members`)."""
    return list(_dataclass_members(instance).values())


def _default(value: Any) -> Any:
    """orjson's `default`: the text orjson wrote for a datetime, date or time, or the members it wrote of
    a dataclass instance (`_dataclass_members`), for the types it wrote them for (exactly those types; a
    class with `__dataclass_fields__` of its own); any other value is refused as orjson refused it. The
    datetime types are told apart here, not in a function of their own: a call costs 0.1 us of their 0.4."""
    kind = type(value)
    if kind is _DATETIME:
        tz = value.tzinfo
        if tz is None:
            return value.isoformat()  # orjson's text: `2024-05-01T12:30:05`, `.123456` when not 0
        return _aware_text(value, tz)
    if kind is _DATE:
        return value.isoformat()
    if kind is _TIME:
        if value.tzinfo is not None:
            raise _Refused("datetime.time must not have tzinfo set")  # orjson's own words
        return value.isoformat()
    if "__dataclass_fields__" in kind.__dict__:
        return _dataclass_members(value)
    raise TypeError  # orjson's message stands: "Type is not JSON serializable: <type>"


_DATETIME, _DATE, _TIME, _TIMEZONE = datetime.datetime, datetime.date, datetime.time, datetime.timezone


def _refusal(exc: orjson.JSONEncodeError) -> None:
    """Raise `_default`'s refusal that `exc` wraps, if any, as a JSONEncodeError of its own message."""
    cause = exc.__cause__
    if isinstance(cause, _Refused):
        raise orjson.JSONEncodeError(str(cause)) from None


def _aware_text(value: datetime.datetime, tz: datetime.tzinfo) -> str:
    """An aware datetime as orjson writes it: its offset as `+HH:MM` (UTC `+00:00`), rounded to the nearest
    minute as orjson rounds it (RFC 3339 5.8: 29 s down, 30 s up, `+05:59:45` giving orjson's `+05:60`,
    the offset's microseconds ignored). Raises `_Refused` when the offset cannot be read: the tzinfo
    raised, or returned what is not a timedelta within a day (which `datetime.utcoffset` checks). A tzinfo
    that returns None (Python's "offset unknown") gives the naive time, as `isoformat` writes it."""
    kind = type(tz)
    zoneinfo = sys.modules.get("zoneinfo")  # a ZoneInfo implies zoneinfo is imported; 5 ms to import here
    offset: datetime.timedelta | None
    if kind is _TIMEZONE or (zoneinfo is not None and kind is zoneinfo.ZoneInfo):
        # The standard library's own: no user code runs, and `isoformat` writes what orjson wrote unless
        # the offset is not in whole minutes.
        offset = value.utcoffset()
        if offset is not None and not offset.seconds % 60 and not offset.microseconds:
            return value.isoformat()
    else:
        try:
            # Where orjson reads it: pytz's offset is the normalised datetime's; pendulum's (it has
            # `convert`) and any other's the datetime's own, which calls `tz.utcoffset(value)` and checks it.
            if hasattr(tz, "normalize") and not hasattr(tz, "convert"):
                offset = tz.normalize(value).utcoffset()
            else:
                offset = value.utcoffset()
        except BaseException as exc:  # the tzinfo's own code: anything may come out of it
            raise _Refused(
                f"datetime.datetime with a tzinfo of type {type_name(kind)} whose UTC offset cannot be "
                f"read: {_reason(exc)}"
            ) from None
    wall = value.replace(tzinfo=None).isoformat()
    if offset is None:
        return wall
    seconds = offset.seconds
    if seconds == 0:
        return wall + "+00:00"
    sign = "+"
    if offset.days == -1:  # -05:00 is days=-1, seconds=68400
        sign, seconds = "-", 86400 - seconds
    hours, minutes = seconds // 3600, seconds // 60 % 60
    if seconds % 60 >= 30:
        minutes += 1
    return f"{wall}{sign}{hours:02d}:{minutes:02d}"


def _dataclass_members(instance: Any) -> dict[str, Any]:
    """What orjson writes of a dataclass instance, in its order: its `__dict__` (attributes set after
    `__init__` included, a slot of a base class not) unless its class declares `__slots__`, else its fields
    (not ClassVar or InitVar); never a name starting with `_`. Raises `_Refused` for one orjson would crash
    on or garble: a field never set (or whose read raises), a `__dict__` that is no dict or holds a key that
    is not a string."""
    kind = type(instance)
    try:
        attributes = instance.__dict__
    except BaseException:  # orjson too takes any failure here for "no `__dict__`"
        attributes = None
    if attributes is not None and "__slots__" not in kind.__dict__:
        if type(attributes) is not dict:
            raise _Refused(f"dataclass {type_name(kind)} has a __dict__ that is not a dict")
        for name in attributes:
            if type(name) is not str or name[:1] == "_":
                break
        else:  # the common case: every name is written, so the dict itself is (half the time of a copy)
            return attributes
        members: dict[str, Any] = {}
        for name, item in attributes.items():
            if type(name) is not str:
                raise _Refused(
                    f"dataclass {type_name(kind)} has an attribute named by a {type_name(type(name))}, "
                    "not a str"
                )
            if name[:1] != "_":
                members[name] = item
        return members
    members = {}
    for field in dataclasses.fields(instance):
        name = field.name
        if name[:1] == "_":
            continue
        try:
            members[name] = getattr(instance, name)
        except BaseException as exc:  # a slot never set raises AttributeError; a descriptor anything
            raise _Refused(
                f"dataclass {type_name(kind)}: field {name!r} cannot be read: {_reason(exc)}"
            ) from None
    return members


def _reason(exc: BaseException) -> str:
    """`Type: message` of a user's exception, the message cut at `_REASON_CHARS`, even when `str()` raises."""
    try:
        text = str(exc)
    except BaseException:
        text = "<exception str() failed>"
    if len(text) > _REASON_CHARS:
        text = text[:_REASON_CHARS] + "…"
    return f"{type_name(type(exc))}: {text}"


def _key_text(key: Any) -> str:
    """The JSON text of a dict key that is not a string, an int, a bool or None, as `dumps` writes it."""
    one = {key: None}
    try:
        written = orjson.loads(orjson.dumps(one, option=orjson.OPT_NON_STR_KEYS))
    except orjson.JSONEncodeError:  # an integer subclass beyond 64 bits: `json` writes it
        written = json.loads(json.dumps(one))
    return str(next(iter(written)))


def _dumps(value: Any, option: int | None) -> bytes:
    try:
        return orjson.dumps(value, _default, _PASSTHROUGH if option is None else option | _PASSTHROUGH)
    except orjson.JSONEncodeError as exc:
        _refusal(exc)
        reason = str(exc)
        deep = reason.startswith(_TOO_DEEP)
        if not deep and not reason.startswith(_TOO_BIG) and not reason.startswith(_BAD_KEY):
            raise
        if not deep:
            try:
                return _by_json(value)
            except (TypeError, ValueError, RecursionError) as refused:  # what else is wrong with it
                raise orjson.JSONEncodeError(str(refused)) from None
        # The recursion limit is the process's: one deep write at a time raises and restores it.
        with _DEEP_WRITE:
            limit = sys.getrecursionlimit()
            sys.setrecursionlimit(limit + DEEP)  # the C encoder counts a level per level of nesting
            try:
                text = _by_json(value)
            except RecursionError:
                raise orjson.JSONEncodeError(_DEEPER) from None
            except (TypeError, ValueError) as refused:  # it holds what only orjson writes (a datetime, ...)
                raise orjson.JSONEncodeError(
                    f"nested deeper than the 254 levels orjson writes: {refused}"
                ) from None
            finally:
                sys.setrecursionlimit(limit)
        try:  # no deeper than orjson reads, so every reader of the platform's JSON reads it back
            orjson.loads(text)
        except orjson.JSONDecodeError:
            raise orjson.JSONEncodeError(_DEEPER) from None
        return text


def _by_json(value: Any) -> bytes:
    """`value` written by Python's `json` as orjson writes: compact, UTF-8, NaN refused."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()
