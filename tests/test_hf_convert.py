"""`convert` of Hugging Face model folders (tiny BERT-style models built from a config here) and
`--dynamic` on a non-HF source: names, dynamic batch and sequence axes, parity recomputed with
transformers itself at several sequence lengths, sentence-transformers pooling, one-line errors."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from onnxopt.conversion.api import convert_source
from onnxopt.conversion.dynamic import dim_labels, parse_dynamic
from onnxopt.core.errors import InvalidInputError, OnnxoptError, UnsupportedModelError
from onnxopt.core.runtime import create_session

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from tests.hf_models import SEQ_MAX, bert_folder, sentence_transformers_folder, tiny_config  # noqa: E402

pytestmark = [pytest.mark.torch, pytest.mark.slow]


def _batch(rng: np.random.Generator, vocab: int, batch: int, length: int) -> dict[str, np.ndarray]:
    """Token ids with rows padded to length, length/2, 1."""
    ids = rng.integers(5, vocab, (batch, length)).astype(np.int64)
    mask = np.zeros((batch, length), dtype=np.int64)
    for r in range(batch):
        mask[r, : max(1, length >> r)] = 1
    return {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


def _reference(folder: Path, cls: type, feed: dict[str, np.ndarray]) -> object:
    model = cls.from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.no_grad():
        return model(**{k: torch.from_numpy(v) for k, v in feed.items()})


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bert_folder(tmp_path_factory.mktemp("hf") / "encoder")


def test_encoder_names_axes_and_parity_at_several_lengths(encoder_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "enc.onnx"
    r = convert_source(str(encoder_dir), exporter="torchscript", output=out)
    dims = dim_labels(r.model)
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
                    "token_type_ids": ["batch", "sequence"], "last_hidden_state": ["batch", "sequence", 32]}
    assert r.report["source_model"]["task"] == "feature-extraction"
    by_input = r.report["parity_by_input"]
    assert sorted(e["inputs"]["input_ids"][1] for e in by_input) == [8, SEQ_MAX]
    assert all(e["max_abs"] < 1e-4 for e in by_input)
    assert r.parity.passed and r.parity.max_abs < 1e-4
    sess = create_session(str(out))
    rng = np.random.default_rng(1)
    for length in (3, 8, 40, SEQ_MAX):  # sizes never exported nor checked by convert itself
        feed = _batch(rng, 100, 2, length)
        got = sess.run(None, feed)[0]
        ref = _reference(encoder_dir, transformers.BertModel, feed).last_hidden_state.numpy()
        assert got.shape == (2, length, 32)
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


def test_auto_exporter_choice_is_reported(encoder_dir: Path) -> None:
    r = convert_source(str(encoder_dir))  # dynamo and torchscript, parity then latency on real ids
    assert {a["exporter"] for a in r.report["attempts"]} == {"dynamo", "torchscript"}
    assert r.exporter in ("dynamo", "torchscript") and r.parity.passed
    assert dim_labels(r.model)["input_ids"] == ["batch", "sequence"]
    assert "benchmark failed" not in r.report["exporter_reason"]


@pytest.mark.parametrize("kind,labels", [("seq", 3), ("tok", 5)])
def test_classification_logits(tmp_path: Path, kind: str, labels: int) -> None:
    folder = bert_folder(tmp_path / kind, kind, num_labels=labels)
    r = convert_source(str(folder), exporter="torchscript")
    dims = dim_labels(r.model)
    want = ["batch", labels] if kind == "seq" else ["batch", "sequence", labels]
    assert dims["logits"] == want
    cls = transformers.BertForSequenceClassification if kind == "seq" else transformers.BertForTokenClassification
    feed = _batch(np.random.default_rng(2), 100, 3, 24)
    got = create_session(r.model).run(None, feed)[0]
    ref = _reference(folder, cls, feed).logits.numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)
    assert (got.argmax(-1) == ref.argmax(-1)).all()


@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_sentence_transformers_pooling_and_normalization(tmp_path: Path, pooling: str) -> None:
    folder = sentence_transformers_folder(tmp_path / f"st-{pooling}", pooling=pooling)
    r = convert_source(str(folder), exporter="torchscript")
    assert [o.name for o in r.model.graph.output] == ["sentence_embedding"]
    assert dim_labels(r.model)["sentence_embedding"] == ["batch", 32]
    assert r.report["source_model"]["pooling"] == [pooling] and r.report["source_model"]["normalize"]
    feed = _batch(np.random.default_rng(3), 100, 3, 20)
    got = create_session(r.model).run(None, feed)[0]
    h = _reference(folder, transformers.BertModel, feed).last_hidden_state.numpy()
    m = feed["attention_mask"][..., None].astype(np.float32)
    if pooling == "mean":
        emb = (h * m).sum(1) / m.sum(1)
    elif pooling == "cls":
        emb = h[:, 0]
    else:
        emb = np.where(m > 0, h, -np.inf).max(1)
    emb = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    cos = (got * emb).sum(1)
    assert cos.min() > 0.99999
    np.testing.assert_allclose(got, emb, atol=1e-5)


def test_pooling_flag_on_a_plain_encoder(encoder_dir: Path) -> None:
    r = convert_source(str(encoder_dir), exporter="torchscript", pooling="cls", normalize=False)
    feed = _batch(np.random.default_rng(4), 100, 2, 10)
    got = create_session(r.model).run(None, feed)[0]
    ref = _reference(encoder_dir, transformers.BertModel, feed).last_hidden_state.numpy()[:, 0]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


def test_image_classification(tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = transformers.ViTConfig(image_size=16, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=1,
                                 num_attention_heads=4, intermediate_size=64, num_labels=4)
    transformers.ViTForImageClassification(cfg).eval().save_pretrained(str(tmp_path / "vit"))
    r = convert_source(str(tmp_path / "vit"), exporter="torchscript")
    assert dim_labels(r.model) == {"pixel_values": ["batch", 3, 16, 16], "logits": ["batch", 4]}
    x = np.random.default_rng(5).standard_normal((5, 3, 16, 16)).astype(np.float32)
    got = create_session(r.model).run(None, {"pixel_values": x})[0]
    ref = _reference(tmp_path / "vit", transformers.ViTForImageClassification, {"pixel_values": x}).logits.numpy()
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-3)


def test_cli_converts_a_folder(encoder_dir: Path, tmp_path: Path) -> None:
    from onnxopt.cli import cli

    out = tmp_path / "cli.onnx"
    r = CliRunner().invoke(cli, ["convert", str(encoder_dir), "-o", str(out), "--exporter", "torchscript", "--json"])
    assert r.exit_code == 0, r.output
    report = json.loads(r.output)
    assert report["source_model"]["architecture"] == "BertModel"
    assert report["dynamic_axes"]["input_ids"] == {"1": "sequence"}
    assert out.is_file() and list(encoder_dir.iterdir())  # the folder is left as it was


# ---------------------------------------------------------------- --dynamic on a non-HF source

SEQ_MODEL = textwrap.dedent("""
    import torch

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv1d(4, 6, 3, padding=1)
            self.head = torch.nn.Linear(6, 2)

        def forward(self, x):
            return self.head(torch.relu(self.conv(x)).mean(dim=2))

    class Flat(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(4 * 16, 2)

        def forward(self, x):
            return self.head(x.flatten(1))

    def make():
        torch.manual_seed(0)
        return Net().eval()

    def make_flat():
        torch.manual_seed(0)
        return Flat().eval()
""")


def test_dynamic_axis_on_a_torch_factory(tmp_path: Path) -> None:
    src = tmp_path / "seq.py"
    src.write_text(SEQ_MODEL)
    r = convert_source(f"{src}:make", input_shapes={"x": (1, 4, 16)}, exporter="torchscript",
                       dynamic_axes={"x": {2: "time"}})
    assert dim_labels(r.model)["x"] == ["batch", 4, "time"]
    assert sorted(e["inputs"]["x"][2] for e in r.report["parity_by_input"]) == [8, 16, 32]
    import importlib.util

    spec = importlib.util.spec_from_file_location("seqmod", src)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.make()
    sess = create_session(r.model)
    for t in (1, 5, 77):
        x = np.random.default_rng(t).standard_normal((2, 4, t)).astype(np.float32)
        with torch.no_grad():
            ref = net(torch.from_numpy(x)).numpy()
        np.testing.assert_allclose(sess.run(None, {"x": x})[0], ref, atol=1e-5, rtol=1e-4)


def test_dynamic_cli_and_bad_specs(tmp_path: Path) -> None:
    from onnxopt.cli import cli

    src = tmp_path / "seq.py"
    src.write_text(SEQ_MODEL)
    out = tmp_path / "seq.onnx"
    r = CliRunner().invoke(cli, ["convert", f"{src}:make", "--input-shape", "x=1,4,16", "--dynamic", "x=2:time",
                                 "--exporter", "torchscript", "-o", str(out), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["dynamic_axes"] == {"x": {"2": "time"}}
    for bad in ("x=two:time", "x=2", "x=-1:t"):
        r = CliRunner().invoke(cli, ["convert", f"{src}:make", "--input-shape", "x=1,4,16", "--dynamic", bad,
                                     "-o", str(tmp_path / "bad.onnx")])
        assert r.exit_code == 2 and "--dynamic" in r.output
    assert not (tmp_path / "bad.onnx").exists()
    with pytest.raises(InvalidInputError, match="no input of that name"):
        convert_source(f"{src}:make", input_shapes={"x": (1, 4, 16)}, dynamic_axes={"y": {1: "t"}})
    with pytest.raises(InvalidInputError, match="--dynamic"):  # a Linear over the flattened axis: not free
        convert_source(f"{src}:make_flat", input_shapes={"x": (1, 4, 16)}, exporter="torchscript",
                       dynamic_axes={"x": {2: "time"}})
    assert parse_dynamic(["a=1:seq,b=1:seq", "c=2:w"]) == (("a", 1, "seq"), ("b", 1, "seq"), ("c", 2, "w"))


# ---------------------------------------------------------------- one-line errors, nothing written


def _cli_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """onnxopt.cli.main in this process: exit code 1 and one line on stderr."""
    from onnxopt.cli import main

    with pytest.raises(SystemExit) as e:
        main(["convert", *args])
    err = capsys.readouterr().err
    assert e.value.code == 1, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_folder_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "config.json" in _cli_error(capsys, str(empty), "-o", str(tmp_path / "a.onnx"))

    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    tiny_config().save_pretrained(str(no_weights))
    assert "no weights" in _cli_error(capsys, str(no_weights), "-o", str(tmp_path / "b.onnx"))
    with pytest.raises(InvalidInputError, match="save_pretrained"):
        convert_source(str(no_weights))

    unknown = tmp_path / "unknown"
    unknown.mkdir()
    (unknown / "config.json").write_text(json.dumps({"architectures": ["BertForFancyThing"], "model_type": "bert"}))
    (unknown / "model.safetensors").write_bytes(b"")
    with pytest.raises(UnsupportedModelError, match="unknown architecture BertForFancyThing"):
        convert_source(str(unknown))

    generative = tmp_path / "gen"
    generative.mkdir()
    (generative / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    assert "generative" in _cli_error(capsys, str(generative), "-o", str(tmp_path / "c.onnx"))

    alien = tmp_path / "alien"
    alien.mkdir()
    (alien / "config.json").write_text(json.dumps({"architectures": ["AlienModel"], "model_type": "alien"}))
    (alien / "model.safetensors").write_bytes(b"")
    with pytest.raises(OnnxoptError, match="transformers cannot build AlienModel"):
        convert_source(str(alien))
    assert not any((tmp_path / n).exists() for n in ("a.onnx", "b.onnx", "c.onnx"))


def test_weights_that_do_not_fit_the_task(encoder_dir: Path) -> None:
    with pytest.raises(InvalidInputError, match="weights do not fit"):
        convert_source(str(encoder_dir), task="sequence-classification")  # no classifier weights saved
    with pytest.raises(InvalidInputError, match="applies to a Hugging Face"):
        convert_source("nowhere.py:make", pooling="mean")
