"""Revisions, the log's state, the code cache and the in-memory log, without a broker (DESIGN.md 12)."""

from __future__ import annotations

import io
import json
import logging
import zipfile
from pathlib import Path

import pytest

from framework.control import revisions
from framework.control.code_cache import CodeCache
from framework.control.cron import parse
from framework.control.deployment_log import MemoryLog, PublishFailed
from framework.control.log_state import LogState
from framework.control.manifest import load_manifest
from framework.control.revisions import (
    MAX_REVISION,
    CodeRefused,
    Revision,
    code_key,
    code_zip,
    encode,
    revision_key,
    sha256,
    spec_from,
    spec_of,
)
from framework.control.working_copy import CodeZips, candidates, is_modified
from framework.errors import ManifestError
from tests.support import write_project

U = "2f7c1e3a-6a53-4a5b-9a55-3b2f0c1d9e10"
MANIFEST = f"""
defaults:
  timeout: 7
  env: {{TEAM: core}}
functions:
  - name: alpha
    uuid: {U}
    handler: functions.m:handle
    state: productive
    env: {{GREETING: Hello}}
    secrets: [stripe_key]
"""
MODULE = "async def handle(payload, ctx):\n    return 1\n"


def project(tmp_path: Path, module: str = MODULE) -> Path:
    return write_project(tmp_path / "p", MANIFEST, {"m": module})


def candidate(root: Path, limit: int = 1 << 20) -> Revision:
    rev = candidates(load_manifest(root / "functions.yaml", check_handlers=False), CodeZips(limit))[
        U
    ].revision
    assert rev is not None
    return rev


def test_spec_has_defaults_and_secret_names_only(tmp_path: Path) -> None:
    """1. A manifest with defaults and a secret name. Result: the revision's spec holds the merged
    timeout and env, the secret's name, and none of the node-local fields (root, code, revision)."""
    (tmp_path / "p").mkdir()
    spec = load_manifest(project(tmp_path) / "functions.yaml", check_handlers=False).functions[0]
    data = spec_of(spec)
    assert data["timeout"] == 7 and data["env"] == {"TEAM": "core", "GREETING": "Hello"}
    assert data["secrets"] == ["stripe_key"] and data["state"] == "productive"
    assert not {"root", "code", "revision"} & data.keys()


def test_code_zip_is_deterministic_and_content_addressed(tmp_path: Path) -> None:
    """1. Zip a package twice, with a `__pycache__` and a dotfile added between. 2. Change the module.
    Result: the same bytes (caches and dotfiles left out), holding `functions/m.py`; a different sha
    once the content changed; the same again after changing it back."""
    root = project(tmp_path)
    first = candidate(root)
    (root / "functions" / "__pycache__").mkdir()
    (root / "functions" / "__pycache__" / "m.cpython-312.pyc").write_bytes(b"\0")
    (root / "functions" / ".m.py.swp").write_text("x")
    assert candidate(root).code_sha256 == first.code_sha256
    spec = load_manifest(root / "functions.yaml", check_handlers=False).functions[0]
    with zipfile.ZipFile(io.BytesIO(code_zip(spec, 1 << 20))) as z:
        assert sorted(z.namelist()) == ["functions/__init__.py", "functions/m.py"]
    (root / "functions" / "m.py").write_text(MODULE.replace("1", "2"))
    assert candidate(root).code_sha256 != first.code_sha256
    (root / "functions" / "m.py").write_text(MODULE)
    assert candidate(root).code_sha256 == first.code_sha256


def test_code_over_the_limit_is_an_error_naming_it(tmp_path: Path) -> None:
    """1. A module of random bytes bigger than the limit. Result: CodeRefused naming FAAS_MAX_CODE_BYTES
    and the size; the working copy's candidate carries that error instead of a revision."""
    import os

    root = project(tmp_path, MODULE + f"BLOB = {os.urandom(4000).hex()!r}\n")
    spec = load_manifest(root / "functions.yaml", check_handlers=False).functions[0]
    with pytest.raises(CodeRefused, match=r"over FAAS_MAX_CODE_BYTES \(1000 bytes\)"):
        code_zip(spec, 1000)
    found = candidates(load_manifest(root / "functions.yaml", check_handlers=False), CodeZips(1000))[U]
    assert found.revision is None and found.error is not None and "FAAS_MAX_CODE_BYTES" in found.error


def test_a_file_named_in_bytes_that_are_not_utf8_is_an_error_naming_it(tmp_path: Path) -> None:
    """1. A file `bad\\xffname.txt` in the package (a name no zip holds). Result: CodeRefused naming it; the
    manifest loaded with a code check is refused at the handler, one line, no traceback (`faas validate`,
    `faas deploy` and a starting node raised UnicodeEncodeError)."""
    import os

    root = project(tmp_path)
    os.close(os.open(os.path.join(os.fsencode(root / "functions"), b"bad\xffname.txt"), os.O_CREAT, 0o644))
    spec = load_manifest(root / "functions.yaml", check_handlers=False).functions[0]
    with pytest.raises(CodeRefused, match=r"not UTF-8: 'functions/bad\\udcffname.txt'; rename or remove it"):
        code_zip(spec, 1 << 20)
    with pytest.raises(ManifestError, match=r"functions.yaml:\d+:\d+: .*is not UTF-8"):
        load_manifest(root / "functions.yaml", check_handlers=False, check_code=CodeZips(1 << 20))


def test_code_that_unpacks_over_what_a_node_takes_is_refused_before_it_zips(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. Lower the unpacked limit to 10,000 bytes. 2. A module with a comment of 20,000 `x` (it zips to a
    few dozen bytes, far under FAAS_MAX_CODE_BYTES). Result: CodeRefused naming the size and the limit,
    the error the candidate carries: nodes would refuse to unpack it (`code_cache`), so no revision is
    made of it."""
    monkeypatch.setattr(revisions, "MAX_UNPACKED_BYTES", 10_000)
    root = project(tmp_path, MODULE + "# " + "x" * 20_000 + "\n")
    manifest = load_manifest(root / "functions.yaml", check_handlers=False)
    with pytest.raises(CodeRefused, match=r"its files take \d+ bytes, over the 10000"):
        code_zip(manifest.functions[0], 1 << 20)
    found = candidates(manifest, CodeZips(1 << 20))[U]
    assert found.revision is None and found.error is not None and "over the 10000" in found.error


def test_equality_is_action_spec_and_code(tmp_path: Path) -> None:
    """Result: two candidates built at different times by different authors are the same revision;
    another spec or action is not."""
    root = project(tmp_path)
    a = candidate(root)
    b = Revision(**{**a.to_json(), "deployed_at": "later", "deployed_by": "x@y", "message": "m"})
    assert a.same_as(b)
    assert not a.same_as(Revision(**{**a.to_json(), "spec": {**a.spec, "timeout": 3}}))
    assert not a.same_as(Revision(**{**a.to_json(), "action": "undeploy"}))
    assert not a.same_as(None)


def record(rev: Revision) -> tuple[str, bytes]:
    return rev.key, encode(rev)


def test_state_skips_corrupt_and_foreign_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """1. Apply a code record and a good revision. 2. Apply: a value that is not JSON, a message holding a
    lone surrogate escape, an unknown action, a deploy whose code record is missing, a value for another
    key, specs that are no valid function, a deploy whose `function` is not its spec's name, a foreign key,
    a code record whose sha256 does not match. Result: each is skipped with a log line naming why; the good
    revision stays the newest."""
    root = project(tmp_path)
    rev = candidate(root).numbered(1)
    spec = load_manifest(root / "functions.yaml", check_handlers=False).functions[0]
    data = code_zip(spec, 1 << 20)
    state = LogState()
    slow = {**rev.spec, "timeout": 99}
    assert state.apply(code_key(sha256(data)), data) is False
    assert state.apply(*record(rev)) is True
    bad = [
        (revision_key(U, 2), b"{not json"),
        # A lone surrogate: JSON escapes that name no character (no reader could encode the message again).
        (revision_key(U, 2), json.dumps({**rev.to_json(), "revision": 2, "message": "\udcff"}).encode()),
        (revision_key(U, 2), json.dumps({**rev.to_json(), "revision": 2, "action": "explode"}).encode()),
        (revision_key(U, 2), json.dumps({**rev.to_json(), "revision": 2, "code_sha256": "ab" * 32}).encode()),
        (revision_key(U, 3), json.dumps({**rev.to_json(), "revision": 2}).encode()),
        (revision_key(U, 2), json.dumps({**rev.to_json(), "revision": 2, "spec": {"name": "x"}}).encode()),
        (revision_key(U, 2), json.dumps({**rev.to_json(), "revision": 2, "spec": slow}).encode()),
        (revision_key(U, 2), json.dumps({**rev.to_json(), "revision": 2, "function": "other"}).encode()),
        ("something-else", b"{}"),
        (code_key("cd" * 32), data),
        (revision_key(U, 2**64 - 1), json.dumps({**rev.to_json(), "revision": 2**64 - 1}).encode()),
    ]
    with caplog.at_level(logging.WARNING, "faas.deployments"):
        for key, value in bad:
            assert state.apply(key, value, "at offset 9") is False
    reasons = " | ".join(r.getMessage() for r in caplog.records)
    whys = (
        "not JSON",
        "invalid high surrogate",
        "unknown action",
        "is missing",
        "not of its key",
        "not a key",
        "sha256 is",
        "timeout",
        "the highest a revision may have",
        "the record 'other'",
    )
    for why in whys:
        assert why in reasons, reasons
    assert state.skipped == len(bad)
    assert state.newest(U) == rev and [r.revision for r in state.kept(U)] == [1]


async def test_memory_log_keeps_five_and_identical_is_one(tmp_path: Path) -> None:
    """1. Publish the same candidate twice. 2. Publish seven different specs. Result: the second
    publication is no revision; after the seven, revisions 4..8 are kept (tombstones for 1..3), the
    newest is live, `next_number` goes on from 9, and on_change was called for each new revision and
    each tombstone, not for the identical publication."""
    root = project(tmp_path)
    cand = candidate(root)
    spec = load_manifest(root / "functions.yaml", check_handlers=False).functions[0]
    code = code_zip(spec, 1 << 20)
    log = MemoryLog(LogState())
    changes: list[int] = []
    log.on_change = lambda: changes.append(1)
    first, new = await log.publish(cand, code)
    assert (first.revision, new) == (1, True)
    again, new = await log.publish(cand, code)
    assert (again.revision, new) == (1, False)
    for timeout in range(1, 8):
        await log.publish(Revision(**{**cand.to_json(), "spec": {**cand.spec, "timeout": timeout}}), code)
    assert [r.revision for r in log.state.kept(U)] == [8, 7, 6, 5, 4]
    assert log.state.live()[U].revision == 8 and log.state.next_number(U) == 9
    assert len(changes) == 8 + 3  # each new revision, then each tombstone (written once it is read back)


async def test_the_highest_revision_number_refuses_a_next_one_by_name(tmp_path: Path) -> None:
    """1. A hand-written revision numbered 2**64 - 1 on the log. 2. Publish a change. 3. A hand-written
    revision numbered MAX_REVISION. 4. Publish a change.
    Result: 1 is skipped (readers refuse it), so 2 is revision 1, not a number past 2**64 that no reader
    would take (the function stayed unpublishable); 4 fails naming the function and why, publishing
    nothing."""
    root = project(tmp_path)
    cand = candidate(root)
    spec = load_manifest(root / "functions.yaml", check_handlers=False).functions[0]
    code = code_zip(spec, 1 << 20)
    log = MemoryLog(LogState())
    huge = cand.numbered(1).to_json() | {"revision": 2**64 - 1}
    assert log.state.apply(code_key(sha256(code)), code) is False
    assert log.state.apply(revision_key(U, 2**64 - 1), json.dumps(huge).encode()) is False
    first, new = await log.publish(cand, code)
    assert (first.revision, new) == (1, True)
    top = first.to_json() | {"revision": MAX_REVISION, "spec": {**cand.spec, "timeout": 7}}
    assert log.state.apply(revision_key(U, MAX_REVISION), json.dumps(top).encode()) is True
    with pytest.raises(PublishFailed, match=f"revision {MAX_REVISION} is the highest a revision may have"):
        await log.publish(Revision(**{**cand.to_json(), "spec": {**cand.spec, "timeout": 8}}), code)
    assert [r.revision for r in log.state.kept(U)] == [MAX_REVISION, 1]


def test_cache_unpacks_by_sha_and_refuses_bad_zips(tmp_path: Path) -> None:
    """1. Store a zip under its sha256. 2. Store bytes under a wrong sha, bytes that are not a zip, a zip
    with a `../` path. Result: the module is unpacked under `<sha>/functions/`, the zip kept beside it;
    each bad one raises ValueError naming the problem and leaves nothing behind."""
    root = project(tmp_path)
    spec = load_manifest(root / "functions.yaml", check_handlers=False).functions[0]
    data = code_zip(spec, 1 << 20)
    cache = CodeCache(tmp_path / "cache")
    path = cache.store(sha256(data), data)
    assert (path / "functions" / "m.py").read_text() == MODULE
    assert cache.has(sha256(data)) and cache.zip_bytes(sha256(data)) == data
    with pytest.raises(ValueError, match="sha256"):
        cache.store("00" * 32, data)
    with pytest.raises(ValueError, match="not a zip"):
        cache.store(sha256(b"junk"), b"junk")
    evil = io.BytesIO()
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../escape.py", "x")
    with pytest.raises(ValueError, match="unsafe path"):
        cache.store(sha256(evil.getvalue()), evil.getvalue())
    assert sorted(p.name for p in cache.base.iterdir()) == sorted(
        [sha256(data), f"{sha256(data)}.zip", "CACHEDIR.TAG"]
    )
    assert not (tmp_path / "escape.py").exists()


def test_modified_compares_with_the_newest_revision(tmp_path: Path) -> None:
    """Result: not modified when equal or never deployed; modified when the code differs or the newest
    revision is an undeploy while the working copy says productive."""
    root = project(tmp_path)
    manifest = load_manifest(root / "functions.yaml", check_handlers=False)
    cand = candidates(manifest, CodeZips(1 << 20))[U]
    assert cand.revision is not None
    live = cand.revision.numbered(3)
    assert not is_modified(cand, live) and not is_modified(cand, None)
    assert is_modified(cand, Revision(**{**live.to_json(), "code_sha256": "ef" * 32}))
    assert is_modified(cand, Revision(**{**live.to_json(), "action": "undeploy"}))


def test_a_revision_is_never_written_with_a_number_json_cannot_hold(tmp_path: Path) -> None:
    """A revision whose spec holds an infinity (the manifest refuses one; this is the writer's own guard).
    Result: `encode` raises ValueError instead of writing `Infinity`, which no reader would take."""
    rev = candidate(project(tmp_path)).numbered(1)
    broken = Revision.from_json({**rev.to_json(), "spec": {**rev.spec, "timeout": float("inf")}})
    with pytest.raises(ValueError, match="JSON compliant"):
        encode(broken)


def test_a_revision_keeps_the_schedule_forms_it_was_published_with(tmp_path: Path) -> None:
    """A revision on the log published before the manifest refused `timezone: localtime` and croniter's
    random field (their rules are the working copy's): it is still read as a function and its schedules
    still parse, so upgrading a node does not take a live function away. The manifest refuses both."""
    (tmp_path / "p").mkdir()
    spec = load_manifest(project(tmp_path) / "functions.yaml", check_handlers=False).functions[0]
    data = spec_of(spec)
    data["schedules"] = [{"cron": "R 9 * * *", "timezone": "localtime", "payload": None}]
    data["keep_warm"] = "R/5 * * * *"
    old = spec_from(data, tmp_path, None, 3)
    assert [s.cron for s in old.schedules] == ["R 9 * * *"] and old.keep_warm == "R/5 * * * *"
    assert parse(old.schedules[0].cron, old.schedules[0].timezone).next() is not None
    manifest = tmp_path / "strict.yaml"
    manifest.write_text(
        MANIFEST + '    schedules: [{cron: "R 9 * * *", timezone: localtime}]\n    keep_warm: "R/5 * * * *"\n'
    )
    with pytest.raises(ManifestError) as refused:
        load_manifest(manifest, check_handlers=False)
    assert len(refused.value.errors) == 3, refused.value.errors
