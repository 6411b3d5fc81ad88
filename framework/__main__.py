"""`faas` and `python -m framework`: the CLI (`framework/cli`)."""

from __future__ import annotations

import contextlib
import errno
import os
import sys

_WRITE_ERRORS = {errno.ENOSPC, errno.EIO, errno.EFBIG, errno.EDQUOT}
"""What a write to a full disk or a dead terminal raises (click handles a closed pipe, EPIPE, itself)."""


_SERVING = {"run", "broker"}
"""Commands that print no result (a node logs to stderr): they run with standard output closed."""


def _command(args: list[str]) -> str | None:
    """The command named in `args` (after the group's `--manifest PATH`), or None."""
    rest = iter(args)
    for arg in rest:
        if arg == "--manifest":
            next(rest, None)
        elif not arg.startswith("-"):
            return arg
    return None


def run() -> None:
    """Load the CLI and run it. Loading takes a few hundred milliseconds (pydantic, aiokafka, Starlette):
    a Ctrl-C then ends the command quietly (exit 130, as a shell reports SIGINT), not with a traceback
    through the imports. Once loaded, click handles it ("Aborted!").

    A standard output that is closed (`faas emit ... >&-`) is a usage error: Python then has no
    `sys.stdout` and click drops what it would print, so a reply would be lost with exit 0 (`faas run` and
    `faas broker`, which print no result, run all the same). One that
    cannot be written (`> /dev/full`, a full disk) ends the command with one line, exit 1."""
    if sys.stdout is None and _command(sys.argv[1:]) not in _SERVING:
        sys.stderr.write("faas: standard output is closed: redirect it to a file, or to /dev/null\n")
        sys.exit(2)
    try:
        from framework.cli import main
    except KeyboardInterrupt:
        sys.exit(130)
    try:
        main()
    except OSError as exc:
        if exc.errno not in _WRITE_ERRORS:
            raise
        where = f"to {exc.filename}" if exc.filename else "its output"
        sys.stderr.write(f"faas: cannot write {where}: {exc.strerror}\n")
        # What is still buffered would fail again at exit, with a traceback.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        sys.exit(1)


if __name__ == "__main__":
    run()
