"""`onnxopt search`: genetic architecture search; fitness = accuracy and latency in onnxruntime."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click

from onnxopt.cli._options import echo_json, human_bytes, json_option, output_option


def _front_path(output: Path, i: int) -> Path:
    return output.with_name(f"{output.stem}.front{i}{output.suffix or '.onnx'}")


@click.command("search")
@click.option("--space", "space_path", type=click.Path(path_type=Path), required=True,
              help="Search space TOML (see examples/search_space.toml).")
@click.option("--data", "data_path", type=click.Path(path_type=Path), required=True,
              help="Training split .npz (input + labels).")
@click.option("--val", "val_path", type=click.Path(path_type=Path), required=True,
              help="Validation split .npz: accuracy of each candidate, measured in onnxruntime.")
@click.option("--framework", type=click.Choice(["torch", "keras"]), default="torch", show_default=True,
              help="Build and train candidates in PyTorch or Keras 3 (both exported to ONNX).")
@click.option("--teacher", type=click.Path(path_type=Path), default=None,
              help="ONNX teacher: train candidates by distillation from its logits.")
@click.option("--generations", type=int, default=6, show_default=True, help="Generations; the first is random (at most population x generations evaluations).")
@click.option("--population", type=int, default=8, show_default=True, help="Genomes per generation.")
@click.option("--elite", type=int, default=2, show_default=True, help="Best genomes kept unchanged each generation.")
@output_option(required=True)
@click.option("--max-latency-ms", type=float, default=None,
              help="Latency budget (p50, ms): maximize accuracy among candidates under it.")
@click.option("--pareto", is_flag=True, help="Pareto search (accuracy vs latency); writes the whole front.")
@click.option("--workers", type=int, default=1, show_default=True, help="Parallel evaluations (local processes).")
@click.option("--dask", "dask_address", default=None,
              help="Evaluate on a Dask cluster at this scheduler address (needs dask distributed).")
@click.option("--resume", is_flag=True, help="Continue the search checkpointed in the work directory.")
@click.option("--log", "log_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="JSON-lines log of every evaluated genome (default: <workdir>/search.jsonl).")
@click.option("--plot", "plot_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Save accuracy vs latency with the front highlighted (needs the report extra).")
@click.option("--baseline", type=click.Path(path_type=Path), default=None,
              help="ONNX model to compare the result with (accuracy on --val, latency re-measured together).")
@click.option("--epochs", type=int, default=None, help="Training epochs per candidate (default: [train] or 15).")
@click.option("--max-minutes", type=float, default=None,
              help="Wall-clock budget: stop after the generation that exceeds it (resumable).")
@click.option("--remeasure-runs", type=int, default=300, show_default=True,
              help="Timed runs per model when the result is re-measured against the baseline.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the search and of training.")
@click.option("--workdir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where candidates and the checkpoint live (default: <output>.search/).")
@json_option
@click.pass_context
def command(
    ctx: click.Context,
    space_path: Path,
    data_path: Path,
    val_path: Path,
    framework: str,
    teacher: Path | None,
    generations: int,
    population: int,
    elite: int,
    output: Path,
    max_latency_ms: float | None,
    pareto: bool,
    workers: int,
    dask_address: str | None,
    resume: bool,
    log_path: Path | None,
    plot_path: Path | None,
    baseline: Path | None,
    epochs: int | None,
    max_minutes: float | None,
    remeasure_runs: int,
    seed: int,
    workdir: Path | None,
    as_json: bool,
) -> None:
    """Search a space of CNNs with a genetic algorithm; write the best model (or the Pareto front).

    Each candidate is built in PyTorch (or Keras 3 with --framework keras), trained briefly
    (distilled when --teacher is given), exported to ONNX, and scored by its accuracy on --val
    and its p50 latency, both measured in onnxruntime. Progress goes to stderr; the summary to stdout.

    \b
    Examples:
      onnxopt search --space examples/search_space.toml --data models/digits_train.npz \\
          --val models/digits_val.npz -o build/best.onnx --baseline models/digits_cnn.onnx
      onnxopt search ... --pareto --plot build/front.png --workers 2
      onnxopt search ... --max-latency-ms 0.03 --resume
      onnxopt search ... --framework keras
    """
    from onnxopt.core.errors import GateFailedError, InvalidInputError, OnnxoptError
    from onnxopt.nas.engine import Objective, SearchConfig, search
    from onnxopt.nas.evaluate import (
        EvalConfig,
        evaluator_for,
        load_split,
        remeasure,
        teacher_logits_for,
    )
    from onnxopt.nas.space import describe_genome, load_space

    quiet = bool(ctx.obj and ctx.obj.get("quiet"))
    # -- validate everything before the (long) search starts
    if max_latency_ms is not None and pareto:
        raise InvalidInputError("--max-latency-ms and --pareto exclude each other; choose one objective")
    if max_latency_ms is not None and max_latency_ms <= 0:
        raise InvalidInputError(f"--max-latency-ms must be > 0, got {max_latency_ms}")
    if remeasure_runs < 5:
        raise InvalidInputError(f"--remeasure-runs must be >= 5, got {remeasure_runs}")
    if output.suffix != ".onnx":
        raise InvalidInputError(f"{output}: the output must be an .onnx file")
    from onnxopt.core.model import same_file

    for what, p in (("--baseline", baseline), ("--teacher", teacher), ("--data", data_path), ("--val", val_path)):
        if p is not None and same_file(output, p):
            raise InvalidInputError(f"{output}: is also the {what} file; choose another output path")
    space = load_space(space_path)
    from onnxopt.frameworks.torch_genome import check_genes

    check_genes(space.names)  # the Keras builder understands the same genes
    if framework == "keras":
        from onnxopt.frameworks import require_keras

        require_keras()  # fail now, not in every candidate, when Keras is missing
    train, val = load_split(data_path), load_split(val_path)
    cfg = SearchConfig(
        population=population, generations=generations, elite=elite, seed=seed, pareto=pareto,
        objectives=(Objective("accuracy"), Objective("latency_ms", maximize=False)),
        limits={"latency_ms": max_latency_ms} if max_latency_ms is not None else {},
    )
    eval_cfg = EvalConfig.from_settings(space.settings.get("train", {}), epochs=epochs, seed=seed)
    if plot_path is not None:
        from onnxopt.nas.plot import _pyplot

        _pyplot()  # fail now, not after the search, when matplotlib is missing
    base_acc: float | None = None
    if baseline is not None:
        from onnxopt.core.feeds import model_feed_from_npz
        from onnxopt.core.model import load_model
        from onnxopt.measure.fidelity import accuracy

        base_proto = load_model(baseline)
        base_acc = accuracy(base_proto, model_feed_from_npz(base_proto, {"input": val[0]}, str(val_path)), val[1])
    t_logits = teacher_logits_for(teacher, train[0]) if teacher is not None else None
    executor: Any = None
    client: Any = None
    if dask_address is not None:
        try:
            from distributed import Client
        except ImportError as e:
            raise InvalidInputError("--dask needs dask: pip install 'dask[distributed]'") from e
        try:
            client = Client(dask_address, timeout=30)
        except Exception as e:
            raise InvalidInputError(f"--dask {dask_address}: cannot connect: {e}") from e
        executor = client.get_executor()

    work = workdir or output.with_name(output.name + ".search")
    models_dir = work / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    evaluator = evaluator_for(framework)(train, val, eval_cfg, teacher_logits=t_logits, workdir=models_dir)
    log_file = log_path or work / "search.jsonl"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    names = space.names

    def progress(s: Any) -> None:
        if quiet:
            return
        best = f"{s.best:.2f}%" if s.best is not None else "-"
        med = f"{s.median:.2f}%" if s.median is not None else "-"
        extra = f", feasible {s.feasible}" if max_latency_ms is not None else ""
        click.echo(
            f"generation {s.generation + 1}/{generations}: {s.evaluated} evaluated, {s.reused} reused, "
            f"{s.failed} failed; best accuracy {best}, median {med}, front {s.pareto_size}{extra} "
            f"({s.seconds:.0f} s)",
            err=True,
        )

    with open(log_file, "a" if resume else "w", encoding="utf-8") as lf:

        def on_record(r: Any) -> None:
            lf.write(json.dumps(r.to_dict()) + "\n")
            lf.flush()

        try:
            result = search(
                space, evaluator, cfg, executor=executor, workers=workers,
                checkpoint=work / "checkpoint.json", resume=resume, on_record=on_record, progress=progress,
                max_seconds=max_minutes * 60 if max_minutes is not None else None,
            )
        finally:
            if client is not None:
                client.close()

    if result.best is None:
        first = next((r.error for r in result.records if r.error), "no candidate evaluated")
        raise OnnxoptError(f"every candidate failed; first error: {first} (log: {log_file})")
    chosen = list(result.front) if pareto else [result.best]
    # -- re-measure the chosen models (and the baseline) together, on a quiet machine
    paths = {("best" if not pareto else f"front{i}"): r.metrics["model_path"] for i, r in enumerate(chosen)}  # type: ignore[index]
    if baseline is not None:
        paths["baseline"] = str(baseline)
    lat = remeasure(paths, latency_threads=eval_cfg.latency_threads, batch=eval_cfg.batch, seed=seed,
                    runs=remeasure_runs,
                    reference="baseline" if baseline is not None else None)

    rows = []
    for name, r in zip(paths, chosen):
        m = r.metrics or {}
        row = {
            "name": name, "genome": space.canonical(r.genome), "accuracy": m["accuracy"],
            "latency_ms_search": m["latency_ms"], "latency_ms": lat[name]["p50_ms"],
            "params": int(m["params"]), "size_bytes": int(m["size_bytes"]),
        }
        if baseline is not None:
            row |= {k: lat[name][k] for k in ("speedup", "ci_low", "ci_high", "significant")}
            row["accuracy_delta"] = m["accuracy"] - (base_acc or 0.0)
        rows.append(row)

    gate_error: str | None = None
    if max_latency_ms is not None and not result.feasible:
        gate_error = (
            f"no candidate met --max-latency-ms {max_latency_ms}: the closest is {describe_genome(space.canonical(result.best.genome))} "
            f"at {result.best.value('latency_ms'):.4f} ms, {result.best.value('accuracy'):.2f}% "
            f"(kept at {result.best.metrics['model_path']}; not written to {output})"  # type: ignore[index]
        )
    written: list[str] = []
    if gate_error is None:
        from onnxopt.core.model import load_model, save_model

        src = chosen[0].metrics["model_path"]  # type: ignore[index]
        save_model(load_model(src), output)
        written.append(str(output))
        if pareto:
            for i, r in enumerate(chosen):
                p = _front_path(output, i)
                shutil.copyfile(r.metrics["model_path"], p)  # type: ignore[index]
                rows[i]["file"] = str(p)
                written.append(str(p))
        else:
            rows[0]["file"] = str(output)
    if plot_path is not None:
        from onnxopt.nas.plot import plot_front

        base_pt = None
        if baseline is not None and base_acc is not None:
            base_pt = {"accuracy": base_acc, "latency_ms": lat["baseline"]["p50_ms"]}
        plot_front(result.records, result.front if pareto else _front(result), plot_path, baseline=base_pt)

    summary = {
        "evaluations": result.evaluations,
        "failed": sum(not r.ok for r in result.records),
        "feasible": result.feasible,
        "models": rows,
        "baseline": {"path": str(baseline), "accuracy": base_acc, "latency_ms": lat["baseline"]["p50_ms"]}
        if baseline is not None else None,
        "written": written,
        "log": str(log_file),
        "workdir": str(work),
        "history": [h.to_dict() for h in result.history],
        "train": eval_cfg.to_dict(),
        "framework": framework,
    }
    if as_json:
        echo_json(summary)
    else:
        _print_table(summary, names)
    if gate_error is not None:
        raise GateFailedError(gate_error)


def _front(result: Any) -> Any:
    from onnxopt.nas.engine import pareto_front

    return pareto_front(result.records, result.config)


def _print_table(summary: dict[str, Any], names: tuple[str, ...]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from onnxopt.nas.space import describe_genome

    console = Console()
    t = Table(title=f"search: {summary['evaluations']} candidates evaluated ({summary['failed']} failed)")
    for col in ("model", "accuracy", "latency p50", "speedup vs baseline", "params", "size", "genome"):
        t.add_column(col, overflow="fold")
    base = summary["baseline"]
    if base is not None:
        t.add_row("baseline", f"{base['accuracy']:.2f}%", f"{base['latency_ms']:.4f} ms", "1.00x", "", "",
                  escape(Path(base["path"]).name))
    for r in summary["models"]:
        sp = "-"
        if "speedup" in r:
            sp = f"{r['speedup']:.2f}x [{r['ci_low']:.2f}, {r['ci_high']:.2f}]"
        t.add_row(
            escape(Path(r.get("file", r["name"])).name), f"{r['accuracy']:.2f}%", f"{r['latency_ms']:.4f} ms", sp,
            f"{r['params']:,}", human_bytes(r["size_bytes"]), escape(describe_genome(r["genome"], names)),
        )
    console.print(t)
    console.print(f"log: {escape(summary['log'])}  work dir: {escape(summary['workdir'])}")
