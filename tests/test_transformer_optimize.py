"""The transformer family of optimize: detection, text-like inputs, fusion parity, int8 held per sample.

A tiny BERT (transformers' BertModel from a BertConfig, 2 layers, hidden 32, 4 heads) is built
in code and exported with torch; no download. Cosines are recomputed here from onnxruntime
outputs, sample by sample at batch 1, not read from the reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import ModelProto, helper, numpy_helper

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.model import model_family, op_histogram
from onnxopt.core.tokens import token_feed, vocab_size
from onnxopt.optimization.report import text_summary
from onnxopt.optimization.run import default_recipe, optimize
from onnxopt.optimization.types import OptimizeConfig
from onnxopt.passes.base import PassContext
from onnxopt.passes.transformer import FuseTransformerPass, encoder_dims, fused_counts
from onnxopt.quantization.config import QuantizeConfig
from onnxopt.quantization.sensitivity import emulated_model, name_nodes, weight_matmuls
from onnxopt.quantization.transformer import outputs_at, quantize_transformer

pytestmark = pytest.mark.torch

VOCAB, HIDDEN, HEADS, LAYERS, POSITIONS = 1000, 32, 4, 2, 64
FAST = {"bench_runs": 5, "bench_seconds": 0.1, "warmup": 1}


def _export(tmp: Path, name: str, outlier: float = 0.0) -> ModelProto:
    """A tiny BertModel exported with dynamic batch and sequence; `outlier` adds a large FFN
    pre-activation bias on two channels of layer 1 (the activation outliers of trained encoders)."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                  num_attention_heads=HEADS, intermediate_size=4 * HIDDEN,
                                  max_position_embeddings=POSITIONS, initializer_range=0.08,
                                  attn_implementation="eager")
    bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    if outlier:
        with torch.no_grad():
            # large activations that carry no signal (their FFN output weights ~0), as in trained
            # encoders: they stretch the int8 activation scale of the whole tensor
            bert.encoder.layer[1].intermediate.dense.bias[[3, 70]] += outlier
            bert.encoder.layer[1].output.dense.weight[:, [3, 70]] *= 1e-3

    class Encoder(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any) -> Any:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    ids = torch.randint(100, VOCAB, (1, 16))
    path = tmp / f"{name}.onnx"
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Encoder().eval(), (ids, torch.ones_like(ids)), str(path), opset_version=17, dynamo=False,
                          input_names=["input_ids", "attention_mask"], output_names=["last_hidden_state"],
                          dynamic_axes={k: {0: "batch", 1: "sequence"}
                                        for k in ("input_ids", "attention_mask", "last_hidden_state")})
    return onnx.load(str(path))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> ModelProto:
    return _export(tmp_path_factory.mktemp("bert"), "tiny_bert")


@pytest.fixture(scope="module")
def sensitive_bert(tmp_path_factory: pytest.TempPathFactory) -> ModelProto:
    return _export(tmp_path_factory.mktemp("bert"), "sensitive_bert", outlier=300.0)


def _cosines(reference: ModelProto, candidate: ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    """Per-sample cosine of the outputs, each sample run alone (recomputed here, not from a report)."""
    import onnxruntime as ort

    def run(m: ModelProto) -> np.ndarray:
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
        n = len(next(iter(feed.values())))
        return np.stack([sess.run(None, {k: v[i:i + 1] for k, v in feed.items()})[0][0] for i in range(n)])

    a, b = run(reference).reshape(len(feed["input_ids"]), -1), run(candidate).reshape(len(feed["input_ids"]), -1)
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_a_text_encoder_is_the_transformer_family(tiny_bert: ModelProto) -> None:
    assert model_family(tiny_bert) == "transformer"
    recipe = default_recipe(tiny_bert)
    assert [p.name for p in recipe.passes] == ["fuse_transformer", "quantize"]
    assert "transformer" in recipe.description
    assert encoder_dims(tiny_bert) == (HEADS, HIDDEN)
    # the same ops fed by a float input are not a text encoder
    float_input = onnx.ModelProto()
    float_input.CopyFrom(tiny_bert)
    for vi in float_input.graph.input:
        vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    assert model_family(float_input) != "transformer"


def test_synthetic_token_ids_look_like_text(tiny_bert: ModelProto) -> None:
    feed = token_feed(tiny_bert, samples=6, seed=3)
    ids, mask = feed["input_ids"], feed["attention_mask"]
    assert vocab_size(tiny_bert, "input_ids") == VOCAB
    assert ids.shape == mask.shape == (6, POSITIONS)  # 128 capped at the position table
    assert ids.dtype == np.int64 and (mask == 1).all()
    assert (ids[:, 0] == 1).all() and (ids[:, -1] == 2).all()  # [CLS] ... [SEP] of a small vocabulary
    body = ids[:, 1:-1]
    assert body.min() >= VOCAB // 4 and body.max() < VOCAB
    assert len(np.unique(body)) > 20  # words repeat (Zipf) but are not one token
    assert token_feed(tiny_bert, samples=2, seq=16)["input_ids"].shape == (2, 16)


def test_token_ids_that_cannot_be_synthesized_are_refused_with_one_line() -> None:
    # ids used as a plain integer tensor (no embedding table to read the vocabulary from)
    g = helper.make_graph(
        [helper.make_node("Cast", ["input_ids"], ["f"], to=onnx.TensorProto.FLOAT),
         helper.make_node("MatMul", ["f", "w"], ["y"])],
        "ids", [helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.ones((8, 4), np.float32), "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(InvalidInputError, match="--data") as e:
        token_feed(model, seq=8)
    assert "\n" not in str(e.value)


def test_fusion_keeps_the_outputs(tiny_bert: ModelProto) -> None:
    result = FuseTransformerPass()(tiny_bert, PassContext())
    assert result.modified, result.report
    counts = fused_counts(result.model)
    assert counts.get("Attention") == LAYERS and counts.get("SkipLayerNormalization", 0) >= LAYERS
    assert result.report["num_heads"] == HEADS and result.report["hidden_size"] == HIDDEN
    feed = token_feed(tiny_bert, samples=4, seq=24, seed=7)  # another length than the pass checked
    cos = _cosines(tiny_bert, result.model, feed)
    assert cos.min() > 0.9999
    ref = outputs_at(tiny_bert, feed, 1)[0]
    assert np.abs(ref - outputs_at(result.model, feed, 1)[0]).max() < 1e-3 * np.abs(ref).max()
    # the fused graph is still a text encoder (vocabulary read through the embedding Gather) and int8 holds on it
    assert model_family(result.model) == "transformer" and vocab_size(result.model, "input_ids") == VOCAB
    q = quantize_transformer(result.model, QuantizeConfig())
    assert q.meets_budget and "com.microsoft.DynamicQuantizeMatMul" in op_histogram(q.model)
    assert _cosines(tiny_bert, q.model, feed).min() >= 0.99


def test_the_emulated_int8_model_is_what_onnxruntime_quantize_dynamic_builds(tiny_bert: ModelProto,
                                                                             tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    named = name_nodes(tiny_bert)
    onnx.save(named, str(tmp_path / "f.onnx"))
    quantize_dynamic(str(tmp_path / "f.onnx"), str(tmp_path / "q.onnx"), weight_type=QuantType.QInt8,
                     per_channel=True, reduce_range=True, op_types_to_quantize=["MatMul"],
                     extra_options={"MatMulConstBOnly": True})
    mine = emulated_model(named, [n.node for n in weight_matmuls(named)], reduce_range=True)
    feed = token_feed(tiny_bert, samples=3, seed=1)
    a, b = outputs_at(onnx.load(str(tmp_path / "q.onnx")), feed, 1)[0], outputs_at(mine, feed, 1)[0]
    assert np.abs(a - b).max() < 1e-4 * np.abs(a).max() + 1e-5
    assert not np.allclose(a, outputs_at(tiny_bert, feed, 1)[0], atol=1e-6)  # it is int8, not float


def test_sensitive_matmuls_go_back_to_float_and_every_sample_holds(sensitive_bert: ModelProto) -> None:
    result = quantize_transformer(sensitive_bert, QuantizeConfig())
    rep = result.report
    feed = token_feed(sensitive_bert, samples=16, seed=0)  # the engine's own samples
    names = [n.node for n in weight_matmuls(name_nodes(sensitive_bert))]
    everything = emulated_model(name_nodes(sensitive_bert), names, reduce_range=rep["quantizer"]["reduce_range"])
    assert _cosines(sensitive_bert, everything, feed).min() < 0.99  # all in int8 misses the floor: a real test
    floats = rep["quantizer"]["exclude_nodes"]
    assert 0 < len(floats) < len(names) and result.meets_budget
    assert rep["sensitivity"][0]["node"] in floats  # the most sensitive MatMul went back first
    cos = _cosines(sensitive_bert, result.model, feed)
    assert cos.min() >= 0.99
    assert np.allclose(cos, rep["per_sample_cosine"], atol=1e-4)
    held_out = token_feed(sensitive_bert, samples=8, seed=11)
    assert _cosines(sensitive_bert, result.model, held_out).min() >= 0.985  # holds on sentences it did not see
    assert len(rep["search"]) <= 2 + int(np.ceil(np.log2(len(names))))  # bisection, not a node-by-node search


def test_optimize_runs_the_transformer_family_end_to_end(tiny_bert: ModelProto) -> None:
    before = tiny_bert.SerializeToString()
    r = optimize(tiny_bert, config=OptimizeConfig(**FAST))  # type: ignore[arg-type]
    assert tiny_bert.SerializeToString() == before
    assert "synthetic text-like" in r.data
    by_pass = {s.pass_name: s for s in r.stages}
    q = by_pass["quantize"]
    assert q.modified and q.report["engine"] == "transformer" and q.report["timed"]["batch"] == 1
    assert r.timed_shapes["input_ids"] == (1, POSITIONS)
    feed = token_feed(tiny_bert, samples=8, seed=5)
    assert _cosines(tiny_bert, q.model, feed).min() >= 0.99
    assert _cosines(tiny_bert, r.model, feed).min() >= 0.99  # whatever stage was kept
    assert q.fidelity is not None and q.fidelity.samples == 16
    line = text_summary(r)
    assert line is not None and f"batch 1, sequence length {POSITIONS}" in line and "per-sample output cosine" in line
    replayed = optimize(tiny_bert, config=OptimizeConfig(**FAST), decisions=r.decisions)  # type: ignore[arg-type]
    assert replayed.model.SerializeToString() == r.model.SerializeToString()  # --decisions: same bytes


def test_quantize_without_data_checks_the_floor_on_text_like_ids(sensitive_bert: ModelProto) -> None:
    """`onnxopt quantize` (not only optimize): no data means text-like ids, and the floor holds on unseen ones."""
    from onnxopt.quantization.api import quantize

    result = quantize(sensitive_bert, QuantizeConfig(mode="auto", final_runs=2))
    assert any("text-like token ids" in n for n in result.report["notes"])
    held_out = token_feed(sensitive_bert, samples=8, seed=11)
    cos = _cosines(sensitive_bert, result.model, held_out).min()
    assert cos >= 0.985 if result.meets_budget else result.report["fidelity"]["min_cosine"] < 0.99, (
        cos, result.meets_budget, result.report["fidelity"])


def test_quantize_auto_on_a_text_encoder_uses_the_transformer_engine(sensitive_bert: ModelProto, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`onnxopt quantize --mode auto` routes a transformer encoder to quantize_transformer (optimize's engine):
    sensitive MatMuls back to float, every sample >= 0.99; --objective size keeps the int8 model whatever the
    timing says, so the written file is checked here, not the report."""
    import json

    from onnxopt.cli import main

    src, out = tmp_path / "bert.onnx", tmp_path / "q.onnx"
    onnx.save(sensitive_bert, str(src))
    with pytest.raises(SystemExit) as e:
        main(["quantize", str(src), "-o", str(out), "--mode", "auto", "--objective", "size", "--runs", "3", "--json"])
    stdout, err = capsys.readouterr()
    assert int(e.value.code or 0) == 0, err
    rep = json.loads(stdout)
    assert rep["engine"] == "transformer" and rep["quantized"] and rep["meets_budget"] and rep["mode"] == "auto"
    assert rep["winner"] == rep["candidates"][0]["name"] and "ratio" in rep["candidates"][0]["final"]
    assert "ratio" in rep["latency"] and rep["timed_shapes"]["input_ids"] == [1, POSITIONS]
    floats = {n["node"] for n in rep["nodes"]["float"]}
    assert floats and floats == set(rep["quantizer"]["exclude_nodes"])
    written = onnx.load(str(out))
    assert "com.microsoft.DynamicQuantizeMatMul" in op_histogram(written)
    feed = token_feed(sensitive_bert, samples=16, seed=0)  # the engine's own samples (seed 0)
    cos = _cosines(sensitive_bert, written, feed)
    assert cos.min() >= 0.99 and np.allclose(cos, rep["per_sample_cosine"], atol=1e-4)
    assert len(rep["search"]) <= 3 + int(np.ceil(np.log2(len(rep["sensitivity"]))))  # bisection (+ the tables' check)
    # the table a person reads
    with pytest.raises(SystemExit) as e:
        main(["quantize", str(src), "-o", str(tmp_path / "q2.onnx"), "--objective", "size", "--runs", "3"])
    text = capsys.readouterr().out
    assert e.value.code in (0, None) and "winner:" in text and "left in float" in text and "latency" in text


def test_quantize_auto_min_cosine_zero_turns_the_floor_off(sensitive_bert: ModelProto) -> None:
    from onnxopt.quantization.api import quantize

    r = quantize(sensitive_bert, QuantizeConfig(mode="auto", min_cosine=0.0, objective="size", final_runs=2))
    assert r.quantized and r.report["engine"] == "transformer" and not r.report["nodes"]["float"]
    assert r.report["per_sample_cosine"] and min(r.report["per_sample_cosine"]) < 0.99  # nothing went back to float


def test_embedding_tables_go_int8_with_one_scale_per_row(tiny_bert: ModelProto) -> None:
    from onnxopt.quantization.engine import model_size
    from onnxopt.quantization.sensitivity import embedding_gathers, quantize_rows

    named = name_nodes(tiny_bert)
    tables = embedding_gathers(named)
    inits = {t.name: numpy_helper.to_array(t) for t in named.graph.initializer}
    assert [inits[e.table].shape for e in tables] == [(VOCAB, HIDDEN)]  # the word table (positions: too small)
    table = inits[tables[0].table]
    tq, ts = quantize_rows(table)
    assert tq.dtype == np.int8 and ts.shape == (VOCAB, 1)
    assert (np.abs(tq.astype(np.float32) * ts - table) <= ts / 2 + 1e-7).all()  # round to nearest, per row
    q = emulated_model(named, [], reduce_range=True, embeddings=True)
    assert model_size(named) - model_size(q) > 0.7 * table.nbytes  # the table is stored in a quarter
    assert any(t.data_type == onnx.TensorProto.INT8 and tuple(t.dims) == (VOCAB, HIDDEN) for t in q.graph.initializer)
    assert _cosines(tiny_bert, q, token_feed(tiny_bert, samples=4, seed=9)).min() > 0.999
    # what --decisions replays: mode dynamic with the recorded op types rebuilds the int8 tables
    replay = quantize_transformer(tiny_bert, QuantizeConfig(mode="dynamic", op_types=("MatMul", "Gather"),
                                                            per_channel=True, reduce_range=True))
    assert replay.report["quantizer"]["op_types"] == ["MatMul", "Gather"]
    assert replay.model.SerializeToString() == emulated_model(
        named, [n.node for n in weight_matmuls(named)], reduce_range=True, embeddings=True).SerializeToString()


def test_quantize_auto_latency_keeps_int8_only_when_measured_faster(tiny_bert: ModelProto) -> None:
    """Objective latency: either branch may happen on a noisy machine; each must be consistent."""
    from onnxopt.quantization.api import quantize

    r = quantize(tiny_bert, QuantizeConfig(mode="auto", final_runs=3))
    rep, feed = r.report, token_feed(tiny_bert, samples=4, seed=13)
    assert rep["engine"] == "transformer" and r.meets_budget and "describe" in rep["latency"]
    if r.quantized:
        assert rep["latency"]["high"] <= 0.98 and rep["winner"] == rep["candidates"][0]["name"]
        assert _cosines(tiny_bert, r.model, feed).min() >= 0.99
    else:  # the input itself, the int8 model offered as the runner-up
        assert rep["winner"] == "input" and rep["candidates"][0]["final"]["high"] > 0.98
        assert r.model.SerializeToString() == tiny_bert.SerializeToString()
        assert r.runner_up is not None and rep["runner_up"]["fidelity"]["min_cosine"] >= 0.99
        assert _cosines(tiny_bert, r.runner_up, feed).min() >= 0.99
