"""Inside an instance: replace every secret value by `***` in text that leaves the process.

One hook, `redact(text)`, applied to each string the instance sends out other than the handler's result:
log records (`ctx.log` and any logger), stdout and stderr lines, the watchdog's reports, and the message
and traceback of an error it answers. The instance installs its function's secret values once, at start
(`install`); until then, and for functions without secrets, `redact` returns the text as is.

Besides each value itself, its forms as they show up in text are redacted too: escaped as in a `repr`,
`ascii()` or JSON string, with non-ASCII characters escaped or not (a value with quotes, backslashes or
non-ASCII characters, in an exception's repr, or written by `json.dumps(..., ensure_ascii=False)`, orjson
or pydantic), as in the repr of its UTF-8 bytes, and, for a multi-line value
(a PEM key), each of its lines of at least 4 characters, since stdout reaches the node line by line.
One compiled pattern of every form, matching the longest form at the leftmost place, so a value that
contains another is replaced whole. It is written as a trie (`alternation`: forms sharing a beginning share
its branch) rather than a flat list of alternatives, which `re` tries one after another at each position: a
59 KB certificate bundle of 970 lines (974 forms) cost 104 us per short line and 84 ms per 64 KiB line
flat, 10 us and 6 ms as a trie (`python -m timeit`-style loops, in process); for two short secrets both
take under 1 us.

The node redacts what an instance writes below Python's streams with a `Redactor` of that instance's
values (`runtime/raw_output.py`): those bytes never pass through the instance's own hook.

Text is redacted a line at a time, and a line without a newline goes out in pieces once it is long (64
KiB): each piece is cut where no form of a secret spans the cut (`cut`), and the unfinished line keeps
back what may begin a form until more comes, since the form may go on in the next write: in an instance
the characters from which its tail begins a form (`open_at`), in the node's raw output its last
`bytes_hold` bytes.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable
from typing import Any

MASK = "***"
MIN_PART = 4
"""Shortest line of a multi-line value that is redacted on its own (shorter ones are common words)."""


def forms(value: str) -> set[str]:
    """The spellings of `value` to look for: itself, its escaped forms and its lines."""
    found = {value, repr(value)[1:-1], ascii(value)[1:-1], json.dumps(value)[1:-1]}
    found.add(json.dumps(value, ensure_ascii=False)[1:-1])  # JSON as orjson and pydantic write it
    found.add(repr(value.encode("utf-8", "surrogatepass"))[2:-1])  # a `bytes` repr, as of `value.encode()`
    if "\n" in value:
        found.update(line.strip() for line in value.splitlines())
    return {f for f in found if len(f) >= MIN_PART}


def alternation(words: Iterable[str]) -> str:
    """A regex matching any of `words`, the longest one where several match at a place (as a flat
    alternation sorted longest first does), built as a trie: one branch per distinct next character, runs
    without a branch written as plain text, an ending inside a longer word as an optional rest."""
    words = list(words)
    trie: dict[str, dict[str, Any]] = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}  # a word ends here

    def written(node: dict[str, Any]) -> str:
        run: list[str] = []
        while len(node) == 1 and "" not in node:  # one way on: plain text, no group
            ((ch, node),) = node.items()
            run.append(re.escape(ch))
        nexts = sorted(ch for ch in node if ch)
        if not nexts:
            return "".join(run)
        branches = [re.escape(ch) + written(node[ch]) for ch in nexts]
        rest = branches[0] if len(branches) == 1 else f"(?:{'|'.join(branches)})"
        if "" in node:  # a word ends here, a longer one goes on: the longer first (greedy)
            rest = f"(?:{rest})?"
        return "".join(run) + rest

    try:
        return written(trie)
    except RecursionError:  # hundreds of forms each the start of the next: the flat list has no depth
        return "|".join(map(re.escape, sorted(words, key=len, reverse=True)))


class Redactor:
    """Replaces `values` (one function's secrets), in each of their `forms`, by `***`."""

    def __init__(self, values: Iterable[str]) -> None:
        every = set().union(*(forms(v) for v in values if v))
        ordered = sorted(every, key=len, reverse=True)
        self.pattern = re.compile(alternation(ordered)) if ordered else None
        encoded = sorted({f.encode("utf-8", "surrogatepass") for f in every}, key=len, reverse=True)
        # The same trie over the bytes, each byte as the character of that code (latin-1) and back.
        as_text = [e.decode("latin-1") for e in encoded]
        self.bytes_pattern = re.compile(alternation(as_text).encode("latin-1")) if encoded else None
        """The forms as UTF-8, for output read as bytes (`raw_output.py`)."""
        self.hold = max(map(len, ordered), default=1) - 1
        self.bytes_hold = max(map(len, encoded), default=1) - 1
        """Characters (bytes) an unfinished line keeps back before a cut: a form may begin in them."""
        self._by_first: dict[str, list[str]] = {}
        """The forms by their first character (`open_at`)."""
        for form in ordered:
            self._by_first.setdefault(form[0], []).append(form)

    def open_at(self, text: str) -> int:
        """Where the end of `text` may hold the beginning of a form (its rest still to be written): the first
        position from which what is left of `text` begins a form; `len(text)` when there is none. A cut there
        keeps back only what a secret may begin in, so an unfinished line's tail is rarely held (at most
        `hold` positions, each one dict lookup unless its character begins a form)."""
        n = len(text)
        by_first = self._by_first
        for at in range(max(0, n - self.hold), n):
            starting = by_first.get(text[at])
            if starting is not None:
                tail = text[at:]
                if any(form.startswith(tail) for form in starting):
                    return at
        return n

    def cut(self, text: str | bytes | bytearray, end: int) -> int:
        """Where to cut `text` at or before `end` so that no form of a secret is cut in two: `end`, or the
        start of a form spanning it (`text` must hold `hold` characters past `end`, or be the whole line).
        Matches as redacting the whole line would find them (leftmost first), so a piece is redacted as its
        line would have been."""
        pattern: re.Pattern[str] | re.Pattern[bytes] | None = self.pattern
        longest = self.hold + 1
        if not isinstance(text, str):
            pattern, longest = self.bytes_pattern, self.bytes_hold + 1
        if pattern is None:
            return end
        at = end
        while at > 0:
            for m in pattern.finditer(text, max(0, at - longest + 1), at + longest - 1):  # type: ignore[arg-type]
                if m.start() < at < m.end():
                    at = m.start()
                    break
            else:
                return at
        return end  # forms overlapping back to the line's start (none found there alone): cut as asked

    def __call__(self, text: str) -> str:
        pattern = self.pattern
        if pattern is None or not text:
            return text
        return pattern.sub(MASK, text)


@functools.lru_cache(maxsize=64)
def shared(values: tuple[str, ...]) -> Redactor:
    """The Redactor of `values`, built once for every instance started with them: the node builds one per
    instance it starts, on its loop, and a certificate bundle of 970 lines takes half a second to build."""
    return Redactor(values)


_installed = Redactor(())


def install(values: Iterable[str]) -> None:
    """Redact `values` (the function's secrets) from now on in this process."""
    global _installed
    _installed = Redactor(values)


def installed() -> Redactor:
    """The values `install` gave (none before)."""
    return _installed


def redact(text: str) -> str:
    """`text` with every installed secret value replaced by `***`."""
    return _installed(text)
