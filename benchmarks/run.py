"""`make bench`: run every benchmarks/bench_*.py section and print ratios measured side by side.

Sections are discovered, not listed: add `benchmarks/bench_<name>.py` with `ORDER = <int>`,
optional `TITLE`, and `run(ctx) -> list[Row]` (see benchmarks/common.py). Usage:

    python benchmarks/run.py                 # every section, in ORDER
    python benchmarks/run.py --only quantize # one section (comma-separate several)
    python benchmarks/run.py --list          # the sections found
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
import traceback
from pathlib import Path
from types import ModuleType

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

from common import Context, Row, SkipSection, print_section, save_rows  # noqa: E402


def discover() -> list[tuple[str, ModuleType]]:
    """(section name, module) for every bench_*.py, sorted by the module's ORDER then name."""
    found = []
    for path in sorted(HERE.glob("bench_*.py")):
        name = path.stem.removeprefix("bench_")
        spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
        if spec is None or spec.loader is None:
            continue
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        if not callable(getattr(mod, "run", None)):
            print(f"skipping {path.name}: no run(ctx) function", file=sys.stderr)
            continue
        found.append((name, mod))
    return sorted(found, key=lambda nm: (int(getattr(nm[1], "ORDER", 1000)), nm[0]))


def main(argv: list[str] | None = None) -> int:
    """Run the sections, print their tables and the summary; return the exit code."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated section names (e.g. fp32,quantize)")
    ap.add_argument("--list", action="store_true", help="list the sections and exit")
    ap.add_argument("--runs", type=int, default=40, help="timed rounds per measurement (default 40)")
    ap.add_argument("--quick", action="store_true", help="fewer runs (a smoke test, not for numbers)")
    ap.add_argument("--out", type=Path, default=HERE.parent / "build" / "bench", help="output directory")
    args = ap.parse_args(argv)

    sections = discover()
    if args.list:
        for name, mod in sections:
            print(f"{getattr(mod, 'ORDER', 1000):>5}  {name:<12} {getattr(mod, 'TITLE', '')}")
        return 0
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = [w for w in wanted if w not in {n for n, _ in sections}]
        if unknown:
            print(f"unknown section(s) {', '.join(unknown)}; found: {', '.join(n for n, _ in sections)}",
                  file=sys.stderr)
            return 2
        sections = [(n, m) for n, m in sections if n in wanted]

    runs = 10 if args.quick else args.runs
    ctx = Context(out_dir=args.out, runs=runs, warmup=2 if args.quick else 3, quick=args.quick)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    ctx.extras["load_average"] = load
    ctx.log(f"{len(sections)} section(s): {', '.join(n for n, _ in sections)}; {runs} rounds per measurement; "
            f"interleaved, spinning off, default {ctx.threads} intra-op threads")
    all_rows: list[Row] = []
    failed: list[str] = []
    skipped: dict[str, str] = {}
    start = time.perf_counter()
    for name, mod in sections:
        title = getattr(mod, "TITLE", name)
        t0 = time.perf_counter()
        try:
            rows = list(mod.run(ctx))
        except SkipSection as e:
            skipped[name] = str(e)
            print(f"\n{title}: skipped: {e}")
            continue
        except Exception as e:  # a broken section must not hide the others' numbers
            failed.append(name)
            print(f"\n{title}: FAILED: {type(e).__name__}: {e}", file=sys.stderr)
            traceback.print_exc()
            continue
        print()
        print_section(f"{title}  ({time.perf_counter() - t0:.0f} s)", rows)
        all_rows += rows

    print()
    print("## All ratios measured in this run (p50 latency ratio, 95% bootstrap CI over rounds)\n")
    from common import markdown_table

    print(markdown_table(all_rows))
    spread = ctx.extras.get("harness_spread_pct")
    if spread:
        p50s = ctx.extras.get("harness_p50s_ms", {})
        print()
        for kind, pct in spread.items():
            print(f"harness stability ({kind}): medians of 3 repeated measurements of the same model "
                  f"{' / '.join(f'{p:.2f}' for p in p50s.get(kind, []))} ms, spread {pct:.2f}% (target < 3%)")
    end_load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cores = os.cpu_count() or 1
    print(f"\nload average: {load:.1f} at start, {end_load:.1f} at end, on {cores} logical cores"
          + ("  -- the machine is busy: expect noisy numbers" if max(load, end_load) > cores else ""))
    js, md = save_rows(all_rows, ctx.out_dir, {"harness_spread_pct": spread, "skipped": skipped,
                                               "load_average": [load, end_load],
                                               "failed": failed, "runs": runs, "threads": ctx.threads})
    print(f"\nsaved {js.relative_to(HERE.parent) if js.is_relative_to(HERE.parent) else js} and {md.name}; "
          f"total {time.perf_counter() - start:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
