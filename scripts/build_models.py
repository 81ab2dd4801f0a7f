"""Rebuild models/: digits data splits, the trained digits CNN, and the large benchmark model."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
SEED = 0


def digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Deterministic stratified splits of scikit-learn digits as float32 NCHW in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    x_train, x_val, y_train, y_val = train_test_split(
        x, y, test_size=0.2, random_state=SEED, stratify=y
    )
    # Calibration samples come from the training split, never from validation.
    rng = np.random.default_rng(SEED)
    calib_idx = np.sort(rng.choice(len(x_train), size=200, replace=False))
    return {
        "train": (x_train, y_train),
        "val": (x_val, y_val),
        "calib": (x_train[calib_idx], y_train[calib_idx]),
    }


def _load_factory(path: Path):  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def train_digits_cnn(splits: dict[str, tuple[np.ndarray, np.ndarray]], epochs: int = 30) -> tuple[object, float]:
    """Train the PyTorch digits CNN with a seeded schedule; return (module, val accuracy)."""
    import torch

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    model = _load_factory(MODELS / "digits_cnn.py").build()
    x_train, y_train = (torch.from_numpy(a) for a in splits["train"])
    x_val, y_val = (torch.from_numpy(a) for a in splits["val"])
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    gen = torch.Generator().manual_seed(SEED)
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(perm), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x_train[idx]), y_train[idx])
            loss.backward()
            opt.step()
        sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(x_val).argmax(1) == y_val).float().mean())
    return model, acc


def export_torch(model: object, example: np.ndarray, path: Path) -> None:
    """Export with the TorchScript exporter, dynamic batch, opset 17."""
    import torch

    torch.onnx.export(
        model,
        (torch.from_numpy(example),),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )


def build_large(path: Path) -> None:
    """A ResNet-18-style network at 1x3x224x224 with seeded random weights (for benchmarks)."""
    import torch

    sys.path.insert(0, str(ROOT / "scripts"))
    from resnet import resnet18

    torch.manual_seed(SEED)
    model = resnet18(num_classes=1000).eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    export_torch(model, np.zeros((1, 3, 224, 224), np.float32), path)


def main() -> None:
    """Build every sample model and data file."""
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--skip-large", action="store_true", help="do not build models/large/")
    args = ap.parse_args()
    import torch

    splits = digits_splits()
    for name, (x, y) in splits.items():
        np.savez_compressed(MODELS / f"digits_{name}.npz", input=x, labels=y)
    model, acc = train_digits_cnn(splits)
    torch.save(model.state_dict(), MODELS / "digits_cnn.pt")
    export_torch(model, splits["val"][0][:1], MODELS / "digits_cnn.onnx")
    info = {"digits_cnn": {"val_accuracy": round(acc * 100, 2), "val_samples": int(len(splits["val"][1]))}}
    (MODELS / "accuracy.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"digits_cnn: validation accuracy {acc * 100:.2f}%")
    if not args.skip_large:
        build_large(MODELS / "large" / "resnet18.onnx")
        print("large/resnet18.onnx built")


if __name__ == "__main__":
    main()
