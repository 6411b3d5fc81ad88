"""`faas` and `python -m framework`: the CLI (`framework/cli`)."""

from __future__ import annotations

import sys


def run() -> None:
    """Load the CLI and run it. Loading takes a few hundred milliseconds (pydantic, aiokafka, Starlette):
    a Ctrl-C then ends the command quietly (exit 130, as a shell reports SIGINT), not with a traceback
    through the imports. Once loaded, click handles it ("Aborted!")."""
    try:
        from framework.cli import main
    except KeyboardInterrupt:
        sys.exit(130)
    main()


if __name__ == "__main__":
    run()
