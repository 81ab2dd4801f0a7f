"""Distill a VGG-style digits teacher into a ~34x smaller student, in PyTorch and in Keras.

    python examples/distill_digits.py            # both frameworks, one seed (~2-4 min on 2 cores)
    python examples/distill_digits.py --framework keras

1. train the VGG-style teacher (PyTorch) on the digits training split and export it to ONNX
   (parity-checked);
2. distill it into a small PyTorch student (native teacher, logits cached once) and into a
   small Keras student (the ONNX teacher: logits computed once in onnxruntime);
3. each run also trains the same student on labels alone, exports both students, and reports
   teacher vs distilled vs labels-only: accuracy, parameters, size and onnxruntime latency.

benchmarks/distill_demo.py repeats this over 3 seeds for the numbers quoted in the README.
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
    ap.add_argument("--out", type=Path, default=HERE.parent / "build" / "distill")
    args = ap.parse_args()

    import torch
    from distill_models import keras_student, torch_student, torch_teacher

    from onnxopt.core.feeds import load_labelled_npz
    from onnxopt.distillation.api import DistillConfig, distill_model, export_student
    from onnxopt.frameworks import torch_distill

    torch.set_num_threads(1)  # measured fastest for these small models on a shared 2-core machine
    train = load_labelled_npz(HERE.parent / "models" / "digits_train.npz")
    val = load_labelled_npz(HERE.parent / "models" / "digits_val.npz")

    # 1. the teacher: trained on labels alone (teacher=None), then exported with a parity check
    torch.manual_seed(0)
    teacher, _ = torch_distill.distill(None, torch_teacher(), train, val, DistillConfig(epochs=10, patience=0))
    teacher_onnx = export_student(teacher, "torch", val[0], output=args.out / "teacher.onnx").model

    config = DistillConfig(temperature=4.0, alpha=0.7, epochs=20, patience=6, seed=0)
    frameworks = ["torch", "keras"] if args.framework == "both" else [args.framework]
    for fw in frameworks:
        if fw == "torch":
            torch.manual_seed(0)
            student, t_arg = torch_student(), teacher
        else:
            import keras

            keras.utils.set_random_seed(0)
            student, t_arg = keras_student(), args.out / "teacher.onnx"
        # 2-3. distill, train the labels-only twin, export both, measure
        result = distill_model(t_arg, student, train, val, config, teacher_onnx=teacher_onnx,
                               output=args.out / f"student_{fw}.onnx")
        print(f"\n{fw} student (early stopping and accuracy on the validation split):")
        for r in result.rows:
            print(f"  {r.name:12s} {r.accuracy:6.2f}%  {r.params:>9,} params  {r.file_size / 1024:8.1f} KiB  "
                  f"p50 {r.latency_p50_ms:.3f} ms  ({r.latency_ratio:.2f}x teacher)")
    print(f"\nmodels written to {args.out}")


if __name__ == "__main__":
    main()
