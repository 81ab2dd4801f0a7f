"""Fine-tune an ONNX CNN in PyTorch: the case study's recovery step after channel pruning.

onnxopt prunes channels in the ONNX graph (onnxopt.pruning.channels); accuracy is recovered
in the source framework. `OnnxModule(model)` is an nn.Module that runs the graph's nodes in
order with torch ops, its Conv/Gemm weights and biases as trainable parameters (initialised
from the ONNX initializers), so a pruned model can be distilled again and exported back with
onnxopt.conversion. It covers the ops of the search's CNNs as the TorchScript exporter writes
them (Conv, Relu, HardSigmoid, Mul, Add, MaxPool, GlobalAveragePool, Flatten, Gemm); another
op raises ValueError naming it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from onnx import ModelProto, helper, numpy_helper

TRAINABLE = {"Conv": (1, 2), "Gemm": (1, 2)}  # op -> input positions held as parameters


def _attrs(node: Any) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def onnx_module(model: ModelProto) -> Any:
    """An nn.Module computing what `model` computes (float CNNs of the ops listed above)."""
    import torch

    nn, F = torch.nn, torch.nn.functional
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    known = {"Conv", "Relu", "HardSigmoid", "Mul", "Add", "MaxPool", "GlobalAveragePool", "Flatten", "Gemm"}
    for n in model.graph.node:
        if n.op_type not in known:
            raise ValueError(f"fine-tuning does not support op {n.op_type} (node {n.name})")

    class OnnxModule(nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.params = nn.ParameterDict()
            self.consts: dict[str, Any] = {}
            for n in model.graph.node:
                for pos, name in enumerate(n.input):
                    if name in inits:
                        t = torch.from_numpy(np.array(inits[name], np.float32))
                        if pos in TRAINABLE.get(n.op_type, ()):
                            self.params[self._key(name)] = nn.Parameter(t)
                        else:
                            self.consts[name] = t
            self.input_name = model.graph.input[0].name
            self.output_name = model.graph.output[0].name

        @staticmethod
        def _key(name: str) -> str:
            return "p_" + "".join(c if c.isalnum() else "_" for c in name)

        def _get(self, env: dict[str, Any], name: str) -> Any:
            if name in env:
                return env[name]
            key = self._key(name)
            return self.params[key] if key in self.params else self.consts[name]

        def forward(self, x: Any) -> Any:
            env = {self.input_name: x}
            for n in model.graph.node:
                a = _attrs(n)
                ins = [self._get(env, i) if i else None for i in n.input]
                op = n.op_type
                if op == "Conv":
                    pads = a.get("pads", [0, 0, 0, 0])
                    y = F.conv2d(ins[0], ins[1], ins[2] if len(ins) > 2 else None, stride=tuple(a.get("strides", [1, 1])),
                                 padding=(pads[0], pads[1]), dilation=tuple(a.get("dilations", [1, 1])),
                                 groups=int(a.get("group", 1)))
                elif op == "Relu":
                    y = F.relu(ins[0])
                elif op == "HardSigmoid":
                    alpha, beta = a.get("alpha", 0.2), a.get("beta", 0.5)
                    # torch's own hardsigmoid exports back as one HardSigmoid node; a clamp of an
                    # affine map would come back as Mul, Add and Clip (a slower pruned model)
                    y = (F.hardsigmoid(ins[0]) if abs(alpha - 1 / 6) < 1e-6 and beta == 0.5
                         else torch.clamp(alpha * ins[0] + beta, 0.0, 1.0))
                elif op == "Mul":
                    y = ins[0] * ins[1]
                elif op == "Add":
                    y = ins[0] + ins[1]
                elif op == "MaxPool":
                    pads = a.get("pads", [0, 0, 0, 0])
                    y = F.max_pool2d(ins[0], tuple(a["kernel_shape"]), tuple(a.get("strides", a["kernel_shape"])),
                                     padding=(pads[0], pads[1]))
                elif op == "GlobalAveragePool":
                    y = ins[0].mean(dim=(2, 3), keepdim=True)
                elif op == "Flatten":
                    y = torch.flatten(ins[0], int(a.get("axis", 1)))
                else:  # Gemm
                    w = ins[1].t() if a.get("transB", 0) else ins[1]
                    bias = ins[2] if len(ins) > 2 else None
                    if a.get("alpha", 1.0) == 1.0 and a.get("beta", 1.0) == 1.0:
                        y = F.linear(ins[0], w.t(), bias)  # exports back as one Gemm node
                    else:
                        y = a.get("alpha", 1.0) * (ins[0] @ w)
                        if bias is not None:
                            y = y + a.get("beta", 1.0) * bias
                env[n.output[0]] = y
            return env[self.output_name]

    return OnnxModule().eval()
