"""`make realmodels`: run onnxopt's CLI on real third-party models and measure what it returns.

For each model of scripts/realmodels/manifest.toml (downloaded once into the cache, see
corpus.py) and each command, as a user would type it with default options:

    onnxopt optimize MODEL -o OUT
    onnxopt quantize MODEL -o OUT --mode auto
    onnxopt prune    MODEL -o OUT --method magnitude

each in a child process with a timeout; then every output that was written is measured against
its input in another child process (measure.py: interleaved latency ratio with a 95% CI at
batch 1, min per-sample output cosine, size ratio), and optimize's output against quantize's
(row "optimize/quantize"). One table is printed and written as
Markdown and JSON into build/realmodels/. Usage:

    python scripts/realmodels/run.py                       # everything (takes a while)
    python scripts/realmodels/run.py --only silero-vad --commands quantize --timeout 900
    python scripts/realmodels/run.py --download-only       # fill the cache and stop
    python scripts/realmodels/run.py --with-data           # also pass --data/--calib-data

--with-data writes, per model, an .npz of real-looking samples (batched inputs stacked on axis 0,
constant inputs such as a scalar `sr` or a zero `state` stored once, as a user would) and passes
it to optimize (--data, --calib-data) and quantize (--calib-data, --data); prune is run without.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from realmodels.corpus import ROOT, ModelEntry, download, load_manifest, model_path, sha256_of  # noqa: E402
from realmodels.inputs import synthesize  # noqa: E402

COMMANDS = {
    "optimize": ["optimize"],
    "quantize": ["quantize", "--mode", "auto"],
    "prune": ["prune", "--method", "magnitude"],
}
DATA_OPTIONS = {"optimize": ["--data", "{npz}", "--calib-data", "{npz}"],
                "quantize": ["--calib-data", "{npz}", "--data", "{npz}"]}
MEASURE = Path(__file__).resolve().with_name("measure.py")
MIN_COSINE = 0.99
QUANTIZE_MARGIN = 1.05  # optimize's output may be at most 5% slower than quantize --mode auto's
CONSTANT_KINDS = ("zeros", "scalar")  # the same value for every sample: stored once, not stacked
DATA_OFFSET = 1000  # npz samples are drawn apart from the ones the harness measures fidelity on


@dataclass
class Row:
    """One (model, command) line of the table."""

    model: str
    command: str
    exit: str  # the exit code, "timeout", or "-" when not run
    seconds: float = 0.0
    latency_ratio: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    in_ms: float | None = None
    out_ms: float | None = None
    size_ratio: float | None = None
    min_cosine: float | None = None
    traceback: bool = False
    note: str = ""


def run_child(cmd: list[str], timeout: float, log_path: Path,
              cwd: Path = ROOT) -> tuple[str, str, str, float]:
    """(exit, stdout, stderr, seconds) of `cmd` in its own process group, killed on timeout.

    The child imports this checkout's onnxopt whatever its working directory (PYTHONPATH).
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=cwd, env=env, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
        code = str(proc.returncode)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the group we started: onnxopt and any helpers
        out, err = proc.communicate()
        code = "timeout"
    seconds = time.perf_counter() - start
    log_path.write_text(f"$ {' '.join(cmd)}\n# exit {code} after {seconds:.1f}s\n"
                        f"--- stdout\n{out}\n--- stderr\n{err}\n", encoding="utf-8")
    return code, out, err, seconds


def failure_line(stderr: str, stdout: str) -> str:
    """The line a user would read first: a traceback's last line, else the first error-ish line."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if "Traceback (most recent call last)" in stderr:
        return "TRACEBACK " + lines[-1]
    errors = [ln for ln in lines if "error" in ln.lower()]
    first = errors or lines or [ln.strip() for ln in stdout.splitlines() if ln.strip()]
    return first[0] if first else ""


def write_npz(entry: ModelEntry, path: Path, samples: int, seed: int) -> Path:
    """An .npz of `samples` synthesized inputs as a user would save them (see the module doc)."""
    feeds = [synthesize(entry.inputs, DATA_OFFSET + i, seed) for i in range(samples)]
    arrays = {name: feeds[0][name] if spec["kind"] in CONSTANT_KINDS
              else np.concatenate([f[name] for f in feeds], axis=0)
              for name, spec in entry.inputs.items()}
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def same_graph(a: Path, b: Path) -> bool:
    """True when the two files hold the same graph (byte for byte), whatever their metadata: optimize
    records its decisions in the metadata of a model it returns unchanged."""
    import onnx

    ga, gb = (onnx.load(str(p), load_external_data=False).graph for p in (a, b))
    return ga.SerializeToString() == gb.SerializeToString()


def _measure(entry: ModelEntry, candidate: Path, args: argparse.Namespace, log_path: Path,
             reference: Path | None = None) -> tuple[dict[str, float] | None, str]:
    """measure.py in a child process: (its values, "") or (None, why it failed)."""
    cmd = [sys.executable, str(MEASURE), "--model", entry.name, "--candidate", str(candidate),
           "--samples", str(args.samples), "--threads", str(args.threads), "--seed", str(args.seed)]
    if reference is not None:
        cmd += ["--reference", str(reference)]
    code, out, err, _ = run_child(cmd, args.timeout, log_path)
    if code != "0":
        return None, f"measure failed ({code}): {failure_line(err, out)[:120]}"
    return json.loads(out.strip().splitlines()[-1]), ""


def _fill(row: Row, values: dict[str, float]) -> Row:
    row.latency_ratio, row.ci_low, row.ci_high = values["latency_ratio"], values["ci_low"], values["ci_high"]
    row.in_ms, row.out_ms = values["in_ms"], values["out_ms"]
    row.size_ratio, row.min_cosine = values["size_ratio"], values["min_cosine"]
    return row


def compare_outputs(entry: ModelEntry, rows: list[Row], out_dir: Path, args: argparse.Namespace) -> Row | None:
    """optimize's output against quantize's, measured side by side (the issue's "optimize within 5%
    of quantize --mode auto"): a row whose ratio is optimize / quantize, None unless both wrote one."""
    labels = {r.command.split("+")[0]: r.command for r in rows if r.model == entry.name}
    if "optimize" not in labels or "quantize" not in labels:
        return None
    opt, quant = (out_dir / f"{entry.name}.{labels[c]}.onnx" for c in ("optimize", "quantize"))
    if not (opt.is_file() and quant.is_file()):
        return None
    row = Row(entry.name, "optimize/quantize", "-", note="latency and size: optimize's output / quantize's")
    if sha256_of(opt) == sha256_of(quant) or same_graph(opt, quant):
        row.note = "the same graph"
        row.latency_ratio, row.ci_low, row.ci_high, row.size_ratio, row.min_cosine = 1.0, 1.0, 1.0, 1.0, 1.0
        return row
    values, why = _measure(entry, opt, args, out_dir / f"{entry.name}.optimize-vs-quantize.measure.log", quant)
    if values is None:
        row.note = why
        return row
    return _fill(row, values)


def run_command(entry: ModelEntry, command: str, out_dir: Path, args: argparse.Namespace,
                npz: Path | None = None) -> Row:
    """Run one onnxopt command on one model, then measure its output (if one was written)."""
    source = model_path(entry)
    label = command + ("+data" if npz and command in DATA_OPTIONS else "")
    target = out_dir / f"{entry.name}.{label}.onnx"
    target.unlink(missing_ok=True)
    verb, *options = COMMANDS[command]
    if npz and command in DATA_OPTIONS:
        options += [o.format(npz=npz) for o in DATA_OPTIONS[command]]
    elif command in DATA_OPTIONS:
        # As a user states the deployment shape: the shape the package itself feeds (the manifest's),
        # for every input that has one, so symbolic dims are timed where the model is deployed.
        for name, spec in entry.inputs.items():
            if spec.get("shape"):
                options += ["--shape", f"{name}=" + ",".join(str(d) for d in spec["shape"])]
    cmd = [sys.executable, "-m", "onnxopt", verb, str(source), "-o", str(target), *options]
    # An empty working directory per command: files a command leaves behind are a bug to report.
    cwd = out_dir / "cwd" / f"{entry.name}.{label}"
    shutil.rmtree(cwd, ignore_errors=True)
    cwd.mkdir(parents=True)
    code, out, err, seconds = run_child(cmd, args.timeout, out_dir / f"{entry.name}.{label}.log", cwd)
    row = Row(entry.name, label, code, seconds, traceback="Traceback (most recent call last)" in err)
    if code != "0":
        row.note = failure_line(err, out)[:160]
    left = [p for p in cwd.rglob("*") if p.is_file()]
    if left:
        mb = sum(p.stat().st_size for p in left) / 1e6
        row.note = (row.note + f"; left {len(left)} file(s), {mb:.0f} MB, in the working dir").lstrip("; ")
    if not target.is_file():
        row.note = (row.note + "; no output written").lstrip("; ")
        return row
    if sha256_of(target) == entry.sha256:
        row.note = (row.note + "; output identical to input").lstrip("; ")
    elif same_graph(target, source):
        row.note = (row.note + "; the input's graph (metadata added)").lstrip("; ")
    values, why = _measure(entry, target, args, out_dir / f"{entry.name}.{label}.measure.log")
    if values is None:
        row.note = (row.note + "; " + why).lstrip("; ")
        return row
    return _fill(row, values)


def _fmt(row: Row) -> list[str]:
    """The printed cells of one row."""
    lat = "-" if row.latency_ratio is None else (
        f"{row.latency_ratio:.2f} [{row.ci_low:.2f}, {row.ci_high:.2f}]")
    ms = "-" if row.in_ms is None else f"{row.in_ms:.1f}->{row.out_ms:.1f}"
    size = "-" if row.size_ratio is None else f"{row.size_ratio:.2f}"
    flag = row.min_cosine is not None and row.min_cosine < MIN_COSINE and row.command != "optimize/quantize"
    cos = "-" if row.min_cosine is None else f"{row.min_cosine:.4f}" + (" !" if flag else "")
    return [row.model, row.command, row.exit, lat, ms, size, cos, f"{row.seconds:.0f}", row.note]


HEADER = ["model", "command", "exit", "latency out/in [95% CI]", "ms in->out", "size", "min cos", "s", "note"]


def render_text(rows: list[Row]) -> str:
    """A fixed-width table (the note column is left unpadded)."""
    cells = [HEADER] + [_fmt(r) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER) - 1)]
    return "\n".join("  ".join(c[i].ljust(widths[i]) for i in range(len(widths))) + "  " + c[-1]
                     for c in cells)


def render_markdown(rows: list[Row]) -> str:
    """The same table as GitHub Markdown."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in _fmt(r)) + " |" for r in rows]
    return "\n".join(lines)


def summary(rows: list[Row]) -> list[str]:
    """Lines after the table: tracebacks, outputs under the cosine floor (vs their input: not the
    optimize/quantize rows, whose cosine is between two outputs each held to the floor), slower outputs."""
    tracebacks = [f"{r.model}/{r.command}" for r in rows if r.traceback]
    outputs = [r for r in rows if r.command != "optimize/quantize"]  # a pair row compares two outputs
    low = [f"{r.model}/{r.command} ({r.min_cosine:.4f})" for r in outputs
           if r.min_cosine is not None and r.min_cosine < MIN_COSINE]
    slower = [f"{r.model}/{r.command}" for r in outputs if r.ci_low is not None and r.ci_low > 1.0]
    behind = [f"{r.model} ({r.latency_ratio:.2f})" for r in rows if r.command == "optimize/quantize"
              and r.ci_low is not None and r.ci_low > QUANTIZE_MARGIN]
    return [f"tracebacks: {len(tracebacks)} {tracebacks}",
            f"outputs below {MIN_COSINE} cosine: {len(low)} {low}",
            f"outputs slower than their input (CI above 1): {len(slower)} {slower}",
            f"optimize more than {QUANTIZE_MARGIN - 1:.0%} slower than quantize (CI above {QUANTIZE_MARGIN}): "
            f"{len(behind)} {behind}"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Run onnxopt on real third-party ONNX models.")
    parser.add_argument("--only", help="comma-separated model names (default: all)")
    parser.add_argument("--commands", default="optimize,quantize,prune",
                        help="comma-separated subset of optimize,quantize,prune")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per child process")
    parser.add_argument("--samples", type=int, default=None, help="inputs for the cosine (default: manifest)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for the A/B timing")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "realmodels")
    parser.add_argument("--download-only", action="store_true", help="fill the cache and exit")
    parser.add_argument("--with-data", action="store_true",
                        help="pass an .npz of real-looking samples to optimize and quantize")
    parser.add_argument("--data-samples", type=int, default=16, help="samples in that .npz")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()  # the children run in their own working directories
    unknown = set(args.commands.split(",")) - set(COMMANDS)
    if unknown:
        parser.error(f"unknown command(s) {sorted(unknown)}; choose from {sorted(COMMANDS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Download what is missing, run every (model, command), print and save the table."""
    args = parse_args(argv)
    manifest = load_manifest()
    entries = manifest.select(args.only)
    args.samples = args.samples or manifest.samples
    errors = download(entries, log=lambda msg: print(msg, file=sys.stderr, flush=True))
    if args.download_only:
        for name, why in errors.items():
            print(f"{name}: {why}", file=sys.stderr)
        return 1 if errors else 0
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    for entry in entries:
        npz = None
        if args.with_data and entry.name not in errors:
            npz = write_npz(entry, args.out / f"{entry.name}.data.npz", args.data_samples, args.seed)
        for command in args.commands.split(","):
            if entry.name in errors:
                rows.append(Row(entry.name, command, "-", note=errors[entry.name]))
                continue
            print(f"[{time.strftime('%H:%M:%S')}] {entry.name}: {command} ...", file=sys.stderr, flush=True)
            rows.append(run_command(entry, command, args.out, args, npz))
            print(render_text(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
        pair = compare_outputs(entry, rows, args.out, args)
        if pair is not None:
            rows.append(pair)
            print(render_text(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    text = render_text(rows)
    tail = summary(rows)
    print(text + "\n\n" + "\n".join(tail))
    import onnxruntime  # only for the metadata line; the children did the work

    meta = {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
            "machine": platform.machine(), "cpus": os.cpu_count(), "threads": args.threads,
            "samples": args.samples, "timeout": args.timeout, "with_data": args.with_data,
            "date": time.strftime("%Y-%m-%d %H:%M")}
    (args.out / "table.md").write_text(render_markdown(rows) + "\n\n" + "\n".join(f"- {t}" for t in tail) + "\n",
                                      encoding="utf-8")
    (args.out / "table.json").write_text(json.dumps({"meta": meta, "rows": [asdict(r) for r in rows]}, indent=2),
                                        encoding="utf-8")
    print(f"\nwritten: {args.out / 'table.md'}, {args.out / 'table.json'} (logs beside them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
