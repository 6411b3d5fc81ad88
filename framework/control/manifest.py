"""`functions.yaml`: loading the models of DESIGN.md section 2 (`control.spec`) with positions.

Every error is reported as `functions.yaml:LINE:COL: message` (1-based), all of them at once. Handlers
are import-checked by `control.handler_check`; round-trip edits live in `control.manifest_edit`.

A load is two steps: what the text says (`_read`: YAML, the models, duplicates; the same for the same
bytes), then what else is on disk (secrets, code size, handler imports). The watcher keeps a
`ManifestCache` between loads, so an edit of a handler module does not parse the manifest again, an edit
of the manifest validates only the entries it changed (1,000 entries: about 0.3 s of parsing remains),
and handlers are imported again only when what their import read changed (`ImportChecks`).
The project folder (`FunctionSpec.root`, where handlers are imported from) is the folder of the file
the path resolves to: for a symlinked manifest, the link's target's folder, looked up at each load.
"""

from __future__ import annotations

import json
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from pydantic import (
    BaseModel,
    ValidationError,
)
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scalarbool import ScalarBoolean

from framework.control.handler_check import ImportChecks, import_errors
from framework.control.secrets import SecretError, SecretStore, name_problem
from framework.control.snapshot import top_level_name, top_level_of
from framework.control.spec import (
    HANDLER_FORM,
    WORKING_COPY,
    DefaultsSpec,
    FunctionSpec,
    Manifest,
    env_usable,
)
from framework.errors import ManifestError


def round_trip_yaml() -> YAML:
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


class ErrorCollector:
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


def _item_at(seq: CommentedSeq, index: int, fallback: tuple[int, int]) -> tuple[int, int]:
    """Where item `index` of `seq` is written; the items of a tagged list (`events: !tag [a]`) have no
    position of their own: `fallback` then."""
    try:
        pos = seq.lc.item(index)
    except (KeyError, IndexError, TypeError):
        pos = None
    return (pos[0], pos[1]) if pos else fallback


def _position(node: Any, loc: tuple[int | str, ...], fallback: tuple[int, int]) -> tuple[int, int]:
    """The deepest key or item of `loc` present in the YAML nodes (values merged from defaults are not)."""
    pos: tuple[int, int] = fallback
    key: Any
    for key in loc:
        if isinstance(node, CommentedMap) and isinstance(key, str) and key not in node:
            # A key written as a date is its text in the validated values (`_plain`): `2024-01-01:`.
            key = next((k for k in node if isinstance(k, date) and _plain(k) == key), key)
        if isinstance(node, CommentedMap) and key in node:
            pos, node = _key_at(node, key, pos), node[key]
        elif isinstance(node, CommentedSeq) and isinstance(key, int) and 0 <= key < len(node):
            pos, node = _item_at(node, key, pos), node[key]
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
    else:
        what = err["msg"]
    return f"{where}: {what}" if where else what


def _validate(
    model: type[BaseModel],
    node: Any,
    at: tuple[int, int],
    errors: ErrorCollector,
    data: Any = None,
    prefix: str = "",
) -> Any:
    """`model` validated from `data` (default: `node` as plain values); errors located through `node`."""
    try:
        return model.model_validate(_plain(node) if data is None else data, context=WORKING_COPY)
    except ValidationError as exc:
        for err in exc.errors():
            # A key that is not a string is reported where it is written (`_key_problems`); pydantic's
            # loc has it as text ("('a', 'b')"), which no longer finds it.
            if err["type"] != "invalid_key" and "[key]" not in err["loc"]:
                errors.add(_position(node, err["loc"], at), _message(err, prefix))
    return None


def _kind(value: Any) -> str:
    """What a YAML value is, in the manifest's words."""
    if value is None:
        return "null"
    if isinstance(value, (bool, ScalarBoolean)):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):  # a key written as a list reads as a tuple
        return "a list"
    if isinstance(value, Mapping):
        return "a mapping"
    return f"a {type(value).__name__}"


def _key_problems(nodes: list[Any], errors: ErrorCollector) -> None:
    """Every key in the mappings of `nodes` that is not a string, as an error at the key's own position. A
    date is a string here (`_plain` makes it its text); `payload` values are not looked into (any value:
    their keys are the handler's business). Each node is looked at once, however many aliases name it."""
    seen: set[int] = set()
    stack = list(nodes)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, CommentedSeq):
            stack.extend(node)
        elif isinstance(node, CommentedMap):
            for key, value in node.items():
                if not isinstance(key, (str, date)):  # a merged (`<<:`) key: at the mapping it went into
                    errors.add(_key_at(node, key, (node.lc.line, node.lc.col)), _key_message(key))
                elif key != "payload":
                    stack.append(value)


def _key_message(key: Any) -> str:
    return f"a key must be a string, not {_kind(key)}"


EMPTY_IS_DEFAULT = frozenset(("events", "schedules", "secrets", "env", "instances", "retry"))
"""Keys whose empty value (`events:` with nothing after it, YAML null) means their default, as `functions:`
does: none, or the defaults' own."""


def _without_empty(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None or k not in EMPTY_IS_DEFAULT}


def _merge(defaults: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    """`data` over `defaults`: `instances` field by field, `env` variable by variable, the rest per key."""
    data = _without_empty(data)
    merged = {**{k: v for k, v in defaults.items() if k not in ("instances", "env")}, **data}
    for key in ("instances", "env"):
        if isinstance(defaults.get(key), dict) and isinstance(data.get(key, {}), dict):
            merged[key] = {**defaults[key], **data.get(key, {})}
    return merged


MAX_BYTES = 4 * 1024 * 1024
"""Bytes a manifest may hold: thousands of functions (about 150 bytes each). ruamel's reading grows faster
than the size (1 / 2 / 4 MB of comments: 0.9 / 1.7 / 4.0 s here), runs where nothing can stop it (a watch
mode check, `faas run` start), and 50 MB did not finish in 15 minutes."""
MAX_PROBLEM_CHARS = 300
"""Characters of a YAML error's own text an error line keeps (a duplicate key's quotes both values: one
140 KB line in `/readyz` for a long list)."""
MAX_VALUES = 100_000
"""Values (scalars, lists, mappings) a manifest may hold once its YAML aliases are expanded: far more than a
real manifest holds (a function is a few dozen), far fewer than an alias bomb's (eight levels of ten aliases
are 10^8: minutes and gigabytes to read)."""


def _expansion_problem(doc: Any) -> tuple[tuple[int, int], str] | None:
    """Position and message when `doc`, aliases expanded, holds more than MAX_VALUES values; else None.
    Each value is counted once per place it appears, up to the bound, so the check itself is bounded.
    (ruamel's round-trip loader has no cycles to fear: an alias inside its own anchor's value reads None.)"""
    seen = 0
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        if not isinstance(node, (dict, list)):
            continue
        seen += len(node)
        if seen > MAX_VALUES:
            lc = getattr(node, "lc", None)
            where = (lc.line, lc.col) if lc is not None and lc.line is not None else (0, 0)
            return where, f"the manifest holds over {MAX_VALUES:,} values once its YAML aliases are expanded"
        stack.extend(node.values() if isinstance(node, dict) else node)
    return None


def read_head(path: Path) -> bytes:
    """The manifest's bytes, one more than MAX_BYTES at most: a larger file is refused for its size
    (`parse_bytes`), not read whole. Anything but a regular file or a folder is refused before it is opened
    (`check_regular`)."""
    check_regular(path)
    with path.open("rb") as f:
        return f.read(MAX_BYTES + 1)


def check_regular(path: Path) -> None:
    """Raise OSError when `path` (its links followed) exists and is a FIFO, a socket or a device: opening a
    FIFO waits for a writer, a device never ends, and an edit would replace the device node itself (as
    root, `faas --manifest /dev/null new` made /dev/null a plain file)."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # missing, or unreadable: the open says so on its own terms
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise OSError(f"{path} is not a regular file (a FIFO, socket or device)")


def parse_yaml(path: Path, errors: ErrorCollector) -> Any:
    """The round-trip document of `path` (None for an empty file); syntax errors go to `errors`."""
    try:
        data = read_head(path)
    except OSError as exc:
        errors.add((0, 0), f"cannot read the manifest: {exc}")
        return None
    return parse_bytes(data, errors)


def parse_bytes(data: bytes, errors: ErrorCollector) -> Any:
    """`parse_yaml` of a manifest's bytes."""
    if len(data) > MAX_BYTES:
        errors.add((0, 0), f"the manifest is over the {MAX_BYTES:,} a manifest may hold (bytes: 4 MiB)")
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:  # at the bad byte's line and column, as a YAML error would be
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        column = len(data[line_start : exc.start].decode("utf-8", "replace"))
        errors.add((data.count(b"\n", 0, exc.start), column), f"not UTF-8 text: byte 0x{data[exc.start]:02x}")
        return None
    try:
        doc = round_trip_yaml().load(text)
        too_big = _expansion_problem(doc)
        if too_big is None:
            return doc
        errors.add(*too_big)
    except RecursionError:  # the parser recurses per level: a few hundred levels of nesting exhaust it
        errors.add((0, 0), "cannot read the manifest: nested too deeply (a few hundred levels)")
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" ({exc.context} started at line {exc.context_mark.line + 1})" if exc.context_mark else ""
        problem = (exc.problem or "invalid YAML").replace("\n", " ")
        if len(problem) > MAX_PROBLEM_CHARS:  # a duplicate key's message quotes both values whole
            problem = problem[:MAX_PROBLEM_CHARS] + "…"
        errors.add((mark.line, mark.column) if mark else (0, 0), f"YAML syntax error: {problem}{where}")
    except ReaderError as exc:  # a control character: at its own line and column, on one line
        at = min(max(exc.position, 0), len(text))
        line_start = text.rfind("\n", 0, at) + 1
        errors.add(
            (text.count("\n", 0, at), at - line_start),
            f"a control character (#x{exc.character:04x}) YAML does not allow in a manifest",
        )
    except YAMLError as exc:
        errors.add((0, 0), "cannot read the manifest: " + " ".join(str(exc).split()))
    return None


def _listed_secrets(item: CommentedMap) -> list[tuple[str, tuple[int, int]]]:
    """Each secret `item` lists under a valid name, with the position of its item in `secrets:` (a secret
    that cannot be read is an error there)."""
    names = item.get("secrets")
    if not isinstance(names, CommentedSeq):
        return []
    return [
        (name, _item_at(names, j, _key_at(item, "secrets", (0, 0))))
        for j, name in enumerate(names)
        if isinstance(name, str) and name_problem(name) is None
    ]


def _check_listed_once(
    items: object, errors: ErrorCollector, at: tuple[int, int], what: str = "event type"
) -> None:
    """An item listed twice (an event type: it would run twice; a secret) is an error at the second."""
    if not isinstance(items, CommentedSeq):
        return
    first: dict[str, int] = {}
    for j, value in enumerate(items):
        if isinstance(value, str):
            line, col = _item_at(items, j, at)
            if value in first:
                errors.add((line, col), f"{what} {value!r} listed twice (first at line {first[value] + 1})")
            else:
                first[value] = line


@dataclass(frozen=True)
class _Read:
    """What the text of a manifest says, whatever else is on disk: its problems, its functions (with where
    each one's `handler` is written), the secrets they list and the handler checks to import."""

    fatal: list[str] | None = None
    """Problems that leave nothing else to check (unreadable, a syntax error, not a mapping)."""
    errors: frozenset[tuple[int, int, str]] = frozenset()
    specs: tuple[tuple[FunctionSpec, tuple[int, int]], ...] = ()
    secrets: tuple[tuple[str, tuple[int, int]], ...] = ()
    checks: tuple[tuple[tuple[str, str], tuple[tuple[int, int], ...]], ...] = ()
    """(handler, its env as JSON) → where each function naming it is: one import check each."""


class ManifestCache:
    """What `load_manifest` keeps between loads of one working copy (the watcher's), so an edit costs what it
    changed: the last text read, as parsed and validated (an edit of a handler module reads the manifest's
    bytes only); each function entry as validated, by its value (an edit of the manifest validates the entries
    it changed); and the handlers' import checks (`handler_check.ImportChecks`). Secrets and code are
    checked again at every load. Not for several threads at once; `close` removes the check's copies.
    """

    def __init__(self) -> None:
        self.imports = ImportChecks()
        self._last: tuple[tuple[str, str, bytes], _Read] | None = None
        self._specs: dict[str, FunctionSpec] = {}

    def close(self) -> None:
        self.imports.close()

    def read(self, path: Path, root: Path) -> _Read:
        try:
            data = read_head(path)
        except OSError as exc:
            return _Read(fatal=[f"{path}:1:1: cannot read the manifest: {exc}"])
        key = (str(path), str(root), data)
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        known, self._specs = self._specs, {}
        if self._last is not None and self._last[0][1] != str(root):  # specs carry their root: not reused
            known = {}
        found = _read(path, root, data, known, self._specs)
        self._last = (key, found)
        return found


def _value_key(data: Any) -> str | None:
    """A key for an entry's plain value (its repr, which tells 1 from '1' and True from 1), or None when it
    holds anything but JSON-like values, whose repr may not say all of it."""
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif value is not None and type(value) not in (str, int, float, bool):
            return None
    return repr(data)


def _read(
    path: Path, root: Path, raw: bytes, known: dict[str, FunctionSpec], keep: dict[str, FunctionSpec]
) -> _Read:
    """The bytes `raw` of the manifest at `path` checked on their own (`_Read`). `known`: entries validated
    before, by `_value_key`; those validated now are added to `keep`."""
    errors = ErrorCollector(str(path))
    doc = parse_bytes(raw, errors)
    if errors.found:
        return _Read(fatal=errors.lines())
    if doc is None:  # an editor's truncate-then-write in watch mode would undeploy every function
        return _Read(fatal=[f"{path}:1:1: the manifest is empty: write 'functions: []' for none"])
    if not isinstance(doc, CommentedMap):
        return _Read(fatal=[f"{path}:1:1: the top level must be a mapping with a 'functions:' list"])
    for key in doc:  # `x-` keys are free, e.g. to hold YAML anchors (`x-common: &common`)
        if not isinstance(key, (str, date)):
            errors.add(_key_at(doc, key, (0, 0)), _key_message(key))
        elif key not in ("functions", "defaults") and not str(key).startswith("x-"):
            unknown = _plain(key)
            errors.add(
                _key_at(doc, key, (0, 0)), f"unknown key {unknown!r} (expected 'functions' or 'defaults')"
            )
    _key_problems([doc.get("defaults"), doc.get("functions")], errors)
    defaults: dict[str, Any] = {}
    if doc.get("defaults") is not None:
        at = _key_at(doc, "defaults", (0, 0))
        plain = _plain(doc["defaults"])
        plain = _without_empty(plain) if isinstance(plain, dict) else plain
        if _validate(DefaultsSpec, doc["defaults"], at, errors, data=plain, prefix="defaults"):
            defaults = plain
    items = doc.get("functions")
    if "functions" not in doc:
        errors.add((0, 0), "no 'functions:' list ('functions: []' for none)")
        items = CommentedSeq()
    elif items is None:  # `functions:` with nothing under it: written, so meant
        items = CommentedSeq()
    elif not isinstance(items, CommentedSeq):
        errors.add(_key_at(doc, "functions", (0, 0)), "functions: should be a list of functions")
        items = CommentedSeq()
    specs: list[tuple[FunctionSpec, tuple[int, int]]] = []
    secrets: list[tuple[str, tuple[int, int]]] = []
    seen: dict[tuple[str, str], tuple[int, int]] = {}  # (key, value) -> (item index, line)
    checks: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for i, item in enumerate(items):
        at = _item_at(items, i, _key_at(doc, "functions", (0, 0)))
        if not isinstance(item, CommentedMap):
            errors.add(at, "each function should be a mapping with name, uuid and handler")
            continue
        _check_listed_once(item.get("events"), errors, _key_at(item, "events", at))
        _check_listed_once(item.get("secrets"), errors, _key_at(item, "secrets", at), "secret")
        for key in ("name", "uuid"):
            value = item.get(key)
            if isinstance(value, str):
                pos = _key_at(item, key, at)
                first, line = seen.setdefault((key, value.lower()), (i, pos[0]))
                if first != i:
                    errors.add(pos, f"duplicate {key} {value!r} (first at line {line + 1})")
        data = _merge(defaults, _plain(item))
        for internal in ("root", "code", "revision"):  # set by the loader and the node, never by the user
            if internal in data:
                errors.add(_key_at(item, internal, at), f"unknown key {internal!r}")
        value_key = _value_key(data)
        spec = known.get(value_key) if value_key is not None else None
        if spec is None:
            spec = _validate(FunctionSpec, item, at, errors, data={**data, "root": root})
        if spec is not None and value_key is not None:
            keep[value_key] = spec
        secrets.extend(_listed_secrets(item))
        if spec is not None:
            specs.append((spec, _key_at(item, "handler", at)))
        handler = item.get("handler")
        if isinstance(handler, str) and HANDLER_FORM.match(handler):
            env = data.get("env")
            env = env if isinstance(env, dict) and all(isinstance(v, str) for v in env.values()) else {}
            env = {k: v for k, v in env.items() if isinstance(k, str) and env_usable(k, v)}  # bad: at `env`
            key = (handler, json.dumps(env, sort_keys=True))
            checks.setdefault(key, []).append(_key_at(item, "handler", at))
    return _Read(
        errors=frozenset(errors.found),
        specs=tuple(specs),
        secrets=tuple(secrets),
        checks=tuple((k, tuple(v)) for k, v in checks.items()),
    )


def load_manifest(
    path: Path,
    check_handlers: bool = True,
    secrets_dir: Path | None = None,
    check_code: Callable[[FunctionSpec], str | None] | None = None,
    cache: ManifestCache | None = None,
) -> Manifest:
    """Load and check `path`; raise ManifestError listing every problem as `path:LINE:COL: message`.

    `check_handlers` (default True) also imports every handler in one subprocess run in the manifest's
    folder, so a broken module can neither crash nor pollute this process. With `secrets_dir` (absolute),
    every secret a function lists must be readable there (`control.secrets`), else it is an error at its item.
    `check_code` (a `working_copy.CodeZips` look) says why a function's code cannot be deployed: an error at
    its `handler`. `cache` (the watcher's, kept between loads of this manifest) makes a load check again
    only what changed since the last (`ManifestCache`); the result is the same.
    """
    root = path.resolve().parent
    read = cache.read(path, root) if cache is not None else ManifestCache().read(path, root)
    if read.fatal is not None:
        raise ManifestError(read.fatal)
    errors = ErrorCollector(str(path))
    errors.found |= read.errors
    if secrets_dir is not None:
        store = SecretStore(secrets_dir)
        refused = {(line, col) for line, col, _ in errors.found}
        for name, pos in read.secrets:
            if pos in refused:  # a name no function may list: whether its file is there says nothing more
                continue
            try:
                store.read(name)
            except SecretError as exc:
                errors.add(pos, str(exc))
    if check_code is not None:
        for spec, pos in read.specs:
            problem = check_code(spec)
            if problem is not None:
                errors.add(pos, problem)
    if check_handlers and read.checks:
        # A revision carries the handler's top-level package from the project folder (DESIGN.md section
        # 12): a handler found elsewhere (`os:system`, an installed package) would be published as empty
        # code and run whatever each node happens to have under that name.
        outside = {i for i, ((h, _), _) in enumerate(read.checks) if top_level_of(root, h) is None}
        for index in sorted(outside):
            (handler, _), places = read.checks[index]
            top = top_level_name(handler)
            for pos in places:
                errors.add(
                    pos,
                    f"handler {handler!r} is not in the project: no {top}/ or {top}.py in {root} (a revision "
                    "carries the handler's top-level package from the manifest's folder)",
                )
        checks = [c for i, c in enumerate(read.checks) if i not in outside]
        keys = [key for key, _ in checks]
        imports = cache.imports if cache is not None else None
        zipped = getattr(check_code, "files_in", None)  # a `CodeZips` look: import what it zipped
        found = import_errors(root, [(h, json.loads(env)) for h, env in keys], secrets_dir, imports, zipped)
        for index, problem in found.items():
            handler, _ = keys[index]
            for pos in checks[index][1]:
                errors.add(pos, f"handler {handler!r} {problem}")
    if errors.found:
        raise ManifestError(errors.lines())
    return Manifest(path=path, functions=tuple(spec for spec, _ in read.specs))
