"""Weight-only block quantization of MatMul weights (onnxruntime's MatMulNBits, 4 or 8 bits).

A constant weight W [K, N] of a MatMul is cut, along K, into blocks of `block_size` values per
output column; each block b gets a scale s_b and (asymmetric) a zero point z_b, and stores

    q = clamp(round(w / s_b) + z_b, 0, 2^bits - 1),   s_b = (max_b - min_b) / (2^bits - 1)

(RTN: round to nearest; HQQ instead searches s_b, z_b that minimise the |w - s_b (q - z_b)|^0.7
error of the block, a half-quadratic proximal solver, and needs torch). The MatMul becomes one
com.microsoft MatMulNBits node that reads the packed weights: 4 bits take 1/8 of the float32
bytes plus one scale (and zero point) per block. Activations stay float; with accuracy_level 4
onnxruntime quantizes each row of the activations to int8 on the fly and multiplies in int8
(faster on x86 AVX2/AVX512 and ARM), with accuracy_level 0 it dequantizes the weights and runs
float SGEMM, which only pays when the MatMul is memory-bound (one row: batch-1 decoders).

Whether it pays is measured like every candidate, and the fidelity floor applies as to int8.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import ModelProto

from onnxopt.core.errors import MissingExtraError

BITS = (4, 8)
BLOCK_SIZES = (16, 32, 64, 128)
ALGORITHMS = ("rtn", "hqq")
ACCURACY_LEVELS = (0, 1, 4)  # 0: onnxruntime's default (float), 1: float32 compute, 4: int8 compute
AUTO_BLOCKS = (32, 128)  # the block sizes `--mode auto` tries: the more accurate, and the smaller/faster
# A model is "MatMul-heavy" when MatMuls with a constant 2-D float weight hold at least this share of
# its float weight bytes: weight-only candidates are then worth measuring in auto mode.
HEAVY_SHARE = 0.5


def require_algorithm(algorithm: str) -> None:
    """Raise MissingExtraError when the algorithm's dependency is missing (HQQ runs on torch)."""
    if algorithm == "hqq" and importlib.util.find_spec("torch") is None:
        raise MissingExtraError("torch (HQQ weight-only quantization runs on it)", "torch")


def matmul_weights(model: ModelProto) -> set[str]:
    """The constant 2-D float32 weights (input B) of the MatMul nodes MatMulNBits can take."""
    inits = {t.name: t for t in model.graph.initializer}
    out: set[str] = set()
    for n in model.graph.node:
        if n.op_type != "MatMul" or n.domain not in ("", "ai.onnx") or len(n.input) < 2:
            continue
        t = inits.get(n.input[1])
        if t is not None and len(t.dims) == 2 and t.data_type == onnx.TensorProto.FLOAT:
            out.add(t.name)
    return out


def matmul_heavy(model: ModelProto) -> bool:
    """True when the MatMuls MatMulNBits can take hold HEAVY_SHARE or more of the float weight bytes."""
    inits = {t.name: t for t in model.graph.initializer}
    floats = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    total = sum(floats.values())
    mm = sum(int(np.prod(inits[w].dims)) for w in matmul_weights(model))
    return total > 0 and mm / total >= HEAVY_SHARE


def quantize_file(src: Path, out: Path, *, bits: int, block_size: int, algorithm: str, accuracy_level: int,
                  exclude_nodes: tuple[str, ...] = (), external_data: bool = False) -> None:
    """Write src with its MatMul weights block-quantized to out (onnxruntime's MatMulNBitsQuantizer)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        HQQWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    require_algorithm(algorithm)
    algo = (HQQWeightOnlyQuantConfig(block_size=block_size, bits=bits) if algorithm == "hqq" else
            DefaultWeightOnlyQuantConfig(block_size=block_size, is_symmetric=False, bits=bits,
                                         accuracy_level=accuracy_level or None))
    quantizer = MatMulNBitsQuantizer(onnx.load(str(src)), nodes_to_exclude=list(exclude_nodes), algo_config=algo)
    with warnings.catch_warnings():  # HQQ: torch warns about the read-only numpy weights it wraps
        warnings.simplefilter("ignore", UserWarning)
        quantizer.process()
    model = quantizer.model.model
    set_accuracy_level(model, accuracy_level)
    quantizer.model.save_model_to_file(str(out), use_external_data_format=external_data)


def set_accuracy_level(model: ModelProto, level: int) -> None:
    """Give every MatMulNBits node without one the accuracy_level attribute (HQQ does not set it), in place."""
    if not level:
        return
    for n in model.graph.node:
        if n.op_type == "MatMulNBits" and not any(a.name == "accuracy_level" for a in n.attribute):
            n.attribute.append(onnx.helper.make_attribute("accuracy_level", level))
