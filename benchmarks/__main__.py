"""`python -m benchmarks [--quick] [--only GROUP,...] [--output PATH]`: run the suite, print the table, write
the JSON.

Exits 0 when every case was measured, 1 when any case failed (the table and the JSON say which and why).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from benchmarks.config import FULL, QUICK
from benchmarks.report import machine, table, write_json
from benchmarks.suite import GROUPS, run_suite

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "latest.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sample counts: checks the suite end to end"
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=None,
        help=f"JSON file (default: {DEFAULT_OUTPUT}; with --only, GROUP-....json beside it)",
    )
    parser.add_argument(
        "--only",
        type=lambda v: [g for g in v.split(",") if g],
        default=None,
        metavar="GROUP,...",
        help=f"run only these case groups (of: {', '.join(GROUPS)})",
    )
    args = parser.parse_args(argv)
    if args.only and set(args.only) - set(GROUPS):
        parser.error(f"unknown group(s): {', '.join(sorted(set(args.only) - set(GROUPS)))}")
    profile = QUICK if args.quick else FULL
    if args.output is None:  # a partial run never overwrites the full run's figures
        name = "latest" if args.only is None else "-".join(args.only)
        args.output = DEFAULT_OUTPUT.with_name(f"{name}.json")

    import uvloop

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        meta, cases = runner.run(run_suite(profile, args.output, args.only))
    meta = {**machine(), **meta}
    write_json(args.output, meta, cases)
    print(table(meta, cases), flush=True)
    return 0 if all(s.to_dict()["error"] is None for s in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
