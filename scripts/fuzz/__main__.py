"""`python -m scripts.fuzz`: run N seeded fuzz cases and print the summary table.

Exit status 1 when any case fails. `--only I` re-runs case I of the seed (with `--keep DIR`
its folder is kept, inputs and leftovers as the run left them, to re-run the printed command).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from scripts.fuzz.checks import judge
from scripts.fuzz.generate import seeded_case
from scripts.fuzz.report import judged, summary
from scripts.fuzz.runner import Outcome, run_cases


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m scripts.fuzz", description=__doc__)
    p.add_argument("-n", "--cases", type=int, default=1000, help="number of cases (default 1000)")
    p.add_argument("--seed", type=int, default=0, help="run seed: case i of a seed is always the same case")
    p.add_argument("--only", type=int, action="append", help="run only case I (repeatable)")
    p.add_argument("--jobs", type=int, default=1, help="parallel workers (default 1)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds before a case counts as a hang")
    p.add_argument("--keep", type=Path, help="copy the folders of failing cases here")
    p.add_argument("--top", type=int, default=40, help="failure signatures to print")
    p.add_argument("-v", "--verbose", action="store_true", help="print every failing case as it happens")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    indices = args.only or range(args.cases)
    cases = [seeded_case(args.seed, i) for i in indices]
    done = 0
    start = time.monotonic()

    def progress(o: Outcome) -> None:
        nonlocal done
        done += 1
        failures = judge(o) if args.verbose else []
        for f in failures:
            print(f"case {o.case.index}: {f.category}: {f.signature}\n    {o.case.command_line()}", file=sys.stderr)
        if done % 100 == 0 or done == len(cases):
            print(f"... {done}/{len(cases)} cases, {time.monotonic() - start:.0f} s", file=sys.stderr)

    if args.keep is not None:
        args.keep.mkdir(parents=True, exist_ok=True)
    keep = (args.keep, lambda o: bool(judge(o))) if args.keep is not None else None
    outcomes = run_cases(cases, jobs=args.jobs, timeout=args.timeout, keep=keep, on_outcome=progress)
    results = judged(outcomes)
    print(summary(results, seed=args.seed, top=args.top))
    return 1 if any(f for _, f in results) else 0


if __name__ == "__main__":
    sys.exit(main())
