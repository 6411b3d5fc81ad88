"""Looks at the working copy's code (`CodeZips`): one zip per package per look, for check and candidates."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from framework.control import working_copy
from framework.control.manifest import load_manifest
from framework.control.revisions import code_zip, sha256
from framework.control.working_copy import CodeZips, candidates
from framework.errors import ManifestError
from tests.support import write_project

UUIDS = [f"2f7c1e3a-6a53-4a5b-9a55-3b2f0c1d9e1{i}" for i in range(3)]
MANIFEST = "functions:\n" + "".join(
    f"  - name: f{i}\n    uuid: {u}\n    handler: functions.m:handle\n    state: productive\n"
    for i, u in enumerate(UUIDS)
)
MODULE = "async def handle(payload, ctx):\n    return 1\n"


def test_a_look_zips_and_hashes_each_package_once_for_the_check_and_the_candidates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. Three functions in one package; the manifest is loaded with a code check, then candidates are
    made from the same look, twice. 2. A fresh look does the same.
    Result: one zip and one sha256 per look (not one per function, not one for the check and another for
    the candidates); every candidate carries the bytes the check measured and their sha256."""
    root = write_project(tmp_path / "p", MANIFEST, {"m": MODULE})
    made: list[bytes] = []
    hashed: list[bytes] = []

    def zipping(*args: object) -> bytes:
        data = code_zip(*args)  # type: ignore[arg-type]
        made.append(data)
        return data

    def hashing(data: bytes) -> str:
        hashed.append(data)
        return sha256(data)

    monkeypatch.setattr(working_copy, "code_zip", zipping)
    monkeypatch.setattr(working_copy, "sha256", hashing)
    code = CodeZips(1 << 20)
    manifest = load_manifest(root / "functions.yaml", check_handlers=False, check_code=code)
    found = candidates(manifest, code)
    assert candidates(manifest, code).keys() == found.keys()
    assert len(made) == 1 and hashed == made
    assert {c.code for c in found.values()} == {made[0]}
    assert {c.revision.code_sha256 for c in found.values() if c.revision} == {sha256(made[0])}
    assert candidates(manifest, code.fresh()) and len(made) == 2 and len(hashed) == 2


def test_candidates_publish_what_was_checked_even_when_files_change_between(tmp_path: Path) -> None:
    """1. The manifest is checked under a 4,000-byte limit. 2. A data file over the limit lands in the
    package. 3. Candidates are made from the checked look, then from a fresh one.
    Result: the checked look's candidates carry the code that passed (no error); the fresh look sees the
    new file and gives every function the limit's error instead of a candidate."""
    root = write_project(tmp_path / "p", MANIFEST, {"m": MODULE})
    code = CodeZips(4000)
    manifest = load_manifest(root / "functions.yaml", check_handlers=False, check_code=code)
    (root / "functions" / "blob.bin").write_bytes(os.urandom(6000))  # after the check, before candidates
    checked = candidates(manifest, code)
    assert all(c.error is None and c.code is not None for c in checked.values())
    assert all(c.code is not None and b"blob.bin" not in c.code for c in checked.values())  # the checked zip
    assert {c.revision.code_sha256 for c in checked.values() if c.revision} == {
        sha256(c.code) for c in checked.values() if c.code
    }
    later = candidates(manifest, code.fresh())
    assert all(c.code is None and c.error and "FAAS_MAX_CODE_BYTES" in c.error for c in later.values())


@pytest.mark.parametrize("zipped", ["broken", "fixed"])
def test_the_import_check_imports_what_was_zipped_not_what_is_on_disk_now(
    tmp_path: Path, zipped: str
) -> None:
    """1. A look zips the package while its module has a syntax error, then the file is fixed on disk
    (an editor's save during a deploy); the manifest is checked, handlers imported, with that look.
    2. The other way round: zipped fixed, broken on disk. Result: 1 is refused (the zip, which would be
    published, does not import), 2 passes (it imports). (The check read the files again after the zip: 1
    passed, and `faas deploy` published code that did not import; 2 was refused.)"""
    broken = "async def handle(payload, ctx)\n    return 1\n"
    root = write_project(tmp_path / "p", MANIFEST, {"m": broken if zipped == "broken" else MODULE})
    code = CodeZips(1 << 20)
    manifest = load_manifest(root / "functions.yaml", check_handlers=False, check_code=code)
    assert all(code(spec) is None for spec in manifest.functions)  # zipped now, in this look
    (root / "functions" / "m.py").write_text(MODULE if zipped == "broken" else broken)
    if zipped == "broken":
        with pytest.raises(ManifestError, match="SyntaxError"):
            load_manifest(root / "functions.yaml", check_code=code)
    else:
        assert load_manifest(root / "functions.yaml", check_code=code).functions == manifest.functions


def test_an_undeploy_of_a_renamed_function_holds_one_name() -> None:
    """The working copy renamed echo to echo2 and undeploys it: the undeploy revision's `function` and its
    spec's name are both echo2 (the spec said echo, from the newest revision, and lookups by name went
    astray), its code and the rest of the spec the newest revision's."""
    from framework.control.revisions import Revision
    from framework.control.spec import FunctionSpec

    newest = Revision(
        uuid=UUIDS[0],
        function="echo",
        revision=4,
        action="deploy",
        spec={"name": "echo", "uuid": UUIDS[0], "handler": "functions.m:handle", "state": "productive"},
        code_sha256="ab" * 32,
        deployed_at="2026-12-06T00:00:00.000Z",
        deployed_by="me",
    )
    spec = FunctionSpec(name="echo2", uuid=UUIDS[0], handler="functions.m:other", state="draft")
    undeploy = working_copy.undeploy_of(spec, newest, "gone")
    assert (undeploy.function, undeploy.spec["name"], undeploy.action) == ("echo2", "echo2", "undeploy")
    assert undeploy.spec["handler"] == "functions.m:handle" and undeploy.spec["state"] == "undeployed"
    assert undeploy.code_sha256 == "ab" * 32
