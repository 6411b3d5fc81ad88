"""`python -m benchmarks [--quick] [--output PATH]`: run the suite, print the table, write the JSON.

Exits 0 when every case was measured, 1 when any case failed (the table and the JSON say which and why).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from benchmarks.config import FULL, QUICK
from benchmarks.report import machine, table, write_json
from benchmarks.suite import run_suite

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "latest.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sample counts: checks the suite end to end"
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="JSON file (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL

    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        meta, cases = runner.run(run_suite(profile, args.output))
    meta = {**machine(), **meta}
    write_json(args.output, meta, cases)
    print(table(meta, cases), flush=True)
    return 0 if all(s.to_dict()["error"] is None for s in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
