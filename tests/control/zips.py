"""Zips for code records, good and broken in each way zipfile fails to unpack one.

Each broken zip is a valid container whose headers point at an entry that cannot be extracted, so
`ZipFile(...)` opens it and only `extractall` fails, as with a record whose bytes were damaged after the
sha256 in its key was taken; or one that would fill the disk (`bomb`), refused before anything is written.
"""

from __future__ import annotations

import functools
import io
import zipfile
from collections.abc import Callable

from framework.control.revisions import MAX_UNPACKED_BYTES

_CENTRAL = b"PK\x01\x02"


def zip_of(files: dict[str, str]) -> bytes:
    """A deflated zip holding `files` (name -> text)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in files.items():
            z.writestr(name, text)
    return buf.getvalue()


def package(module: str) -> bytes:
    """The code zip of a `functions` package whose `m.py` is `module`."""
    return zip_of({"functions/__init__.py": "", "functions/m.py": module})


def _only_entry(files: dict[str, str] | None = None) -> bytearray:
    return bytearray(zip_of(files or {"functions/m.py": "VALUE = 1\n" * 50}))


def flipped_deflate() -> bytes:
    """The first deflate byte set to 0xFF: a block of the reserved type, so zlib raises zlib.error."""
    data = _only_entry()
    name_len = int.from_bytes(data[26:28], "little")
    extra_len = int.from_bytes(data[28:30], "little")
    data[30 + name_len + extra_len] = 0xFF
    return bytes(data)


def encrypted() -> bytes:
    """The encryption flag set on the entry: zipfile raises RuntimeError (a password is required)."""
    data = _only_entry()
    data[6] |= 1
    central = data.index(_CENTRAL)
    data[central + 8] |= 1
    return bytes(data)


def unknown_method() -> bytes:
    """Compression method 99 on the entry: zipfile raises NotImplementedError."""
    data = _only_entry()
    central = data.index(_CENTRAL)
    data[8:10] = data[central + 10 : central + 12] = (99).to_bytes(2, "little")
    return bytes(data)


def long_name() -> bytes:
    """An entry whose file name has 300 characters: extracting it fails with OSError (ENAMETOOLONG)."""
    return bytes(_only_entry({"functions/" + "a" * 300 + ".py": "VALUE = 1\n"}))


def truncated() -> bytes:
    """A zip cut short before its end of central directory: zipfile raises BadZipFile."""
    return bytes(_only_entry())[:-30]


@functools.cache
def bomb() -> bytes:
    """A zip of 256 KiB whose one entry (zeros) unpacks to 1 MiB over MAX_UNPACKED_BYTES; made once (~1 s)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        info = zipfile.ZipInfo("functions/zeros.bin")
        info.compress_type = zipfile.ZIP_DEFLATED
        chunk = bytes(1 << 20)
        with z.open(info, "w", force_zip64=True) as entry:
            for _ in range(MAX_UNPACKED_BYTES // len(chunk) + 1):
                entry.write(chunk)
    return buf.getvalue()


BROKEN: dict[str, tuple[Callable[[], bytes], str]] = {
    "flipped deflate bytes": (flipped_deflate, "zlib.error"),
    "encrypted": (encrypted, "RuntimeError"),
    "unknown compression method": (unknown_method, "NotImplementedError"),
    "300-character name": (long_name, "File name too long"),
    "truncated": (truncated, "not a zip"),
    "zip bomb": (bomb, f"over the {MAX_UNPACKED_BYTES} a revision's code may take unpacked"),
}
"""Each way a code record's zip may be unusable, and what the skip's warning says about it."""
