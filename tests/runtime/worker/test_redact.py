"""runtime.worker.redact: secret values become `***` in text that leaves an instance."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator

import orjson
import pytest

from framework.runtime.worker import redact
from framework.runtime.worker.redact import Redactor, alternation


@pytest.fixture(autouse=True)
def nothing_installed() -> Iterator[None]:
    yield
    redact.install(())


def test_nothing_installed_returns_the_text() -> None:
    assert redact.redact("tok-123 stays") == "tok-123 stays"


def test_every_occurrence_is_replaced() -> None:
    redact.install(["tok-123", "pass.word"])
    assert redact.redact("a tok-123 b tok-123 c pass.word d passXword") == "a *** b *** c *** d passXword"


def test_longer_value_containing_another_is_replaced_whole() -> None:
    redact.install(["abcd", "abcd-efgh"])
    assert redact.redact("[abcd-efgh] [abcd]") == "[***] [***]"


def test_escaped_forms_are_replaced() -> None:
    """A value with a quote and a backslash, as an exception's repr and as JSON show it."""
    value = "it's\\secret"
    redact.install([value])
    assert redact.redact(repr(KeyError(value))) == 'KeyError("***")'
    assert value not in redact.redact(f"{value} {value!r}")
    assert redact.redact('{"k": "it\'s\\\\secret"}') == '{"k": "***"}'


def test_json_without_ascii_escapes_is_replaced() -> None:
    """A value with a quote and non-ASCII characters as `json.dumps(..., ensure_ascii=False)`, orjson and
    pydantic write it: the quote escaped, the rest as is (neither the ASCII JSON form nor the repr)."""
    value = 'pa"ss\\wörd€x'
    redact.install([value])
    for text in (json.dumps({"k": value}, ensure_ascii=False), orjson.dumps({"k": value}).decode()):
        assert redact.redact(text).replace(" ", "") == '{"k":"***"}', text


def test_lines_of_a_multi_line_value_are_replaced_one_by_one() -> None:
    """stdout reaches the node line by line, so each line of a PEM key is redacted on its own."""
    pem = "-----BEGIN KEY-----\nMIIBVgIBADANBgkq\nab\n-----END KEY-----\n"
    redact.install([pem.rstrip("\n")])
    assert redact.redact("MIIBVgIBADANBgkq") == "***"
    assert redact.redact("ab") == "ab"  # under 4 characters: a common word, left alone


def test_forms_skip_short_parts() -> None:
    assert redact.forms("abc\nlonger") == {"abc\\nlonger", "longer"} | {"abc\nlonger"}


def test_ascii_and_bytes_forms_of_a_non_ascii_value_are_replaced() -> None:
    """`ascii(value)` and `repr(value.encode())` spell a non-ASCII value with escapes of their own."""
    value = "pässwörd_ünïcode_€"
    redact.install([value])
    for text in (ascii(value), repr(value.encode()), repr(value), value):
        assert redact.redact(f"x {text} y") in ("x '***' y", "x b'***' y", "x *** y"), text


def test_a_cut_never_splits_a_secret() -> None:
    """`cut` moves a cut that would split a form of a secret to the form's start, in text and in bytes
    (the UTF-8 of a non-ASCII value); elsewhere, and with no secrets, the cut stays where asked."""
    r = redact.Redactor(["supersecretvalue1", "d\u00e9j\u00e0-s3cret"])
    text = "z" * 10 + "supersecretvalue1" + " tail"
    assert [r.cut(text, at) for at in (5, 10, 11, 26, 27, 30)] == [5, 10, 10, 10, 27, 30]
    raw = ("a" * 7 + "d\u00e9j\u00e0-s3cret" + "b").encode()
    assert [r.cut(raw, at) for at in (7, 8, 12, 20)] == [7, 7, 7, 20]
    every = redact.forms("supersecretvalue1") | redact.forms("d\u00e9j\u00e0-s3cret")
    assert r.hold == max(map(len, every)) - 1 == len(repr("d\u00e9j\u00e0-s3cret".encode())) - 4  # bytes repr
    assert r.bytes_hold == max(len(f.encode()) for f in every) - 1
    assert redact.Redactor(()).cut(text, 12) == 12 and redact.Redactor(()).hold == 0


def test_open_at_finds_where_a_form_may_begin_at_the_end() -> None:
    r = redact.Redactor(["supersecret", "pa'ss"])
    assert r.open_at("text sup") == 5  # "sup" begins "supersecret"
    assert r.open_at("text pa'") == 5 and r.open_at("text pa\\") == 8  # no form of "pa'ss" has a "\\"
    assert r.open_at("text supx") == 9 and r.open_at("") == 0
    assert r.open_at("s" * 40) == 39  # "ss", "sss"... begin no form: only the last "s" does


def test_the_trie_matches_as_a_flat_alternation_longest_first() -> None:
    """`alternation` against the flat alternation it replaces, on words sharing beginnings, words inside
    others, one word the start of another, regex metacharacters, non-ASCII, over random texts made of
    their pieces: the same matches, so the same redaction."""
    rng = random.Random(7)
    alphabet = "ab.*(é\n"
    for _ in range(200):
        words = sorted(
            {
                "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 6)))
                for _ in range(rng.randint(1, 12))
            },
            key=len,
            reverse=True,
        )
        flat = re.compile("|".join(map(re.escape, words)))
        trie = re.compile(alternation(words))
        for _ in range(20):
            text = "".join(rng.choice([*words, "x", "a", "é"]) for _ in range(rng.randint(0, 12)))
            assert [m.span() for m in trie.finditer(text)] == [m.span() for m in flat.finditer(text)], (
                words,
                text,
            )


def test_a_bundle_of_many_lines_is_redacted_line_by_line_in_text_and_bytes() -> None:
    """A certificate bundle of 300 lines: each of its lines is replaced wherever it shows, in text and in the
    bytes of raw output, and the bundle whole is one mask."""
    lines = [f"MII{i:04d}" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo" + f"{i:04d}" for i in range(300)]
    bundle = "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----"
    redactor = Redactor([bundle])
    assert redactor(f"got {lines[150]} and {lines[7]}.") == "got *** and ***."
    assert redactor(bundle) == "***"
    assert redactor.bytes_pattern is not None
    assert redactor.bytes_pattern.sub(b"***", f"<{lines[299]}>".encode()) == b"<***>"


def test_the_node_builds_a_set_of_values_once() -> None:
    """`shared`: the node asks for one per instance it starts; the same values give the same Redactor."""
    first = redact.shared(("tok-0123456789", "other-value"))
    assert redact.shared(("tok-0123456789", "other-value")) is first
    assert redact.shared(("tok-0123456789",)) is not first
    assert first("a tok-0123456789 b") == "a *** b"


def test_forms_each_the_start_of_the_next_still_make_a_pattern() -> None:
    """600 secrets `aaaab`, `aaaaab`, ...: the trie would nest a group per secret, deeper than Python's
    recursion goes; the flat alternation stands in, with the same matches."""
    words = ["a" * i + "b" for i in range(4, 604)]
    redactor = Redactor(words)
    assert redactor("x " + "a" * 10 + "b y " + "a" * 600 + "b") == "x *** y ***"
