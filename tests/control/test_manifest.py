"""control.manifest: loading with positions, every error at its line, defaults, handler import checks."""

from __future__ import annotations

import multiprocessing
import re
from pathlib import Path
from typing import Any

import pytest

from framework.control import handler_check, manifest, manifest_edit
from framework.control.manifest import ManifestCache, load_manifest
from framework.control.spec import FunctionSpec, InstancesSpec, ScheduleSpec, check_cron
from framework.errors import ManifestError
from tests.support import write_project

BASE = """\
# test manifest
functions:
  - name: alpha
    uuid: 0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01
    handler: functions.mod:handle
    state: productive
    events: [ping]
  - name: beta
    uuid: 1c7a4d2f-4e2a-4d2b-8b8f-6e3a9f5c7b02
    handler: functions.mod:handle
"""
MODULES = {
    "mod": "VALUE = 5\nasync def handle(payload, ctx):\n    return payload\n"
    "def bare():\n    return 1\n"
    "def three(a, b, c):\n    return 1\n"
    "def loose(payload, *rest, **named):\n    return 1\n"
    "import functools\n"
    "def takes_payload(fn):\n"
    "    @functools.wraps(fn)\n"
    "    async def wrapper(payload, ctx):\n"
    "        return await fn(payload)\n"
    "    return wrapper\n"
    "@takes_payload\n"
    "async def wrapped(payload):\n"
    "    return payload\n",
    "broken": "def handle(payload, ctx)\n    return 1\n",
    "warm_value": "warmup = 5\nasync def handle(payload, ctx):\n    return 1\n",
    "warm_args": "async def warmup(ctx, extra):\n    pass\nasync def handle(payload, ctx):\n    return 1\n",
    "warm_good": "def warmup(ctx=None):\n    pass\nasync def handle(payload, ctx):\n    return 1\n",
}


def edit(replace: dict[int, str] | None = None, append: list[str] | None = None, base: str = BASE) -> str:
    """BASE with 1-based lines replaced and lines appended (appended lines belong to `beta`)."""
    lines = base.splitlines()
    for n, text in (replace or {}).items():
        lines[n - 1] = text
    return "\n".join(lines + (append or [])) + "\n"


def errors_of(root: Path, check_handlers: bool = True) -> list[str]:
    with pytest.raises(ManifestError) as exc:
        load_manifest(root / "functions.yaml", check_handlers=check_handlers)
    return exc.value.errors


def lines_of(errors: list[str]) -> list[int]:
    return [int(m.group(1)) for m in re.finditer(r"functions\.yaml:(\d+):\d+:", "\n".join(errors))]


ANCHORED = """\
x-common: &common           # `x-` keys are free, e.g. for anchors
  handler: functions.mod:handle
  timeout: 5
  state: draft
functions:
  - <<: *common
    name: alpha
    uuid: 0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01
"""
SCHEDULE = ["    schedules:", '      - cron: "* * * * *"']
UPPER_UUID = "    uuid: 0B6F3C1E-3F1D-4C1A-9A7E-5D2F8E4B6A01"
# case: (manifest, the line the single error must name, a fragment of its message)
CASES: dict[str, tuple[str, int, str]] = {
    "duplicate-uuid": (edit({9: "    uuid: 0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01"}), 9, "duplicate uuid"),
    "duplicate-uuid-case": (edit({9: UPPER_UUID}), 9, "first at line 4"),
    "duplicate-name": (edit({8: "  - name: alpha"}), 8, "duplicate name 'alpha'"),
    "bad-uuid": (edit({9: "    uuid: not-a-uuid"}), 9, "RFC 4122"),
    "uuid-variant": (edit({9: "    uuid: 1c7a4d2f-4e2a-4d2b-cb8f-6e3a9f5c7b02"}), 9, "RFC 4122"),
    "timeout-31": (edit(append=["    timeout: 31"]), 11, "less than or equal to 30"),
    "timeout-0": (edit(append=["    timeout: 0"]), 11, "greater than 0"),
    "timeout-nan": (edit(append=["    timeout: .nan"]), 11, "timeout: a finite number is expected, not nan"),
    "timeout-true": (
        edit(append=["    timeout: true"]),
        11,
        "timeout: a number is expected, not true",
    ),
    "retry-attempts-true": (
        edit(append=["    retry: {attempts: true}"]),
        11,
        "retry.attempts: a number is expected, not true",
    ),
    "events-empty": (
        edit({7: "    events: [ping, '']"}),
        7,
        "events[1]: an event type must not be empty",
    ),
    "instances-max-true": (
        edit(append=["    instances:", "      max: true"]),
        12,
        "instances.max: a number is expected, not true",
    ),
    "instances-idle-inf": (
        edit(append=["    instances:", "      idle_timeout: .inf"]),
        12,
        "idle_timeout: a finite number is expected, not inf",
    ),
    "instances-idle-quoted-inf": (
        edit(append=["    instances:", "      idle_timeout: 'inf'"]),
        12,
        "idle_timeout: a number is expected, not the text 'inf'",
    ),
    # A count no JSON reader holds exactly: its revision would be refused by every reader of the log.
    "instances-max-huge": (
        edit(append=["    instances:", "      max: 18446744073709551616"]),
        12,
        "less than or equal to 9007199254740991",
    ),
    "retry-attempts-quoted": (
        edit(append=["    retry: {attempts: '3'}"]),
        11,
        "retry.attempts: a number is expected, not the text '3'",
    ),
    "bad-state": (edit({6: "    state: live"}), 6, "'draft', 'productive' or 'undeployed'"),
    "unknown-key": (edit(append=["    colour: blue"]), 11, "unknown key 'colour'"),
    "root-key": (edit(append=["    root: /etc"]), 11, "unknown key 'root'"),
    "bad-name": (edit({8: "  - name: Beta"}), 8, "name: String should match pattern"),
    "missing-uuid": (edit({9: "    state: draft"}), 8, "missing required key 'uuid'"),
    "bad-cron": (edit(append=[*SCHEDULE[:1], '      - cron: "61 * * * *"']), 12, "bad cron '61 * * * *'"),
    "bad-seconds": (edit(append=[*SCHEDULE[:1], '      - cron: "* * * * * 61"']), 12, "schedules[0].cron"),
    "seven-fields": (edit(append=[*SCHEDULE[:1], '      - cron: "* * * * * * *"']), 12, "7 fields"),
    "never-fires": (edit(append=[*SCHEDULE[:1], '      - cron: "0 0 31 2 *"']), 12, "never fires"),
    "bad-keep-warm": (edit(append=['    keep_warm: "every 4 minutes"']), 11, "keep_warm: bad cron"),
    "bad-timezone": (edit(append=[*SCHEDULE, "        timezone: Mars/Olympus"]), 13, "unknown timezone"),
    "payload-nan": (edit(append=[*SCHEDULE, "        payload: .nan"]), 13, "not a JSON value"),
    # Two keys JSON writes alike: the round trip to JSON kept the last one without a word.
    "payload-merged-keys": (
        edit(append=[*SCHEDULE, '        payload: {a: [{1: x, "1": y}]}']),
        13,
        "payload keys 1 and '1' are one key in JSON",
    ),
    # Valid JSON the runs' orjson frames cannot carry: refused here, not by a node that then serves nothing.
    "payload-big-int": (
        edit(append=[*SCHEDULE, "        payload: {n: 123456789012345678901234567890}"]),
        13,
        "integers are held to 64 bits",
    ),
    "payload-deep": (edit(append=[*SCHEDULE, f"        payload: {'[' * 300}{']' * 300}"]), 1, "too deeply"),
    "revision-key": (edit(append=["    revision: 7"]), 11, "unknown key 'revision'"),
    # Eight levels of ten aliases: 10^8 values (minutes and gigabytes to read), refused at its anchors.
    "alias-bomb": (
        "x-0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n"
        + "".join(f"x-{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 8))
        + edit(append=[*SCHEDULE[:2], "        payload: *a7"]),
        1,
        "over 100,000 values once its YAML aliases are expanded",
    ),
    # A duplicate key's YAML error quotes both values: cut, not one line of 140 KB.
    "duplicate-key-long": (
        "functions: []\nx-a: [" + ", ".join(["1"] * 3000) + "]\nx-a: 2\n",
        3,
        "found duplicate key",
    ),
    # 5 MB of comments after a valid manifest: ruamel would take minutes on it (50 MB: over 15), refused at
    # once by its size.
    "too-large": (
        edit() + ("# " + "x" * 1022 + "\n") * 5 * 1024,
        1,
        "over the 4,194,304 a manifest may hold",
    ),
    # No `functions:` at all is a mistake (an editor's truncated save), not "no functions": `[]` says that.
    "empty": ("", 1, "the manifest is empty"),
    "comments-only": ("# nothing yet\n", 1, "the manifest is empty"),
    "defaults-only": ("defaults: {timeout: 5}\n", 1, "no 'functions:' list"),
    "uuid-newline": (edit({9: '    uuid: "1c7a4d2f-4e2a-4d2b-8b8f-6e3a9f5c7b02\\n"'}), 9, "RFC 4122"),
    "timezone-localtime": (edit(append=[*SCHEDULE, "        timezone: localtime"]), 13, "unknown timezone"),
    "timezone-posix": (edit(append=[*SCHEDULE, "        timezone: posix/Europe/Berlin"]), 13, "unknown"),
    "timezone-factory": (edit(append=[*SCHEDULE, "        timezone: Factory"]), 13, "unknown timezone"),
    "cron-random": (edit(append=[*SCHEDULE[:1], '      - cron: "R 9 * * *"']), 12, "random field R"),
    "cron-hashed": (
        edit(append=[*SCHEDULE[:1], '      - cron: "H(0-30) 9 * * *"']),
        12,
        "the hashed field H (Jenkins) is not supported: write the value",
    ),
    "cron-reboot": (edit(append=[*SCHEDULE[:1], "      - cron: '@reboot'"]), 12, "the shortcuts are @yearly"),
    "schedule-key": (edit(append=[*SCHEDULE, "        every: 5"]), 13, "'schedules[0].every'"),
    "handler-form": (edit({10: "    handler: functions.mod"}), 10, "module:attribute"),
    "handler-missing": (edit({10: "    handler: functions.nope:handle"}), 10, "ModuleNotFoundError"),
    "handler-attr": (edit({10: "    handler: functions.mod:nope"}), 10, "AttributeError"),
    "handler-value": (edit({10: "    handler: functions.mod:VALUE"}), 10, "is not callable"),
    # Every call would fail with a TypeError; `loose` (payload, *rest, **named) takes the call and passes.
    "handler-no-parameters": (edit({10: "    handler: functions.mod:bare"}), 10, "its parameters are ()"),
    "handler-three-parameters": (edit({10: "    handler: functions.mod:three"}), 10, "handle(payload, ctx)"),
    "handler-syntax": (edit({10: "    handler: functions.broken:handle"}), 10, "SyntaxError"),
    # A module's `warmup` is its keep-warm hook: one an instance would ignore, or whose every call would fail.
    "warmup-value": (
        edit({10: "    handler: functions.warm_value:handle"}),
        10,
        "has a module whose warmup (the keep-warm hook, warmup(ctx)) is not callable but int",
    ),
    "warmup-parameters": (
        edit({10: "    handler: functions.warm_args:handle"}),
        10,
        "has a module whose warmup cannot be called as warmup(ctx): its parameters are (ctx, extra)",
    ),
    # Found outside the project (the standard library, an installed package): a revision would carry no
    # code, and each node would run whatever it has under that name.
    "handler-stdlib": (edit({10: "    handler: os:system"}), 10, "'os:system' is not in the project: no os/"),
    "handler-installed": (edit({10: "    handler: framework.cli:main"}), 10, "no framework/ or framework.py"),
    "yaml-syntax": (edit({7: "    events: [ping"}), 8, "started at line 7"),
    "yaml-duplicate-key": (edit(append=["    handler: functions.mod:handle"]), 11, "duplicate key"),
    "events-int": (edit({7: "    events: 5"}), 7, "events: should be a list"),
    "events-item": (edit({7: "    events: [ping, 5]"}), 7, "events[1]: Input should be a valid string"),
    "env-value": (edit(append=["    env: {PORT: 8080}"]), 11, "env.PORT: Input should be a valid string"),
    "env-list": (edit(append=["    env: [A]"]), 11, "env: should be a mapping"),
    # The operating system refuses these: the cause, at `env`, not a handler that "does not import".
    "env-key-equals": (edit(append=['    env: {"A=B": x}']), 11, "'A=B' is no environment variable name"),
    "env-key-empty": (edit(append=['    env: {"": x}']), 11, "'' is no environment variable name"),
    "env-key-int": (edit(append=["    env: {1: x}"]), 11, "11:11: a key must be a string, not a number"),
    "env-value-nul": (edit(append=['    env: {A: "a\\0b"}']), 11, "the value of 'A' holds a NUL"),
    "defaults-env-key": ('defaults:\n  env: {"A=B": x}\n' + BASE, 2, "'A=B' is no environment"),
    "events-twice": (edit({7: "    events: [ping, pong, ping]"}), 7, "event type 'ping' listed twice"),
    "events-twice-block": (
        edit({7: "    events:\n      - ping\n      - ping"}),
        9,
        "event type 'ping' listed twice (first at line 8)",
    ),
    "secrets-node-setting": (
        edit(append=["    secrets: [FAAS_API_KEYS]"]),
        11,
        "'FAAS_API_KEYS' is the node's own secret setting",
    ),
    "secrets-twice": (edit(append=["    secrets: [a_key, b_key, a_key]"]), 11, "secret 'a_key' listed twice"),
    "memory-unit": (
        edit(append=["    instances:", "      memory_mb: 128MB"]),
        12,
        "not the text '128MB' (a plain number, without a unit)",
    ),
    "memory-huge": (edit(append=["    instances:", "      memory_mb: 99999999999999"]), 12, "memory_mb"),
    # Past every count: the error names the field's own bound, not the ceiling of counts in general.
    "memory-past-every-count": (
        edit(append=["    instances:", "      memory_mb: 9007199254740993"]),
        12,
        "less than or equal to 1048576",
    ),
    "retry-attempts-past-every-count": (
        edit(append=["    retry: {attempts: 9007199254740993}"]),
        11,
        "retry.attempts: Input should be less than or equal to 10",
    ),
    "instances-max": (edit(append=["    instances:", "      max: 0"]), 12, "instances.max"),
    "instances-concurrency": (edit(append=["    instances:", "      concurrency: 0"]), 12, "concurrency"),
    "instances-idle": (edit(append=["    instances:", "      idle_timeout: 0"]), 12, "greater than 0"),
    "instances-queue": (edit(append=["    instances:", "      queue: -1"]), 12, "instances.queue"),
    "top-level-key": (edit(append=["version: 2"]), 11, "unknown key 'version'"),
    "top-level-list": ("- name: alpha\n", 1, "top level must be a mapping"),
    "functions-not-list": ("# nothing\nfunctions: 5\n", 2, "functions: should be a list"),
    "item-not-mapping": (edit(append=["  - beta"]), 11, "should be a mapping"),
    "flow-duplicate-name": (
        "functions: [{name: a, uuid: 0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01, handler: functions.mod:handle},\n"
        "            {name: a, uuid: 1c7a4d2f-4e2a-4d2b-8b8f-6e3a9f5c7b02, handler: functions.mod:handle}]\n",
        2,
        "duplicate name 'a' (first at line 1)",
    ),
    "merged-timeout": (ANCHORED.replace("timeout: 5", "timeout: 40"), 6, "timeout: Input should be less"),
    "defaults-timeout": ("defaults:\n  timeout: 31\n" + BASE, 2, "defaults.timeout"),
    "defaults-key": ("defaults:\n  colour: x\n" + BASE, 2, "unknown key 'defaults.colour'"),
    "defaults-instances": (
        "defaults:\n  env: {}\n  instances: {max: 0}\n" + BASE,
        3,
        "defaults.instances.max",
    ),
    "defaults-env": ("defaults:\n  env:\n    PORT: 1\n" + BASE, 3, "defaults.env.PORT"),
    "defaults-merge-env": ("defaults:\n  env: {A: a}\n" + edit(append=["    env: 5"]), 13, "env: should be"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_broken_manifest_names_the_line(tmp_path: Path, case: str) -> None:
    manifest, line, fragment = CASES[case]
    root = write_project(tmp_path, manifest, MODULES)
    errors = errors_of(root)
    assert lines_of(errors) == [line], errors
    assert fragment in errors[0], errors
    assert len(errors[0]) < 1000, f"an error line of {len(errors[0])} characters"


def test_a_handler_that_takes_the_call_in_any_form_passes(tmp_path: Path) -> None:
    """`loose(payload, *rest, **named)`, and a decorator's `(payload, ctx)` wrapper of `wrapped(payload)`
    (`functools.wraps`), take handle(payload, ctx): neither is refused by the signature check; nor is a
    module whose `warmup(ctx=None)` takes warmup(ctx)."""
    for handler in ("functions.mod:loose", "functions.mod:wrapped", "functions.warm_good:handle"):
        root = write_project(tmp_path / handler, edit({10: f"    handler: {handler}"}), MODULES)
        loaded = load_manifest(root / "functions.yaml", check_handlers=True)
        assert [f.handler for f in loaded.functions][-1] == handler


def test_a_byte_that_is_not_utf8_is_named_at_its_line_and_column(tmp_path: Path) -> None:
    """A Latin-1 `é` (0xe9) in a name on line 8, after `  - name: b` and a UTF-8 `é` (one character):
    the error is at 8:13 (the 13th character), naming the byte, not at 1:1."""
    root = write_project(tmp_path, BASE, MODULES)
    lines = (root / "functions.yaml").read_bytes().split(b"\n")
    lines[7] = "  - name: bé".encode() + b"\xe9ta"
    (root / "functions.yaml").write_bytes(b"\n".join(lines))
    errors = errors_of(root)
    assert len(errors) == 1 and errors[0].endswith("functions.yaml:8:13: not UTF-8 text: byte 0xe9"), errors


def test_a_control_character_is_named_at_its_line_and_column(tmp_path: Path) -> None:
    """A BEL in a name on line 8: the error is at 8:13, on one line (it was at 1:1, with the parser's
    "position N" on a second line, which also went into `validate --json` and `/readyz`)."""
    root = write_project(tmp_path, BASE, MODULES)
    lines = (root / "functions.yaml").read_text().split("\n")
    lines[7] = "  - name: bé\x07ta"
    (root / "functions.yaml").write_text("\n".join(lines))
    errors = errors_of(root)
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].endswith(
        "functions.yaml:8:13: a control character (#x0007) YAML does not allow in a manifest"
    )


@pytest.mark.parametrize(
    "tagged",
    ["functions: !foo [1]", BASE.replace("events: [ping]", "events: !bar [ping, ping]"),
     BASE.replace("events: [ping]", "events: [ping]\n    secrets: !t [a, a]")],
)  # fmt: skip
def test_tagged_lists_are_errors_at_a_line_not_a_traceback(tmp_path: Path, tagged: str) -> None:
    """A YAML tag on a list (`!foo [1]`): its items have no positions of their own (a TypeError crashed
    `validate`, and a node in watch mode stopped). Result: ManifestErrors at the list's key."""
    root = write_project(tmp_path, tagged, MODULES)
    errors = errors_of(root, check_handlers=False)
    assert errors and all(re.search(r"functions\.yaml:\d+:\d+: ", e) for e in errors), errors


NON_STRING_KEYS = """\
defaults:
  ? {d: 1}
  : 1
functions:
  - name: alpha
    uuid: 0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01
    handler: functions.mod:handle
    ? [a, b]
    : 1
    ~: 1
    env: {1: x, false: y}
    instances: {3: 4}
    schedules:
      - {cron: "* * * * *", payload: {1: one}, 2.5: x}
? [top]
: 1
"""


def test_a_key_that_is_not_a_string_is_named_where_it_is_written(tmp_path: Path) -> None:
    """1. Keys that are not strings: a mapping in `defaults`; a list (`? [a, b]`, on line 8 of an entry
    that starts on line 5) and null (`~`) in an entry; a number and a boolean in its `env`; a number in
    `instances` and in a schedule; a list at the top level. Result: one error each at the key's own
    LINE:COL, saying what the key is in plain words (they were at the entry's first line, as
    `('a', 'b'): Keys should be strings` or `None: ...`). A schedule's payload (any value) keeps its own."""
    root = write_project(tmp_path, NON_STRING_KEYS, MODULES)
    assert [e.split("functions.yaml:")[1] for e in errors_of(root)] == [
        "2:5: a key must be a string, not a mapping",
        "8:7: a key must be a string, not a list",
        "10:5: a key must be a string, not null",
        "11:11: a key must be a string, not a number",
        "11:17: a key must be a string, not a boolean",
        "12:17: a key must be a string, not a number",
        "14:48: a key must be a string, not a number",
        "15:3: a key must be a string, not a list",
    ]


def test_a_key_written_as_a_date_is_named_where_it_is_written(tmp_path: Path) -> None:
    """`2024-01-01: 1` in an entry (YAML reads it as a date, the check as its text): `unknown key` at the
    key's line, not at the entry's first."""
    root = write_project(tmp_path, edit(append=["    2024-01-01: 1"]), MODULES)
    assert errors_of(root) == [f"{root / 'functions.yaml'}:11:5: unknown key '2024-01-01'"]


def test_good_manifest_loads_with_root_and_defaults(tmp_path: Path) -> None:
    root = write_project(tmp_path, BASE, MODULES)
    m = load_manifest(root / "functions.yaml")
    assert [f.name for f in m.functions] == ["alpha", "beta"]
    alpha, beta = m.functions
    assert alpha.productive and alpha.events == ("ping",) and not beta.productive
    assert beta.state == "draft" and beta.timeout == 30 and beta.instances.max == 4
    assert alpha.root == root.resolve()


def test_every_error_is_reported_in_line_order(tmp_path: Path) -> None:
    """1. Write a manifest with a duplicate name, a timeout of 31, a bad cron and a missing handler module.
    2. Load it.
    Result: one error per problem, sorted by line, each at its own line.
    """
    manifest = edit(
        {3: "  - name: beta", 5: "    handler: functions.gone:handle"},
        ["    timeout: 31", "    schedules:", '      - cron: "61 * * * *"'],
    )
    errors = errors_of(write_project(tmp_path, manifest, MODULES))
    assert lines_of(errors) == [5, 8, 11, 13], errors
    assert "duplicate name 'beta' (first at line 3)" in errors[1]


def test_defaults_merge_field_by_field(tmp_path: Path) -> None:
    manifest = """\
        defaults:
          timeout: 7
          instances: {max: 2, queue: 10}
          env: {A: a, B: b}
        functions:
          - name: alpha
            uuid: 0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01
            handler: functions.mod:handle
            instances: {queue: 3}
            env: {B: own}
          - name: beta
            uuid: 1c7a4d2f-4e2a-4d2b-8b8f-6e3a9f5c7b02
            handler: functions.mod:handle
            timeout: 2
    """
    m = load_manifest(write_project(tmp_path, manifest, MODULES) / "functions.yaml")
    alpha, beta = m.functions
    assert alpha.timeout == 7 and beta.timeout == 2
    assert (alpha.instances.max, alpha.instances.queue, alpha.instances.concurrency) == (2, 3, 100)
    assert (beta.instances.max, beta.instances.queue) == (2, 10)
    assert alpha.env == {"A": "a", "B": "own"} and beta.env == {"A": "a", "B": "b"}


def test_values_are_plain_and_uuid_lower_case(tmp_path: Path) -> None:
    manifest = edit(
        {4: UPPER_UUID},
        [
            *SCHEDULE,
            "        payload: {when: 2024-01-31, n: 1.5, ok: true, 1: one}",
            "        timezone: Europe/Berlin",
        ],
    )
    alpha, beta = load_manifest(write_project(tmp_path, manifest, MODULES) / "functions.yaml").functions
    assert alpha.uuid == "0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01"
    assert beta.schedules == (
        ScheduleSpec(
            cron="* * * * *",
            timezone="Europe/Berlin",
            payload={"when": "2024-01-31", "n": 1.5, "ok": True, "1": "one"},
        ),
    )
    assert type(beta.schedules[0].payload) is dict


def test_an_empty_key_is_its_default(tmp_path: Path) -> None:
    """`events:` (or `schedules:`, `secrets:`, `env:`, `instances:`, `retry:`) with nothing after it is YAML
    null: it means the key's default, as an empty `functions:` does, the defaults' own where there are."""
    manifest = """\
        defaults:
          instances: {max: 3}
          env: {A: a}
        functions:
          - name: alpha
            uuid: 0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01
            handler: functions.mod:handle
            events:
            schedules:
            secrets:
            env:
            instances:
            retry:
    """
    (alpha,) = load_manifest(write_project(tmp_path, manifest, MODULES) / "functions.yaml").functions
    assert (alpha.events, alpha.schedules, alpha.secrets, alpha.retry.attempts) == ((), (), (), 0)
    assert alpha.env == {"A": "a"} and alpha.instances.max == 3
    under_defaults = manifest.replace("instances: {max: 3}", "instances:").replace("env: {A: a}", "env:")
    (beta,) = load_manifest(
        write_project(tmp_path / "b", under_defaults, MODULES) / "functions.yaml"
    ).functions
    assert beta.env == {} and beta.instances.max == InstancesSpec().max


def test_an_empty_functions_list_has_no_functions(tmp_path: Path) -> None:
    for text in ("functions: []\n", "# nothing yet\nfunctions:\n"):
        root = write_project(tmp_path, text)
        assert load_manifest(root / "functions.yaml").functions == ()


def test_missing_file_is_a_manifest_error(tmp_path: Path) -> None:
    errors = errors_of(tmp_path)
    assert "cannot read the manifest" in errors[0]


def test_check_handlers_false_skips_imports(tmp_path: Path) -> None:
    root = write_project(tmp_path, edit({10: "    handler: functions.nope:handle"}), MODULES)
    assert len(load_manifest(root / "functions.yaml", check_handlers=False).functions) == 2


def test_handler_import_is_isolated_and_sees_its_env(tmp_path: Path) -> None:
    """1. Modules that print to stdout, read their env at import, and kill their process with os._exit.
    2. Load the manifest with handler checks.
    Result: only the one that exits is blamed; this process never imported any of them.
    """
    modules = {
        "loud": "print('hello from import')\ndef handle(payload, ctx):\n    return 1\n",
        "needs_env": "import os\nGREET = os.environ['GREETING']\ndef handle(payload, ctx):\n    return 1\n",
        "killer": "import os\nos._exit(3)\n",
    }
    manifest = edit(
        {5: "    handler: functions.loud:handle", 10: "    handler: functions.killer:handle"},
        ["    env: {GREETING: hi}"],
    )
    manifest += "  - name: gamma\n    uuid: 2d8b5e3a-5f3b-4e3c-9c9a-7f4b0a6d8c03\n"
    manifest += "    handler: functions.needs_env:handle\n    env: {GREETING: hi}\n"
    errors = errors_of(write_project(tmp_path, manifest, modules))
    assert lines_of(errors) == [10], errors
    assert "exited the process (3)" in errors[0]
    import sys

    assert not any(name.startswith("functions.") for name in sys.modules)


def test_a_hanging_import_is_blamed_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(handler_check, "IMPORT_TIMEOUT", 0.5)
    modules = {**MODULES, "hang": "while True:\n    pass\n"}
    root = write_project(tmp_path, edit({5: "    handler: functions.hang:handle"}), modules)
    errors = errors_of(root)
    assert lines_of(errors) == [5] and "did not finish within 0.5 s" in errors[0], errors


def test_a_kept_load_reads_and_validates_again_only_what_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. Load through a `ManifestCache`. 2. Load again, nothing changed. 3. Break the handler module.
    4. Fix it and add a third function to the manifest. 5. Edit the manifest back to BASE.
    Result: the text is parsed at 1, 4 and 5 only, and at 4 and 5 only the entries not seen before are
    validated (none at 5); the broken module at 3 is an error at each function's `handler` line, as
    without a cache; each load returns what a load without the cache returns."""
    root = write_project(tmp_path, BASE, MODULES)
    path = root / "functions.yaml"
    parsed, validated = [], []
    real_parse, real_validate = manifest.parse_bytes, manifest._validate

    def parse(*args: Any) -> Any:
        parsed.append(1)
        return real_parse(*args)

    def validate(model: Any, *args: Any, **kwargs: Any) -> Any:
        validated.append(model.__name__)
        return real_validate(model, *args, **kwargs)

    monkeypatch.setattr(manifest, "parse_bytes", parse)
    monkeypatch.setattr(manifest, "_validate", validate)
    cache = ManifestCache()
    try:
        assert load_manifest(path, cache=cache) == load_manifest(path)
        assert (len(parsed), validated) == (2, ["FunctionSpec"] * 4)
        parsed.clear()
        validated.clear()
        assert load_manifest(path, cache=cache).functions[0].name == "alpha"
        assert (parsed, validated) == ([], [])
        (root / "functions" / "mod.py").write_text("raise ImportError('gone')\n")
        with pytest.raises(ManifestError) as exc:
            load_manifest(path, cache=cache)
        assert lines_of(exc.value.errors) == [5, 10] and "ImportError: gone" in exc.value.errors[0]
        assert (parsed, validated) == ([], [])
        (root / "functions" / "mod.py").write_text(MODULES["mod"])
        third = "  - name: gamma\n    uuid: 2d8b5e3a-5f3b-4e3c-9c9a-7f4b0a6d8c03\n"
        third += "    handler: functions.mod:handle\n"
        path.write_text(BASE + third)
        assert [f.name for f in load_manifest(path, cache=cache).functions] == ["alpha", "beta", "gamma"]
        assert (parsed, validated) == ([1], ["FunctionSpec"])
        path.write_text(BASE)
        assert load_manifest(path, cache=cache) == load_manifest(path)
        assert (parsed, validated) == ([1, 1, 1], ["FunctionSpec"] * 3)  # the second load: no cache
    finally:
        cache.close()


def test_check_cron_accepts_croniter_forms() -> None:
    for good in ("* * * * *", "*/5 * * * *", "* * * * * */1", "0 9 * * mon-fri", "@hourly"):
        assert check_cron(good) == good
    for bad in ("61 * * * *", "* * * *", "* * * * * 61", ""):
        with pytest.raises(ValueError):
            check_cron(bad)


def test_function_spec_is_frozen_and_productive() -> None:
    spec = FunctionSpec(
        name="a", uuid="0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01", handler="m:h", state="productive"
    )
    assert spec.productive
    with pytest.raises(ValueError):
        spec.name = "b"  # type: ignore[misc]


# ---- round-trip edits ----

COMMENTED = """\
# our functions
functions:
  - name: alpha   # the first
    uuid: 0b6f3c1e-3f1d-4c1a-9a7e-5d2f8e4b6a01
    handler: functions.mod:handle
    state: "draft"    # quoted, with a comment
    events: [ping, pong]
    env: {A: 'x', B: "y"}

  # beta has no state yet
  - name: beta
    uuid: 1c7a4d2f-4e2a-4d2b-8b8f-6e3a9f5c7b02
    handler: functions.mod:handle
    schedules:
      - {cron: "*/5 * * * *", payload: {k: [1, 2]}}
  - {name: gamma, uuid: 2d8b5e3a-5f3b-4e3c-9c9a-7f4b0a6d8c03, handler: functions.mod:handle}

# trailing comment
defaults:
  timeout: 5
"""


def changed(before: str, after: str) -> list[tuple[str, str]]:
    a, b = before.splitlines(), after.splitlines()
    assert len(a) == len(b), (before, after)
    return [(x, y) for x, y in zip(a, b, strict=True) if x != y]


def test_set_state_changes_only_the_value(tmp_path: Path) -> None:
    """1. Set alpha (quoted value, trailing comment) to productive, then to undeployed.
    Result: each time only the state line differs, and its comment survives.
    """
    path = write_project(tmp_path, COMMENTED, MODULES) / "functions.yaml"
    manifest_edit.set_state(path, "alpha", "productive")
    after = path.read_text()
    assert changed(COMMENTED, after) == [
        (
            '    state: "draft"    # quoted, with a comment',
            "    state: productive    # quoted, with a comment",
        )
    ]
    manifest_edit.set_state(path, "alpha", "undeployed")
    assert "    state: undeployed    # quoted, with a comment" in path.read_text()
    assert load_manifest(path).functions[0].state == "undeployed"


def test_edits_of_a_symlinked_manifest_go_to_the_file_it_points_at(tmp_path: Path) -> None:
    """1. A project under releases/r2 and `functions.yaml -> releases/r2/functions.yaml` beside it (a
    `current -> releases/X` layout). 2. `set_state`, then `add_function` (what deploy, undeploy and `faas
    new` do). Result: the link is still a link; the file it points at has both edits (the link used to be
    replaced by a plain file, and the project's code, beside the target, no longer beside the manifest)."""
    real = write_project(tmp_path / "releases" / "r2", COMMENTED, MODULES) / "functions.yaml"
    link = tmp_path / "functions.yaml"
    link.symlink_to(real)
    manifest_edit.set_state(link, "alpha", "productive")
    manifest_edit.add_function(link, ENTRY)
    assert link.is_symlink() and link.resolve() == real.resolve()
    loaded = load_manifest(real)
    assert [f.name for f in loaded.functions] == ["alpha", "beta", "gamma", "delta"]
    assert loaded.functions[0].state == "productive"
    assert [p.name for p in real.parent.iterdir() if p.name.startswith(".functions.yaml")] == []


def test_set_state_inserts_a_missing_state_after_the_handler(tmp_path: Path) -> None:
    path = write_project(tmp_path, COMMENTED, MODULES) / "functions.yaml"
    manifest_edit.set_state(path, "beta", "productive")
    lines = path.read_text().splitlines()
    assert lines[12:14] == ["    handler: functions.mod:handle", "    state: productive"]
    assert lines[:12] + lines[14:] == COMMENTED.splitlines()[:12] + COMMENTED.splitlines()[13:]


def test_set_state_on_a_flow_style_entry(tmp_path: Path) -> None:
    path = write_project(tmp_path, COMMENTED, MODULES) / "functions.yaml"
    manifest_edit.set_state(path, "gamma", "productive")
    ((_, new),) = changed(COMMENTED, path.read_text())
    assert new == (
        "  - {name: gamma, uuid: 2d8b5e3a-5f3b-4e3c-9c9a-7f4b0a6d8c03, state: productive, "
        "handler: functions.mod:handle}"
    )
    assert load_manifest(path).functions[2].productive


def test_set_state_keeps_crlf_line_ends(tmp_path: Path) -> None:
    path = tmp_path / "functions.yaml"
    write_project(tmp_path, "", MODULES)
    path.write_bytes(COMMENTED.replace("\n", "\r\n").encode())
    manifest_edit.set_state(path, "beta", "draft")
    data = path.read_bytes()
    assert b"    state: draft\r\n" in data and data.count(b"\r\n") == data.count(b"\n")


def test_set_state_with_a_merged_state_adds_its_own(tmp_path: Path) -> None:
    path = write_project(tmp_path, ANCHORED, MODULES) / "functions.yaml"
    assert load_manifest(path).functions[0].timeout == 5
    manifest_edit.set_state(path, "alpha", "productive")
    lines = path.read_text().splitlines()
    assert lines[7] == "    state: productive" and lines[:7] + lines[8:] == ANCHORED.splitlines()
    assert load_manifest(path).functions[0].productive


def test_set_state_unknown_name_and_bad_state(tmp_path: Path) -> None:
    path = write_project(tmp_path, COMMENTED, MODULES) / "functions.yaml"
    with pytest.raises(LookupError):
        manifest_edit.set_state(path, "nobody", "productive")
    with pytest.raises(ValueError):
        manifest_edit.set_state(path, "alpha", "live")  # type: ignore[arg-type]
    assert path.read_text() == COMMENTED


ENTRY = {
    "name": "delta",
    "uuid": "3e9c6f4b-6a4c-4f4d-8d0b-8a5c1b7e9d04",
    "handler": "functions.mod:handle",
    "state": "draft",
    "events": ["a.b"],
}


def test_add_function_before_the_next_top_level_key(tmp_path: Path) -> None:
    """1. Append an entry to a manifest whose `functions:` is followed by a comment and `defaults:`.
    Result: the entry is inserted after gamma, every other line is unchanged, and it loads.
    """
    path = write_project(tmp_path, COMMENTED, MODULES) / "functions.yaml"
    manifest_edit.add_function(path, ENTRY)
    lines = path.read_text().splitlines()
    block = [
        "  - name: delta",
        "    uuid: 3e9c6f4b-6a4c-4f4d-8d0b-8a5c1b7e9d04",
        "    handler: functions.mod:handle",
        "    state: draft",
        "    events: [a.b]",
    ]
    old = COMMENTED.splitlines()
    assert lines == old[:16] + block + old[16:]
    assert [f.name for f in load_manifest(path).functions] == ["alpha", "beta", "gamma", "delta"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "functions:\n  - name: delta\n"),
        ("# start\n", "# start\nfunctions:\n  - name: delta\n"),
        ("functions: []  # none yet\n", "functions:  # none yet\n  - name: delta\n"),
        (
            "functions:\n- name: x\n  uuid: 1c7a4d2f-4e2a-4d2b-8b8f-6e3a9f5c7b02\n  handler: m:h",
            "  handler: m:h\n- name: delta\n",
        ),
    ],
)
def test_add_function_to_other_layouts(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "functions.yaml"
    path.write_text(text)
    manifest_edit.add_function(path, ENTRY)
    after = path.read_text()
    assert expected in after and after.startswith(text.split("[]")[0])
    assert load_manifest(path, check_handlers=False).functions[-1].name == "delta"


def test_add_function_runs_before_write_only_for_an_edit_it_can_make(tmp_path: Path) -> None:
    """1. `add_function` on a flow-style functions list, with a `before_write` hook. 2. On a block list,
    with a hook that raises. 3. With a hook that succeeds. Result: 1 raises ManifestError without calling
    the hook; 2 leaves the manifest as it was; 3 calls the hook once, before the file holds the entry."""
    flow = tmp_path / "flow.yaml"
    flow.write_text("functions: [{name: x, uuid: 1c7a4d2f-4e2a-4d2b-8b8f-6e3a9f5c7b02, handler: m:h}]\n")
    calls: list[str] = []
    with pytest.raises(ManifestError, match="cannot append to a flow-style functions list"):
        manifest_edit.add_function(flow, ENTRY, before_write=lambda: calls.append("flow"))
    assert calls == []
    path = tmp_path / "functions.yaml"
    path.write_text("functions: []\n")

    def refuse() -> None:
        raise RuntimeError("no room for the module")

    with pytest.raises(RuntimeError, match="no room for the module"):
        manifest_edit.add_function(path, ENTRY, before_write=refuse)
    assert path.read_text() == "functions: []\n"
    manifest_edit.add_function(path, ENTRY, before_write=lambda: calls.append(path.read_text()))
    assert calls == ["functions: []\n"] and "name: delta" in path.read_text()


def _deploy_in_a_process(path: str, name: str) -> None:
    manifest_edit.set_state(Path(path), name, "productive")


def _add_in_a_process(path: str, name: str) -> None:
    manifest_edit.add_function(Path(path), {"name": name, "uuid": f"{name}-uuid", "handler": "functions.m:h"})


def test_edits_made_at_once_take_turns_and_none_is_lost(tmp_path: Path) -> None:
    """1. Eight processes at once each add a function to one manifest (as `faas new` does); then eight set
    a state each (as deploys do). Result: all eight entries are there, each productive: none of the edits
    was lost to another's read-edit-replace of the file (before, a run kept 3 to 5 of them)."""
    path = tmp_path / "functions.yaml"
    path.write_text("functions: []\n")
    names = [f"f{i}" for i in range(8)]
    context = multiprocessing.get_context("spawn")
    for target in (_add_in_a_process, _deploy_in_a_process):
        workers = [context.Process(target=target, args=(str(path), name)) for name in names]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
            assert w.exitcode == 0
    entries = {f["name"]: f.get("state") for f in round_trip(path)["functions"]}
    assert entries == dict.fromkeys(names, "productive"), entries


def round_trip(path: Path) -> Any:
    from framework.control.manifest import round_trip_yaml

    return round_trip_yaml().load(path.read_text())


def test_a_state_that_is_an_anchor_or_alias_is_refused_by_line(tmp_path: Path) -> None:
    """1. alpha's state is `&st draft`, beta's `*st` (one value for both). 2. Set each to productive.
    Result: each is refused naming its line, and the file is unchanged: an edit of the anchor would change
    beta too, or leave its alias pointing at nothing."""
    text = (
        "functions:\n"
        "  - {name: alpha, uuid: a, handler: functions.m:h, state: &st draft}\n"
        "  - name: beta\n"
        "    uuid: b\n"
        "    handler: functions.m:h\n"
        "    state: *st\n"
    )
    path = tmp_path / "functions.yaml"
    path.write_text(text)
    for name, line in (("alpha", 2), ("beta", 6)):
        refused = rf"functions.yaml:{line}: the state of {name} is a YAML anchor"
        with pytest.raises(RuntimeError, match=refused):
            manifest_edit.set_state(path, name, "productive")
    assert path.read_text() == text
