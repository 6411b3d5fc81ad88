"""`framework/sources/http/key_file.py`: API keys following the file `FAAS_API_KEYS` (the real node's
rotation is tested in `tests/test_secrets.py`)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from framework.settings import Settings
from framework.sources.http.auth import ApiKeys
from framework.sources.http.key_file import KeyFile


def settings(root: Path, **values: str) -> Settings:
    (root / "functions.yaml").write_text("functions: []\n")
    return Settings(_env_file=None, manifest=root / "functions.yaml", **values)  # type: ignore[arg-type]


def test_a_key_file_appearing_on_an_open_node_leaves_it_open_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A node started without keys. 2. The file appears. 3. Checked twice more. Result: the API stays
    open (no key in force), `problem` says a restart is needed, logged once however often it is checked."""
    s = settings(tmp_path)
    keys = ApiKeys(s.keys)
    file = KeyFile(s, keys)
    file.check()
    assert file.problem is None and not keys
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "FAAS_API_KEYS").write_text("a-new-key-1\n")
    with caplog.at_level(logging.ERROR, logger="faas.http"):
        for _ in range(3):
            file.check()
    assert not keys and file.problem is not None and "until the node restarts" in file.problem
    assert [r.getMessage() for r in caplog.records].count(file.problem) == 1


def test_keys_from_the_environment_never_follow_the_file(tmp_path: Path) -> None:
    """Keys given in the environment, and a file of other keys in the secrets folder: the file is not
    read at start nor followed after, and nothing is wrong."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "FAAS_API_KEYS").write_text("from-the-file\n")
    s = settings(tmp_path, api_keys="from-the-environment")
    keys = ApiKeys(s.keys)
    file = KeyFile(s, keys)
    file.check()
    assert keys.matches(b"from-the-environment") and not keys.matches(b"from-the-file")
    assert file.problem is None
