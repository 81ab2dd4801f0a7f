"""Distill a 3-conv digits teacher (749k parameters) into a 1,370-parameter student, in PyTorch and in Keras.

    python examples/distill_digits.py            # both frameworks, one seed (a few minutes on 2 cores)
    python examples/distill_digits.py --framework keras --size 1/50

1. train the teacher (PyTorch, labels only) on the digits training split and export it to ONNX
   (parity-checked);
2. hand the student to `distill_model` with its defaults: the labels-only baseline and the
   distilled student are trained until the validation split stops improving, T and alpha are
   tuned on the validation split first, and the better of the two students is handed back;
3. print what was tried, where each run stopped and why, and which student was written.

The PyTorch student learns from the native teacher (logits cached once), the Keras student from
its ONNX export (logits computed once in onnxruntime). benchmarks/distill_demo.py repeats this
over three student sizes and 3 seeds for the table in the README.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def main() -> None:
    """Run the example."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--framework", choices=["torch", "keras", "both"], default="both")
    ap.add_argument("--size", choices=["1/500", "1/50", "1/10"], default="1/500")
    ap.add_argument("--out", type=Path, default=HERE.parent / "build" / "distill")
    args = ap.parse_args()

    import torch
    from distill_models import keras_sized_student, torch_sized_student, torch_teacher3

    from onnxopt.core.feeds import load_labelled_npz
    from onnxopt.distillation.api import DistillConfig, distill_model, export_student
    from onnxopt.frameworks import torch_distill

    torch.set_num_threads(1)  # measured fastest for these small models on a shared 2-core machine
    train = load_labelled_npz(HERE.parent / "models" / "digits_train.npz")
    val = load_labelled_npz(HERE.parent / "models" / "digits_val.npz")

    # 1. the teacher: trained on labels alone (teacher=None, a fixed budget), exported with a parity check
    torch.manual_seed(0)
    teacher, _ = torch_distill.distill(None, torch_teacher3(), train, val, DistillConfig(epochs=6, patience=0))
    teacher_onnx = export_student(teacher, "torch", val[0], output=args.out / "teacher.onnx").model

    frameworks = ["torch", "keras"] if args.framework == "both" else [args.framework]
    for fw in frameworks:
        if fw == "torch":
            torch.manual_seed(0)
            student, t_arg = torch_sized_student(args.size), teacher
        else:
            import keras

            keras.utils.set_random_seed(0)
            student, t_arg = keras_sized_student(args.size), args.out / "teacher.onnx"
        # 2. defaults: baseline, tuning, distillation to convergence, the better student handed back
        result = distill_model(t_arg, student, train, val, DistillConfig(threads=1), teacher_onnx=teacher_onnx,
                               output=args.out / f"student_{fw}.onnx")
        # 3. what happened
        print(f"\n{fw} student (stopping, tuning and the choice on the validation split):")
        for r in result.rows:
            print(f"  {r.name:12s} {r.val_accuracy:6.2f}%  {r.params:>9,} params  {r.file_size / 1024:8.1f} KiB  "
                  f"p50 {r.latency_p50_ms:.3f} ms  ({r.latency_ratio:.2f}x teacher)")
        if result.tuning is not None:
            print(f"  {result.tuning.describe()}")
        print(f"  distilled: stopped at epoch {result.history.epochs_run}: {result.history.stop_reason}")
        if result.baseline_history is not None:
            print(f"  labels-only: stopped at epoch {result.baseline_history.epochs_run}: "
                  f"{result.baseline_history.stop_reason}")
        print(f"  {result.verdict}")
    print(f"\nmodels written to {args.out}")


if __name__ == "__main__":
    main()
