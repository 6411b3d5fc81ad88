"""The models of `functions.yaml` (DESIGN.md section 2): a function's spec and its parts, and the rules of
each field.

Reading the file, with positions for every error, is `control.manifest`; the models here only say what a
valid value is. A rule stricter for the working copy than for revisions published earlier (a cron zone, the
random field R) applies under the `WORKING_COPY` validation context only, so a revision read from the
deployment log keeps working as it was published.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from framework.control import cron
from framework.control.secrets import name_problem
from framework.errors import INVOCATION_ERRORS
from framework.settings import SECRET_VARIABLES

State = Literal["draft", "productive", "undeployed"]
STATES: tuple[State, ...] = ("draft", "productive", "undeployed")
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
HANDLER_FORM = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
"""`module:attribute`, dotted names on both sides (`functions.greet:handle`)."""


WORKING_COPY = {"working_copy": True}
"""Validation context of the manifest on disk: its stricter rules (`cron.check_zone`, the random field R)
are not applied to revisions read from the log, which keep working as they were published."""


def _strict(info: ValidationInfo) -> bool:
    return bool(info.context and info.context.get("working_copy"))


def check_cron(expr: str, strict: bool = False) -> str:
    """Return `expr` if it is a valid 5- or 6-field cron that ever fires (`cron.check_expression`)."""
    cron.check_expression(expr, strict)
    return expr


def _not_bool(value: Any) -> Any:
    # YAML `true` is a bool, which pydantic would take as 1 in a number field; a quoted '3' is text, which
    # it would take as 3 (and a quoted 'inf' as infinity, past `_finite`).
    if isinstance(value, bool):
        raise ValueError(f"a number is expected, not {str(value).lower()}")
    if isinstance(value, str):
        try:
            float(value)
            hint = "numbers are written unquoted"
        except ValueError:
            hint = "a plain number, without a unit"
        raise ValueError(f"a number is expected, not the text {value!r} ({hint})")
    return value


def _finite(value: Any) -> Any:
    # Checked before the bounds, whose message would otherwise be the one shown (nan fails `le=30` first).
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"a finite number is expected, not {value}")
    return _not_bool(value)


def event_type(name: str) -> str:
    """`name` as an event type (the manifest's `events`, `faas emit TYPE`, `faas new --event`); ValueError
    when it is blank."""
    if not name:
        raise ValueError("an event type must not be empty")
    if not name.strip():
        raise ValueError("an event type must not be only whitespace")
    return name


MAX_COUNT = 2**53 - 1
"""The largest count a manifest may give: every JSON reader holds it exactly (a revision carries the spec
as JSON, and orjson reads an integer of 2**64 or more as a float, which no reader takes as a count)."""
Whole = Annotated[int, BeforeValidator(_not_bool)]
"""A whole number of the manifest (`true` is not 1), for a field with a bound of its own below MAX_COUNT
(one bound, so an error names the one that counts)."""
Count = Annotated[Whole, Field(le=MAX_COUNT)]
"""A whole number of the manifest, at most MAX_COUNT."""
Seconds = Annotated[float, BeforeValidator(_finite)]
"""A finite number of seconds (`.nan`, `.inf` and `true` are refused)."""
EventType = Annotated[str, AfterValidator(event_type)]
"""An event type a function listens to: any non-blank text (CloudEvents `type`)."""


def env_usable(key: str, value: str) -> bool:
    """Whether the operating system takes `key=value` into a process's environment."""
    return bool(key) and "=" not in key and "\0" not in key and "\0" not in value


def _env(env: dict[str, str]) -> dict[str, str]:
    """`env` as given; ValueError for a name or value the operating system refuses."""
    # What the operating system refuses in an instance's environment, said here at the manifest's line
    # (else the instance fails to start and the cause reads as a handler that does not import).
    for key, value in env.items():
        if not env_usable(key, ""):
            raise ValueError(f"{key!r} is no environment variable name (it is empty, or holds '=' or NUL)")
        if not env_usable(key, value):
            raise ValueError(f"the value of {key!r} holds a NUL character")
    return env


Env = Annotated[dict[str, str], AfterValidator(_env)]
"""`env`: names the operating system takes, values without NUL."""


class ScheduleSpec(BaseModel):
    """One cron entry: `cron` (5 fields, or 6 with seconds last), IANA `timezone`, any JSON `payload`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str
    timezone: str = "UTC"
    payload: Any = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str, info: ValidationInfo) -> str:
        return check_cron(value, _strict(info))

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str, info: ValidationInfo) -> str:
        if _strict(info):
            cron.check_zone(value)
        else:
            cron.zone(value)
        return value

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: Any) -> Any:
        try:  # a round trip turns YAML-only values (non-string keys) into their JSON form
            payload = json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"payload is not a JSON value: {exc}") from None
        merged = _merged_keys(value)
        if merged is not None:  # the round trip would keep the last of them, without a word
            raise ValueError(f"payload keys {merged[0]!r} and {merged[1]!r} are one key in JSON")
        try:  # the runs' frames and records are orjson's: checked here, not at every tick
            orjson.dumps(payload)
        except orjson.JSONEncodeError as exc:
            raise ValueError(
                f"payload is not a JSON value the platform carries ({exc}): integers are held to 64 bits "
                "and nesting to 254 levels; write such a number as a string"
            ) from None
        return payload


def _merged_keys(value: Any) -> tuple[Any, Any] | None:
    """Two keys of one mapping in `value` that JSON writes alike (`1` and `"1"`, `true` and `"true"`)."""
    if isinstance(value, dict):
        seen: dict[str, Any] = {}
        for key, item in value.items():
            text = key if isinstance(key, str) else json.dumps(key)  # as JSON writes a key: 1 as "1"
            if text in seen:
                return seen[text], key
            seen[text] = key
            found = _merged_keys(item)
            if found is not None:
                return found
    elif isinstance(value, list):
        for item in value:
            found = _merged_keys(item)
            if found is not None:
                return found
    return None


class InstancesSpec(BaseModel):
    """Per-node instance limits of one function."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max: Count = Field(4, ge=1)
    """Instances of this function per node."""
    concurrency: Count = Field(100, ge=1)
    """In-flight requests per instance before another instance starts."""
    idle_timeout: Seconds = Field(300, gt=0)
    """Seconds an idle instance lives before it goes cold."""
    queue: Count = Field(1000, ge=0)
    """Requests that may wait when every instance is full; beyond that: Overloaded."""
    memory_mb: Whole | None = Field(None, ge=32, le=1024 * 1024)
    """Resident memory limit of one instance in MiB (DESIGN.md section 14); None: no limit."""


SECRET_NAME = r"^[A-Za-z0-9_.-]{1,128}$"


def _retryable(name: str) -> str:
    if name not in INVOCATION_ERRORS:  # BadEvent and NotFound never change on a retry
        raise ValueError(f"{name!r} is not a retryable error type (one of {', '.join(INVOCATION_ERRORS)})")
    return name


def _secret_name(name: str, info: ValidationInfo) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise ValueError(problem)
    if _strict(info) and name.upper() in SECRET_VARIABLES:  # files of the same folder: never a function's
        raise ValueError(f"{name!r} is the node's own secret setting, not one a function can list")
    return name


SecretName = Annotated[str, AfterValidator(_secret_name)]
"""A secret's name, checked item by item so each bad one is reported at its own position."""


MAX_RETRY_ATTEMPTS = 10
"""The most `retry.attempts` a function may have: an event is tried at most 11 times."""


class RetrySpec(BaseModel):
    """`retry:` of DESIGN.md section 15: event and scheduled invocations only."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attempts: Whole = Field(0, ge=0, le=MAX_RETRY_ATTEMPTS)
    """Extra attempts after a failure."""
    backoff: Seconds = Field(0.5, ge=0)
    """Seconds before the first retry, doubled each time; every wait is capped at 30 s (a larger backoff
    is that cap from the first retry on)."""
    on: tuple[Annotated[str, AfterValidator(_retryable)], ...] = ("Timeout", "InstanceCrashed", "Overloaded")
    """Error types retried; each checked on its own, so an error names the item's LINE:COL."""

    @model_validator(mode="after")
    def _attempts_can_happen(self, info: ValidationInfo) -> RetrySpec:
        # The working copy's only: a revision published with it before this rule keeps being served.
        if _strict(info) and self.attempts and not self.on:
            raise ValueError(
                f"'on' lists no error type, so its {self.attempts} attempt(s) never happen: list the error "
                "types to retry, or set attempts: 0"
            )
        return self

    def delay(self, attempt: int) -> float:
        """Seconds to wait before `attempt` (2, 3, ...): backoff doubled per retry, at most 30."""
        return float(min(30.0, self.backoff * 2 ** (attempt - 2)))


class FunctionSpec(BaseModel):
    """One entry of `functions:`. `root` is the manifest's folder, where `handler` is imported from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    uuid: str
    """RFC 4122 form, stored lower-case."""
    handler: str
    """`module:attribute`, e.g. `functions.greet:handle`."""
    state: State = "draft"
    events: tuple[EventType, ...] = ()
    timeout: Seconds = Field(30, gt=0, le=30)
    """Seconds, counted from when the instance receives the request."""
    env: Env = Field(default_factory=dict)
    schedules: tuple[ScheduleSpec, ...] = ()
    keep_warm: str | None = None
    instances: InstancesSpec = Field(default_factory=InstancesSpec)
    secrets: tuple[SecretName, ...] = ()
    """Names of the secrets the handler reads as `ctx.secrets[name]` (DESIGN.md section 14)."""
    retry: RetrySpec = Field(default_factory=RetrySpec)
    root: Path = Path(".")
    code: Path | None = None
    """Where instances import the handler from: its revision's unpacked code (None: `root`)."""
    revision: int | None = None
    """The deployed revision this spec is (DESIGN.md section 12); None for the working copy or a test run."""

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, value: str) -> str:
        if not _UUID.fullmatch(value.lower()):  # not `match`: `$` would let a trailing newline in
            raise ValueError(f"{value!r} is not an RFC 4122 UUID (e.g. 2f7c1e3a-6a53-4a5b-9a55-3b2f0c1d9e10)")
        return value.lower()

    @field_validator("handler")
    @classmethod
    def _handler(cls, value: str) -> str:
        if not HANDLER_FORM.match(value):
            raise ValueError(f"handler {value!r} must have the form module:attribute")
        return value

    @field_validator("keep_warm")
    @classmethod
    def _keep_warm(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else check_cron(value, _strict(info))

    @property
    def productive(self) -> bool:
        return self.state == "productive"


class DefaultsSpec(BaseModel):
    """The top-level `defaults:` mapping; a function's own values override it key by key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: Seconds | None = Field(None, gt=0, le=30)
    instances: InstancesSpec | None = None
    env: Env = Field(default_factory=dict)


class Manifest(BaseModel):
    """The whole file, with `defaults` already merged into each function."""

    model_config = ConfigDict(frozen=True)

    path: Path
    functions: tuple[FunctionSpec, ...] = ()
