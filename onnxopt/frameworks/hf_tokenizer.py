"""The tokenizer of a Hugging Face folder: as an onnxruntime-extensions ONNX node, and in Python.

`gen_processing_models(tokenizer, pre_kwargs)` from onnxruntime-extensions builds a one-node
graph around its BertTokenizer custom op (WordPiece: basic tokenization, lower-casing, accent
stripping, [CLS] ... [SEP], truncation to max_length). That op encodes one string per call, so
onnxopt.conversion.text loops it over a batch. The op's settings are read from the tokenizer's
own normalizer (tokenizer.json) so lower-casing and accent stripping follow the Python tokenizer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from onnx import NodeProto

from onnxopt.core.errors import InvalidInputError, MissingExtraError, UnsupportedModelError
from onnxopt.frameworks.hf_export import require_transformers
from onnxopt.frameworks.quiet import quiet_exporter, shorten_error

log = logging.getLogger(__name__)

TOKENIZER_OP = "BertTokenizer"
CONTRIB_DOMAIN = "ai.onnx.contrib"


def load_tokenizer(model_dir: str | Path) -> Any:
    """transformers' tokenizer saved in the folder (offline); one line when there is none."""
    transformers = require_transformers()
    try:
        with quiet_exporter(("transformers",)):
            return transformers.AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError, ImportError) as e:
        raise InvalidInputError(
            f"{model_dir}: no usable tokenizer for --with-tokenizer ({shorten_error(e, (), limit=160)}); "
            "save it beside the model with tokenizer.save_pretrained(folder)"
        ) from e


def _normalizer(tok: Any) -> dict[str, Any]:
    """The fast tokenizer's BertNormalizer settings ({} when it has none)."""
    backend = getattr(tok, "backend_tokenizer", None) or getattr(tok, "_tokenizer", None)
    if backend is None:
        return {}
    try:
        norm = json.loads(backend.to_str()).get("normalizer") or {}
    except (AttributeError, ValueError, TypeError):
        return {}
    if norm.get("type") == "Sequence":
        norm = next((n for n in norm.get("normalizers", []) if n.get("type") == "BertNormalizer"), {})
    return norm if norm.get("type") == "BertNormalizer" else {}


def char_map(tok: Any) -> str | None:
    """The tokenizer's normalization of every non-ASCII character that it changes, as
    onnxruntime-extensions' StringMapping wants it ("char\tnormalized" lines), or None.

    transformers lower-cases and strips accents by Unicode NFD then dropping the marks (Greek
    tonos, kana dakuten, Hangul syllables into jamo, dotted capital I); the BertTokenizer op
    strips accents with a smaller table. Mapping each character as the Python normalizer does
    (then dropping lone combining marks) makes the two agree; ASCII is left to the op.
    """
    norm = getattr(getattr(tok, "backend_tokenizer", None), "normalizer", None)
    settings = _normalizer(tok)
    lower = bool(settings.get("lowercase"))
    strip = settings.get("strip_accents")
    if norm is None or not (lower or (lower if strip is None else strip)):
        return None
    lines = []
    for cp in range(0x80, 0x30000):
        if 0xD800 <= cp < 0xE000:
            continue
        c = chr(cp)
        n = norm.normalize_str(c)
        # Whitespace, control characters and CJK spacing are the op's own job (and an empty
        # value cannot be written in the map: lone combining marks are dropped by a regex).
        if n and n != c and n.strip() and n.strip() != c and "\t" not in n and "\n" not in n:
            lines.append(f"{c}\t{n}")
    return "\n".join(lines) if lines else None


def tokenizer_node(tok: Any, max_length: int, *, normalized: bool = False) -> NodeProto:
    """The onnxruntime-extensions BertTokenizer node for tok, truncating to max_length tokens.

    normalized: the text arrives normalized by char_map (the op then strips no accents itself).
    Raises UnsupportedModelError when onnxruntime-extensions has no WordPiece converter for tok.
    """
    try:
        from onnxruntime_extensions import gen_processing_models
    except ImportError as e:
        raise MissingExtraError("onnxruntime-extensions", "hf") from e
    norm = _normalizer(tok)
    lower = norm.get("lowercase", tok.init_kwargs.get("do_lower_case", True))
    strip = norm.get("strip_accents", tok.init_kwargs.get("strip_accents"))
    attrs: dict[str, Any] = {
        "do_lower_case": int(bool(lower)),
        "strip_accents": 0 if normalized else int(bool(lower if strip is None else strip)),  # None: as lowercase
        "tokenize_chinese_chars": int(bool(norm.get("handle_chinese_chars", True))),
        "max_length": int(max_length),
    }
    for key in ("unk_token", "sep_token", "pad_token", "cls_token", "mask_token"):
        value = getattr(tok, key, None)
        if isinstance(value, str) and value:
            attrs[key] = value
    try:
        with quiet_exporter(("onnxruntime_extensions",)):
            pre, _ = gen_processing_models(tok, pre_kwargs=attrs)
    except Exception as e:
        raise UnsupportedModelError(
            f"onnxruntime-extensions cannot build {type(tok).__name__} as ONNX: {shorten_error(e, (), limit=160)}"
        ) from e
    nodes = [n for n in pre.graph.node if n.op_type == TOKENIZER_OP and n.domain == CONTRIB_DOMAIN]
    if len(nodes) != 1 or len(pre.graph.node) != 1:
        ops = ", ".join(n.op_type for n in pre.graph.node)
        raise UnsupportedModelError(
            f"--with-tokenizer handles WordPiece (BERT-style) tokenizers; {type(tok).__name__} becomes {ops}"
        )
    return nodes[0]


def pad_id(tok: Any) -> int:
    """The id rows are padded with."""
    value = getattr(tok, "pad_token_id", None)
    return int(value) if value is not None else 0


def encode(tok: Any, texts: Sequence[str], max_length: int, names: Sequence[str]) -> list[np.ndarray]:
    """The Python tokenizer's arrays for texts (padded to the longest, truncated to max_length), in names' order."""
    enc = tok(list(texts), padding=True, truncation=True, max_length=max_length, return_tensors="np")
    out = []
    for name in names:
        if name in enc:
            out.append(np.asarray(enc[name], dtype=np.int64))
        elif name == "token_type_ids":
            out.append(np.zeros_like(np.asarray(enc["input_ids"]), dtype=np.int64))
        else:
            raise UnsupportedModelError(f"the tokenizer gives no {name}, which the model takes")
    return out
