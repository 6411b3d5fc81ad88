"""control.secrets: reading secret files, their bad inputs, and missing secrets as manifest errors."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from framework.control.manifest import load_manifest
from framework.control.secrets import MAX_BYTES, SecretError, SecretStore, folder, readiness_reasons
from framework.control.spec import FunctionSpec
from framework.errors import ManifestError
from tests.support import run_cli, write_project

UUID = "5ec5ec00-0000-4000-8000-00000000000"
MODULES = {"mod": "async def handle(payload, ctx):\n    return payload\n"}
BLOCK = f"""\
functions:
  - name: reader
    uuid: {UUID}1
    handler: functions.mod:handle
    state: productive
    secrets:
      - api_token
      - not_there
  - name: flow
    uuid: {UUID}2
    handler: functions.mod:handle
    secrets: [api_token, also_missing]
"""


@pytest.fixture
def store(tmp_path: Path) -> SecretStore:
    (tmp_path / "sec").mkdir()
    return SecretStore(tmp_path / "sec")


def test_value_is_the_file_without_its_trailing_newline(store: SecretStore) -> None:
    """One trailing newline (or CRLF) goes; a second one is part of the value, as are other spaces."""
    (store.path / "a").write_text("value-1\n")
    (store.path / "b.key").write_text("line 1\nline 2\r\n")
    (store.path / "c_d-E").write_text("no newline")
    (store.path / "two").write_text("value-2\n\n")
    (store.path / "spaced").write_text(" value 3 \n")
    assert store.values(["a", "b.key", "c_d-E", "two", "spaced"]) == {
        "a": "value-1",
        "b.key": "line 1\nline 2",
        "c_d-E": "no newline",
        "two": "value-2\n",
        "spaced": " value 3 ",
    }


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda p: None, r"secret 'name' is missing: no file name in .*sec"),
        (lambda p: (p / "name").mkdir(), r"is a folder, not a file"),
        (lambda p: (p / "name").write_bytes(b"x" * (MAX_BYTES + 1)), r"is over 64 KiB"),
        (lambda p: (p / "name").write_text("abc\n"), r"holds 3 character\(s\): values under 4 characters"),
        (lambda p: (p / "name").write_text("\n"), r"holds 0 character"),
        (lambda p: (p / "name").write_text("    \n"), r"holds 0 character\(s\) besides the whitespace"),
        (lambda p: (p / "name").write_text(" \tab \n"), r"holds 2 character\(s\) besides the whitespace"),
        (lambda p: (p / "name").write_bytes(b"\xff\xfe\xfdvalue"), r"is not UTF-8 text"),
        (lambda p: (p / "name").symlink_to(p / "gone"), r"secret 'name' is missing"),
        # Opening a FIFO for reading waits for a writer: the node's loop would hang on it.
        (lambda p: os.mkfifo(p / "name"), r"is not a regular file \(a FIFO, socket or device\)"),
        (lambda p: (p / "name").symlink_to("/dev/zero"), r"is not a regular file"),
    ],
    ids=[
        "missing",
        "folder",
        "too-big",
        "too-short",
        "empty",
        "blank",
        "short-in-blanks",
        "not-utf8",
        "dangling-link",
        "fifo",
        "device",
    ],
)
@pytest.mark.timeout(20)
def test_unusable_secret_files(store: SecretStore, setup: object, message: str) -> None:
    setup(store.path)  # type: ignore[operator]
    with pytest.raises(SecretError, match=message) as info:
        store.read("name")
    assert "x" * 10 not in str(info.value) and "\\xff" not in str(info.value)  # never the value


def test_a_link_to_a_file_is_read(store: SecretStore) -> None:
    """Kubernetes mounts each secret as a link into a hidden folder of the current version."""
    (store.path / "..data").mkdir()
    (store.path / "..data" / "token").write_text("linked-value\n")
    (store.path / "token").symlink_to(store.path / "..data" / "token")
    assert store.read("token") == "linked-value"


def test_a_file_of_exactly_64_kib_is_accepted(store: SecretStore) -> None:
    (store.path / "big").write_bytes(b"y" * MAX_BYTES)
    assert len(store.read("big")) == MAX_BYTES


def test_unusable_folders(tmp_path: Path) -> None:
    with pytest.raises(SecretError, match=r"secrets folder .*nowhere \(FAAS_SECRETS_DIR\) does not exist"):
        SecretStore(tmp_path / "nowhere").read("name")
    (tmp_path / "file").write_text("x")
    with pytest.raises(SecretError, match=r"secrets folder .*file \(FAAS_SECRETS_DIR\) is not a folder"):
        SecretStore(tmp_path / "file").read("name")


def test_an_unreadable_folder(store: SecretStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Permissions cannot be taken from root (the tests may run as root): the listing fails instead."""

    def denied(self: Path) -> object:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(
        SecretError, match=r"secrets folder .*sec \(FAAS_SECRETS_DIR\) is not readable: Permission"
    ):
        store.read("name")


@pytest.mark.parametrize("name", ["..", ".", "a/b", "", "x" * 129, "sp ace"])
def test_bad_names_are_refused(store: SecretStore, name: str) -> None:
    with pytest.raises(SecretError, match="secret name"):
        store.read(name)


def test_folder_is_relative_to_the_manifest(tmp_path: Path) -> None:
    assert folder(tmp_path / "proj" / "functions.yaml", Path("secrets")) == (tmp_path / "proj" / "secrets")
    assert folder(tmp_path / "functions.yaml", Path("/run/secrets")) == Path("/run/secrets")


def test_missing_secrets_are_errors_at_their_items(tmp_path: Path) -> None:
    """1. `reader` lists api_token (present) and not_there (block list); `flow` lists api_token and
    also_missing (flow list). Result: one error at each missing item's LINE:COL, none for api_token."""
    root = write_project(tmp_path / "proj", BLOCK, MODULES)
    (tmp_path / "sec").mkdir()
    (tmp_path / "sec" / "api_token").write_text("value\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(root / "functions.yaml", secrets_dir=tmp_path / "sec")
    errors = info.value.errors
    assert len(errors) == 2, errors
    assert re.match(r".*functions\.yaml:8:9: secret 'not_there' is missing", errors[0])
    assert re.match(r".*functions\.yaml:12:26: secret 'also_missing' is missing", errors[1])
    # Without a secrets folder to check against (e.g. `faas ls`), the same file loads.
    assert len(load_manifest(root / "functions.yaml", check_handlers=False).functions) == 2


def test_a_missing_folder_is_an_error_at_every_item(tmp_path: Path) -> None:
    root = write_project(tmp_path / "proj", BLOCK, MODULES)
    with pytest.raises(ManifestError) as info:
        load_manifest(root / "functions.yaml", check_handlers=False, secrets_dir=tmp_path / "none")
    assert len(info.value.errors) == 4
    assert all("does not exist" in e for e in info.value.errors)


def test_bad_secret_names_in_the_manifest(tmp_path: Path) -> None:
    manifest = f"""\
functions:
  - name: reader
    uuid: {UUID}1
    handler: functions.mod:handle
    secrets: [ok_name, "bad/name", ".."]
"""
    root = write_project(tmp_path / "proj", manifest, MODULES)
    with pytest.raises(ManifestError) as info:
        load_manifest(root / "functions.yaml", check_handlers=False)
    text = "\n".join(info.value.errors)
    assert re.search(r"functions\.yaml:5:\d+: secrets\[1\]: secret name 'bad/name' must match", text), text
    assert re.search(r"functions\.yaml:5:\d+: secrets\[2\]: secret name '\.\.' is not a file name", text), (
        text
    )


def test_a_refused_name_is_not_also_looked_for(tmp_path: Path) -> None:
    """1. A function lists FAAS_API_KEYS (the node's own secret) and a missing name; no secrets folder.
    Result: FAAS_API_KEYS is refused once, at its item; only the other item says the folder is missing
    (the same position used to get both problems)."""
    manifest = f"""\
functions:
  - name: reader
    uuid: {UUID}1
    handler: functions.mod:handle
    secrets: [FAAS_API_KEYS, other]
"""
    root = write_project(tmp_path / "proj", manifest, MODULES)
    with pytest.raises(ManifestError) as info:
        load_manifest(root / "functions.yaml", check_handlers=False, secrets_dir=tmp_path / "none")
    errors = info.value.errors
    assert len(errors) == 2, errors
    assert "secrets[0]: 'FAAS_API_KEYS' is the node's own secret setting" in errors[0]
    assert "secret 'other': the secrets folder" in errors[1] and "does not exist" in errors[1]


def test_readiness_reasons_name_productive_functions_only(store: SecretStore) -> None:
    (store.path / "here").write_text("present\n")
    specs = [
        FunctionSpec(name="a", uuid=f"{UUID}1", handler="m:h", state="productive", secrets=("here", "gone")),
        FunctionSpec(name="b", uuid=f"{UUID}2", handler="m:h", state="draft", secrets=("gone",)),
    ]
    assert readiness_reasons(specs, store) == [
        f"function a: secret 'gone' is missing: no file gone in {store.path}"
    ]


def test_validate_and_deploy_check_secrets(tmp_path: Path) -> None:
    """1. `faas validate` with a secrets folder lacking not_there and also_missing. 2. `faas deploy flow`
    with that folder, then 3. with FAAS_SECRETS_DIR pointing nowhere (a machine without the secrets).
    Result: 1 and 2 exit 1 naming each missing item at its line, the manifest unchanged; 3 deploys."""
    root = write_project(tmp_path / "proj", BLOCK, MODULES)
    (root / "secrets").mkdir()
    (root / "secrets" / "api_token").write_text("value\n")
    r = run_cli(root, "validate")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "functions.yaml:8:9: secret 'not_there'" in r.stderr
    assert "functions.yaml:12:26: secret 'also_missing'" in r.stderr
    r = run_cli(root, "deploy", "flow")
    assert r.returncode == 1 and "also_missing" in r.stderr
    assert (root / "functions.yaml").read_text() == BLOCK
    r = run_cli(root, "deploy", "flow", env={"FAAS_SECRETS_DIR": str(tmp_path / "not-on-this-machine")})
    assert r.returncode == 0, r.stderr
    assert "productive" in (root / "functions.yaml").read_text().split("name: flow")[1]
    (root / "secrets" / "not_there").write_text("there now\n")
    (root / "secrets" / "also_missing").write_text("there too\n")
    r = run_cli(root, "validate")
    assert r.returncode == 0 and "ok: 2 functions" in r.stdout, r.stderr
