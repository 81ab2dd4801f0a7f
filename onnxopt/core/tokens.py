"""Synthetic token inputs for text models that look like tokenized text, not like noise.

A transformer's int8 error depends on its activations, and those depend on the ids fed in:
uniform random ids (or ids 0..99, a BERT vocabulary's [PAD]/[unused] block) produce activations
no sentence produces, and a fidelity check on them does not predict the check on real text
(measured on a MiniLM encoder: cosine 0.88 on random ids where real ids held 0.99). So a
sample here is built like a tokenized sentence:

    input_ids      = [CLS] w_1 ... w_{S-2} [SEP]      w_i = lo + Zipf(a=1.2) - 1, clipped below V
    attention_mask = 1 everywhere                      (one sentence per row: batch 1, no padding)
    token_type_ids = 0 everywhere                      position_ids = 0 .. S-1

with V the vocabulary size read from the embedding table the ids index (word frequencies in
text follow Zipf's law; WordPiece/BPE vocabularies put frequent tokens first, after the
special tokens, so lo = 1996 for BERT-sized vocabularies, V // 4 for small ones). When the
vocabulary cannot be read from the graph, nothing trustworthy can be synthesized and
`token_feed` raises, asking for --data.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from onnx import ModelProto

from onnxopt.core.errors import InvalidInputError
from onnxopt.core.model import TensorSpec, graph_inputs

Feed = dict[str, np.ndarray]

SEQUENCE = 128  # the sequence length timed and checked when neither --data nor --shape gives one
ROLES = ("ids", "mask", "type", "position")
_ROLE_WORDS = {
    "mask": ("mask",),
    "type": ("type", "segment"),
    "position": ("position", "pos"),
    "ids": ("ids", "input", "token", "tokens", "word"),
}
BERT_SPECIALS = (101, 102)  # [CLS], [SEP] in BERT's WordPiece vocabulary
_ZIPF_A = 1.2


def token_role(spec: TensorSpec) -> str | None:
    """'ids', 'mask', 'type' or 'position' for a 2-D integer input named like one, else None."""
    if len(spec.shape) != 2 or not np.issubdtype(spec.numpy_dtype, np.integer):
        return None
    name = spec.name.lower()
    for role in ("mask", "type", "position", "ids"):
        if any(w in name for w in _ROLE_WORDS[role]):
            return role
    return None


def text_inputs(model: ModelProto) -> dict[str, str]:
    """{input name: role} of the model's token inputs; empty when it has no token-id input."""
    roles = {s.name: r for s in graph_inputs(model) if (r := token_role(s)) is not None}
    return roles if "ids" in roles.values() else {}


def is_text_model(model: ModelProto) -> bool:
    """True when the model takes token ids ([batch, sequence] integers named like input_ids)."""
    return bool(text_inputs(model))


def _tables(model: ModelProto, name: str) -> list[tuple[int, ...]]:
    """Shapes of the 2-D initializers gathered with indices `name` (directly or after a Cast)."""
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    names = {name}
    for n in model.graph.node:  # ids are often cast or unsqueezed before the lookup
        if n.op_type in ("Cast", "Unsqueeze", "Reshape", "Identity") and n.input and n.input[0] in names:
            names.update(n.output)
    out = []
    for n in model.graph.node:
        if n.op_type == "Gather" and len(n.input) > 1 and n.input[1] in names and len(inits.get(n.input[0], ())) == 2:
            out.append(inits[n.input[0]])
        elif (n.op_type == "EmbedLayerNormalization" and len(n.input) > 2 and n.input[0] in names
              and len(inits.get(n.input[2], ())) == 2):  # com.microsoft: input_ids, segment_ids, word_embedding
            out.append(inits[n.input[2]])
    return out


def vocab_size(model: ModelProto, ids_input: str) -> int | None:
    """Rows of the embedding table the token ids index, or None when the graph does not show it."""
    tables = _tables(model, ids_input)
    return int(tables[0][0]) if tables else None


def max_positions(model: ModelProto) -> int | None:
    """Rows of the position-embedding table (the longest sequence the model takes), when found."""
    inits = {t.name: t for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "EmbedLayerNormalization" and len(n.input) > 3 and n.input[3] in inits:
            return int(inits[n.input[3]].dims[0])
    for t in inits.values():
        if len(t.dims) == 2 and "position" in t.name.lower():
            return int(t.dims[0])
    return None


def synthetic_ids(samples: int, seq: int, vocab: int, rng: np.random.Generator) -> np.ndarray:
    """[samples, seq] int64 ids shaped like tokenized sentences (see the module docstring)."""
    cls, sep = BERT_SPECIALS if vocab > 2000 else (1, 2)
    lo = 1996 if vocab > 4000 else vocab // 4
    body = lo + rng.zipf(_ZIPF_A, size=(samples, seq)) - 1
    ids = np.minimum(body, vocab - 1).astype(np.int64)
    ids[:, 0] = cls
    ids[:, -1] = sep
    return ids


def token_feed(
    model: ModelProto,
    *,
    samples: int = 16,
    seq: int | None = None,
    overrides: Mapping[str, tuple[int, ...]] | None = None,
    seed: int = 0,
) -> Feed:
    """Samples of text-like inputs for a text model (module docstring), at `seq` tokens (else the
    --shape override of the ids, else SEQUENCE capped at the position table). Raises
    InvalidInputError asking for --data when the vocabulary cannot be read from the graph."""
    roles = text_inputs(model)
    ids_name = next(n for n, r in roles.items() if r == "ids")
    vocab = vocab_size(model, ids_name)
    if vocab is None or vocab < 8:
        raise InvalidInputError(
            f"cannot synthesize realistic token ids for input {ids_name!r} (its vocabulary size is not visible "
            "in the graph), and a fidelity check on random ids does not predict real text: pass --data with "
            "tokenized samples (an .npz holding input_ids and attention_mask)"
        )
    if seq is None and overrides and ids_name in overrides:
        seq = overrides[ids_name][1]
    positions = max_positions(model)
    seq = seq or (min(SEQUENCE, positions) if positions else SEQUENCE)
    rng = np.random.default_rng(seed)
    feed: Feed = {}
    for spec in graph_inputs(model):
        role = roles.get(spec.name)
        if role is None:
            raise InvalidInputError(
                f"input {spec.name!r} of a text model is not a token input (ids, mask, type, position): "
                "pass --data with real samples"
            )
        dt = spec.numpy_dtype
        if role == "ids":
            arr = synthetic_ids(samples, seq, vocab, rng)
        elif role == "mask":
            arr = np.ones((samples, seq), np.int64)
        elif role == "type":
            arr = np.zeros((samples, seq), np.int64)
        else:
            arr = np.tile(np.arange(seq, dtype=np.int64), (samples, 1))
        feed[spec.name] = arr.astype(dt)
    return feed


def embedding_dim(model: ModelProto) -> int | None:
    """Columns of the word-embedding table (the hidden size), when found."""
    roles = text_inputs(model)
    ids = next((n for n, r in roles.items() if r == "ids"), None)
    tables = _tables(model, ids) if ids else []
    return int(tables[0][1]) if tables else None
