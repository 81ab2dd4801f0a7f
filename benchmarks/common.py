"""Shared pieces of the `make bench` harness: the Row type, the context, measuring and printing helpers.

A section is a module `benchmarks/bench_<name>.py` with a module-level `ORDER = <int>` (sections
print in ascending order), an optional `TITLE`, and `run(ctx: Context) -> list[Row]`. It may raise
`SkipSection("why")` when something it needs is missing; the harness prints the reason and goes on.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from onnxopt.core.runtime import SessionConfig, physical_cores
from onnxopt.measure.benchmark import BenchConfig, BenchResult, benchmark
from onnxopt.measure.stats import RatioCI, latency_ratio

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
LARGE_MODEL = MODELS / "large" / "resnet18.onnx"


class SkipSection(Exception):
    """Raised by a section that cannot run here; its message says why and how to fix it."""


@dataclass(frozen=True)
class Row:
    """One line of the benchmark table: a named measurement, its metrics, and a ratio with its CI."""

    section: str
    name: str
    metrics: Mapping[str, float | str] = field(default_factory=dict)
    ratio: RatioCI | None = None  # latency of this row / latency of `reference`
    reference: str | None = None
    note: str = ""
    is_reference: bool = False  # the row other rows' ratios are relative to

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serializable dict."""
        return {
            "section": self.section,
            "name": self.name,
            "metrics": dict(self.metrics),
            "ratio": self.ratio.to_dict() if self.ratio else None,
            "reference": self.reference,
            "note": self.note,
            "is_reference": self.is_reference,
        }


@dataclass
class Context:
    """What every section gets: paths, the measurement budget, and a logger to stderr."""

    root: Path = ROOT
    out_dir: Path = ROOT / "build" / "bench"
    runs: int = 30  # timed rounds per measurement; sections may scale it
    warmup: int = 3
    quick: bool = False
    threads: int = field(default_factory=physical_cores)
    large_model_path: Path = LARGE_MODEL
    digits_model: Path = MODELS / "digits_cnn.onnx"
    digits_val: Path = MODELS / "digits_val.npz"
    digits_calib: Path = MODELS / "digits_calib.npz"
    digits_train: Path = MODELS / "digits_train.npz"
    extras: dict[str, Any] = field(default_factory=dict)  # sections may share things here

    def log(self, message: str) -> None:
        """A progress line on stderr (the table goes to stdout)."""
        print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    def large_model(self) -> Path:
        """models/large/resnet18.onnx, built if missing (needs torch); SkipSection if it cannot be."""
        path = self.large_model_path
        if path.exists():
            return path
        self.log(f"{path.relative_to(self.root)} missing: building it (scripts/build_models.py)")
        try:
            spec = importlib.util.spec_from_file_location("build_models", self.root / "scripts" / "build_models.py")
            if spec is None or spec.loader is None:
                raise ImportError("scripts/build_models.py not found")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            mod.build_large(path)
        except ImportError as e:
            raise SkipSection(
                f"{path.relative_to(self.root)} is missing and cannot be built here ({e}); "
                "run `make models` with the torch extra installed"
            ) from e
        except Exception as e:
            raise SkipSection(f"building {path.relative_to(self.root)} failed: {e}; run `make models`") from e
        return path

    def config(self, threads: int | None = None, runs: int | None = None, **kwargs: Any) -> BenchConfig:
        """The harness's standard BenchConfig (interleaved, spinning off, seeded)."""
        session = SessionConfig(intra_op_threads=threads if threads is not None else self.threads,
                                allow_spinning=False)
        return BenchConfig(session=session, warmup=self.warmup, runs=runs or self.runs, **kwargs)

    def bench(
        self,
        models: Sequence[Any],
        names: Sequence[str],
        threads: Sequence[int] | None = None,
        runs: int | None = None,
        **kwargs: Any,
    ) -> list[BenchResult]:
        """Measure models side by side (interleaved rounds) with the harness's settings."""
        t0 = time.perf_counter()
        results = benchmark(list(models), self.config(runs=runs, **kwargs), names=list(names), threads=threads)
        self.log(f"measured {', '.join(r.label for r in results)} in {time.perf_counter() - t0:.1f} s")
        return results


def result_metrics(result: BenchResult) -> dict[str, float | str]:
    """The standard latency metrics of a BenchResult for a Row."""
    s = result.stats
    return {
        "threads": result.threads,
        "p50 ms": s.p50_ms,
        "p90 ms": s.p90_ms,
        "cv %": 100 * s.cv,
        "size MiB": result.file_size / 2**20,
    }


def rows_vs_reference(
    section: str, results: Sequence[BenchResult], reference: BenchResult, label_threads: bool = True
) -> list[Row]:
    """A Row per result with its p50 ratio (95% bootstrap CI) to the reference result."""
    rows = []
    for r in results:
        ratio = None if r is reference else latency_ratio(r, reference)
        rows.append(
            Row(
                section=section,
                name=r.label if label_threads else r.name,
                metrics=result_metrics(r),
                ratio=ratio,
                reference=None if r is reference else (reference.label if label_threads else reference.name),
                is_reference=r is reference,
            )
        )
    return rows


def _fmt(v: float | str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, int):
        return str(v)
    return f"{v:.3f}" if abs(v) < 100 else f"{v:,.1f}"


def ratio_text(row: Row) -> tuple[str, str, str]:
    """(ratio, CI, verdict) cells of a row."""
    ratio = row.ratio
    if ratio is None:
        return ("1", "", "reference") if row.is_reference else ("", "", "")
    if not ratio.significant:
        verdict = "not significant"
    else:
        verdict = f"{ratio.speedup:.2f}x faster" if ratio.ratio < 1 else f"{ratio.ratio:.2f}x slower"
    return f"{ratio.ratio:.3f}", f"[{ratio.low:.3f}, {ratio.high:.3f}]", verdict


def _groups(rows: Sequence[Row]) -> list[list[Row]]:
    """Runs of rows that belong in one table: a reference row, or metrics sharing no column
    with the run so far, start a new one (a sparse union table is hard to read)."""
    groups: list[list[Row]] = []
    keys: set[str] = set()
    for r in rows:
        if groups and not r.is_reference and keys & set(r.metrics):
            groups[-1].append(r)
            keys |= set(r.metrics)
        else:
            groups.append([r])
            keys = set(r.metrics)
    return groups


def print_section(title: str, rows: Sequence[Row]) -> None:
    """Print one section's rows: a table per run of rows sharing the same metric columns."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        console = Console(width=400)  # tables are only as wide as their content
    console.print(f"[bold]{escape(title)}[/bold]")
    for group in _groups(rows):
        keys = list(dict.fromkeys(k for r in group for k in r.metrics))
        show_ratio = any(r.ratio is not None or r.is_reference for r in group)
        table = Table()
        table.add_column("name", min_width=24)
        for k in keys:
            table.add_column(k, justify="right")
        extra = ("ratio", "95% CI", "vs", "verdict") if show_ratio else ()
        for c in (*extra, "note"):
            table.add_column(c, justify="right" if c in ("ratio", "95% CI") else "left")
        for r in group:
            ratio, ci, verdict = ratio_text(r)
            cells = [ratio, ci, escape(r.reference or ""), verdict] if show_ratio else []
            table.add_row(
                escape(r.name),
                *(_fmt(r.metrics[k]) if k in r.metrics else "" for k in keys),
                *cells,
                escape(r.note),
            )
        console.print(table)


_LATENCY_KEYS = ("p50 ms", "p90 ms", "cv %", "threads", "size MiB")


def markdown_table(rows: Sequence[Row]) -> str:
    """All rows as one Markdown table (for issue notes and the README)."""
    lines = [
        "| section | model | p50 ms | ratio | vs | 95% CI | verdict | other metrics | note |",
        "|---|---|---:|---:|---|---|---|---|---|",
    ]
    for r in rows:
        ratio, ci, verdict = ratio_text(r)
        p50 = r.metrics.get("p50 ms", "")
        other = ", ".join(f"{k} {_fmt(v)}" for k, v in r.metrics.items() if k not in _LATENCY_KEYS)
        cells = [r.section, r.name, _fmt(p50), ratio, r.reference or "", ci, verdict, other, r.note]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def save_rows(rows: Sequence[Row], out_dir: Path, extra: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write results.json and results.md into out_dir; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    js = out_dir / "results.json"
    md = out_dir / "results.md"
    doc = {"rows": [r.to_dict() for r in rows], **(extra or {})}
    js.write_text(json.dumps(doc, indent=2) + "\n")
    md.write_text(markdown_table(rows) + "\n")
    return js, md
