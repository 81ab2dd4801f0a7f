"""PyTorch -> ONNX conversion: parity, dynamic batch, metadata, exporters, sources and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest

from onnxopt.conversion.api import ConvertOptions, convert_source, from_torch
from onnxopt.conversion.parity import check_parity
from onnxopt.core.errors import InvalidInputError, OnnxoptError
from onnxopt.core.runtime import create_session

torch = pytest.importorskip("torch")
nn = torch.nn

pytestmark = pytest.mark.torch
ROOT = Path(__file__).resolve().parents[1]


class Residual(nn.Module):
    """conv-bn-relu-conv-bn + identity, then pool and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.b1 = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1, bias=False)
        self.b2 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
        return self.head(torch.relu(x + y).mean(dim=(2, 3)))


class TwoInputs(nn.Module):
    """Two inputs, two outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(6, 8)
        self.b = nn.Linear(3, 8)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = torch.tanh(self.a(left)) * torch.sigmoid(self.b(right))
        return h.sum(dim=1, keepdim=True), h


def _init(m: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for p in m.parameters():
        nn.init.normal_(p, std=0.3)
    for b in m.buffers():
        if b.dtype.is_floating_point:
            b.uniform_(0.5, 1.5)
    return m.eval()


def _sequential() -> nn.Module:
    return _init(nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4)))


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return create_session(model).run(None, feed)


def test_sequential_torchscript_parity_dynamic_batch_metadata(tmp_path: Path) -> None:
    m = _sequential()
    out = tmp_path / "seq.onnx"
    r = from_torch(m, (np.zeros((1, 4, 4), np.float32),), exporter="torchscript", output=out)
    assert r.exporter == "torchscript" and r.framework == "torch"
    assert r.parity.passed and r.parity.max_abs < 1e-5 and r.parity.samples == 3
    saved = onnx.load(str(out))
    meta = {p.key: p.value for p in saved.metadata_props}
    assert meta["onnxopt.source_framework"] == "torch"
    assert meta["onnxopt.source_framework_version"] == torch.__version__
    assert meta["onnxopt.exporter"] == "torchscript"
    assert float(meta["onnxopt.parity_max_abs"]) == pytest.approx(r.parity.max_abs, rel=1e-2, abs=1e-12)
    assert [i.name for i in saved.graph.input] == ["input"]
    assert [o.name for o in saved.graph.output] == ["output"]
    for batch in (1, 5):
        x = np.random.default_rng(batch).standard_normal((batch, 4, 4)).astype(np.float32)
        (got,) = _run(saved, {"input": x})
        with torch.no_grad():
            want = m(torch.from_numpy(x)).numpy()
        assert got.shape == (batch, 4)
        np.testing.assert_allclose(got, want, atol=1e-5)
    assert r.report["outputs"][0]["shape"] == ["batch", 4]


def test_residual_auto_tries_both_parity_and_batch() -> None:
    m = _init(Residual())
    x = torch.randn(1, 4, 6, 6)
    r = from_torch(m, (x,), input_names=["pixels"])
    assert r.exporter in ("dynamo", "torchscript") and r.parity.passed
    assert r.parity.max_abs < 1e-4
    assert [a["exporter"] for a in r.report["attempts"]] == ["dynamo", "torchscript"]
    assert all(a["ok"] for a in r.report["attempts"]), r.report["attempts"]
    assert r.report["exporter_reason"]
    assert r.model.graph.input[0].name == "pixels"
    for batch in (1, 5):
        xb = np.random.default_rng(0).standard_normal((batch, 4, 6, 6)).astype(np.float32)
        (got,) = _run(r.model, {"pixels": xb})
        with torch.no_grad():
            np.testing.assert_allclose(got, m(torch.from_numpy(xb)).numpy(), atol=1e-4)


def test_two_inputs_two_outputs_names() -> None:
    m = _init(TwoInputs())
    ex = (np.zeros((1, 6), np.float32), np.zeros((1, 3), np.float32))
    r = from_torch(m, ex, exporter="torchscript", output_names=["total", "hidden"])
    assert [i.name for i in r.model.graph.input] == ["left", "right"]
    assert [o.name for o in r.model.graph.output] == ["total", "hidden"]
    assert set(r.parity.per_output) == {"total", "hidden"}
    rng = np.random.default_rng(3)
    feed = {"left": rng.standard_normal((5, 6)).astype(np.float32),
            "right": rng.standard_normal((5, 3)).astype(np.float32)}
    total, hidden = _run(r.model, feed)
    assert total.shape == (5, 1) and hidden.shape == (5, 8)


def test_static_batch_keeps_fixed_shape() -> None:
    r = from_torch(_sequential(), (np.zeros((2, 4, 4), np.float32),), exporter="torchscript", dynamic_batch=False)
    assert r.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2


def test_parity_failure_names_output_and_writes_nothing(tmp_path: Path) -> None:
    class DataDependent(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # the TorchScript tracer freezes the Python branch taken on the example input
            if bool((x == 1).all()):
                return x * 2
            return x - 1

    out = tmp_path / "dd.onnx"
    with pytest.raises(OnnxoptError, match="parity check failed: output 'output'"):
        from_torch(DataDependent(), (np.ones((1, 3), np.float32),), exporter="torchscript", output=out)
    assert not out.exists()


def test_unsupported_op_message_is_short() -> None:
    class Fn(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def, override]
            return torch.from_numpy(np.sort(x.detach().numpy(), axis=-1))

    class UsesNumpy(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return Fn.apply(x)

    with pytest.raises(OnnxoptError) as ei:
        from_torch(UsesNumpy(), (np.ones((2, 3), np.float32),))
    msg = str(ei.value)
    assert "dynamo:" in msg and "torchscript:" in msg
    assert "\n" not in msg and len(msg) < 800


def test_check_parity_detects_difference(mlp_model: onnx.ModelProto) -> None:
    rng = np.random.default_rng(0)
    feed = {"input": rng.standard_normal((4, 16)).astype(np.float32)}
    (ref,) = _run(mlp_model, feed)
    ok = check_parity([[ref]], mlp_model, [feed])
    assert ok.passed and ok.max_abs < 1e-6
    bad = check_parity([[ref + 1e-2]], mlp_model, [feed])
    assert not bad.passed and bad.worst_output == "logits"
    assert bad.max_abs == pytest.approx(1e-2, rel=1e-3)


def test_options_validate() -> None:
    with pytest.raises(InvalidInputError, match="--opset"):
        ConvertOptions(opset=5)
    with pytest.raises(InvalidInputError, match="--exporter"):
        ConvertOptions(exporter="magic")
    with pytest.raises(InvalidInputError, match="duplicate"):
        ConvertOptions(input_names=("a", "a"))


def test_wrong_example_shape_is_one_clear_error() -> None:
    with pytest.raises(InvalidInputError, match="fails on inputs shaped"):
        from_torch(_sequential(), (np.zeros((1, 5, 5), np.float32),), exporter="torchscript")


def test_not_a_module() -> None:
    with pytest.raises(InvalidInputError, match="expected a torch.nn.Module"):
        from_torch(lambda x: x, (np.zeros((1, 2), np.float32),))


def test_digits_cnn_with_real_data() -> None:
    sys.path.insert(0, str(ROOT / "models"))
    try:
        import digits_cnn
    finally:
        sys.path.pop(0)
    m = digits_cnn.build()
    m.load_state_dict(torch.load(ROOT / "models" / "digits_cnn.pt", weights_only=True))
    data = dict(np.load(ROOT / "models" / "digits_val.npz"))
    r = from_torch(m, (data["input"][:1],), exporter="torchscript", output_names=["logits"], data=data)
    assert r.parity.passed and r.parity.max_abs < 1e-4
    assert r.parity.samples == 3 + 256
    json.dumps(r.report)


FACTORY = textwrap.dedent("""
    import torch
    from torch import nn

    def build():
        return nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))

    def broken():
        raise ValueError("no such width")

    def wrong():
        return "a string"
""")


@pytest.fixture
def factory_file(tmp_path: Path) -> Path:
    p = tmp_path / "net.py"
    p.write_text(FACTORY)
    return p


def test_factory_with_weights_and_input_shape(factory_file: Path, tmp_path: Path) -> None:
    torch.manual_seed(7)
    trained = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)).eval()
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    r = convert_source(f"{factory_file}:build", weights=str(tmp_path / "w.pt"), input_shapes={"x": (1, 5)},
                       exporter="torchscript", output=tmp_path / "o.onnx")
    assert r.model.graph.input[0].name == "x" and r.parity.passed
    x = np.random.default_rng(0).standard_normal((5, 5)).astype(np.float32)
    (got,) = _run(onnx.load(str(tmp_path / "o.onnx")), {"x": x})
    with torch.no_grad():
        np.testing.assert_allclose(got, trained(torch.from_numpy(x)).numpy(), atol=1e-5)


def test_torchscript_and_exported_program_files(tmp_path: Path) -> None:
    m = _init(Residual())
    x = torch.randn(2, 4, 6, 6)
    torch.jit.trace(m, (x,)).save(str(tmp_path / "m.pt"))
    ep = torch.export.export(m, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    r1 = convert_source(str(tmp_path / "m.pt"), input_shapes={"input": (1, 4, 6, 6)})
    r2 = convert_source(str(tmp_path / "m.pt2"))
    assert r1.exporter == "torchscript" and r2.exporter == "dynamo"
    for r in (r1, r2):
        assert r.parity.passed and r.parity.max_abs < 1e-4
        for batch in (1, 5):
            xb = np.random.default_rng(batch).standard_normal((batch, 4, 6, 6)).astype(np.float32)
            (got,) = _run(r.model, {"input": xb})
            with torch.no_grad():
                np.testing.assert_allclose(got, m(torch.from_numpy(xb)).numpy(), atol=1e-4)


def test_bad_sources(factory_file: Path, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match=r"broken raised ValueError: no such width"):
        convert_source(f"{factory_file}:broken", input_shapes={"x": (1, 5)})
    with pytest.raises(InvalidInputError, match="returned str; it must return a torch.nn.Module"):
        convert_source(f"{factory_file}:wrong")
    with pytest.raises(InvalidInputError, match="has no attribute 'nope'"):
        convert_source(f"{factory_file}:nope")
    with pytest.raises(InvalidInputError, match="needs an input shape"):
        convert_source(f"{factory_file}:build")
    with pytest.raises(InvalidInputError, match="does not fit the module"):
        convert_source(f"{factory_file}:build", weights=str(ROOT / "models" / "digits_cnn.pt"),
                       input_shapes={"x": (1, 5)})
    with pytest.raises(InvalidInputError, match="torch.save\\(\\) pickle"):
        convert_source(str(ROOT / "models" / "digits_cnn.pt"))
    text = tmp_path / "model.pt"
    text.write_text("hello")
    with pytest.raises(InvalidInputError, match="not a TorchScript model"):
        convert_source(str(text), input_shapes={"input": (1, 2)})
    with pytest.raises(InvalidInputError, match="already an ONNX model"):
        convert_source(str(ROOT / "models" / "digits_cnn.onnx"))
    with pytest.raises(InvalidInputError, match="no such file or importable module"):
        convert_source("no_such_pkg_xyz.mod:build")
    (tmp_path / "saved_model.pb").touch()
    with pytest.raises(InvalidInputError, match="not a torch model"):
        convert_source(str(tmp_path), framework="torch")


def _cli(*args: str, pre: str = "") -> subprocess.CompletedProcess[str]:
    code = f"import sys\n{pre}\nfrom onnxopt.cli import main\nmain(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_cli_parity_failure_one_line_exit_1_no_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from onnxopt.cli import main

    src = tmp_path / "dd.py"
    src.write_text(textwrap.dedent("""
        import torch
        class DataDependent(torch.nn.Module):
            def forward(self, x):
                if bool((x == 0).all()):
                    return x * 2
                return x - 1
        def build():
            return DataDependent()
    """))
    out = tmp_path / "o.onnx"
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", f"{src}:build", "--input-shape", "1,3", "--exporter", "torchscript", "-o", str(out)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "parity check failed: output 'output'" in lines[0]
    assert not out.exists() and list(tmp_path.iterdir()) == [src]


def test_cli_missing_extra(tmp_path: Path, factory_file: Path) -> None:
    r = _cli("convert", str(ROOT / "models" / "digits_keras.keras"), "-o", str(tmp_path / "o.onnx"),
             pre="sys.modules['tensorflow'] = None; sys.modules['keras'] = None")
    assert r.returncode == 1
    assert r.stderr.strip() == "onnxopt: error: tensorflow is not installed: pip install 'onnxopt[keras]'"
    r = _cli("convert", f"{factory_file}:build", "--input-shape", "x=1,5", "-o", str(tmp_path / "o.onnx"),
             pre="sys.modules['torch'] = None")
    assert r.returncode == 1 and "pip install 'onnxopt[torch]'" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


def test_cli_convert_digits_json(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from onnxopt.cli import cli

    out = tmp_path / "d.onnx"
    r = CliRunner().invoke(cli, [
        "convert", str(ROOT / "models" / "digits_cnn.py") + ":build", "--weights", str(ROOT / "models" / "digits_cnn.pt"),
        "--data", str(ROOT / "models" / "digits_val.npz"), "--exporter", "torchscript", "--output-names", "logits",
        "-o", str(out), "--json",
    ])
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    assert d["parity"]["passed"] and d["parity"]["max_abs"] < 1e-4 and d["parity"]["samples"] == 259
    assert d["outputs"][0] == {"name": "logits", "dtype": "float", "shape": ["batch", 10]}
    (logits,) = _run(onnx.load(str(out)), {"input": np.load(ROOT / "models" / "digits_val.npz")["input"]})
    assert logits.shape == (360, 10)
