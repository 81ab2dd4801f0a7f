"""One ONNX file from strings to outputs: the tokenizer graph in front of a converted text model.

The onnxruntime-extensions BertTokenizer op encodes one string, so the batch is a Loop:

    for i in 0..N-1:  ids_i, types_i, mask_i = BertTokenizer(text[i])     (length L_i <= max_length)
                      each padded to max_length (ids with the pad id, the rest with 0)
    W = max_i L_i;  input_ids, token_type_ids, attention_mask = the stacked rows[:, :W]

which is what the Python tokenizer gives with padding=True, truncation=True, max_length.
When the tokenizer lower-cases or strips accents, each string is first normalized character by
character as transformers does it (Unicode NFD without the marks, lower case: a StringMapping
table built from the tokenizer's own normalizer, then lone combining marks removed), since the
op's own accent table misses Greek, kana, Hangul and more. The model's graph follows unchanged
(its inputs now come from the loop). A sentence-transformers
model already ends in pooling + normalization, so the file maps strings to sentence embeddings.
Per-token outputs (last_hidden_state, token logits) come with the attention_mask as an output.

verify_text_model runs the file and the Python tokenizer + source model on the same sentences:
token ids must be equal and outputs within atol + rtol * |ref|; per-sample cosines are reported.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import onnx
from onnx import ModelProto, TensorProto, helper, numpy_helper

from onnxopt.conversion.edits import set_metadata
from onnxopt.conversion.parity import ParityError
from onnxopt.conversion.sentences import sentences as builtin_sentences
from onnxopt.conversion.types import ConvertResult
from onnxopt.core.errors import InvalidInputError
from onnxopt.core.model import graph_inputs

log = logging.getLogger(__name__)

TEXT_INPUT = "text"
VERIFY_BATCH = 16
_P = "tokenizer/"  # prefix of the tokenizer graph's own tensor names
CONTRIB_DOMAIN = "ai.onnx.contrib"


def _const(name: str, value: Any, dtype: Any = np.int64) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.asarray(value, dtype=dtype), name))


def _string(name: str, value: str, shape: Sequence[int] = ()) -> onnx.NodeProto:
    count = int(np.prod(shape)) if shape else 1
    vals: list[Any] = [value.encode("utf-8")] * count
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, TensorProto.STRING, list(shape), vals))


def normalize_nodes(source: str, target: str, mapping: str) -> list[onnx.NodeProto]:
    """Nodes that normalize the strings in source character by character (mapping: StringMapping's
    "char<TAB>normalized" lines) and drop lone combining marks (Unicode category Mn), into target."""
    d = CONTRIB_DOMAIN
    return [
        _string(_P + "one_char", "(.)"), _string(_P + "nothing", ""), _string(_P + "glue", "", [1]),
        _string(_P + "marks", r"\p{Mn}"), _const(_P + "join_axis", [0]),
        helper.make_node("StringRegexSplitWithOffsets", [source, _P + "one_char", _P + "one_char"],
                         [_P + "chars", _P + "char_begins", _P + "char_ends", _P + "char_rows"], domain=d),
        helper.make_node("StringMapping", [_P + "chars"], [_P + "mapped"], domain=d, map=mapping),
        helper.make_node("StringJoin", [_P + "mapped", _P + "glue", _P + "join_axis"], [_P + "joined"], domain=d),
        helper.make_node("StringRegexReplace", [_P + "joined", _P + "marks", _P + "nothing"], [target], domain=d),
    ]


def tokenizer_graph_nodes(
    node: onnx.NodeProto, names: Sequence[str], max_length: int, pad: int, mapping: str | None = None,
) -> list[onnx.NodeProto]:
    """The nodes that turn TEXT_INPUT [N] strings into names (input_ids, attention_mask[, token_type_ids]);
    mapping: the character normalization to apply first (see normalize_nodes)."""
    tok = copy.deepcopy(node)
    del tok.input[:]
    del tok.output[:]
    tok.name = _P + "BertTokenizer"
    tok.input.append(_P + "normal" if mapping else _P + "one")
    tok.output.extend([_P + "ids", _P + "types", _P + "mask"])
    body_nodes = [
        helper.make_node("Reshape", ["i", _P + "shape1"], [_P + "start"]),
        helper.make_node("Add", [_P + "start", _P + "one_i64"], [_P + "end"]),
        helper.make_node("Slice", [TEXT_INPUT, _P + "start", _P + "end", _P + "axis0"], [_P + "one"]),
        *(normalize_nodes(_P + "one", _P + "normal", mapping) if mapping else []),
        tok,
        helper.make_node("Shape", [_P + "ids"], [_P + "len"]),
        helper.make_node("Sub", [_P + "maxlen", _P + "len"], [_P + "missing"]),
        helper.make_node("Concat", [_P + "zero1", _P + "missing"], [_P + "pads"], axis=0),
        helper.make_node("Pad", [_P + "ids", _P + "pads", _P + "pad_id"], [_P + "ids_p"]),
        helper.make_node("Pad", [_P + "types", _P + "pads", _P + "zero"], [_P + "types_p"]),
        helper.make_node("Pad", [_P + "mask", _P + "pads", _P + "zero"], [_P + "mask_p"]),
        helper.make_node("Identity", ["cond"], ["cond_out"]),
    ]
    consts = [
        _const(_P + "shape1", [1]), _const(_P + "one_i64", [1]), _const(_P + "axis0", [0]),
        _const(_P + "maxlen", [max_length]), _const(_P + "zero1", [0]), _const(_P + "pad_id", pad),
        _const(_P + "zero", 0),
    ]
    row = [max_length]
    body = helper.make_graph(
        consts + body_nodes, "tokenize_one",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info(_P + "ids_p", TensorProto.INT64, row),
         helper.make_tensor_value_info(_P + "types_p", TensorProto.INT64, row),
         helper.make_tensor_value_info(_P + "mask_p", TensorProto.INT64, row),
         helper.make_tensor_value_info(_P + "len", TensorProto.INT64, [1])],
    )
    padded = {"input_ids": _P + "all_ids", "token_type_ids": _P + "all_types", "attention_mask": _P + "all_mask"}
    nodes = [
        helper.make_node("Shape", [TEXT_INPUT], [_P + "n1"]),
        _const(_P + "scalar", np.zeros(0, dtype=np.int64)),
        helper.make_node("Reshape", [_P + "n1", _P + "scalar"], [_P + "n"]),
        _const(_P + "true", True, np.bool_),
        helper.make_node("Loop", [_P + "n", _P + "true"],
                         [padded["input_ids"], padded["token_type_ids"], padded["attention_mask"], _P + "lens"],
                         body=body, name=_P + "Loop"),
        helper.make_node("ReduceMax", [_P + "lens"], [_P + "width0"], keepdims=0),
        _const(_P + "shape1_outer", [1]),
        helper.make_node("Reshape", [_P + "width0", _P + "shape1_outer"], [_P + "width"]),
        _const(_P + "col_start", [0]),
        _const(_P + "col_axis", [1]),
    ]
    for name in names:
        if name not in padded:
            raise InvalidInputError(f"--with-tokenizer: the model takes {name!r}, which a tokenizer does not give")
        nodes.append(helper.make_node("Slice", [padded[name], _P + "col_start", _P + "width", _P + "col_axis"], [name]))
    return nodes


def with_tokenizer(
    model: ModelProto, node: onnx.NodeProto, max_length: int, pad: int, *, extra_outputs: Sequence[str] = (),
    mapping: str | None = None,
) -> ModelProto:
    """model with the tokenizer in front: one TEXT_INPUT [batch] string input; extra_outputs
    (e.g. attention_mask) are added as graph outputs; mapping: see normalize_nodes."""
    names = [s.name for s in graph_inputs(model)]
    merged = copy.deepcopy(model)
    g = merged.graph
    kept = [i for i in g.input if i.name not in names]  # initializers listed as inputs stay
    del g.input[:]
    g.input.extend([helper.make_tensor_value_info(TEXT_INPUT, TensorProto.STRING, ["batch"])] + kept)
    nodes = tokenizer_graph_nodes(node, names, max_length, pad, mapping) + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    for name in extra_outputs:
        if name not in [o.name for o in g.output]:
            g.output.append(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]))
    if not any(o.domain == node.domain for o in merged.opset_import):
        merged.opset_import.append(helper.make_opsetid(node.domain, 1))
    onnx.checker.check_model(merged)
    return merged


def attach_tokenizer(result: ConvertResult, source: Any, texts: Sequence[str] | None = None) -> ConvertResult:
    """The converted model with the source folder's tokenizer in front, verified on texts (the
    built-in sentences by default); ParityError when ids or outputs differ."""
    from onnxopt.frameworks.hf_tokenizer import char_map, load_tokenizer, pad_id, tokenizer_node

    if getattr(source, "main_input", None) != "input_ids":
        raise InvalidInputError("--with-tokenizer needs a text model (one that takes input_ids)")
    tok = load_tokenizer(source.folder.model_dir)
    max_length = int(source.max_len)
    mapping = char_map(tok)
    node = tokenizer_node(tok, max_length, normalized=mapping is not None)
    names = [s.name for s in graph_inputs(result.model)]
    per_token = [n for n, axes in result.report.get("dynamic_axes", {}).items()
                 if n in [o.name for o in result.model.graph.output] and "1" in axes]
    extra = ["attention_mask"] if per_token and "attention_mask" in names else []
    model = with_tokenizer(result.model, node, max_length, pad_id(tok), extra_outputs=extra, mapping=mapping)
    check = verify_text_model(model, tok, source, texts if texts is not None else builtin_sentences(),
                              max_length, atol=result.parity.atol, rtol=result.parity.rtol, names=names)
    model = set_metadata(model, {"onnxopt.tokenizer": type(tok).__name__, "onnxopt.max_length": str(max_length),
                                 "onnxopt.tokenizer_sentences": str(check["sentences"])})
    report = dict(result.report, tokenizer=check, model_bytes=model.ByteSize(), nodes=len(model.graph.node))
    report["inputs"] = [{"name": TEXT_INPUT, "dtype": "string", "shape": ["batch"]}]
    report["outputs"] = [{"name": o.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(
        o.type.tensor_type.elem_type).name, "shape": [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]}
        for o in model.graph.output]
    if not check["passed"]:
        raise ParityError(check["message"])
    return replace(result, model=model, report=report)


def verify_text_model(
    model: ModelProto, tok: Any, source: Any, texts: Sequence[str], max_length: int, *,
    atol: float, rtol: float, names: Sequence[str],
) -> dict[str, Any]:
    """Check the strings-in model on texts, in batches, three ways:

    - model parity: the source run on the ONNX tokenizer's own ids reproduces the file's outputs
      within atol + rtol * |ref| (this decides `passed`);
    - token ids: equal to the Python tokenizer's, sentence by sentence (mismatches are listed);
    - pipeline: per-sample cosine of the file's outputs and the Python tokenizer + source model's
      (per-token outputs only on sentences tokenized alike).
    """
    from onnxopt.core.runtime import create_session, run
    from onnxopt.frameworks.hf_tokenizer import encode

    probe = copy.deepcopy(model)  # expose the tokenizer's arrays to compare them
    for name in names:
        if name not in [o.name for o in probe.graph.output]:
            probe.graph.output.append(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", "sequence"]))
    sess = create_session(probe)
    out_names = [o.name for o in sess.get_outputs()]
    model_outs = [o.name for o in model.graph.output if o.name not in names]
    mismatched: list[str] = []
    worst_abs, worst_excess, cosines = 0.0, 0.0, []
    for start in range(0, len(texts), VERIFY_BATCH):
        batch = list(texts[start: start + VERIFY_BATCH])
        got = dict(zip(out_names, run(sess, {TEXT_INPUT: np.array(batch, dtype=object)}, what="the text model")))
        own = source.run([got[n] for n in names])  # the model part alone, on the file's own ids
        for name, ref in zip(model_outs, own):
            diff = np.abs(got[name].astype(np.float64) - np.asarray(ref, dtype=np.float64))
            if diff.size:
                worst_abs = max(worst_abs, float(diff.max()))
                worst_excess = max(worst_excess, float((diff / (atol + rtol * np.abs(ref))).max()))
        py_in = encode(tok, batch, max_length, names)
        same = [_row(got["input_ids"], r, got["attention_mask"]) == _row(py_in[0], r, py_in[1])
                for r in range(len(batch))]
        mismatched.extend(t for t, ok in zip(batch, same) if not ok)
        py_out = own if all(same) and got["input_ids"].shape == py_in[0].shape else source.run(py_in)
        for name, ref in zip(model_outs, py_out):
            cosines.extend(_pipeline_cosines(got[name], np.asarray(ref), same, got["attention_mask"]))
    passed = worst_excess <= 1.0
    check: dict[str, Any] = {
        "sentences": len(texts), "ids_equal": len(texts) - len(mismatched), "ids_mismatched": len(mismatched),
        "mismatched_examples": [t[:80] for t in mismatched[:5]],
        "model_max_abs": worst_abs, "min_cosine": float(min(cosines)) if cosines else None,
        "mean_cosine": float(np.mean(cosines)) if cosines else None, "passed": passed,
    }
    if not passed:
        check["message"] = (f"the strings-in model differs from the source model by up to {worst_abs:.3g}, "
                            f"above --atol {atol:g} / --rtol {rtol:g}")
    if mismatched:
        check["note"] = (
            f"the ONNX tokenizer's ids differ from the Python tokenizer's on {len(mismatched)} of {len(texts)} "
            f"sentences (e.g. {mismatched[0][:50]!r}): where a word holds a character missing from the "
            "vocabulary, onnxruntime-extensions' WordPiece keeps the pieces before it plus [UNK], "
            "transformers gives one [UNK] for the whole word"
        )
        log.warning("%s", check["note"])
    return check


def _row(ids: np.ndarray, r: int, mask: np.ndarray) -> list[int]:
    """Row r's ids where the mask is set (no padding)."""
    return [int(x) for x, m in zip(ids[r], mask[r]) if m] if r < len(ids) else []


def _pipeline_cosines(got: np.ndarray, ref: np.ndarray, same: Sequence[bool], mask: np.ndarray) -> list[float]:
    """Per-sentence cosines of the file's and the Python pipeline's outputs: every sentence for
    outputs without a sequence axis, the sentences tokenized alike (their real tokens) otherwise."""
    if got.shape == ref.shape and (got.ndim < 2 or got.shape[1] != mask.shape[1]):
        return _cosines(got.astype(np.float64), ref.astype(np.float64))
    out = []
    for r, ok in enumerate(same):
        if ok:
            n = int(mask[r].sum())
            out.extend(_cosines(got[r: r + 1, :n].astype(np.float64), ref[r: r + 1, :n].astype(np.float64)))
    return out


def _cosines(a: np.ndarray, b: np.ndarray) -> list[float]:
    """Per-sample cosine of two [batch, ...] arrays."""
    a2 = a.reshape(len(a), -1)
    b2 = b.reshape(len(b), -1)
    num = (a2 * b2).sum(1)
    den = np.linalg.norm(a2, axis=1) * np.linalg.norm(b2, axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)
    return [float(c) for c in cos]
