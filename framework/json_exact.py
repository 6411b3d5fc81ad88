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
"""

from __future__ import annotations

import dataclasses
import enum
import json
import sys
import threading
from typing import Any

import orjson

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
        return orjson.dumps(value, option=option & ~orjson.OPT_NON_STR_KEYS)
    except orjson.JSONEncodeError:
        pass  # a non-string key, an integer beyond 64 bits, or no JSON at all: the slow path tells which
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
    """What orjson writes of a dataclass instance: its `__dict__` (attributes set after `__init__`
    included), else its fields; never a name starting with `_`."""
    attributes: dict[str, Any] | None = getattr(instance, "__dict__", None)
    if attributes is not None:
        return [item for name, item in attributes.items() if not name.startswith("_")]
    return [getattr(instance, f.name) for f in dataclasses.fields(instance) if not f.name.startswith("_")]


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
        return orjson.dumps(value, option=option)
    except orjson.JSONEncodeError as exc:
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
