"""The code cache unpacks code records from the log: every unusable zip is a ValueError, nothing else."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, cast

import pytest

from framework.control import revisions
from framework.control.code_cache import CodeCache
from framework.control.revisions import sha256
from framework.control.snapshot import code_files
from tests.control.zips import BROKEN, package, zip_of
from tests.support import wait_for


@pytest.mark.parametrize("broken", list(BROKEN))
def test_an_unusable_zip_is_a_value_error_and_leaves_nothing(tmp_path: Path, broken: str) -> None:
    """1. Store a zip under its own sha256 that opens but cannot be unpacked (see `zips.BROKEN`).
    2. Store a good zip. Result: 1 raises ValueError naming the record and why (not zlib.error,
    RuntimeError, NotImplementedError or OSError), and leaves neither a folder, a half-unpacked temporary
    folder nor the zip behind; 2 is unpacked as usual afterwards."""
    make, why = BROKEN[broken]
    data = make()
    cache = CodeCache(tmp_path / "cache")
    with pytest.raises(ValueError, match=f"code record {sha256(data)[:12]}: .*{why}"):
        cache.store(sha256(data), data)
    assert not cache.has(sha256(data)) and cache.zip_bytes(sha256(data)) is None
    assert list(cache.base.iterdir()) == []
    good = package("VALUE = 2\n")
    assert (cache.store(sha256(good), good) / "functions" / "m.py").read_text() == "VALUE = 2\n"


def test_a_zip_of_more_files_than_a_revision_holds_is_refused_unopened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. Lower the file limit to 3. 2. Store a zip of 4 files, then one of 3. Result: the first is a
    ValueError naming the count and the limit, nothing written; the second is unpacked."""
    monkeypatch.setattr(revisions, "MAX_FILES", 3)
    four = zip_of({f"functions/m{i}.py": "" for i in range(4)})
    cache = CodeCache(tmp_path / "cache")
    with pytest.raises(ValueError, match="holds 4 files, over the 3"):
        cache.store(sha256(four), four)
    assert list(cache.base.iterdir()) == []
    three = zip_of({f"functions/m{i}.py": "" for i in range(3)})
    assert len(list((cache.store(sha256(three), three) / "functions").iterdir())) == 3


def test_a_kept_zip_cut_short_is_never_handed_out_and_is_written_whole_again(tmp_path: Path) -> None:
    """1. Store a good zip. 2. Cut its kept `<sha>.zip` short (a crash or a full disk mid-write), and
    check what the republish would read. 3. Store the same code again (the log read again).
    Result: 2 reads None, not the cut bytes (publishing those would give every reader a code record it
    refuses); 3 writes the zip whole again, read back as the stored bytes, and leaves no temporary file."""
    good = package("VALUE = 3\n")
    sha = sha256(good)
    cache = CodeCache(tmp_path / "cache")
    cache.store(sha, good)
    assert cache.zip_bytes(sha) == good
    (cache.base / f"{sha}.zip").write_bytes(good[: len(good) // 2])
    assert cache.zip_bytes(sha) is None
    cache.store(sha, good)
    assert cache.zip_bytes(sha) == good
    assert sorted(p.name for p in cache.base.iterdir()) == sorted([sha, f"{sha}.zip", "CACHEDIR.TAG"])


def _age(path: Path, seconds: float) -> None:
    """Set `path`'s times `seconds` into the past."""
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_prune_removes_forgotten_code_untouched_for_the_idle_time(tmp_path: Path) -> None:
    """1. Store three codes; age two of them (folder and zip) two hours, and leave the third fresh. 2. Add
    what an interrupted write leaves (an old `.unpack-*` folder, a fresh `.zip-*` file) and a file of the
    user's own, both old. 3. Prune with one of the old codes kept, an idle time of an hour.
    Result: only the old code not kept is removed, folder and zip; the kept one is marked used (its times
    now); the fresh one stays; the old temporary folder goes, the fresh temporary file and the user's file
    stay; a second prune removes nothing more."""
    cache = CodeCache(tmp_path / "cache")
    old, kept, fresh = (package(f"VALUE = {i}\n") for i in range(3))
    for data in (old, kept, fresh):
        cache.store(sha256(data), data)
    for data in (old, kept):
        _age(cache.path(sha256(data)), 7200)
        _age(cache.base / f"{sha256(data)}.zip", 7200)
    (cache.base / ".unpack-crashed").mkdir()
    (cache.base / ".unpack-crashed" / "m.py").write_text("")
    _age(cache.base / ".unpack-crashed", 7200)
    (cache.base / ".zip-writing").write_bytes(b"")
    (cache.base / "notes.txt").write_text("mine")
    _age(cache.base / "notes.txt", 7200)
    assert cache.prune({sha256(kept)}, 3600) == [sha256(old)]
    names = {p.name for p in cache.base.iterdir()}
    assert names == {
        sha256(kept),
        f"{sha256(kept)}.zip",
        sha256(fresh),
        f"{sha256(fresh)}.zip",
        ".zip-writing",
        "notes.txt",
        "CACHEDIR.TAG",
    }
    assert time.time() - cache.path(sha256(kept)).stat().st_mtime < 60
    assert cache.zip_bytes(sha256(kept)) == kept
    assert cache.prune({sha256(kept)}, 3600) == []


def test_code_read_again_from_the_log_is_marked_used(tmp_path: Path) -> None:
    """1. Store a code and age it two hours. 2. Store it again (a node sharing the folder read its record).
    3. Prune keeping nothing, idle time an hour. Result: nothing is removed: 2 marked it used."""
    cache = CodeCache(tmp_path / "cache")
    data = package("VALUE = 4\n")
    cache.store(sha256(data), data)
    _age(cache.path(sha256(data)), 7200)
    _age(cache.base / f"{sha256(data)}.zip", 7200)
    cache.store(sha256(data), data)
    assert cache.prune(set(), 3600) == []
    assert cache.has(sha256(data))


def test_a_prune_of_a_folder_that_is_not_there_removes_nothing(tmp_path: Path) -> None:
    assert CodeCache(tmp_path / "missing").prune(set(), 1) == []


def test_code_stored_while_a_prune_runs_is_not_removed(tmp_path: Path) -> None:
    """1. Store a code and age it two hours. 2. Prune keeping nothing; the code is stored again (read from
    the log) after the sweep looked at its age, just before it removes it. Result: nothing is removed;
    folder and zip are whole (the sweep looks again, under the lock `store` holds, before removing)."""
    cache = CodeCache(tmp_path / "cache")
    data = package("VALUE = 5\n")
    sha = sha256(data)
    cache.store(sha, data)
    _age(cache.path(sha), 7200)
    _age(cache.base / f"{sha}.zip", 7200)

    class StoredFirst:
        """The cache's lock, but the first taker lets `store` run first (as the loop would meanwhile)."""

        def __init__(self) -> None:
            self.lock, self.stored = threading.Lock(), False

        def __enter__(self) -> None:
            if not self.stored:
                self.stored = True
                cache.store(sha, data)
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    cache._lock = cast(Any, StoredFirst())
    assert cache.prune(set(), 3600) == []
    assert cache.has(sha) and cache.zip_bytes(sha) == data


def test_a_cache_inside_a_handler_package_is_never_part_of_its_code(tmp_path: Path) -> None:
    """1. A package `functions/` and FAAS_CACHE_DIR at `functions/cache`. 2. A revision of it is unpacked
    there. Result: the cache folder is tagged (`CACHEDIR.TAG`), and the package's code files, so its zip,
    are what they were before: the unpacked copy is not in them. (It was, so each revision's unpacking
    changed the package, and watch mode published revision after revision of itself.)"""
    root = tmp_path / "p"
    (root / "functions").mkdir(parents=True)
    (root / "functions" / "m.py").write_text("VALUE = 1\n")
    before = code_files(root / "functions")
    cache = CodeCache(root / "functions" / "cache")
    assert cache.folder_problem() is None
    data = package("VALUE = 2\n")
    cache.store(sha256(data), data)
    assert (cache.base / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert (cache.path(sha256(data)) / "functions" / "m.py").is_file()
    assert code_files(root / "functions") == before == [root / "functions" / "m.py"]


def test_a_nodes_cache_byte_compiles_what_it_stores_in_the_background(tmp_path: Path) -> None:
    """1. A node's cache (`compile_code`) stores a package with a good module and one that does not compile.
    2. Import the good module from the stored folder with writing bytecode off (as an instance, which sees
       the cache read-only, does). 3. The compiled files are removed and the same code is stored again (a
       node started on a cache whose folders were never compiled, or whose compile was cut short).
    Result: the good module's `.pyc` appears in its `__pycache__`, the import loads it rather than the
    source, the broken module has none; 3 compiles it again; a cache without `compile_code` (the CLI's)
    compiles nothing."""
    data = zip_of(
        {"functions/__init__.py": "", "functions/m.py": "VALUE = 7\n", "functions/bad.py": "def (\n"}
    )
    sha = sha256(data)
    plain = CodeCache(tmp_path / "cli")
    plain_folder = plain.store(sha, data)  # before the node's: compiled by now, were it queued at all
    cache = CodeCache(tmp_path / "node", compile_code=True)
    folder = cache.store(sha, data)
    pyc = folder / "functions" / "__pycache__" / f"m.{sys.implementation.cache_tag}.pyc"
    wait_for(pyc.exists, 10, message="the module compiled")
    assert not list((folder / "functions" / "__pycache__").glob("bad.*"))
    # The source changed behind the compiled file's back (same size and time): what the import gives says
    # which of the two it read.
    source = folder / "functions" / "m.py"
    stat = source.stat()
    source.write_text("VALUE = 8\n")
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    probe = "import sys; sys.path.insert(0, sys.argv[1]); import functions.m as m; print(m.VALUE)"
    out = subprocess.run(
        [sys.executable, "-B", "-c", probe, str(folder)], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "7", out
    shutil.rmtree(folder / "functions" / "__pycache__")
    cache.store(sha, data)
    wait_for(pyc.exists, 10, message="compiled again")
    assert not (plain_folder / "functions" / "__pycache__").exists()
