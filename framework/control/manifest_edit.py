"""Round-trip edits of `functions.yaml`: `set_state` and `add_function` change only the lines they must.

Comments, layout and line ends survive; each edit is checked to parse to what was meant, then written
atomically (a node watches the file). Edits made at once (`faas new a & faas new b`, two deploys) take
turns: each holds an `flock` on the manifest's folder from its read to its write, so none is lost to
another's replace. The lock is on the folder, not the file: every edit replaces the file, and a lock on
the one read would be on a file no longer there.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError

from framework.control.manifest import ErrorCollector, check_regular, parse_yaml, round_trip_yaml
from framework.control.spec import STATES, State
from framework.errors import ManifestError

_SCALAR = re.compile(r"\"[^\"\n]*\"|'[^'\n]*'|[^\s#,\]}]+")


def _find(doc: Any, name: str) -> CommentedMap:
    items = doc.get("functions") if isinstance(doc, CommentedMap) else None
    for item in items if isinstance(items, CommentedSeq) else ():
        if isinstance(item, CommentedMap) and item.get("name") == name:
            return item
    raise LookupError(f"no function named {name!r} in the manifest")


@contextlib.contextmanager
def _turn(path: Path) -> Iterator[None]:
    """Hold the manifest's edit lock (see the module's docstring); a folder that cannot be opened (none
    yet, no permission) is not locked: the edit then fails on its own terms."""
    try:
        fd = os.open(Path(os.path.realpath(path)).parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):  # NFS refuses a lock on a folder: unlocked there, as before
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # the lock goes with it


def _read(path: Path) -> tuple[list[str], Any]:
    errors = ErrorCollector(str(path))
    doc = parse_yaml(path, errors)
    if errors.found:
        raise ManifestError(errors.lines())
    with path.open(encoding="utf-8", newline="") as f:  # keep \r\n line ends as they are
        return f.read().splitlines(keepends=True), doc


def _write(path: Path, lines: list[str], check: Any) -> None:
    """`_checked`, then `_replace`."""
    _replace(path, _checked(path, lines, check))


def _checked(path: Path, lines: list[str], check: Any) -> str:
    """The edited text, once checked to parse to what we meant (`check` of the new document is true);
    RuntimeError when it does not, OSError when `path` is no file to replace (`check_regular`)."""
    text = "".join(lines)
    try:
        meant = check(round_trip_yaml().load(text))
    except (YAMLError, LookupError):  # the edit broke what another line refers to (an alias, say)
        meant = False
    if not meant:
        raise RuntimeError(f"could not edit {path} safely; edit it by hand")
    check_regular(Path(os.path.realpath(path)))
    return text


def _replace(path: Path, text: str) -> None:
    """Replace the file with `text` atomically (a node watches it). A manifest that is a symbolic link
    (`current -> releases/X`, a ConfigMap's) has the file it points at replaced, and stays a link:
    replacing the link itself would cut the project loose from where it lives."""
    path = Path(os.path.realpath(path))
    check_regular(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        # An edited file keeps its mode; a new one gets what the umask allows (mkstemp's 0600 would not).
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _eol(line: str) -> str:
    return "\r\n" if line.endswith("\r\n") else "\n"


def lists_functions(path: Path) -> bool:
    """Whether the manifest at `path` has a `functions:` key to add to: False for a missing, empty or
    comment-only file and one with only `defaults:` (what `faas new` starts or completes), True otherwise,
    a file that does not parse included (loading it reports why)."""
    if not path.exists():
        return False
    errors = ErrorCollector(str(path))
    doc = parse_yaml(path, errors)
    if errors.found:
        return True
    return doc is not None and not (isinstance(doc, CommentedMap) and "functions" not in doc)


def set_state(path: Path, name: str, state: State) -> None:
    """Set function `name`'s `state:`, changing only that line (or inserting one after `handler:`).

    Raises LookupError for an unknown name and ManifestError when the file is not valid YAML.
    """
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}")
    with _turn(path):
        _set_state(path, name, state)


def _set_state(path: Path, name: str, state: State) -> None:
    lines, doc = _read(path)
    item = _find(doc, name)
    own = item.lc.data  # key -> [key line, key col, value line, value col]; merged (`<<:`) keys are absent
    if "state" in own:  # an anchor's value is another entry's too, an alias's is another's own
        key_line, key_col = own["state"][:2]
        if lines[key_line][key_col:].partition(":")[2].lstrip().startswith(("&", "*")):
            raise RuntimeError(
                f"{path}:{key_line + 1}: the state of {name} is a YAML anchor or alias; set it by hand"
            )
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


def add_function(path: Path, entry: dict[str, Any], before_write: Callable[[], None] | None = None) -> None:
    """Append `entry` (a function's keys, in order) to `functions:`; the other lines stay byte-identical.

    Lists in `entry` are written in flow style (`events: [a.b]`). Creates `functions:` when missing.
    `before_write` (default: none) runs once the edit is made and checked, just before the file is
    replaced: `faas new` writes the function's module there, so a manifest that cannot take the entry (a
    flow-style list, not a mapping) leaves no module behind. What it raises leaves the manifest as it was.

    Raises ManifestError when the file cannot be read or added to, RuntimeError when the edit would not
    parse to what was meant.
    """
    with _turn(path):
        text = _add_function(path, entry)
        if before_write is not None:
            before_write()
        _replace(path, text)


def _add_function(path: Path, entry: dict[str, Any]) -> str:
    """The manifest's text with `entry` added (`_checked`)."""
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
    return _checked(path, lines, lambda new: _find(new, str(entry["name"])) is not None)
