"""Issue 17's case end to end: digits, a TorchScript 3-conv teacher (~749k parameters), a ~1/500
student (one 8-channel conv + linear, 1,370 parameters), `onnxopt distill` with its defaults.

The written student must never be worse than the labels-only one on the validation split, and
must reach >= 97% there. Slow (a minute or two on 2 cores): the teacher is trained here and
the command tunes T and alpha over 12 settings.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from onnxopt.core.feeds import load_labelled_npz
from onnxopt.distillation.api import DistillConfig

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.torch, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def test_defaults_hand_back_a_student_never_worse_than_labels_only(tmp_path: Path) -> None:
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        from distill_models import tiny_student, torch_teacher3
    finally:
        sys.path.remove(str(ROOT / "examples"))
    from onnxopt.cli import main
    from onnxopt.core.model import load_model
    from onnxopt.frameworks.torch_distill import distill, param_count
    from onnxopt.measure.fidelity import accuracy

    train, val = (load_labelled_npz(ROOT / "models" / f"digits_{s}.npz") for s in ("train", "val"))
    torch.manual_seed(0)
    teacher, hist = distill(None, torch_teacher3(), train, val, DistillConfig(epochs=3, patience=0, threads=1))
    assert param_count(teacher) == 749_495 and param_count(tiny_student()) == 1_370
    assert hist.best_val_accuracy > 95
    tpath = tmp_path / "teacher.pt"
    torch.jit.trace(teacher.eval(), torch.from_numpy(train[0][:2])).save(str(tpath))

    out = tmp_path / "student.onnx"
    buf = io.StringIO()
    args = ["distill", "--teacher", str(tpath), "--student", f"{ROOT / 'examples' / 'distill_models.py'}:tiny_student",
            "--data", str(ROOT / "models" / "digits_train.npz"), "--val", str(ROOT / "models" / "digits_val.npz"),
            "-o", str(out), "--no-bench", "--json"]
    with contextlib.redirect_stdout(buf), pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 0
    report = json.loads(buf.getvalue())
    rows = {r["name"]: r for r in report["rows"]}
    written = rows["student" if report["written"] == "distilled" else "labels-only"]
    assert written["val_accuracy"] >= rows["labels-only"]["val_accuracy"]
    assert written["val_accuracy"] >= 97.0
    # the file on disk is that student: its accuracy recomputed from the labels
    model = load_model(out)
    assert accuracy(model, {"input": val[0]}, val[1]) == pytest.approx(written["val_accuracy"])
    # defaults: tuned over the whole grid, both students trained until validation stopped improving
    assert report["tuning"] and len([t for t in report["tuning"]["trials"] if t["status"] == "ok"]) == 12
    for h in (report["history"], report["baseline_history"]):
        assert h["stop_reason"].startswith("converged"), h["stop_reason"]
        assert 20 <= h["epochs_run"] < 300
    assert np.isfinite(report["seconds"])
