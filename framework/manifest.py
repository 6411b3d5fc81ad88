"""`functions.yaml`: the models of DESIGN.md section 2, loading with positions, and round-trip edits.

Every error is reported as `functions.yaml:LINE:COL: message` (1-based), all of them at once. Edits
(`set_state`, `add_function`) change only the lines they must, so comments and layout survive.
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path
from typing import Any, Literal

from croniter import CroniterBadDateError, croniter
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.scalarbool import ScalarBoolean

from framework import cron
from framework.errors import ManifestError

State = Literal["draft", "productive", "undeployed"]
STATES: tuple[State, ...] = ("draft", "productive", "undeployed")
NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,62}$"
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[1-8][0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
_HANDLER = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def check_cron(expr: str) -> str:
    """Return `expr` if it is a valid 5- or 6-field cron (see framework.cron) that ever fires."""
    cron.check_expression(expr)
    try:
        croniter(expr).get_next(float)
    except CroniterBadDateError:
        raise ValueError(f"cron expression {expr!r} never fires") from None
    return expr


class ScheduleSpec(BaseModel):
    """One cron entry: `cron` (5 fields, or 6 with seconds last), IANA `timezone`, any JSON `payload`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cron: str
    timezone: str = "UTC"
    payload: Any = None

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return check_cron(value)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        cron.zone(value)
        return value

    @field_validator("payload")
    @classmethod
    def _payload(cls, value: Any) -> Any:
        try:  # a round trip turns YAML-only values (non-string keys) into their JSON form
            return json.loads(json.dumps(value, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"payload is not a JSON value: {exc}") from None


class InstancesSpec(BaseModel):
    """Per-node instance limits of one function."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max: int = Field(4, ge=1)
    """Instances of this function per node."""
    concurrency: int = Field(100, ge=1)
    """In-flight requests per instance before another instance starts."""
    idle_timeout: float = Field(300, gt=0)
    """Seconds an idle instance lives before it goes cold."""
    queue: int = Field(1000, ge=0)
    """Requests that may wait when every instance is full; beyond that: Overloaded."""


class FunctionSpec(BaseModel):
    """One entry of `functions:`. `root` is the manifest's folder, where `handler` is imported from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    uuid: str
    """RFC 4122 form, stored lower-case."""
    handler: str
    """`module:attribute`, e.g. `functions.greet:handle`."""
    state: State = "draft"
    events: tuple[str, ...] = ()
    timeout: float = Field(30, gt=0, le=30)
    """Seconds, counted from when the instance receives the request."""
    env: dict[str, str] = Field(default_factory=dict)
    schedules: tuple[ScheduleSpec, ...] = ()
    keep_warm: str | None = None
    instances: InstancesSpec = Field(default_factory=InstancesSpec)
    root: Path = Path(".")

    @field_validator("uuid")
    @classmethod
    def _uuid(cls, value: str) -> str:
        if not _UUID.match(value.lower()):
            raise ValueError(f"{value!r} is not an RFC 4122 UUID (e.g. 2f7c1e3a-6a53-4a5b-9a55-3b2f0c1d9e10)")
        return value.lower()

    @field_validator("handler")
    @classmethod
    def _handler(cls, value: str) -> str:
        if not _HANDLER.match(value):
            raise ValueError(f"handler {value!r} must have the form module:attribute")
        return value

    @field_validator("keep_warm")
    @classmethod
    def _keep_warm(cls, value: str | None) -> str | None:
        return None if value is None else check_cron(value)

    @property
    def productive(self) -> bool:
        return self.state == "productive"


class DefaultsSpec(BaseModel):
    """The top-level `defaults:` mapping; a function's own values override it key by key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    timeout: float | None = Field(None, gt=0, le=30)
    instances: InstancesSpec | None = None
    env: dict[str, str] = Field(default_factory=dict)


class Manifest(BaseModel):
    """The whole file, with `defaults` already merged into each function."""

    model_config = ConfigDict(frozen=True)

    path: Path
    functions: tuple[FunctionSpec, ...] = ()


def _yaml() -> YAML:
    return YAML(typ="rt")


def _plain(node: Any) -> Any:
    """ruamel's round-trip nodes as plain JSON-like Python values (dates become ISO strings)."""
    if isinstance(node, dict):
        return {_plain(k): _plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_plain(v) for v in node]
    if isinstance(node, ScalarBoolean):
        return bool(node)
    for kind in (bool, int, float, str):
        if isinstance(node, kind):
            return kind(node)
    if isinstance(node, date):
        return node.isoformat()
    return node


class _Errors:
    """Collects `(line, col, message)` problems (0-based positions) and formats them sorted, once each."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.found: set[tuple[int, int, str]] = set()

    def add(self, pos: tuple[int, int], message: str) -> None:
        self.found.add((pos[0], pos[1], message))

    def lines(self) -> list[str]:
        return [f"{self.label}:{line + 1}:{col + 1}: {msg}" for line, col, msg in sorted(self.found)]


def _key_at(node: CommentedMap, key: Any, fallback: tuple[int, int]) -> tuple[int, int]:
    """Where `key` is written; keys brought in by a `<<:` merge have no position of their own."""
    data = node.lc.data.get(key)
    return (data[0], data[1]) if data else fallback


def _position(node: Any, loc: tuple[int | str, ...], fallback: tuple[int, int]) -> tuple[int, int]:
    """The deepest key or item of `loc` present in the YAML nodes (values merged from defaults are not)."""
    pos = fallback
    for part in loc:
        if isinstance(node, CommentedMap) and part in node:
            pos, node = _key_at(node, part, pos), node[part]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            pos, node = tuple(node.lc.item(part)), node[part]
        else:
            break
    return pos


def _message(err: ErrorDetails, prefix: str) -> str:
    """A pydantic error as `where: what`, `where` being the dotted key path, e.g. `schedules[0].cron`."""
    loc = [prefix, *(p for p in err["loc"] if p != "[key]")]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).strip(".")
    kind = err["type"]
    if kind == "extra_forbidden":
        return f"unknown key {where!r}"
    if kind == "missing":
        return f"missing required key {where!r}"
    if kind == "value_error":
        what = str(err.get("ctx", {}).get("error", err["msg"]))
    elif kind in ("tuple_type", "list_type"):
        what = "should be a list"
    elif kind in ("dict_type", "model_type"):
        what = "should be a mapping"
    elif err["loc"] and err["loc"][-1] == "[key]":
        what = "keys must be strings"
    else:
        what = err["msg"]
    return f"{where}: {what}" if where else what


def _validate(
    model: type[BaseModel],
    node: Any,
    at: tuple[int, int],
    errors: _Errors,
    data: Any = None,
    prefix: str = "",
) -> Any:
    """`model` validated from `data` (default: `node` as plain values); errors located through `node`."""
    try:
        return model.model_validate(_plain(node) if data is None else data)
    except ValidationError as exc:
        for err in exc.errors():
            errors.add(_position(node, err["loc"], at), _message(err, prefix))
    return None


def _merge(defaults: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """`data` over `defaults`: `instances` field by field, `env` variable by variable, the rest per key."""
    merged = {**{k: v for k, v in defaults.items() if k not in ("instances", "env")}, **data}
    for key in ("instances", "env"):
        if isinstance(defaults.get(key), dict) and isinstance(data.get(key, {}), dict):
            merged[key] = {**defaults[key], **data.get(key, {})}
    return merged


def _parse(path: Path, errors: _Errors) -> Any:
    """The round-trip document of `path` (None for an empty file); syntax errors go to `errors`."""
    try:
        return _yaml().load(path.read_text(encoding="utf-8"))
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" ({exc.context} started at line {exc.context_mark.line + 1})" if exc.context_mark else ""
        problem = (exc.problem or "invalid YAML").replace("\n", " ")
        errors.add((mark.line, mark.column) if mark else (0, 0), f"YAML syntax error: {problem}{where}")
    except (YAMLError, OSError, UnicodeDecodeError) as exc:
        errors.add((0, 0), f"cannot read the manifest: {exc}")
    return None


def load_manifest(path: Path, check_handlers: bool = True) -> Manifest:
    """Load and check `path`; raise ManifestError listing every problem as `path:LINE:COL: message`.

    `check_handlers` (default True) also imports every handler in one subprocess run in the manifest's
    folder, so a broken module can neither crash nor pollute this process.
    """
    errors = _Errors(str(path))
    root = path.resolve().parent
    doc = _parse(path, errors)
    if errors.found:
        raise ManifestError(errors.lines())
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, CommentedMap):
        raise ManifestError([f"{path}:1:1: the top level must be a mapping with a 'functions:' list"])
    for key in doc:  # `x-` keys are free, e.g. to hold YAML anchors (`x-common: &common`)
        if key not in ("functions", "defaults") and not str(key).startswith("x-"):
            errors.add(_key_at(doc, key, (0, 0)), f"unknown key {key!r} (expected 'functions' or 'defaults')")
    defaults: dict[str, Any] = {}
    if doc.get("defaults") is not None:
        at = _key_at(doc, "defaults", (0, 0))
        if _validate(DefaultsSpec, doc["defaults"], at, errors, prefix="defaults"):
            defaults = _plain(doc["defaults"])
    items = doc.get("functions")
    if items is None:
        items = CommentedSeq()
    elif not isinstance(items, CommentedSeq):
        errors.add(_key_at(doc, "functions", (0, 0)), "functions: should be a list of functions")
        items = CommentedSeq()
    specs: list[FunctionSpec] = []
    seen: dict[tuple[str, str], tuple[int, int]] = {}  # (key, value) -> (item index, line)
    handlers: dict[str, tuple[dict[str, str], list[tuple[int, int]]]] = {}
    for i, item in enumerate(items):
        at = tuple(items.lc.item(i))
        if not isinstance(item, CommentedMap):
            errors.add(at, "each function should be a mapping with name, uuid and handler")
            continue
        for key in ("name", "uuid"):
            value = item.get(key)
            if isinstance(value, str):
                pos = _key_at(item, key, at)
                first, line = seen.setdefault((key, value.lower()), (i, pos[0]))
                if first != i:
                    errors.add(pos, f"duplicate {key} {value!r} (first at line {line + 1})")
        data = _merge(defaults, _plain(item))
        if "root" in data:
            errors.add(_key_at(item, "root", at), "unknown key 'root'")
        spec = _validate(FunctionSpec, item, at, errors, data={**data, "root": root})
        if spec is not None:
            specs.append(spec)
        handler = item.get("handler")
        if isinstance(handler, str) and _HANDLER.match(handler):
            env = data.get("env")
            env = env if isinstance(env, dict) and all(isinstance(v, str) for v in env.values()) else {}
            handlers.setdefault(handler, (env, []))[1].append(_key_at(item, "handler", at))
    if check_handlers and handlers:
        found = import_errors(root, {h: env for h, (env, _) in handlers.items()})
        for handler, problem in found.items():
            for pos in handlers[handler][1]:
                errors.add(pos, f"handler {handler!r} {problem}")
    if errors.found:
        raise ManifestError(errors.lines())
    return Manifest(path=path, functions=tuple(specs))


# ---- handler import check (one subprocess for all handlers) ----

IMPORT_TIMEOUT = 30.0
"""Seconds one import-check subprocess may run before its current handler is blamed."""

_MARK = "@@faas-check@@ "
_CHECK = f"""
import importlib, json, os, sys
sys.path.insert(0, os.getcwd())
out, sys.stdout = sys.stdout, sys.stderr  # a module's prints must not mix with the report

def check(handler, env):
    os.environ.update(env)
    module, _, attr = handler.partition(":")
    try:
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except BaseException as exc:
        return "does not import: %s: %s" % (type(exc).__name__, exc)
    return None if callable(obj) else "is not callable"

for line in sys.stdin:
    handler, env = json.loads(line)
    out.write({_MARK!r} + json.dumps([handler, check(handler, env)]) + "\\n")
    out.flush()
"""


def import_errors(root: Path, handlers: dict[str, dict[str, str]]) -> dict[str, str]:
    """Import each `module:attr` handler (with its env) in a subprocess run in `root`.

    Returns the problem of each handler that fails, e.g. `does not import: ModuleNotFoundError: ...`.
    A handler whose import kills or hangs the subprocess is blamed, and the rest are checked in a new one.
    """
    results: dict[str, str | None] = {}
    pending = list(handlers)
    while pending:
        stdin = "".join(json.dumps([h, handlers[h]]) + "\n" for h in pending)
        try:
            proc = subprocess.run(
                [sys.executable, "-c", _CHECK],
                input=stdin,
                capture_output=True,
                text=True,
                cwd=root,
                timeout=IMPORT_TIMEOUT,
            )
            out, failure = proc.stdout, f"does not import: the import exited the process ({proc.returncode})"
        except subprocess.TimeoutExpired as exc:
            raw = exc.stdout or ""
            out = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
            failure = f"does not import: the import did not finish within {IMPORT_TIMEOUT:g} s"
        for line in out.splitlines():
            if line.startswith(_MARK):
                handler, problem = json.loads(line[len(_MARK) :])
                results[handler] = problem
        pending = [h for h in pending if h not in results]
        if pending:
            results[pending.pop(0)] = failure
    return {h: p for h, p in results.items() if p is not None}


# ---- round-trip edits: change only the lines that must change ----

_SCALAR = re.compile(r"\"[^\"\n]*\"|'[^'\n]*'|[^\s#,\]}]+")


def _find(doc: Any, name: str) -> CommentedMap:
    items = doc.get("functions") if isinstance(doc, CommentedMap) else None
    for item in items if isinstance(items, CommentedSeq) else ():
        if isinstance(item, CommentedMap) and item.get("name") == name:
            return item
    raise LookupError(f"no function named {name!r} in the manifest")


def _read(path: Path) -> tuple[list[str], Any]:
    errors = _Errors(str(path))
    doc = _parse(path, errors)
    if errors.found:
        raise ManifestError(errors.lines())
    with path.open(encoding="utf-8", newline="") as f:  # keep \r\n line ends as they are
        return f.read().splitlines(keepends=True), doc


def _write(path: Path, lines: list[str], check: Any) -> None:
    """Check the edited text parses to what we meant, then replace the file atomically (a node watches it)."""
    text = "".join(lines)
    if not check(_yaml().load(text)):
        raise RuntimeError(f"could not edit {path} safely; edit it by hand")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)
    os.chmod(tmp, path.stat().st_mode & 0o777)
    os.replace(tmp, path)


def _eol(line: str) -> str:
    return "\r\n" if line.endswith("\r\n") else "\n"


def set_state(path: Path, name: str, state: State) -> None:
    """Set function `name`'s `state:`, changing only that line (or inserting one after `handler:`).

    Raises LookupError for an unknown name and ManifestError when the file is not valid YAML.
    """
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}")
    lines, doc = _read(path)
    item = _find(doc, name)
    own = item.lc.data  # key -> [key line, key col, value line, value col]; merged (`<<:`) keys are absent
    if "state" in own and isinstance(item["state"], str) and own["state"][2] == own["state"][0]:
        line, col = own["state"][2:]
        match = _SCALAR.match(lines[line], col)
        assert match is not None
        lines[line] = lines[line][: match.start()] + state + lines[line][match.end() :]
    elif "state" in own:  # an empty or odd value: rewrite the whole key line
        line, col = own["state"][:2]
        lines[line] = " " * col + f"state: {state}" + _eol(lines[line])
    else:
        anchor = "handler" if "handler" in own else next(iter(own))
        line, col, value_line, _ = own[anchor]
        if item.fa.flow_style():
            lines[line] = lines[line][:col] + f"state: {state}, " + lines[line][col:]
        else:
            lines[value_line] += "" if lines[value_line].endswith("\n") else "\n"
            lines.insert(value_line + 1, " " * col + f"state: {state}" + _eol(lines[value_line]))
    _write(path, lines, lambda new: _find(new, name).get("state") == state)


def add_function(path: Path, entry: dict[str, Any]) -> None:
    """Append `entry` (a function's keys, in order) to `functions:`; the other lines stay byte-identical.

    Lists in `entry` are written in flow style (`events: [a.b]`). Creates `functions:` when missing.
    """
    lines, doc = _read(path) if path.exists() else ([], None)
    if doc is not None and not isinstance(doc, CommentedMap):
        raise ManifestError([f"{path}:1:1: the top level must be a mapping with a 'functions:' list"])
    body = CommentedMap()
    for key, value in entry.items():
        if isinstance(value, list):
            value = CommentedSeq(value)
            value.fa.set_flow_style()
        body[key] = value
    dumper = YAML(typ="rt")
    dumper.indent(mapping=2, sequence=4, offset=2)
    buf = io.StringIO()
    dumper.dump(body, buf)
    rendered = buf.getvalue().splitlines()
    eol = _eol(lines[0]) if lines else "\n"
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += eol
    items = doc.get("functions") if doc is not None else None
    if doc is None or "functions" not in doc:
        at, dash, content = len(lines), 2, 4
        lines.append("functions:" + eol)
        at += 1
    elif isinstance(items, CommentedSeq) and items and not items.fa.flow_style():
        line, content = items.lc.item(0)
        dash = lines[line].rfind("-", 0, content)
        later = list(doc)[list(doc).index("functions") + 1 :]
        at = doc.lc.key(later[0])[0] if later else len(lines)
        while later and at > 0 and (not lines[at - 1].strip() or lines[at - 1].startswith("#")):
            at -= 1  # blank lines and comments just above the next key belong to it
    elif not items:  # `functions:` or `functions: []`
        line, col = doc.lc.key("functions")
        dash, content, at = col + 2, col + 4, line + 1
        lines[line] = re.sub(r":\s*\[\s*\]", ":", lines[line], count=1)
    else:
        raise ManifestError([f"{path}:1:1: cannot append to a flow-style functions list; use block style"])
    block = [" " * dash + "-" + " " * (content - dash - 1) + rendered[0] + eol]
    block += [" " * content + r + eol for r in rendered[1:]]
    lines[at:at] = block
    _write(path, lines, lambda new: _find(new, str(entry["name"])) is not None)
