"""control.manifest: the `retry` block (DESIGN.md sections 2, 15): defaults, delays, bad values by place."""

from __future__ import annotations

from pathlib import Path

import pytest

from framework.control import revisions
from framework.control.manifest import load_manifest
from framework.control.spec import RetrySpec
from framework.errors import ManifestError
from tests.support import write_project

HEAD = """\
functions:
  - name: alpha
    uuid: 0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01
    handler: functions.mod:handle
    state: productive
    events: [ping]
"""
MODULES = {"mod": "async def handle(payload, ctx):\n    return payload\n"}


def errors_of(root: Path) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        load_manifest(root / "functions.yaml", check_handlers=False)
    return exc.value.errors


def test_retry_defaults_and_given_values(tmp_path: Path) -> None:
    """1. One function without `retry`, one with every key given.
    Result: no retries by default (0 attempts, the three transient error types); the given values are kept."""
    text = (
        HEAD
        + """\
  - name: beta
    uuid: 1c7a4d2f-4e2a-4d2b-8b8f-6e3a9f5c7b02
    handler: functions.mod:handle
    retry:
      attempts: 10
      backoff: 0.25
      on: [FunctionError, Timeout]
"""
    )
    alpha, beta = load_manifest(write_project(tmp_path, text, MODULES) / "functions.yaml").functions
    assert alpha.retry == RetrySpec()
    assert (alpha.retry.attempts, alpha.retry.on) == (0, ("Timeout", "InstanceCrashed", "Overloaded"))
    assert (beta.retry.attempts, beta.retry.backoff, beta.retry.on) == (
        10,
        0.25,
        ("FunctionError", "Timeout"),
    )


def test_delay_doubles_and_is_capped_at_30_s() -> None:
    spec = RetrySpec(attempts=10, backoff=0.5)
    assert [spec.delay(a) for a in (2, 3, 4, 5)] == [0.5, 1.0, 2.0, 4.0]
    assert spec.delay(11) == 30.0  # 0.5 * 2**9 = 256 s, capped
    assert RetrySpec(backoff=30).delay(3) == 30.0
    assert RetrySpec(backoff=100).delay(2) == 30.0  # "capped at 30": the wait, not the setting
    assert RetrySpec(backoff=0).delay(4) == 0.0  # retried at once


@pytest.mark.parametrize(
    ("block", "where", "message"),
    [
        ("    retry: {attempts: 11}", "7:13", "retry.attempts: Input should be less than or equal to 10"),
        ("    retry: {attempts: -1}", "7:13", "retry.attempts: Input should be greater than or equal to 0"),
        ("    retry: {attempts: many}", "7:13", "retry.attempts: a number is expected, not the text 'many'"),
        ("    retry: {backoff: -0.5}", "7:13", "retry.backoff: Input should be greater than or equal to 0"),
        ("    retry: {on: [Timeout, Bogus]}", "7:27", "retry.on[1]: 'Bogus' is not a retryable error type"),
        ("    retry: {on: [BadEvent]}", "7:18", "retry.on[0]: 'BadEvent' is not a retryable error type"),
        ("    retry:\n      on:\n        - Timeout\n        - NotFound", "10:11", "retry.on[1]: 'NotFound'"),
        ("    retry: {on: Timeout}", "7:13", "retry.on: should be a list"),
        ("    retry: {tries: 3}", "7:13", "unknown key 'retry.tries'"),
        ("    retry: 3", "7:5", "retry: should be a mapping"),
        (
            "    retry: {attempts: 3, on: []}",
            "7:5",
            "retry: 'on' lists no error type, so its 3 attempt(s) never happen",
        ),
    ],
)
def test_bad_retry_values_are_named_at_their_line(
    tmp_path: Path, block: str, where: str, message: str
) -> None:
    """1. A function whose `retry` block holds one bad value.
    Result: one manifest error at the bad value's (or key's) LINE:COL, naming the key path and problem."""
    root = write_project(tmp_path, HEAD + block + "\n", MODULES)
    errors = errors_of(root)
    assert len(errors) == 1, errors
    assert errors[0].startswith(f"{root / 'functions.yaml'}:{where}: {message}"), errors


def test_no_error_type_and_no_attempt_is_no_retry() -> None:
    """`on: []` with `attempts: 0` (the default) is a valid way to say "never retried"."""
    assert RetrySpec(on=()).attempts == 0


def test_a_revision_published_with_attempts_and_no_error_type_is_still_served(tmp_path: Path) -> None:
    """The rule is the working copy's: a revision published before it, read from the deployment log, is
    the spec it was (skipping it would stop serving the function after an upgrade)."""
    data = {
        "name": "old",
        "uuid": "12121212-0000-4000-8000-000000000009",
        "handler": "functions.h:h",
        "state": "productive",
        "retry": {"attempts": 3, "on": []},
    }
    spec = revisions.spec_from(data, tmp_path, None, 4)
    assert (spec.retry.attempts, spec.retry.on, spec.revision) == (3, (), 4)


def test_every_bad_retry_value_is_reported(tmp_path: Path) -> None:
    """1. attempts over 10, a negative backoff and an unknown error type in one block.
    Result: three errors, in line order, each at its own line."""
    block = "    retry:\n      attempts: 99\n      backoff: -1\n      on: [Timeout, Nope]\n"
    errors = errors_of(write_project(tmp_path, HEAD + block, MODULES))
    assert [e.split(":")[1:3] for e in errors] == [["8", "7"], ["9", "7"], ["10", "21"]], errors
