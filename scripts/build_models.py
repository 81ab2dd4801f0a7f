"""Rebuild models/: digits data splits, the trained digits CNN and demo ResNet, and the large benchmark model."""

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
DEMO_EPOCHS = 8  # the demo ResNet reaches the digits CNN's accuracy in a few epochs


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


def train_digits_cnn(
    splits: dict[str, tuple[np.ndarray, np.ndarray]], epochs: int = 30, source: str = "digits_cnn.py"
) -> tuple[object, float]:
    """Train a PyTorch digits model (models/<source>'s build()) with a seeded schedule; return (module, val accuracy)."""
    import torch

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(2)
    model = _load_factory(MODELS / source).build()
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


def export_torch(model: object, example: np.ndarray, path: Path, data: dict[str, np.ndarray] | None = None) -> None:
    """Export with onnxopt's converter (TorchScript exporter: deterministic), dynamic batch, opset 17, parity-checked."""
    from onnxopt.conversion.api import from_torch

    r = from_torch(
        model,
        (example,),
        output=path,
        exporter="torchscript",
        input_names=["input"],
        output_names=["logits"],
        opset=17,
        data=data,
    )
    print(f"{path.name}: parity max abs diff {r.parity.max_abs:.2e} on {r.parity.samples} samples")


def train_digits_keras(splits: dict[str, tuple[np.ndarray, np.ndarray]], epochs: int = 30) -> tuple[object, float]:
    """Train the Keras digits model (models/digits_keras.py) with a seeded schedule; return (model, val accuracy)."""
    from onnxopt.frameworks import require_keras

    keras = require_keras()
    import tensorflow as tf

    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    model = _load_factory(MODELS / "digits_keras.py").build()
    x_train, y_train = splits["train"]
    x_val, y_val = splits["val"]
    steps = epochs * int(np.ceil(len(x_train) / 64))
    schedule = keras.optimizers.schedules.CosineDecay(3e-3, decay_steps=steps)
    model.compile(
        optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=64, epochs=epochs, shuffle=True, verbose=0)
    logits = model.predict(x_val, batch_size=256, verbose=0)
    acc = float((logits.argmax(1) == y_val).mean())
    return model, acc


def build_keras(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """Train and save models/digits_keras.keras, check that it converts; return val accuracy."""
    from onnxopt.conversion.api import from_keras

    trained, acc = train_digits_keras(splits)
    # Save a fresh, uncompiled copy: no optimizer state in the file (a quarter of the size).
    model = _load_factory(MODELS / "digits_keras.py").build()
    model.set_weights(trained.get_weights())  # type: ignore[attr-defined]
    model.save(MODELS / "digits_keras.keras")  # type: ignore[attr-defined]
    x_val, _ = splits["val"]
    r = from_keras(model, output_names=["logits"], data={"input": x_val})
    print(f"digits_keras.keras -> ONNX: parity max abs diff {r.parity.max_abs:.2e} on {r.parity.samples} samples")
    print(f"digits_keras: validation accuracy {acc * 100:.2f}%")
    return acc


def build_demo(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> float:
    """Train and export models/digits_resnet.{pt,onnx}, the model of `make demo`; return val accuracy."""
    import torch

    model, acc = train_digits_cnn(splits, epochs=DEMO_EPOCHS, source="digits_resnet.py")
    torch.save(model.state_dict(), MODELS / "digits_resnet.pt")  # type: ignore[attr-defined]
    export_torch(model, splits["val"][0][:1], MODELS / "digits_resnet.onnx", data={"input": splits["val"][0]})
    print(f"digits_resnet: validation accuracy {acc * 100:.2f}%")
    return acc


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
    ap.add_argument("--only-keras", action="store_true", help="only (re)build the Keras digits model")
    ap.add_argument("--only-demo", action="store_true", help="only (re)build the demo ResNet (models/digits_resnet.*)")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))  # the onnxopt package of this checkout
    splits = digits_splits()
    info_path = MODELS / "accuracy.json"
    if args.only_keras or args.only_demo:
        info = json.loads(info_path.read_text()) if info_path.exists() else {}
        name, acc = ("digits_keras", build_keras(splits)) if args.only_keras else ("digits_resnet", build_demo(splits))
        info[name] = {"val_accuracy": round(acc * 100, 2), "val_samples": int(len(splits["val"][1]))}
        info_path.write_text(json.dumps(info, indent=2) + "\n")
        return
    import torch

    for name, (x, y) in splits.items():
        np.savez_compressed(MODELS / f"digits_{name}.npz", input=x, labels=y)
    model, acc = train_digits_cnn(splits)
    torch.save(model.state_dict(), MODELS / "digits_cnn.pt")
    export_torch(model, splits["val"][0][:1], MODELS / "digits_cnn.onnx", data={"input": splits["val"][0]})
    info = {"digits_cnn": {"val_accuracy": round(acc * 100, 2), "val_samples": int(len(splits["val"][1]))}}
    print(f"digits_cnn: validation accuracy {acc * 100:.2f}%")
    acc_d = build_demo(splits)
    info["digits_resnet"] = {"val_accuracy": round(acc_d * 100, 2), "val_samples": int(len(splits["val"][1]))}
    from onnxopt.core.errors import MissingExtraError

    try:
        acc_k = build_keras(splits)
        info["digits_keras"] = {"val_accuracy": round(acc_k * 100, 2), "val_samples": int(len(splits["val"][1]))}
    except MissingExtraError as e:
        print(f"digits_keras skipped: {e}")
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    if not args.skip_large:
        build_large(MODELS / "large" / "resnet18.onnx")
        print("large/resnet18.onnx built")


if __name__ == "__main__":
    main()
